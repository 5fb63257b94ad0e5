//! A server's link to the agents: the console, console log and attestation of a VM another
//! node runs are asked of that node's listener (`agent/streams.rs`) at the address its status
//! reports, with the servers' client certificate from the cluster CA. The node must present
//! the node certificate of the node's own name: an address that points anywhere else
//! reaches nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use corral_hypervisor::Console;
use corral_service::{
    ClusterCa, ErrorCode, FrameStream, MemoryError, NodeLink, NodeService, RemoteChunks,
    ServiceError, SnapshotMode, SnapshotPiece, SnapshotReport, SnapshotStream, pem_der,
};
use futures_util::{SinkExt, StreamExt};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::agent::streams::{NodeAttestation, NodeFound, NodeSnapshotInfo, NodeSnapshotReport};
use crate::tunnels::bridge::Frame;

/// How long a call to a node may take (a console stays open as long as it is used).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a relayed console's output the server keeps for late subscribers.
const SCROLLBACK: usize = 256 << 10;
/// How many bytes a relayed tunnel buffers each way.
const TUNNEL_BUFFER: usize = 64 << 10;

/// The servers' [`NodeLink`]: HTTPS and WebSocket to agents' node listeners.
#[derive(Debug)]
pub(crate) struct AgentLink {
    nodes: NodeService,
    /// The servers' client certificate; the cluster CA the only root.
    tls: Arc<rustls::ClientConfig>,
    /// One client per node and address (reqwest pins the node's name to its address).
    clients: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

impl AgentLink {
    /// A link presenting a client certificate `ca` issues for this server now.
    pub(crate) fn new(nodes: NodeService, ca: &ClusterCa) -> anyhow::Result<AgentLink> {
        let (cert, key) = ca.issue_server_client()?;
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(
            pem_der(ca.cert_pem()).ok_or_else(|| anyhow::anyhow!("the cluster CA is no PEM"))?,
        ))?;
        let chain =
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(AgentLink {
            nodes,
            tls: Arc::new(tls),
            clients: Mutex::default(),
        })
    }

    /// Where `node` serves its streams, as its status reports.
    async fn address(&self, node: &str) -> Result<SocketAddr, ServiceError> {
        let found = self
            .nodes
            .get(node)
            .await
            .map_err(|e| unreachable(node, e))?;
        found.status.address.ok_or_else(|| ServiceError::Node {
            node: node.to_owned(),
            code: ErrorCode::Unavailable,
            message: "reports no address for its consoles and attestations yet (its agent \
                      is not up, or older than --node-listen)"
                .into(),
        })
    }

