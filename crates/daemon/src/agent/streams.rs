//! An agent's node listener (`--node-listen`): what only the node that runs a VM can serve —
//! its console, its console log, its RAM (audited here too), its attestation (signed by this
//! node's key) and tunnels to the ports it forwards — for the
//! servers, which have authorized their caller before asking.
//!
//! TLS on the node certificate; a client must present a certificate the cluster CA signed
//! (checked in the handshake) for the servers' Organization (checked here). A node
//! certificate, signed by the same CA, is refused: one agent must never reach another's
//! guests. Every route names its VM by store key (`project/name`); this node's view of the
//! store shows it only the VMs bound to it, and its hypervisor only those it runs.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use corral_service::{
    ConsoleService, ConsoleSession, MemoryService, SERVER_ORG, SnapshotMode, SnapshotPiece,
    StorageService, TunnelService,
};
use corral_storage::attest::NodeKey;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::api::error::{ApiError, ApiResult};
use crate::auth::TlsPeer;

/// What the node listener serves from.
#[derive(Debug)]
pub(crate) struct NodeStreams {
    pub consoles: ConsoleService,
    pub tunnels: TunnelService,
    pub memory: MemoryService,
    pub storage: StorageService,
    pub node_key: NodeKey,
    pub node: String,
}

/// The routes servers call on an agent (the paths `nodes/link.rs` asks for).
pub(crate) fn router(streams: Arc<NodeStreams>) -> Router {
    Router::new()
        .route("/v1/node/console", get(console))
        .route("/v1/node/console/log", get(console_log))
        .route("/v1/node/attestation", get(attestation))
        .route("/v1/node/tunnel", get(tunnel))
        .route("/v1/node/memory/read", get(memory_read))
        .route("/v1/node/memory/find", get(memory_find))
        .route("/v1/node/memory/map", get(memory_map))
        .route("/v1/node/memory/snapshot", get(memory_snapshot))
        .route("/v1/node/memory/stream", get(memory_stream))
        .layer(axum::middleware::from_fn(only_servers))
        .with_state(streams)
}

/// Lets through only clients whose certificate is for the servers' Organization (the
/// handshake already checked that the cluster CA signed it).
async fn only_servers(request: Request, next: Next) -> Response {
    let org = request
        .extensions()
        .get::<ConnectInfo<TlsPeer>>()
        .and_then(|info| info.0.leaf.clone())
        .and_then(|leaf| corral_service::certificate_org(&leaf));
    if org.as_deref() == Some(SERVER_ORG) {
        return next.run(request).await;
    }
    tracing::warn!(
        org = org.as_deref().unwrap_or("-"),
        path = %request.uri().path(),
        "refused a client that is not a server of this cluster"
    );
    ApiError::new(
        StatusCode::FORBIDDEN,
        "PermissionDenied",
        "only this cluster's servers may call a node; reach VMs through a server",
    )
    .into_response()
}

/// Which VM, and for whom.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    vm: String,
    #[serde(default)]
    write: bool,
    /// The caller the server authorized, as the console's other sessions see its writer.
    who: String,
}

/// A WebSocket onto VM `vm`'s console: the first message is the scrollback (perhaps empty),
/// then everything the guest prints; binary messages from the server are keystrokes.
async fn console(
    State(s): State<Arc<NodeStreams>>,
    Query(q): Query<ConsoleQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    // Refusals (not running here, another writer) are answered before the upgrade.
    let session = s.consoles.attach(&q.vm, q.write, &q.who).await?;
    Ok(ws.on_upgrade(move |socket| relay(session, socket)))
}

