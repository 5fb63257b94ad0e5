//! `/v1/audit`: the audit log's records, filtered.

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use crate::api::error::ApiResult;
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/v1/audit",
        Permission::Admin,
        "listAudit",
        list,
    )]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    #[serde(default)]
    since: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    limit: usize,
}

/// `GET /v1/audit?since=1h&identity=identity:ci&project=default&limit=100` →
/// `{"items": [...]}`, oldest first.
async fn list(State(d): State<Shared>, Query(q): Query<AuditParams>) -> ApiResult {
    let items = super::read(&d, &q.since, q.identity, q.project, q.limit).await?;
    Ok(axum::Json(json!({ "items": items })).into_response())
}