    fn client(&self, node: &str, addr: SocketAddr) -> Result<reqwest::Client, ServiceError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&(node.to_owned(), addr)) {
            return Ok(client.clone());
        }
        // A node moved to another address: forget its old clients.
        clients.retain(|(n, _), _| n != node);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .resolve(node, addr)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| unreachable(node, e))?;
        clients.insert((node.to_owned(), addr), client.clone());
        Ok(client)
    }

    /// `https://<node>:<port><path>?<query>` at `node`'s address.
    async fn url(
        &self,
        node: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(SocketAddr, reqwest::Url), ServiceError> {
        let addr = self.address(node).await?;
        let mut url = reqwest::Url::parse(&format!("https://{node}:{}{path}", addr.port()))
            .map_err(|e| unreachable(node, e))?;
        url.query_pairs_mut().extend_pairs(query);
        Ok((addr, url))
    }

    /// GETs `path` from `node`: a successful response (its body still to read), or why not.
    /// `timeout` bounds the whole call, body included; a long read sets none.
    async fn fetch(
        &self,
        node: &str,
        path: &str,
        query: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Failed> {
        let (addr, url) = self.url(node, path, query).await?;
        let mut request = self.client(node, addr)?.get(url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(node, format!("{addr}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| unreachable(node, format!("{addr}: {e}")))?;
        Err(Failed::Answered {
            status: status.as_u16(),
            body: body.to_vec(),
        })
    }

    /// GETs `path` from `node`: the body of a success, or why not.
    async fn get(
        &self,
        node: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<axum::body::Bytes, Failed> {
        let response = self.fetch(node, path, query, Some(CALL_TIMEOUT)).await?;
        Ok(response.bytes().await.map_err(|e| unreachable(node, e))?)
    }
}

/// A WebSocket to `node`'s `path`.
type NodeSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl AgentLink {
    /// Opens a WebSocket to `path` on `node` (the node's errors before the upgrade kept).
    async fn websocket(
        &self,
        node: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(NodeSocket, SocketAddr), Failed> {
        let (addr, mut url) = self.url(node, path, query).await?;
        url.set_scheme("wss")
            .map_err(|()| unreachable(node, "no wss URL"))?;
        let name = ServerName::try_from(node.to_owned()).map_err(|e| unreachable(node, e))?;
        // HTTP/1.1 for the upgrade.
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| unreachable(node, format!("{addr}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(node, format!("{addr}: {e}")))?;
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tls)
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(response) => Failed::Answered {
                        status: response.status().as_u16(),
                        body: response.body().clone().unwrap_or_default(),
                    },
                    e => Failed::Unreachable(unreachable(node, format!("{addr}: {e}"))),
                })?;
            Ok::<_, Failed>(ws)
        };
        let ws = tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(node, format!("{addr}: no answer in {CALL_TIMEOUT:?}")))??;
        Ok((ws, addr))
    }
}

/// Why a call to a node failed.
#[derive(Debug)]
enum Failed {
    /// It could not be reached (or its answer not read).
    Unreachable(ServiceError),
    /// It answered an error (`{"error": {"code", "message"}}`).
    Answered { status: u16, body: Vec<u8> },
}

impl From<ServiceError> for Failed {
    fn from(e: ServiceError) -> Self {
        Failed::Unreachable(e)
    }
}

impl Failed {
    /// As a service error, the node's class kept.
    fn service(self, node: &str) -> ServiceError {
        match self {
            Failed::Unreachable(e) => e,
            Failed::Answered { status, body } => answered(node, status, &body),
        }
    }

    /// As a guest-memory error: the node's refusal of the arguments or of the VM's state
    /// reads as this server's would.
    fn memory(self, node: &str) -> MemoryError {
        let Failed::Answered { status, body } = &self else {
            return MemoryError::Service(self.service(node));
        };
        let error = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
        let message = error["error"]["message"].as_str().map(str::to_owned);
        match (error["error"]["code"].as_str(), message) {
            (Some("InvalidArgument"), Some(m)) => MemoryError::Invalid(m),
            (Some("FailedPrecondition"), Some(m)) => MemoryError::Unavailable(m),
            (Some("ResourceExhausted"), Some(m)) => {
                MemoryError::Exhausted(format!("node {node}: {m}"))
            }
            _ => MemoryError::Service(answered(node, *status, body)),
        }
    }
}

/// `node` could not be reached.
fn unreachable(node: &str, why: impl std::fmt::Display) -> ServiceError {
    ServiceError::Node {
        node: node.to_owned(),
        code: ErrorCode::Unavailable,
        message: format!("cannot reach its agent: {why}"),
    }
}

/// The error `node` answered (`{"error": {"code", "message"}}`), with its class kept.
fn answered(node: &str, status: u16, body: &[u8]) -> ServiceError {
    let error = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = |f: &str| {
        error
            .as_ref()
            .and_then(|e| e["error"][f].as_str().map(str::to_owned))
    };
    let code = match field("code").as_deref() {
        Some("InvalidArgument") => ErrorCode::InvalidArgument,
        Some("NotFound") => ErrorCode::NotFound,
        Some("PermissionDenied") => ErrorCode::PermissionDenied,
        Some("AlreadyExists") => ErrorCode::AlreadyExists,
        Some("Conflict") => ErrorCode::Aborted,
        Some("FailedPrecondition") => ErrorCode::FailedPrecondition,
        Some("PayloadTooLarge") => ErrorCode::TooLarge,
        Some("Unavailable") => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ServiceError::Node {
        node: node.to_owned(),
        code,
        message: field("message")
            .unwrap_or_else(|| format!("answered {status}: {}", String::from_utf8_lossy(body))),
    }
}

#[async_trait]
impl NodeLink for AgentLink {
    async fn console(
        &self,
        node: &str,
        vm: &str,
        write: bool,
        who: &str,
    ) -> Result<Console, ServiceError> {
        let write = if write { "true" } else { "false" };
        let (mut ws, addr) = self
            .websocket(
                node,
                "/v1/node/console",
                &[("vm", vm), ("write", write), ("who", who)],
            )
            .await
            .map_err(|e| e.service(node))?;
        // The first message is the scrollback: in place before anyone subscribes.
        let first = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(data))) => return Ok(data),
                    Some(Ok(Message::Close(_))) | None => {
                        return Err(unreachable(node, "the console closed at once"));
                    }
                    Some(Err(e)) => return Err(unreachable(node, e)),
                    Some(Ok(_)) => {}
                }
            }
        };
        let scrollback = tokio::time::timeout(CALL_TIMEOUT, first)
            .await
            .map_err(|_| unreachable(node, format!("{addr}: no answer in {CALL_TIMEOUT:?}")))??;
        let (console, mut input) = Console::new(SCROLLBACK);
        console.publish(&scrollback);
        let publisher = console.publisher();
        tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            loop {
                tokio::select! {
                    msg = rx.next() => match msg {
                        Some(Ok(Message::Binary(data))) => {
                            if !publisher.publish(&data) {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                    // Ends once every handle on the console is dropped.
                    keys = input.0.recv() => match keys {
                        Some(data) => {
                            if tx.send(Message::Binary(data.into())).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
            let _ = tx.send(Message::Close(None)).await;
        });
        Ok(console)
    }

    async fn console_log(&self, node: &str, vm: &str, tail: u64) -> Result<Vec<u8>, ServiceError> {
        let tail = tail.to_string();
        let body = self
            .get(node, "/v1/node/console/log", &[("vm", vm), ("tail", &tail)])
            .await
            .map_err(|e| e.service(node))?;
        Ok(body.to_vec())
    }

    async fn attest(&self, node: &str, vm: &str) -> Result<(Vec<u8>, String), ServiceError> {
        let body = self
            .get(node, "/v1/node/attestation", &[("vm", vm)])
            .await
            .map_err(|e| e.service(node))?;
        let answer: NodeAttestation =
            serde_json::from_slice(&body).map_err(|e| ServiceError::Node {
                node: node.to_owned(),
                code: ErrorCode::Internal,
                message: format!("answered an attestation that does not parse: {e}"),
            })?;
        Ok((answer.envelope.into_bytes(), answer.public_key_pem))
    }

    async fn tunnel(
        &self,
        node: &str,
        vm: &str,
        port: u16,
    ) -> Result<tokio::io::DuplexStream, ServiceError> {
        let port = port.to_string();
        let (ws, _) = self
            .websocket(node, "/v1/node/tunnel", &[("vm", vm), ("port", &port)])
            .await
            .map_err(|e| e.service(node))?;
        let (near, far) = tokio::io::duplex(TUNNEL_BUFFER);
        // The node's side runs the same relay (`tunnels::rest::pipe`).
        tokio::spawn(crate::tunnels::bridge::bridge(
            ws,
            near,
            |data| Message::Binary(data.into()),
            Message::Close(None),
            |msg| match msg {
                Message::Binary(data) if data.is_empty() => Frame::Done,
                Message::Binary(data) => Frame::Data(data.to_vec()),
                Message::Close(_) => Frame::Done,
                _ => Frame::Skip,
            },
        ));
        Ok(far)
    }

    async fn memory_read(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        addr: u64,
        len: u64,
    ) -> Result<RemoteChunks, MemoryError> {
        let (a, l) = (addr.to_string(), len.to_string());
        let query = [("vm", vm), ("who", who), ("addr", &a), ("len", &l)];
        // No overall timeout: a large read streams for as long as it takes.
        let response = self
            .fetch(node, "/v1/node/memory/read", &query, None)
            .await
            .map_err(|e| e.memory(node))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = node.to_owned();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut next = addr;
            while let Some(chunk) = body.next().await {
                let item = match chunk {
                    Ok(bytes) => {
                        let at = next;
                        next += bytes.len() as u64;
                        Ok((at, bytes.to_vec()))
                    }
                    Err(e) => Err(MemoryError::Internal(format!(
                        "node {node}: the read broke off at {next:#x}: {e}"
                    ))),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            if next != addr + len {
                let _ = tx
                    .send(Err(MemoryError::Internal(format!(
                        "node {node}: the read ended at {next:#x}, short of {:#x}",
                        addr + len
                    ))))
                    .await;
            }
        });
        Ok(rx)
    }

    async fn memory_find(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        pattern: &[u8],
        limit: u32,
    ) -> Result<(Vec<u64>, bool), MemoryError> {
        let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
        let limit = limit.to_string();
        let query = [
            ("vm", vm),
            ("who", who),
            ("pattern_hex", &hex),
            ("limit", &limit),
        ];
        let body = self
            .get(node, "/v1/node/memory/find", &query)
            .await
            .map_err(|e| e.memory(node))?;
        let found: NodeFound = serde_json::from_slice(&body).map_err(|e| {
            MemoryError::Internal(format!(
                "node {node}: a find answer that does not parse: {e}"
            ))
        })?;
        Ok((found.addresses, found.truncated))
    }

    async fn memory_snapshot(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        mode: SnapshotMode,
    ) -> Result<SnapshotStream, MemoryError> {
        let query = [("vm", vm), ("who", who), ("mode", mode.as_str())];
        let (mut ws, _) = self
            .websocket(node, "/v1/node/memory/snapshot", &query)
            .await
            .map_err(|e| e.memory(node))?;
        let broke = |why: String| MemoryError::Internal(format!("node {node}: {why}"));
        let info: NodeSnapshotInfo = match ws.next().await {
            Some(Ok(Message::Text(text))) => serde_json::from_str(&text)
                .map_err(|e| broke(format!("a snapshot header that does not parse: {e}")))?,
            other => return Err(broke(format!("no snapshot header: {other:?}"))),
        };
        let mode = if info.mode == "atomic" {
            SnapshotMode::Atomic
        } else {
            SnapshotMode::Consistent
        };
        let (tx, pieces) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                let piece = match msg {
                    Message::Binary(data) => SnapshotPiece::Data(data.to_vec()),
                    Message::Text(text) => {
                        match serde_json::from_str::<NodeSnapshotReport>(&text) {
                            Ok(r) => SnapshotPiece::Done(SnapshotReport {
                                torn_pages: r.torn_pages,
                                reread_pages: r.reread_pages,
                                paused: Duration::from_micros(r.paused_micros),
                                copy: Duration::from_micros(r.copy_micros),
                            }),
                            Err(_) => return,
                        }
                    }
                    Message::Close(_) => return,
                    _ => continue,
                };
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        Ok(SnapshotStream::new(
            mode,
            info.regions,
            info.total_bytes,
            pieces,
        ))
    }

    async fn memory_map(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        side: u32,
    ) -> Result<Vec<u8>, MemoryError> {
        let side = side.to_string();
        let query = [("vm", vm), ("who", who), ("side", &side)];
        let png = self
            .get(node, "/v1/node/memory/map", &query)
            .await
            .map_err(|e| e.memory(node))?;
        Ok(png.to_vec())
    }

    async fn memory_stream(
        &self,
        node: &str,
        vm: &str,
        who: &str,
        side: u32,
        fps: u32,
    ) -> Result<FrameStream, MemoryError> {
        let (s, f) = (side.to_string(), fps.to_string());
        let query = [("vm", vm), ("who", who), ("side", &s), ("fps", &f)];
        let (mut ws, _) = self
            .websocket(node, "/v1/node/memory/stream", &query)
            .await
            .map_err(|e| e.memory(node))?;
        let (tx, frames) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Binary(frame) if tx.send(frame.to_vec()).await.is_err() => return,
                    Message::Close(_) => return,
                    _ => {}
                }
            }
        });
        Ok(FrameStream { side, fps, frames })
    }
}
