//! `/v1/vms/{name}/console/...`: the kept log, and a WebSocket onto a console session.

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, header};
use axum::response::IntoResponse;
use corral_contract::ValidationError;
use corral_service::{ConsoleSession, ServiceError};
use serde::Deserialize;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::{Permission, REVOKED, Route};
use crate::auth::Caller;
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/v1/vms/{name}/console/log",
            Permission::Read,
            "getVmConsoleLog",
            log,
        ),
        Route::new(
            Method::GET,
            "/v1/vms/{name}/console/ws",
            Permission::Write,
            "attachVmConsole",
            attach,
        ),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    tail: u64,
}

async fn log(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult {
    let data = d.consoles.log(&scope.key(&name), q.tail).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    #[serde(default)]
    write: bool,
    #[serde(default = "yes")]
    scrollback: bool,
    /// Also send text messages saying who holds the writer: at attach, and when it changes.
    #[serde(default)]
    writer_events: bool,
}

fn yes() -> bool {
    true
}

/// `GET /v1/vms/{name}/console/ws?write=true`: binary frames both ways, guest output out and
/// keystrokes in. The session is opened before the upgrade, so a refusal is a JSON error.
///
/// The socket is closed (code 1008) when the caller's identity is revoked.
async fn attach(
    State(d): State<Shared>,
    Extension(caller): Extension<Caller>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<WsQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult {
    let session = d
        .consoles
        .attach(&scope.key(&name), q.write, &caller.name)
        .await?;
    let ws = ws.map_err(|e| {
        ServiceError::Invalid(ValidationError::new(
            "upgrade",
            format!("this endpoint speaks WebSocket only: {e}"),
        ))
    })?;
    let revoked = d.registry.revoked(&caller);
    Ok(crate::api::limits::websocket(ws)
        .on_upgrade(move |socket| pump(socket, session, q, revoked)))
}

/// A text message of a `writer_events` session: who holds the writer, and whether it is this
/// session.
fn writer_event(holder: Option<&str>, you: bool) -> Message {
    let event = serde_json::json!({ "type": "writer", "holder": holder, "you": you });
    Message::Text(event.to_string().into())
}

async fn pump(
    mut socket: WebSocket,
    session: ConsoleSession,
    q: WsQuery,
    revoked: impl Future<Output = ()>,
) {
    let (back, mut rx) = session.subscribe();
    let mut holder = session.writer();
    if q.writer_events {
        let event = writer_event(holder.borrow_and_update().as_deref(), session.can_write());
        if socket.send(event).await.is_err() {
            return;
        }
    }
    if q.scrollback && !back.is_empty() && socket.send(Message::Binary(back.into())).await.is_err()
    {
        return;
    }
    let mut revoked = std::pin::pin!(revoked);
    loop {
        tokio::select! {
            Ok(()) = holder.changed(), if q.writer_events => {
                let event = writer_event(holder.borrow_and_update().as_deref(), session.can_write());
                if socket.send(event).await.is_err() {
                    return;
                }
            }
            () = &mut revoked => {
                let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1008,
                    reason: REVOKED.into(),
                }))).await;
                return;
            }
            out = rx.recv() => match out {
                Ok(data) => {
                    if socket.send(Message::Binary(Bytes::copy_from_slice(&data))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            msg = socket.recv() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_str().as_bytes().to_vec(),
                    Some(Ok(_)) => continue,
                    _ => return,
                };
                if !session.can_write() {
                    let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1008,
                        reason: "read-only console session: attach with ?write=true to type".into(),
                    }))).await;
                    return;
                }
                if session.write(&data).await.is_err() {
                    return;
                }
            }
        }
    }
}
