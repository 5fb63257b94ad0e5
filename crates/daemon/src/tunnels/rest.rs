//! `/v1/vms/{name}/tunnel/ws`: a WebSocket onto a tunnel to a port the VM forwards.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::Method;
use corral_contract::ValidationError;
use corral_service::ServiceError;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::{Permission, REVOKED, Route};
use crate::auth::Caller;
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/v1/vms/{name}/tunnel/ws",
        Permission::Write,
        "openVmTunnel",
        open,
    )]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelQuery {
    /// The guest TCP port; the VM must forward it.
    port: u16,
}

/// `GET /v1/vms/{name}/tunnel/ws?port=22`: binary frames both ways. The tunnel is opened
/// before the upgrade, so a refusal is a JSON error. Closed (code 1008) when the caller's
/// identity is revoked.
async fn open(
    State(d): State<Shared>,
    Extension(caller): Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<TunnelQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult {
    if q.port == 0 {
        return Err(
            ServiceError::Invalid(ValidationError::new("port", "must be 1 to 65535")).into(),
        );
    }
    let stream = d.tunnels.open(&scope.key(&name), q.port).await?;
    let ws = ws.map_err(|e| {
        ServiceError::Invalid(ValidationError::new(
            "upgrade",
            format!("this endpoint speaks WebSocket only: {e}"),
        ))
    })?;
    let revoked = d.registry.revoked(&caller);
    Ok(
        crate::api::limits::websocket(ws).on_upgrade(move |socket| async move {
            tokio::select! {
                () = pipe(socket, stream) => {}
                () = revoked => tracing::info!(vm = %name, "tunnel closed: {REVOKED}"),
            }
        }),
    )
}

/// Carries `stream`'s bytes over `socket` both ways (binary messages) until both sides are
/// done. WebSocket has no half-close, so an empty binary message says "no more from me" (a
/// client that sent its request and awaits the answer, as HTTP/1.0 does); the socket closes
/// once both sides said so, or either went away.
pub(crate) async fn pipe(socket: WebSocket, stream: DuplexStream) {
    let (mut tx, mut rx) = socket.split();
    let (mut from, mut to) = tokio::io::split(stream);
    let inbound = async {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(data) if data.is_empty() => break,
                Message::Binary(data) if to.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec().into();
                    if tx.send(Message::Binary(data)).await.is_err() {
                        return tx;
                    }
                }
            }
        }
        let _ = tx.send(Message::Binary(Default::default())).await;
        tx
    };
    let ((), mut tx) = tokio::join!(inbound, outbound);
    let _ = tx.send(Message::Close(None)).await;
}
