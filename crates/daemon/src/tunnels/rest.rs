//! `/v1/vms/{name}/tunnel/ws`: a WebSocket onto a tunnel to a port the VM forwards.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::Method;
use corral_contract::ValidationError;
use corral_service::ServiceError;
use serde::Deserialize;
use tokio::io::DuplexStream;

use super::bridge::Frame;

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

/// Carries `stream`'s bytes over `socket` both ways (see [`bridge`](super::bridge)).
pub(crate) async fn pipe(socket: WebSocket, stream: DuplexStream) {
    super::bridge::bridge(
        socket,
        stream,
        |data| Message::Binary(data.into()),
        Message::Close(None),
        |msg| match msg {
            Message::Binary(data) if data.is_empty() => Frame::Done,
            Message::Binary(data) => Frame::Data(data.to_vec()),
            Message::Close(_) => Frame::Done,
            _ => Frame::Skip,
        },
    )
    .await;
}
