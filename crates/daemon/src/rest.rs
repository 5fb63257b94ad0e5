//! The REST/JSON transport under `/v1`: the same operations as gRPC, in exactly the API's JSON
//! schema (`{"kind","metadata","spec","status"}`), plus `/openapi.json`, `/metrics` and
//! `/healthz`. Decode, call the service layer, encode.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use corral_contract::{Power, Resource, Vm};
use corral_service::ServiceError;
use serde::Deserialize;
use serde_json::json;

use crate::state::Shared;

/// The REST routes.
pub fn router(daemon: Shared) -> Router {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(read).put(update).delete(delete))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/restart", post(restart))
        .route("/v1/vms/{name}/console/log", get(console_log))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(daemon)
}

/// An API error as JSON: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String);

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let (status, code) = match &err {
            ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            ServiceError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            ServiceError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ServiceError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            ServiceError::FailedPrecondition(_) => {
                (StatusCode::PRECONDITION_FAILED, "FailedPrecondition")
            }
            ServiceError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        };
        ApiError(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            axum::Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// The most of a rejection's body [`json_errors`] keeps as the message.
const MAX_REJECTION: usize = 64 << 10;

/// Middleware: gives the framework's own errors — a query string that does not decode, a body
/// over the limit, a method a path does not take — the API's JSON error shape, so a client
/// parses one format for every error. gRPC answers and JSON errors pass unchanged.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") || content_type.starts_with("application/grpc")
    {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "InvalidArgument",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::UNAUTHORIZED => "Unauthenticated",
        StatusCode::FORBIDDEN => "PermissionDenied",
        _ if status.is_client_error() => "InvalidArgument",
        _ => "Internal",
    };
    let (mut parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_REJECTION)
        .await
        .unwrap_or_default();
    let message = match String::from_utf8_lossy(&body).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut json = ApiError(status, code, message).into_response();
    // Keep what the framework said besides the body (`Allow` on a 405, for one).
    for (name, value) in &parts.headers {
        json.headers_mut().insert(name.clone(), value.clone());
    }
    json
}

/// The answer to a path no route serves.
pub fn not_found(method: &axum::http::Method, path: &str) -> Response {
    ApiError(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no such endpoint: {method} {path}"),
    )
    .into_response()
}

fn resource(vm: Vm, status: StatusCode) -> Response {
    (status, axum::Json(Resource::from(vm))).into_response()
}

fn parse_vm(body: &[u8]) -> Result<Vm, ApiError> {
    let invalid = |msg: String| ApiError(StatusCode::BAD_REQUEST, "InvalidArgument", msg);
    let resource: Resource = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    resource
        .into_vm()
        .ok_or_else(|| invalid("kind: expected Vm".into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    label_selector: String,
}

async fn list(State(d): State<Shared>, Query(q): Query<ListQuery>) -> ApiResult {
    let (vms, revision) = d.vms.list(&q.label_selector).await?;
    let items: Vec<Resource> = vms.into_iter().map(Resource::from).collect();
    Ok(axum::Json(json!({"items": items, "revision": revision})).into_response())
}

async fn create(State(d): State<Shared>, body: Bytes) -> ApiResult {
    Ok(resource(
        d.vms.create(parse_vm(&body)?).await?,
        StatusCode::CREATED,
    ))
}

async fn read(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(resource(d.vms.get(&name).await?, StatusCode::OK))
}

async fn update(State(d): State<Shared>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let vm = parse_vm(&body)?;
    if vm.metadata.name.as_str() != name {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!(
                "metadata.name: {:?} does not match the path's {name:?}",
                vm.metadata.name.as_str()
            ),
        ));
    }
    Ok(resource(d.vms.update(vm).await?, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteQuery {
    resource_version: Option<u64>,
}

async fn delete(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult {
    Ok(resource(
        d.vms.delete(&name, q.resource_version).await?,
        StatusCode::ACCEPTED,
    ))
}

async fn start(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(resource(
        d.vms.set_power(&name, Power::Running, false).await?,
        StatusCode::OK,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    #[serde(default)]
    force: bool,
}

async fn stop(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult {
    Ok(resource(
        d.vms.set_power(&name, Power::Stopped, q.force).await?,
        StatusCode::OK,
    ))
}

async fn pause(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(resource(
        d.vms.set_power(&name, Power::Paused, false).await?,
        StatusCode::OK,
    ))
}

async fn resume(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(resource(
        d.vms.set_power(&name, Power::Running, false).await?,
        StatusCode::OK,
    ))
}

async fn restart(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(resource(d.vms.restart(&name).await?, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    tail: u64,
}

async fn console_log(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let data = d.console_log(&name, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

async fn metrics(State(d): State<Shared>) -> Response {
    let text = d.metrics.render(&d).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
