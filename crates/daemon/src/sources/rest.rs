//! `/v1/sources`: decode, call the source service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode};
use corral_contract::Resource;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::json::{ListQuery, name_mismatch, one, resource, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::auth::{Caller, host_access};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/sources", Read, "listSources", list),
        Route::new(Method::POST, "/v1/sources", Write, "createSource", create),
        Route::new(Method::GET, "/v1/sources/{name}", Read, "getSource", read),
        Route::new(
            Method::PUT,
            "/v1/sources/{name}",
            Write,
            "updateSource",
            update,
        ),
        Route::new(
            Method::DELETE,
            "/v1/sources/{name}",
            Write,
            "deleteSource",
            delete,
        ),
        Route::new(
            Method::POST,
            "/v1/sources/{name}/reconcile",
            Write,
            "reconcileSource",
            reconcile,
        ),
        Route::new(
            Method::POST,
            "/v1/sources/{name}/approve",
            Write,
            "approveSource",
            approve,
        ),
    ]
}

fn source(body: &[u8]) -> Result<corral_contract::Source, crate::api::error::ApiError> {
    match resource(body)? {
        Resource::Source(source) => Ok(source),
        _ => Err(wrong_kind("Source")),
    }
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.sources, &scope.listed, &q, &headers).await
}

async fn create(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    body: Bytes,
) -> ApiResult {
    let access = host_access(caller.as_deref());
    let mut source = source(&body)?;
    scope.place(&mut source)?;
    let created = d.sources.create_as(source, access).await?;
    Ok(one(created, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.sources.get(&scope.key(&name)).await?, StatusCode::OK))
}

async fn update(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut source = source(&body)?;
    if source.metadata.name.as_str() != name {
        return Err(name_mismatch(source.metadata.name.as_str(), &name));
    }
    scope.place(&mut source)?;
    let access = host_access(caller.as_deref());
    Ok(one(
        d.sources.update_as(source, access).await?,
        StatusCode::OK,
    ))
}

async fn delete(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.sources.delete(&scope.key(&name), None).await?,
        StatusCode::OK,
    ))
}

async fn reconcile(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.sources.request_reconcile(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn approve(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.sources.approve_prune(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}
