//! `/v1/images`: decode, call the storage service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use corral_contract::Resource;
use corral_service::{ImportProgress, ServiceError};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::api::Scope;
use crate::api::error::{ApiError, ApiResult};
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
        Route::new(
            Method::PUT,
            "/v1/images/{name}/upload",
            Write,
            "uploadImage",
            upload,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// `raw` or `qcow2`; left out, detected from the bytes.
    format: Option<String>,
    /// `sha256:<hex>` or `blake3:<hex>` the bytes must have.
    checksum: Option<String>,
    /// The file's name on the client, for people.
    filename: Option<String>,
}

/// `PUT /v1/images/{name}/upload`: the body is the image's bytes, streamed into the image
/// store as they arrive (never held in memory), within corrald's `--upload-max-size`; its
/// `Content-Length`, when sent, is checked first and against what arrived. The image is
/// created from the query's fields, validated like any other, and Ready when this answers.
async fn upload(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult {
    // Checked here, so the error names the query's field rather than a body the client never
    // sent.
    if let Some(format) = &q.format {
        format
            .parse::<corral_contract::ImageFormat>()
            .map_err(|e| ApiError::invalid(format!("format: {e}")))?;
    }
    if let Some(checksum) = &q.checksum {
        corral_contract::parse_checksum(checksum)
            .map_err(|e| ApiError::invalid(format!("checksum: {}", e.message)))?;
    }
    let declared = json!({
        "kind": "Image",
        "metadata": { "name": name },
        "spec": {
            "source": { "upload": { "filename": q.filename } },
            "format": q.format,
            "checksum": q.checksum,
        },
    });
    let Resource::Image(mut image) = resource(declared.to_string().as_bytes())? else {
        return Err(wrong_kind("Image"));
    };
    scope.place(&mut image)?;
    let size = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Content-Length: not a number of bytes"))?,
        ),
        None => None,
    };
    let chunks = body.into_data_stream().map(|chunk| {
        chunk
            .map(|c| c.to_vec())
            .map_err(|source| ServiceError::Interrupted {
                what: "upload",
                source: Box::new(source),
            })
    });
    let image = d
        .storage
        .upload_image(
            image,
            size,
            Box::pin(chunks),
            host_access(caller.as_deref()),
        )
        .await?;
    Ok(one(image, StatusCode::CREATED))
}
