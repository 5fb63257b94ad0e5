//! An agent's node listener (`--node-listen`): what only the node that runs a VM can serve —
//! its console, its console log, its attestation (signed by this node's key) and tunnels to
//! the ports it forwards — for the
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
use corral_service::{ConsoleService, ConsoleSession, SERVER_ORG, StorageService, TunnelService};
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
