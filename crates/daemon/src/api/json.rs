//! JSON bodies in, JSON answers out, in exactly the API's schema
//! (`{"kind","metadata","spec","status"}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use corral_contract::{Resource, ValidationError};
use corral_service::ServiceError;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;

/// Decodes a request body as a resource of any kind.
pub fn resource(body: &[u8]) -> Result<Resource, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ServiceError::Invalid(ValidationError::new("body", e)).into())
}

/// The error for a body of another kind than the route takes.
pub fn wrong_kind(want: &str) -> ApiError {
    ServiceError::Invalid(ValidationError::new("kind", format!("expected {want}"))).into()
}

/// The error for a body whose `metadata.name` is not the one in the path.
pub fn name_mismatch(body: &str, path: &str) -> ApiError {
    ApiError::invalid(format!(
        "metadata.name: {body:?} does not match the path's {path:?}"
    ))
}

/// One resource with `status`.
pub fn one(r: impl Into<Resource>, status: StatusCode) -> Response {
    (status, axum::Json(r.into())).into_response()
}

/// `{"items": [...]}`, with `"revision"` when the list has one.
pub fn many<T: Into<Resource>>(items: Vec<T>, revision: Option<u64>) -> Response {
    let items: Vec<Resource> = items.into_iter().map(Into::into).collect();
    match revision {
        Some(revision) => axum::Json(json!({"items": items, "revision": revision})),
        None => axum::Json(json!({ "items": items })),
    }
    .into_response()
}

/// `?labelSelector=&watch=&resourceVersion=` of a list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    /// Labels the items must carry, `k=v,k2=v2`.
    #[serde(default)]
    pub label_selector: String,
    /// Answer with Server-Sent Events of the changes instead (see `api/watch.rs`).
    #[serde(default)]
    pub watch: bool,
    /// With `watch`: the changes after this store revision.
    pub resource_version: Option<u64>,
}

/// Parses `0x1000` or `4096`.
pub fn parse_u64(field: &str, text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| {
        format!("{field}: {text:?} is not a number; give decimal (4096) or hex (0x1000)")
    })
}
