//! `POST /v1/apply`: decode, call the apply service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use corral_contract::{ApplyRequest, ValidationError};
use corral_service::ServiceError;
use serde::Deserialize;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::{Permission, Route};
use crate::auth::{Caller, host_access};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::POST,
        "/v1/apply",
        Permission::Write,
        "applyResources",
        apply,
    )]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApplyQuery {
    /// Plan only, like `dry_run` in the body.
    #[serde(default)]
    dry_run: bool,
}

async fn apply(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    Query(q): Query<ApplyQuery>,
    body: Bytes,
) -> ApiResult {
    let mut request: ApplyRequest = serde_json::from_slice(&body)
        .map_err(|e| ServiceError::Invalid(ValidationError::new("body", e)))?;
    request.dry_run |= q.dry_run;
    let report = d
        .apply
        .apply(request, host_access(caller.as_deref()), &scope.project)
        .await?;
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}
