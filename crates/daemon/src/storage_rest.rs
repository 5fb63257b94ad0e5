//! REST for images, volumes, snapshots and attestations, in the API's JSON schema.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use corral_contract::{Resource, ValidationError};
use corral_service::{ImportProgress, ServiceError};
use serde::Deserialize;
use serde_json::json;

use crate::rest::ApiError;
use crate::state::Shared;

type ApiResult = Result<Response, ApiError>;

/// The storage routes.
pub fn router(daemon: Shared) -> Router {
    Router::new()
        .route("/v1/images", get(list_images).post(create_image))
        .route("/v1/images/{name}", get(get_image).delete(delete_image))
        .route("/v1/images/{name}/verify", post(verify_image))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route(
            "/v1/volumes/{name}",
            get(get_volume).put(update_volume).delete(delete_volume),
        )
        .route("/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route(
            "/v1/snapshots/{name}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/snapshots/{name}/restore", post(restore_snapshot))
        .route("/v1/vms/{name}/attestation", get(attestation))
        .with_state(daemon)
}

fn parse(body: &[u8]) -> Result<Resource, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::from(ServiceError::Invalid(ValidationError::new("body", e))))
}

fn wrong_kind(want: &str) -> ApiError {
    ServiceError::Invalid(ValidationError::new("kind", format!("expected {want}"))).into()
}

fn one(r: impl Into<Resource>, code: StatusCode) -> Response {
    (code, axum::Json(r.into())).into_response()
}

fn many<T: Into<Resource>>(items: Vec<T>) -> Response {
    let items: Vec<Resource> = items.into_iter().map(Into::into).collect();
    axum::Json(json!({ "items": items })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    label_selector: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    #[serde(default)]
    vm: Option<String>,
}

async fn list_images(State(d): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult {
    Ok(many(d.storage.images.list(&q.label_selector).await?.0))
}

async fn create_image(State(d): State<Shared>, body: Bytes) -> ApiResult {
    let Resource::Image(image) = parse(&body)? else {
        return Err(wrong_kind("Image"));
    };
    let image = d
        .storage
        .create_image(image, ImportProgress::default())
        .await?;
    Ok(one(image, StatusCode::CREATED))
}

async fn get_image(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.storage.images.get(&name).await?, StatusCode::OK))
}

async fn delete_image(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.storage.delete_image(&name).await?, StatusCode::OK))
}

async fn verify_image(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let (image, ok) = d.storage.verify_image(&name).await?;
    Ok(axum::Json(json!({ "ok": ok, "image": Resource::from(image) })).into_response())
}

async fn list_volumes(State(d): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult {
    Ok(many(d.storage.volumes.list(&q.label_selector).await?.0))
}

async fn create_volume(State(d): State<Shared>, body: Bytes) -> ApiResult {
    let Resource::Volume(volume) = parse(&body)? else {
        return Err(wrong_kind("Volume"));
    };
    Ok(one(
        d.storage.create_volume(volume).await?,
        StatusCode::CREATED,
    ))
}

async fn get_volume(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.storage.volumes.get(&name).await?, StatusCode::OK))
}

async fn update_volume(
    State(d): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let Resource::Volume(volume) = parse(&body)? else {
        return Err(wrong_kind("Volume"));
    };
    if volume.metadata.name.as_str() != name {
        return Err(ServiceError::Invalid(ValidationError::new(
            "metadata.name",
            format!("must match the path ({name})"),
        ))
        .into());
    }
    Ok(one(d.storage.update_volume(volume).await?, StatusCode::OK))
}

async fn delete_volume(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.delete_volume(&name).await?,
        StatusCode::ACCEPTED,
    ))
}

async fn list_snapshots(State(d): State<Shared>, Query(q): Query<SnapshotQuery>) -> ApiResult {
    Ok(many(d.storage.list_snapshots(q.vm.as_deref()).await?))
}

async fn create_snapshot(State(d): State<Shared>, body: Bytes) -> ApiResult {
    let Resource::Snapshot(snap) = parse(&body)? else {
        return Err(wrong_kind("Snapshot"));
    };
    Ok(one(
        d.storage.create_snapshot(snap).await?,
        StatusCode::CREATED,
    ))
}

async fn get_snapshot(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.storage.snapshots.get(&name).await?, StatusCode::OK))
}

async fn delete_snapshot(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.delete_snapshot(&name).await?,
        StatusCode::ACCEPTED,
    ))
}

async fn restore_snapshot(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.restore_snapshot(&name).await?,
        StatusCode::ACCEPTED,
    ))
}

async fn attestation(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let envelope = d.storage.attest(&name, &d.node_key, &d.node).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.dsse.envelope.v1+json",
        )],
        envelope,
    )
        .into_response())
}
