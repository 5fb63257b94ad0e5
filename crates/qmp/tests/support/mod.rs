//! A scripted fake QMP peer on a unix socket in a tempdir, shared by the test files.
// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use corral_qmp::{Qmp, QmpConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}"#;
/// Bounds every wait in these tests so that a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The server side of one connection.
pub struct Peer {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Peer {
    pub fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("peer write");
    }

    pub async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).expect("encode");
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// The next request, or `None` when the client closed the connection.
    pub async fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("client request within the test's patience")
            .expect("peer read");
        (n > 0).then(|| serde_json::from_str(&line).expect("client sends JSON"))
    }

    pub async fn recv(&mut self) -> Value {
        self.try_recv().await.expect("a request, not EOF")
    }

    /// Receives a request for `command` and returns its id.
    pub async fn expect(&mut self, command: &str) -> Value {
        let request = self.recv().await;
        assert_eq!(request["execute"], command, "request: {request}");
        request["id"].clone()
    }

    pub async fn reply(&mut self, id: &Value, value: Value) {
        self.send(json!({ "return": value, "id": id })).await;
    }
}

pub struct Fixture {
    pub qmp: Qmp,
    pub peer: Peer,
    pub _dir: TempDir,
}

pub fn socket() -> (TempDir, PathBuf, UnixListener) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    (dir, path, listener)
}

pub async fn connect(config: QmpConfig) -> Fixture {
    let (dir, path, listener) = socket();
    let peer = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = Peer::new(stream);
        peer.send_raw(format!("{GREETING}\n").as_bytes()).await;
        let request = peer.recv().await;
        assert_eq!(request["execute"], "qmp_capabilities");
        assert!(request.get("arguments").is_none(), "request: {request}");
        peer.reply(&request["id"], json!({})).await;
        peer
    };
    let (qmp, peer) = tokio::join!(Qmp::connect_with(&path, config), peer);
    Fixture {
        qmp: qmp.expect("connect"),
        peer,
        _dir: dir,
    }
}

pub fn short_timeouts() -> QmpConfig {
    QmpConfig {
        command_timeout: Duration::from_millis(200),
        greeting_timeout: Duration::from_millis(200),
        ..QmpConfig::default()
    }
}

pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .expect("finished within the test's patience")
}
