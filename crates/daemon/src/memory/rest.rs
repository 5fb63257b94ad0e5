//! REST and WebSocket routes of guest memory under `/v1/vms/{name}/memory`. Decode, call the
//! memory service, encode.

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use corral_service::{
    FrameStream, MemoryError, MemoryOp, SnapshotMode, SnapshotPiece, SnapshotReport,
};
use http_body::Frame;
use http_body_util::StreamBody;
use serde::Deserialize;
use serde_json::json;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::Route;
use crate::api::Scope;
use crate::api::error::ApiError;
use crate::auth::Caller;
use crate::state::Shared;

/// The most bytes one REST read returns; larger ranges go through gRPC's stream or a snapshot.
pub const MAX_REST_READ: u64 = 64 << 20;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::memory(
            "/v1/vms/{name}/memory",
            "readVmMemory",
            MemoryOp::Read,
            read,
        ),
        Route::memory(
            "/v1/vms/{name}/memory/find",
            "findVmMemory",
            MemoryOp::Find,
            find,
        ),
        Route::memory(
            "/v1/vms/{name}/memory/snapshot",
            "snapshotVmMemory",
            MemoryOp::Snapshot,
            snapshot,
        ),
        Route::memory(
            "/v1/vms/{name}/memory/map",
            "mapVmMemory",
            MemoryOp::Map,
            map,
        ),
        Route::memory(
            "/v1/vms/{name}/memory/stream",
            "streamVmMemory",
            MemoryOp::Stream,
            stream,
        ),
    ]
}

type Result<T = Response> = std::result::Result<T, ApiError>;

/// The caller as the audit log names it (the authorization layer has let it through).
fn who(caller: &Extension<Caller>) -> String {
    caller.0.to_string()
}

/// Parses `0x1000` or `4096`.
fn parse_u64(field: &str, text: &str) -> Result<u64> {
    crate::api::json::parse_u64(field, text).map_err(ApiError::invalid)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    addr: String,
    len: String,
}

