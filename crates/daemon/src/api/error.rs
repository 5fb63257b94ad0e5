//! Errors on the wire: each service error maps to one HTTP status and API error code (REST) and
//! one gRPC code, here and nowhere else.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_service::{ErrorCode, MemoryError, ServiceError};
use serde_json::json;
use tonic::Status;

/// An API error as JSON: `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with its HTTP status and API error code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 `InvalidArgument`; the message names the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    /// The API error code: `InvalidArgument`, `NotFound`, `Gone` …
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What went wrong, naming the field or object.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The HTTP status and API error code of a service error (classified once, by
/// [`ServiceError::code`]).
fn rest_code(err: &ServiceError) -> (StatusCode, &'static str) {
    match err.code() {
        ErrorCode::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        ErrorCode::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        ErrorCode::PermissionDenied => (StatusCode::FORBIDDEN, "PermissionDenied"),
        ErrorCode::AlreadyExists => (StatusCode::CONFLICT, "AlreadyExists"),
        ErrorCode::Aborted => (StatusCode::CONFLICT, "Conflict"),
        ErrorCode::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "FailedPrecondition"),
        ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
    }
}

/// The gRPC status of a service error.
pub fn status(err: ServiceError) -> Status {
    let message = err.to_string();
    match err.code() {
        ErrorCode::InvalidArgument => Status::invalid_argument(message),
        ErrorCode::NotFound => Status::not_found(message),
        ErrorCode::PermissionDenied => Status::permission_denied(message),
        ErrorCode::AlreadyExists => Status::already_exists(message),
        ErrorCode::Aborted => Status::aborted(message),
        ErrorCode::FailedPrecondition => Status::failed_precondition(message),
        ErrorCode::Unavailable => Status::unavailable(message),
        ErrorCode::Internal => Status::internal(message),
        ErrorCode::TooLarge => Status::resource_exhausted(message),
    }
}

/// The gRPC status of a guest-memory error.
pub fn memory_status(err: MemoryError) -> Status {
    match err {
        MemoryError::Service(e) => status(e),
        e @ MemoryError::Invalid(_) => Status::invalid_argument(e.to_string()),
        e @ MemoryError::Unavailable(_) => Status::failed_precondition(e.to_string()),
        e @ MemoryError::Internal(_) => Status::internal(e.to_string()),
        e @ MemoryError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let (status, code) = rest_code(&err);
        ApiError::new(status, code, err.to_string())
    }
}

impl From<MemoryError> for ApiError {
    fn from(err: MemoryError) -> Self {
        let (status, code) = match &err {
            MemoryError::Service(e) => rest_code(e),
            MemoryError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            MemoryError::Unavailable(_) => (StatusCode::PRECONDITION_FAILED, "FailedPrecondition"),
            MemoryError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
            MemoryError::Exhausted(_) => (StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// What a REST handler returns.
pub type ApiResult = Result<Response, ApiError>;

/// Whether a request speaks gRPC.
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A refusal in the request's own protocol: a gRPC status (`UNAUTHENTICATED` for a 401,
/// `PERMISSION_DENIED` for a 403) or a JSON error.
pub fn refusal(grpc: bool, status: StatusCode, message: &str) -> Response {
    let (code, grpc_status) = match status {
        StatusCode::FORBIDDEN => ("PermissionDenied", Status::permission_denied(message)),
        StatusCode::BAD_REQUEST => ("InvalidArgument", Status::invalid_argument(message)),
        _ => ("Unauthenticated", Status::unauthenticated(message)),
    };
    if grpc {
        grpc_status.into_http::<axum::body::Body>()
    } else {
        ApiError::new(status, code, message).into_response()
    }
}

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
        StatusCode::TOO_MANY_REQUESTS => "ResourceExhausted",
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
        // The framework's words ("length limit exceeded") do not say what the limit is.
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => super::limits::body_too_large(),
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut json = ApiError::new(status, code, message).into_response();
    // Keep what the framework said besides the body (`Allow` on a 405, for one).
    for (name, value) in &parts.headers {
        json.headers_mut().insert(name.clone(), value.clone());
    }
    json
}

/// The largest request body [`read_small_bodies`] reads before routing.
const SMALL_BODY: u64 = 64 << 10;

/// Middleware: reads an HTTP/1.1 request's body of a known length up to [`SMALL_BODY`] before
/// the request is routed. A request refused before its handler read the body (a method the
/// path does not take, a caller without permission) would otherwise leave it on the
/// connection, which then cannot carry another request and closes: a client that sent its
/// next request on it sees the connection end mid-request ("EOF occurred in violation of
/// protocol"). Larger bodies (image uploads) stream to their handler as before.
pub async fn read_small_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let small = request.version() == axum::http::Version::HTTP_11
        && length.is_some_and(|n| n > 0 && n <= SMALL_BODY);
    if !small {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, SMALL_BODY as usize).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("body: could not be read: {e}"),
        )
        .into_response(),
    }
}

/// The answer to a path no route serves.
pub fn not_found(method: &axum::http::Method, path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no such endpoint: {method} {path}"),
    )
    .into_response()
}

/// A message field gRPC leaves optional but the API requires.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}
