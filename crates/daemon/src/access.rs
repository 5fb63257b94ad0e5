//! Guest access transports: networks (gRPC and REST) and the interactive serial console
//! (a gRPC bidirectional stream and a WebSocket), over the one service layer and the backend's
//! console hub. Many readers, one writer per VM.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use corral_contract::pb::{self, console_service_server, network_service_server};
use corral_contract::{Network, Phase, Resource, ValidationError};
use corral_hypervisor::{Console, Hypervisor};
use corral_service::{NetworkService, ServiceError};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use crate::grpc::status;
use crate::rest::ApiError;
use crate::state::{Daemon, Shared};

/// Guest-access state the daemon keeps: the network service and who holds each console's
/// write side.
#[derive(Debug)]
pub struct Access {
    /// The network service.
    pub networks: NetworkService,
    writers: Arc<Mutex<HashSet<String>>>,
}

impl Access {
    /// Over the network service.
    pub fn new(networks: NetworkService) -> Self {
        Access {
            networks,
            writers: Arc::default(),
        }
    }
}

/// The write side of one VM's console; released on drop.
#[derive(Debug)]
struct WriterGuard {
    writers: Arc<Mutex<HashSet<String>>>,
    uid: String,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

/// An attached console: the hub, and the write side when it was granted.
struct Session {
    console: Console,
    writer: Option<WriterGuard>,
}

async fn open(d: &Daemon, name: &str, write: bool) -> Result<Session, ServiceError> {
    let vm = d.vms.get(name).await?;
    let uid = vm.metadata.uid.clone();
    let console = match (vm.status.phase, d.backend.console(&uid)) {
        (Phase::Running | Phase::Paused | Phase::Starting, Ok(console)) => console,
        _ => {
            return Err(ServiceError::WrongState {
                kind: "VM",
                name: name.to_owned(),
                state: format!("not running (phase {})", vm.status.phase),
                rule: format!(
                    "start it, or read its past output with `corral vm console {name} --log`"
                ),
            });
        }
    };
    let writer = if write {
        let mut writers = d.access.writers.lock().unwrap_or_else(|e| e.into_inner());
        if !writers.insert(uid.clone()) {
            return Err(ServiceError::Busy {
                kind: "VM",
                name: name.to_owned(),
                what: "console already has a writer",
                remedy: "attach read-only, or wait until it detaches",
            });
        }
        Some(WriterGuard {
            writers: d.access.writers.clone(),
            uid,
        })
    } else {
        None
    };
    Ok(Session { console, writer })
}

/// `corral.v1.NetworkService`.
#[derive(Debug, Clone)]
pub struct NetworkGrpc(pub Shared);

fn net_out(result: Result<Network, ServiceError>) -> Result<GrpcResponse<pb::Network>, Status> {
    result
        .map(|n| GrpcResponse::new(pb::Network::from(&n)))
        .map_err(status)
}

#[tonic::async_trait]
impl network_service_server::NetworkService for NetworkGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<GrpcResponse<pb::Network>, Status> {
        let net = req
            .into_inner()
            .network
            .ok_or_else(|| Status::invalid_argument("network: required"))?;
        let net = Network::try_from(net).map_err(Status::from)?;
        net_out(self.0.access.networks.create(net).await)
    }

