//! `/v1/volumes`: decode, call the storage service, encode.

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
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/volumes", Read, "listVolumes", list),
        Route::new(Method::POST, "/v1/volumes", Write, "createVolume", create),
        Route::new(Method::GET, "/v1/volumes/{name}", Read, "getVolume", read),
        Route::new(
            Method::PUT,
            "/v1/volumes/{name}",
            Write,
            "updateVolume",
            update,
        ),
        Route::new(
            Method::DELETE,
            "/v1/volumes/{name}",
            Write,
            "deleteVolume",
            delete,
        ),
    ]
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.storage.volumes, &scope.listed, &q, &headers).await
}

async fn create(State(d): State<Shared>, scope: Scope, body: Bytes) -> ApiResult {
    let Resource::Volume(mut volume) = resource(&body)? else {
        return Err(wrong_kind("Volume"));
    };
    scope.place(&mut volume)?;
    let volume = d.storage.create_volume(volume).await?;
    Ok(one(volume, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.volumes.get(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn update(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let Resource::Volume(mut volume) = resource(&body)? else {
        return Err(wrong_kind("Volume"));
    };
    if volume.metadata.name.as_str() != name {
        return Err(name_mismatch(volume.metadata.name.as_str(), &name));
    }
    scope.place(&mut volume)?;
    Ok(one(d.storage.update_volume(volume).await?, StatusCode::OK))
}

async fn delete(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let volume = d.storage.delete_volume(&scope.key(&name)).await?;
    Ok(one(volume, StatusCode::ACCEPTED))
}
