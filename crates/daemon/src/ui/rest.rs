//! `/ui/`: the console's assets and its login; `/v1/ui/links`: a one-time login link for
//! `corral ui`.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_service::AuditEntry;
use serde::Deserialize;
use serde_json::json;

use super::sessions::{CODE_TTL, SESSION_TTL};
use super::{COOKIE, asset, cookie, same_origin};
use crate::api::error::{ApiError, ApiResult};
use crate::api::{Permission, Route};
use crate::auth::{Caller, TlsPeer};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Open, Read};
    vec![
        Route::new(Method::GET, "/ui", Open, "redirectUi", redirect),
        Route::new(Method::GET, "/ui/", Open, "getUi", index),
        Route::new(Method::GET, "/ui/assets/{file}", Open, "getUiAsset", file),
        Route::new(Method::GET, "/ui/login", Open, "openUiLink", open_link),
        Route::new(Method::POST, "/ui/session", Open, "loginUi", login),
        Route::new(Method::GET, "/ui/session", Read, "getUiSession", whoami),
        Route::new(Method::DELETE, "/ui/session", Open, "logoutUi", logout),
        Route::new(Method::POST, "/v1/ui/links", Read, "createUiLink", link),
    ]
}

/// Headers every console page carries: nothing but corrald itself may load, frame or be
/// reached from it.
fn guarded(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; \
                 style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; \
                 form-action 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "/ui/")]).into_response()
}

async fn index() -> Response {
    guarded(
        "text/html; charset=utf-8",
        asset("index.html").unwrap_or_default(),
    )
}

async fn file(Path(name): Path<String>) -> ApiResult {
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    match asset(&name).filter(|_| name != "index.html") {
        Some(bytes) => Ok(guarded(content_type, bytes)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the console has no file {name:?}"),
        )),
    }
}

/// `Set-Cookie` for a new session (`Secure` on TLS listeners).
fn set_cookie(secret: &str, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let value = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&value).expect("a cookie of hex digits")
}

fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .expect("a cookie")
}

fn record(d: &Shared, who: &str, verb: &str, outcome: &str, reason: Option<&str>) {
    d.audit.record(&AuditEntry {
        identity: who,
        verb,
        kind: Some("Session"),
        outcome,
        reason,
        ..AuditEntry::default()
    });
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeQuery {
    code: String,
}

/// Exchanges a `corral ui` link's one-time code for a session, and goes to the console.
async fn open_link(State(d): State<Shared>, Query(q): Query<CodeQuery>) -> ApiResult {
    let Some(caller) = d.ui.sessions.redeem(&q.code) else {
        record(
            &d,
            "anonymous",
            "login",
            "denied",
            Some("unknown login code"),
        );
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "this login link was used already or is older than a minute: run `corral ui` again",
        ));
    };
    record(&d, &caller.name, "login", "ok", None);
    let secret = d.ui.sessions.start(caller);
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, set_cookie(&secret, false)),
            (header::LOCATION, HeaderValue::from_static("/ui/")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// Exchanges a bearer token for a session (the login form of TCP listeners).
async fn login(
    State(d): State<Shared>,
    tls: Option<Extension<ConnectInfo<TlsPeer>>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    same_origin(&Method::POST, &headers, host)
        .map_err(|why| ApiError::new(StatusCode::FORBIDDEN, "PermissionDenied", why))?;
    let login: Login = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("body: {e}; send {{\"token\": \"crl_…\"}}")))?;
    let Some(caller) = d.registry.token(login.token.trim()) else {
        record(
            &d,
            "token:unknown",
            "login",
            "denied",
            Some("unknown bearer token"),
        );
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "token: unknown bearer token (an admin makes one with `corral auth token create`)",
        ));
    };
    record(&d, &caller.name, "login", "ok", None);
    let who = describe(&caller);
    let secret = d.ui.sessions.start(caller);
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, set_cookie(&secret, tls.is_some()))],
        axum::Json(who),
    )
        .into_response())
}

fn describe(caller: &Caller) -> serde_json::Value {
    json!({
        "name": caller.name,
        "role": caller.principal.role.to_string(),
        "memory": caller.may(Permission::Memory),
        "projects": caller.principal.projects,
    })
}

/// Who the console's caller is.
async fn whoami(caller: Option<Extension<Caller>>) -> ApiResult {
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "not logged in",
        ));
    };
    Ok(axum::Json(describe(&caller)).into_response())
}

async fn logout(State(d): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(secret) = cookie(&headers) {
        d.ui.sessions.end(secret);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, cleared_cookie())],
    )
        .into_response()
}

/// A one-time link to the console on the local listener, for the caller itself.
async fn link(State(d): State<Shared>, Extension(caller): Extension<Caller>) -> ApiResult {
    let addr = d.ui.local_addr().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            format!("the local console listener on 127.0.0.1 could not be bound: {e}"),
        )
    })?;
    let code = d.ui.sessions.code(caller);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "url": format!("http://{addr}/ui/login?code={code}"),
            "expiresInSeconds": CODE_TTL.as_secs(),
        })),
    )
        .into_response())
}