    async fn get(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<GrpcResponse<pb::Network>, Status> {
        net_out(self.0.access.networks.get(&req.into_inner().name).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<GrpcResponse<pb::ListNetworksResponse>, Status> {
        let nets = self
            .0
            .access
            .networks
            .list(&req.into_inner().label_selector)
            .await
            .map_err(status)?;
        Ok(GrpcResponse::new(pb::ListNetworksResponse {
            items: nets.0.iter().map(pb::Network::from).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<GrpcResponse<pb::Network>, Status> {
        net_out(
            self.0
                .access
                .networks
                .delete(&req.into_inner().name, None)
                .await,
        )
    }
}

/// `corral.v1.ConsoleService`.
#[derive(Debug, Clone)]
pub struct ConsoleGrpc(pub Shared);

type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleResponse, Status>> + Send>>;

#[tonic::async_trait]
impl console_service_server::ConsoleService for ConsoleGrpc {
    type AttachStream = OutputStream;

    async fn attach(
        &self,
        req: Request<Streaming<pb::ConsoleRequest>>,
    ) -> Result<GrpcResponse<OutputStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first message must be attach"))??;
        let Some(pb::console_request::Msg::Attach(attach)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be attach"));
        };
        let session = open(&self.0, &attach.name, attach.write)
            .await
            .map_err(status)?;
        let (scrollback, mut rx) = session.console.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::ConsoleResponse, Status>>(64);
        if attach.scrollback && !scrollback.is_empty() {
            let _ = tx
                .send(Ok(pb::ConsoleResponse { output: scrollback }))
                .await;
        }
        let console = session.console.clone();
        let writer = session.writer;
        let err_tx = tx.clone();
        // Input: keystrokes to the guest while this session holds the write side.
        tokio::spawn(async move {
            let _writer = writer;
            let can_write = _writer.is_some();
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                if let Some(pb::console_request::Msg::Input(data)) = msg.msg {
                    if !can_write {
                        let _ = err_tx
                            .send(Err(Status::failed_precondition(
                                "this console session is read-only: attach with write to type",
                            )))
                            .await;
                        break;
                    }
                    if console.write(&data).await.is_err() {
                        break;
                    }
                }
            }
        });
        // Output: everything the guest prints, until the client goes or QEMU does.
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(data) => {
                        let msg = pb::ConsoleResponse {
                            output: data.to_vec(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "console reader lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

/// REST routes: `/v1/networks` and the console WebSocket.
pub fn router(daemon: Shared) -> Router {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route("/v1/networks/{name}", get(read).delete(delete))
        .route("/v1/vms/{name}/console/ws", get(console_ws))
        .with_state(daemon)
}

fn net_resource(net: Network, code: StatusCode) -> Response {
    (code, axum::Json(Resource::from(net))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    label_selector: String,
}

async fn list(State(d): State<Shared>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let nets = d.access.networks.list(&q.label_selector).await?;
    let items: Vec<Resource> = nets.0.into_iter().map(Resource::from).collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn create(State(d): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let resource: Resource = serde_json::from_slice(&body)
        .map_err(|e| ServiceError::Invalid(ValidationError::new("body", e)))?;
    let net = resource
        .into_network()
        .ok_or_else(|| ServiceError::Invalid(ValidationError::new("kind", "expected Network")))?;
    Ok(net_resource(
        d.access.networks.create(net).await?,
        StatusCode::CREATED,
    ))
}

async fn read(State(d): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(net_resource(
        d.access.networks.get(&name).await?,
        StatusCode::OK,
    ))
}

async fn delete(State(d): State<Shared>, Path(name): Path<String>) -> Result<Response, ApiError> {
    Ok(net_resource(
        d.access.networks.delete(&name, None).await?,
        StatusCode::OK,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    #[serde(default)]
    write: bool,
    #[serde(default = "yes")]
    scrollback: bool,
}

fn yes() -> bool {
    true
}

/// `GET /v1/vms/{name}/console/ws?write=true`: binary frames both ways, guest output out and
/// keystrokes in. The session is checked before the upgrade, so a refusal is a JSON error.
async fn console_ws(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<WsQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let session = open(&d, &name, q.write).await?;
    let ws = ws.map_err(|e| {
        ServiceError::Invalid(ValidationError::new(
            "upgrade",
            format!("this endpoint speaks WebSocket only: {e}"),
        ))
    })?;
    Ok(ws.on_upgrade(move |socket| ws_session(socket, session, q.scrollback)))
}

async fn ws_session(mut socket: WebSocket, session: Session, scrollback: bool) {
    let (back, mut rx) = session.console.subscribe();
    if scrollback && !back.is_empty() && socket.send(Message::Binary(back.into())).await.is_err() {
        return;
    }
    let can_write = session.writer.is_some();
    loop {
        tokio::select! {
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
                if !can_write {
                    let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1008,
                        reason: "read-only console session: attach with ?write=true to type".into(),
                    }))).await;
                    return;
                }
                if session.console.write(&data).await.is_err() {
                    return;
                }
            }
        }
    }
}
