//! `/v1/images`: decode, call the storage service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use corral_contract::Resource;
use corral_service::ImportProgress;
use serde_json::json;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::json::{ListQuery, one, resource, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::auth::{Caller, host_access};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/images", Read, "listImages", list),
        Route::new(Method::POST, "/v1/images", Write, "createImage", create),
        Route::new(Method::GET, "/v1/images/{name}", Read, "getImage", read),
        Route::new(
            Method::DELETE,
            "/v1/images/{name}",
            Write,
            "deleteImage",
            delete,
        ),
        Route::new(
            Method::POST,
            "/v1/images/{name}/verify",
            Write,
            "verifyImage",
            verify,
        ),
    ]
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.storage.images, &scope.listed, &q, &headers).await
}

async fn create(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    body: Bytes,
) -> ApiResult {
    let Resource::Image(mut image) = resource(&body)? else {
        return Err(wrong_kind("Image"));
    };
    scope.place(&mut image)?;
    let image = d
        .storage
        .create_image(
            image,
            ImportProgress::default(),
            host_access(caller.as_deref()),
        )
        .await?;
    Ok(one(image, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.images.get(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn delete(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.delete_image(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn verify(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let (image, ok) = d.storage.verify_image(&scope.key(&name)).await?;
    Ok(axum::Json(json!({ "ok": ok, "image": Resource::from(image) })).into_response())
}
