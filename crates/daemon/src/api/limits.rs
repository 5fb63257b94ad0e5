//! How large a request may be, on every route and method: one place for every body and
//! message limit, so the API description and the errors quote the same numbers.

use axum::extract::ws::WebSocketUpgrade;

/// The largest REST request body (a JSON resource); a larger one is refused with 413 before
/// it is read in full.
pub const MAX_BODY: usize = 4 << 20;
/// The largest gRPC message corrald decodes (upload chunks are 1 MiB).
pub const MAX_GRPC_DECODE: usize = 4 << 20;
/// The largest gRPC message corrald encodes: the answers are the daemon's own, so this is a
/// backstop as large as Corral's client accepts (a list of 10,000 VMs is over 4 MiB).
pub const MAX_GRPC_ENCODE: usize = 256 << 20;
/// The largest WebSocket message (and frame) a client may send: keystrokes to a console, or
/// nothing at all to a memory stream.
pub const MAX_WS_MESSAGE: usize = 64 << 10;

/// The message for a body over [`MAX_BODY`].
pub fn body_too_large() -> String {
    format!(
        "the request body is larger than {MAX_BODY} bytes (4 MiB), the most this API accepts; \
         images are imported from a path or URL, or uploaded with PUT /v1/images/{{name}}/upload \
         or ImageService.Upload"
    )
}

/// `ws` with the API's message and frame limits.
pub fn websocket(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
}

/// A gRPC service with the API's message limits: `grpc_limits!(VmServiceServer::new(…))`.
macro_rules! grpc_limits {
    ($server:expr) => {
        $server
            .max_decoding_message_size($crate::api::limits::MAX_GRPC_DECODE)
            .max_encoding_message_size($crate::api::limits::MAX_GRPC_ENCODE)
    };
}
pub(crate) use grpc_limits;