async fn relay(session: ConsoleSession, socket: WebSocket) {
    let (scrollback, mut output) = session.subscribe();
    let (mut tx, mut rx) = socket.split();
    if tx.send(Message::Binary(scrollback.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = output.recv() => match out {
                Ok(data) => {
                    if tx.send(Message::Binary(data.to_vec().into())).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "a server's console relay lagged");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if session.write(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    vm: String,
    #[serde(default)]
    tail: u64,
}

async fn console_log(State(s): State<Arc<NodeStreams>>, Query(q): Query<LogQuery>) -> ApiResult {
    let data = s.consoles.log(&q.vm, q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmQuery {
    vm: String,
}

/// A VM's attestation as a node hands it to a server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NodeAttestation {
    /// The DSSE envelope (JSON text).
    pub envelope: String,
    /// The node's public key, PEM.
    pub public_key_pem: String,
}

async fn attestation(State(s): State<Arc<NodeStreams>>, Query(q): Query<VmQuery>) -> ApiResult {
    let envelope = s.storage.attest(&q.vm, &s.node_key, &s.node).await?;
    Ok(axum::Json(NodeAttestation {
        envelope: String::from_utf8_lossy(&envelope).into_owned(),
        public_key_pem: s.node_key.public_pem(),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelQuery {
    vm: String,
    port: u16,
}

/// A WebSocket onto a tunnel to guest port `port` of VM `vm` (one it forwards, here).
async fn tunnel(
    State(s): State<Arc<NodeStreams>>,
    Query(q): Query<TunnelQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    let stream = s.tunnels.open(&q.vm, q.port).await?;
    Ok(ws.on_upgrade(move |socket| crate::tunnels::rest::pipe(socket, stream)))
}

/// Which VM's memory, for whom (the caller the server authorized and audited).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryQuery {
    vm: String,
    who: String,
    #[serde(default)]
    addr: u64,
    #[serde(default)]
    len: u64,
    #[serde(default)]
    pattern_hex: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    side: u32,
    #[serde(default)]
    fps: u32,
    #[serde(default)]
    mode: String,
}

/// The caller as this node's audit log names it.
fn via_server(q: &MemoryQuery) -> String {
    format!("{} (through a server)", q.who)
}

/// `len` bytes at `addr`, the body streamed as it is copied.
async fn memory_read(State(s): State<Arc<NodeStreams>>, Query(q): Query<MemoryQuery>) -> ApiResult {
    let chunks = s
        .memory
        .read(&via_server(&q), &q.vm, q.addr, q.len, None)
        .await?;
    let body = axum::body::Body::from_stream(chunks.map(|chunk| {
        chunk
            .map(|(_, bytes)| bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Where a pattern is: what the server's find answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NodeFound {
    pub addresses: Vec<u64>,
    pub truncated: bool,
}

async fn memory_find(State(s): State<Arc<NodeStreams>>, Query(q): Query<MemoryQuery>) -> ApiResult {
    let pattern = crate::memory::rest::decode_hex(&q.pattern_hex)?;
    let (addresses, truncated) = s
        .memory
        .find(&via_server(&q), &q.vm, pattern, q.limit)
        .await?;
    Ok(axum::Json(NodeFound {
        addresses,
        truncated,
    })
    .into_response())
}

async fn memory_map(State(s): State<Arc<NodeStreams>>, Query(q): Query<MemoryQuery>) -> ApiResult {
    let png = s.memory.map(&via_server(&q), &q.vm, q.side).await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// What comes first on a relayed snapshot: how it is taken and what it holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NodeSnapshotInfo {
    pub mode: String,
    pub regions: Vec<(u64, u64)>,
    pub total_bytes: u64,
}

/// What comes last on a relayed snapshot, once every byte was sent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NodeSnapshotReport {
    pub torn_pages: Vec<u64>,
    pub reread_pages: u64,
    pub paused_micros: u64,
    pub copy_micros: u64,
}

/// A WebSocket: a text message with [`NodeSnapshotInfo`], binary messages of RAM in layout
/// order, a text message with [`NodeSnapshotReport`] once all is sent. A copy that fails
/// ends the socket without the report.
async fn memory_snapshot(
    State(s): State<Arc<NodeStreams>>,
    Query(q): Query<MemoryQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    let mode = match q.mode.as_str() {
        "atomic" => SnapshotMode::Atomic,
        _ => SnapshotMode::Consistent,
    };
    let mut snap = s.memory.snapshot(&via_server(&q), &q.vm, mode).await?;
    let info = NodeSnapshotInfo {
        mode: snap.mode.as_str().to_owned(),
        regions: snap.regions.clone(),
        total_bytes: snap.total_bytes,
    };
    Ok(ws.on_upgrade(move |mut socket| async move {
        if socket.send(text(&info)).await.is_err() {
            return;
        }
        while let Some(piece) = snap.next().await {
            let msg = match piece {
                SnapshotPiece::Data(data) => Message::Binary(data.into()),
                SnapshotPiece::Done(report) => text(&NodeSnapshotReport {
                    torn_pages: report.torn_pages,
                    reread_pages: report.reread_pages,
                    paused_micros: report.paused.as_micros() as u64,
                    copy_micros: report.copy.as_micros() as u64,
                }),
            };
            if socket.send(msg).await.is_err() {
                return;
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }))
}

/// A WebSocket of live Hilbert frames, binary, as the node renders them.
async fn memory_stream(
    State(s): State<Arc<NodeStreams>>,
    Query(q): Query<MemoryQuery>,
    ws: WebSocketUpgrade,
) -> ApiResult {
    let mut stream = s
        .memory
        .stream(&via_server(&q), &q.vm, q.side, q.fps)
        .await?;
    Ok(ws.on_upgrade(move |mut socket| async move {
        while let Some(frame) = stream.frames.recv().await {
            if socket.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        let _ = socket.send(Message::Close(None)).await;
    }))
}

/// A text message of `value` as JSON.
fn text<T: Serialize>(value: &T) -> Message {
    Message::Text(serde_json::to_string(value).unwrap_or_default().into())
}