async fn read(
    State(d): State<Shared>,
    c: Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Result {
    let addr = parse_u64("addr", &q.addr)?;
    let len = parse_u64("len", &q.len)?;
    let chunks = d
        .memory
        .read(&who(&c), &scope.key(&name), addr, len, Some(MAX_REST_READ))
        .await?;
    // A relay that breaks off ends the body short of its length: the client sees the cut.
    let body = Body::from_stream(tokio_stream::StreamExt::map(chunks, |chunk| {
        chunk
            .map(|(_, bytes)| bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FindQuery {
    pattern: Option<String>,
    pattern_hex: Option<String>,
    #[serde(default)]
    limit: u32,
}

async fn find(
    State(d): State<Shared>,
    c: Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<FindQuery>,
) -> Result {
    let pattern = match (q.pattern, q.pattern_hex) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(hex)) => decode_hex(&hex)?,
        _ => {
            return Err(invalid(
                "pattern: give exactly one of `pattern` (text) or `patternHex`".into(),
            ));
        }
    };
    let (addresses, truncated) = d
        .memory
        .find(&who(&c), &scope.key(&name), pattern, q.limit)
        .await?;
    Ok(axum::Json(json!({"addresses": addresses, "truncated": truncated})).into_response())
}

fn invalid(message: String) -> ApiError {
    MemoryError::Invalid(message).into()
}

pub(crate) fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    let bad = || {
        invalid(format!(
            "patternHex: {hex:?} is not an even run of hex digits"
        ))
    };
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    #[serde(default)]
    mode: Option<String>,
}

/// Parses a snapshot mode as the API spells it.
pub fn parse_mode(mode: Option<&str>) -> Result<SnapshotMode> {
    match mode.unwrap_or("consistent") {
        "consistent" => Ok(SnapshotMode::Consistent),
        "atomic" => Ok(SnapshotMode::Atomic),
        other => Err(invalid(format!(
            "mode: {other:?} is not a snapshot mode; use `consistent` or `atomic`"
        ))),
    }
}

/// Streams the snapshot as it is copied: what is known first goes in headers, how the copy
/// went (torn and re-read pages, pause and copy time) in trailers.
async fn snapshot(
    State(d): State<Shared>,
    c: Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Result {
    let mode = parse_mode(q.mode.as_deref())?;
    let snap = d.memory.snapshot(&who(&c), &scope.key(&name), mode).await?;
    let regions: Vec<String> = snap
        .regions
        .iter()
        .map(|(base, len)| format!("{base:#x}+{len:#x}"))
        .collect();
    let headers = [
        (header::CONTENT_TYPE.as_str(), "application/octet-stream"),
        ("x-corral-snapshot-mode", mode.as_str()),
        ("x-corral-regions", &regions.join(",")),
        ("x-corral-total-bytes", &snap.total_bytes.to_string()),
        (header::TRAILER.as_str(), &REPORT_TRAILERS.join(", ")),
    ];
    let frames = ReceiverStream::new(snap.into_pieces()).map(|piece| {
        Ok::<_, std::convert::Infallible>(match piece {
            SnapshotPiece::Data(data) => Frame::data(Bytes::from(data)),
            SnapshotPiece::Done(report) => Frame::trailers(report_trailers(&report)),
        })
    });
    let mut response = Body::new(StreamBody::new(frames)).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// The trailers of a snapshot, in the order [`report_trailers`] writes them.
const REPORT_TRAILERS: [&str; 4] = [
    "x-corral-torn-pages",
    "x-corral-reread-pages",
    "x-corral-pause-us",
    "x-corral-copy-us",
];

fn report_trailers(report: &SnapshotReport) -> header::HeaderMap {
    let values = [
        report.torn_pages.len() as u128,
        u128::from(report.reread_pages),
        report.paused.as_micros(),
        report.copy.as_micros(),
    ];
    REPORT_TRAILERS
        .iter()
        .zip(values)
        .map(|(name, value)| {
            (
                header::HeaderName::from_static(name),
                header::HeaderValue::from(value as u64),
            )
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapQuery {
    #[serde(default)]
    side: u32,
}

async fn map(
    State(d): State<Shared>,
    c: Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<MapQuery>,
) -> Result {
    let png = d.memory.map(&who(&c), &scope.key(&name), q.side).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    #[serde(default)]
    side: u32,
    #[serde(default = "default_fps")]
    fps: u32,
}

fn default_fps() -> u32 {
    30
}

async fn stream(
    State(d): State<Shared>,
    c: Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result {
    // Checked and audited before the upgrade, so a refusal is a plain HTTP error.
    let stream = d
        .memory
        .stream(&who(&c), &scope.key(&name), q.side, q.fps)
        .await?;
    let revoked = d.registry.revoked(&c.0);
    Ok(crate::api::limits::websocket(ws).on_upgrade(move |socket| pump(socket, stream, revoked)))
}

/// Sends a text header `{"side","fps","format":"rgb8"}`, then one binary message per frame
/// (a frame that changed, or a second's), until the caller's identity is revoked (close code
/// 1008).
async fn pump(mut socket: WebSocket, mut stream: FrameStream, revoked: impl Future<Output = ()>) {
    let header = json!({"side": stream.side, "fps": stream.fps, "format": "rgb8"}).to_string();
    if socket.send(Message::Text(header.into())).await.is_err() {
        return;
    }
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            () = &mut revoked => {
                let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1008,
                    reason: crate::api::REVOKED.into(),
                }))).await;
                return;
            }
            frame = stream.frames.recv() => match frame {
                Some(frame) => {
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_hex_or_decimal_and_errors_name_the_field() {
        assert_eq!(parse_u64("addr", "0x1000").unwrap(), 4096);
        assert_eq!(parse_u64("addr", "4096").unwrap(), 4096);
        assert_eq!(parse_u64("addr", "0x1_0000").unwrap(), 65536);
        let err = crate::api::json::parse_u64("len", "lots").unwrap_err();
        assert!(err.starts_with("len: \"lots\""), "{err}");
        assert_eq!(decode_hex("00ff").unwrap(), [0, 255]);
        assert!(decode_hex("0").is_err() && decode_hex("zz").is_err());
        assert!(format!("{:?}", parse_mode(Some("later")).unwrap_err()).contains("atomic"));
    }
}
