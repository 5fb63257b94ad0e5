//! `/healthz`, `/metrics` and `/openapi.json`.

use axum::extract::State;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};

use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/healthz",
            Permission::Open,
            "getHealth",
            health,
        ),
        Route::new(
            Method::GET,
            "/metrics",
            Permission::Read,
            "getMetrics",
            metrics,
        ),
        Route::new(
            Method::GET,
            "/openapi.json",
            Permission::Open,
            "getOpenApi",
            openapi,
        ),
    ]
}

async fn health() -> &'static str {
    "ok\n"
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

async fn metrics(State(d): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let (content_type, text) = d.metrics.scrape(&d, headers.get(header::ACCEPT)).await;
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}
