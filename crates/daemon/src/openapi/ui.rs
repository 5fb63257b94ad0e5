//! The web console's operations: its page and assets, its login, and `corral ui` links.

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{ContentBuilder, Required};

use super::{boolean, common, error, integer, json_response, op, query, string};

/// The headers of a page or asset.
fn page(description: &str, media: &[&str]) -> Response {
    let mut response = ResponseBuilder::new().description(description);
    for m in media {
        // The bundle's figures (sizes.json) are JSON; everything else is the file's bytes.
        let schema = if *m == "application/json" {
            ObjectBuilder::new().schema_type(Type::Object)
        } else {
            string().format(Some(utoipa::openapi::schema::SchemaFormat::Custom(
                "binary".into(),
            )))
        };
        response = response.content(*m, ContentBuilder::new().schema(Some(schema)).build());
    }
    response.build()
}

fn redirect(description: &str) -> Response {
    ResponseBuilder::new().description(description).build()
}

pub(super) fn redirect_ui() -> Operation {
    op("The web console (redirects to /ui/)")
        .response("308", redirect("Location: /ui/"))
        .build()
}

pub(super) fn get_ui() -> Operation {
    op(
        "The web console's page: it logs in (a token, a client certificate or a `corral ui` \
        link) and then uses only this API",
    )
    .response("200", page("The page", &["text/html; charset=utf-8"]))
    .build()
}

pub(super) fn get_ui_asset() -> Operation {
    op("A file of the web console (scripts and styles, embedded in corrald)")
        .parameter(
            ParameterBuilder::new()
                .name("file")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The file's name, as the page refers to it"))
                .schema(Some(string()))
                .build(),
        )
        .response(
            "200",
            page(
                "The file",
                &[
                    "text/javascript; charset=utf-8",
                    "text/css; charset=utf-8",
                    "image/svg+xml",
                    "application/json",
                    "application/octet-stream",
                ],
            ),
        )
        .response("404", error("The console has no such file"))
        .build()
}

pub(super) fn open_ui_link() -> Operation {
    op(
        "Open a `corral ui` link: its one-time code becomes a session cookie (HttpOnly, \
        SameSite=Strict) of the caller who asked for the link",
    )
    .parameter(query("code", string(), true, "The link's one-time code"))
    .response("303", redirect("Logged in: Location /ui/, with Set-Cookie"))
    .response("400", error("No code"))
    .response(
        "401",
        error("The code was used already, expired (after a minute) or never issued"),
    )
    .build()
}

fn who() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "name",
            string().description(Some("How audit lines name the caller")),
        )
        .property(
            "role",
            string().enum_values(Some(["admin", "operator", "viewer"])),
        )
        .property(
            "memory",
            boolean().description(Some("Whether it may read guest memory")),
        )
        .property(
            "projects",
            ArrayBuilder::new().items(string()).description(Some(
                "The projects it works in (empty: default; admins: all)",
            )),
        )
        .required("name")
        .required("role")
        .required("memory")
        .required("projects")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

pub(super) fn login_ui() -> Operation {
    let body = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("token", string().description(Some("A bearer token")))
        .required("token")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    op(
        "Log the web console in with a bearer token: answers a session cookie (HttpOnly, \
        SameSite=Strict, Secure on TLS). Only from the console's own origin",
    )
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(body)).build(),
            )
            .build(),
    ))
    .response(
        "200",
        json_response("Logged in: who the session is", who().into()),
    )
    .response("400", error("The body is not {\"token\": \"…\"}"))
    .response("401", error("Unknown bearer token"))
    .response(
        "403",
        error("The request's Origin is not this listener (or it sent none)"),
    )
    .build()
}

pub(super) fn get_ui_session() -> Operation {
    common(op("Who the console's caller is"))
        .response("200", json_response("The caller", who().into()))
        .build()
}

pub(super) fn logout_ui() -> Operation {
    op("End the browser session (clears the cookie)")
        .response("204", redirect("Logged out"))
        .build()
}

pub(super) fn create_ui_link() -> Operation {
    let link = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "url",
            string().description(Some(
                "http://127.0.0.1:PORT/ui/login?code=…, on corrald's local console listener",
            )),
        )
        .property("expiresInSeconds", integer(0, None))
        .required("url")
        .required("expiresInSeconds")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    common(op(
        "A one-time link that logs a browser on this host in as the caller (what `corral ui` \
         opens); good for one use within a minute",
    ))
    .response("201", json_response("The link", link.into()))
    .build()
}
