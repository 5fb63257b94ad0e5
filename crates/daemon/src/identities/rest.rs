//! `/v1/identities`: decode, call the identity service, encode.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use corral_contract::Resource;
use corral_service::Projects;
use serde_json::json;

use crate::api::error::ApiResult;
use crate::api::json::{ListQuery, one, resource, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::Admin;
    vec![
        Route::new(Method::GET, "/v1/identities", Admin, "listIdentities", list),
        Route::new(
            Method::POST,
            "/v1/identities",
            Admin,
            "createIdentity",
            create,
        ),
        Route::new(
            Method::DELETE,
            "/v1/identities/{name}",
            Admin,
            "revokeIdentity",
            revoke,
        ),
    ]
}

async fn list(
    State(d): State<Shared>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.identities, &Projects::All, &q, &headers).await
}

/// `{"identity": …, "token": "crl_…"}`: the token only when the server made it.
async fn create(State(d): State<Shared>, body: Bytes) -> ApiResult {
    let Resource::Identity(id) = resource(&body)? else {
        return Err(wrong_kind("Identity"));
    };
    let (id, token) = d.identities.issue(id).await?;
    let body = match token {
        Some(token) => json!({"identity": Resource::from(id), "token": token}),
        None => json!({"identity": Resource::from(id)}),
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn revoke(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(super::revoke(&d, &name).await?, StatusCode::OK))
}
