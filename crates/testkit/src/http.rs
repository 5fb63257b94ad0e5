use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Corrald;

/// The longest one request or one [`eventually`] may take before a test gives up (a bound,
/// never a timing claim).
pub const HTTP_PATIENCE: Duration = Duration::from_secs(120);

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// Asserts the status and a JSON body, and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        self.json()
    }

    /// Asserts an API error: status, `error.code`, and returns `error.message`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "{body}");
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only `error`: {body}");
        body["error"]["message"]
            .as_str()
            .expect("a message")
            .to_owned()
    }
}

/// What every reply passes through, e.g. a check against the OpenAPI document:
/// `(method, path with query, reply)`.
pub type ReplyCheck = Arc<dyn Fn(&str, &str, &Reply) + Send + Sync>;

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tls {
        port: u16,
        ca: CertificateDer<'static>,
    },
}

/// An HTTP client of corrald's REST API: one request per connection, on its unix socket or on
/// TCP with TLS (trusting one CA) and a bearer token, over HTTP/1.1 or HTTP/2.
#[derive(Clone)]
pub struct Api {
    target: Target,
    token: Option<String>,
    http2: bool,
    check: Option<ReplyCheck>,
    headers: Vec<(String, String)>,
    headers_only: bool,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Unix(path) => path.display().to_string(),
            Target::Tls { port, .. } => format!("https://localhost:{port}"),
        };
        f.debug_struct("Api")
            .field("target", &target)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client of `daemon`'s unix socket.
    pub fn of(daemon: &Corrald) -> Api {
        Api::unix(daemon.socket())
    }

    /// A client of the unix socket at `socket`.
    pub fn unix(socket: impl Into<PathBuf>) -> Api {
        Api {
            target: Target::Unix(socket.into()),
            token: None,
            http2: false,
            check: None,
            headers: Vec::new(),
            headers_only: false,
        }
    }

    /// A TLS client of `localhost:port` that trusts only `ca`.
    pub fn tls(port: u16, ca: &CertificateDer<'static>) -> Api {
        Api {
            target: Target::Tls {
                port,
                ca: ca.clone(),
            },
            token: None,
            http2: false,
            check: None,
            headers: Vec::new(),
            headers_only: false,
        }
    }

    /// Sends `authorization: Bearer token` (`None`: no header).
    pub fn token(mut self, token: Option<&str>) -> Api {
        self.token = token.map(str::to_owned);
        self
    }

    /// Speaks HTTP/2 (prior knowledge on the socket; ALPN `h2` over TLS).
    pub fn http2(mut self) -> Api {
        self.http2 = true;
        self
    }

    /// Sends `name: value` on every request (besides host, authorization and content ones).
    pub fn header(mut self, name: &str, value: &str) -> Api {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Returns as soon as the answer's head arrives, with an empty body: for streams that
    /// would not end.
    pub fn headers_only(mut self) -> Api {
        self.headers_only = true;
        self
    }

    /// Passes every reply through `check` (which panics on what it refuses).
    pub fn checked(mut self, check: ReplyCheck) -> Api {
        self.check = Some(check);
        self
    }

    /// Sends one request; an error when the connection or the TLS handshake fails.
    pub async fn try_send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply> {
        let reply = match &self.target {
            Target::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                self.exchange(stream, method, path, body).await?
            }
            Target::Tls { port, ca } => {
                let stream = tls_connect(*port, ca, self.http2).await?;
                self.exchange(stream, method, path, body).await?
            }
        };
        if let Some(check) = &self.check {
            check(method, path, &reply);
        }
        Ok(reply)
    }

    /// Sends one request and returns the answer; panics when there is none.
    pub async fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body.to_string().as_bytes()))
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send("PUT", path, Some(body.to_string().as_bytes()))
            .await
    }

    /// `POST /v1/vms/NAME/ACTION` without a body.
    pub async fn action(&self, name: &str, action: &str) -> Reply {
        self.send("POST", &format!("/v1/vms/{name}/{action}"), None)
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None).await
    }

    /// The names of the VMs listed with `selector` (percent-encoded by the caller).
    pub async fn names(&self, selector: &str) -> Vec<String> {
        let list = self
            .get(&format!("/v1/vms?labelSelector={selector}"))
            .await
            .expect(200);
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|vm| vm["metadata"]["name"].as_str().expect("a name").to_owned())
            .collect()
    }

    async fn exchange<S>(
        &self,
        stream: S,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let body = body.unwrap_or_default();
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if !self.http2 {
            request = request.header("connection", "close");
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            request = request.header("content-length", body.len());
        }
        let typed = self.headers.iter().any(|(n, _)| n == "content-type");
        if !body.is_empty() && !typed {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(std::io::Error::other)?;
        let io = TokioIo::new(stream);
        let answer = async {
            let response = if self.http2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(std::io::Error::other)?;
                tokio::spawn(conn);
                sender.send_request(request).await
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            .map_err(std::io::Error::other)?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = if self.headers_only {
                Vec::new()
            } else {
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(std::io::Error::other)?
                    .to_bytes()
                    .to_vec()
            };
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(HTTP_PATIENCE, answer)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} {path} within {HTTP_PATIENCE:?}"))
    }
}

async fn tls_connect(
    port: u16,
    ca: &CertificateDer<'static>,
    http2: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(std::io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    if http2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("a server name");
    connector.connect(name, tcp).await
}

/// Polls `check` every 50 ms until it gives a value; panics after [`HTTP_PATIENCE`], naming
/// `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + HTTP_PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A self-signed certificate for `localhost` in a private directory, for corrald's TLS
/// listener; the test writes token hashes to [`TlsSetup::token_file`] before
/// [`TlsSetup::start`].
#[derive(Debug)]
pub struct TlsSetup {
    keys: tempfile::TempDir,
    ca: CertificateDer<'static>,
}

impl TlsSetup {
    /// A fresh certificate and key.
    pub fn new() -> TlsSetup {
        let keys = tempfile::Builder::new()
            .prefix("crl")
            .tempdir_in("/tmp")
            .expect("a key directory");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        std::fs::write(keys.path().join("cert.pem"), certified.cert.pem()).expect("cert.pem");
        std::fs::write(keys.path().join("ca.pem"), certified.cert.pem()).expect("ca.pem");
        std::fs::write(
            keys.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .expect("key.pem");
        TlsSetup {
            ca: certified.cert.der().clone(),
            keys,
        }
    }

    /// The certificate clients must trust.
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// The same certificate as a PEM file (for `corral --ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.keys.path().join("ca.pem")
    }

    /// Where the token hashes go.
    pub fn token_file(&self) -> PathBuf {
        self.keys.path().join("tokens")
    }

    /// The private directory (for more files of the test's own).
    pub fn dir(&self) -> &Path {
        self.keys.path()
    }

    /// `binary` (corrald) on a free port with this certificate and token file, and the port,
    /// once the TLS listener accepts connections.
    pub fn start(&self, binary: impl Into<PathBuf>) -> (Corrald, u16) {
        self.start_with(binary, &[])
    }

    /// Like [`TlsSetup::start`], with extra flags.
    pub fn start_with(&self, binary: impl Into<PathBuf>, extra: &[&str]) -> (Corrald, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let path = |name: &str| {
            self.keys
                .path()
                .join(name)
                .to_str()
                .expect("a UTF-8 path")
                .to_owned()
        };
        let d = Corrald::builder(binary)
            .args(&[
                "--listen",
                &listen,
                "--tls-cert",
                &path("cert.pem"),
                "--tls-key",
                &path("key.pem"),
                "--token-file",
                &path("tokens"),
            ])
            .args(extra)
            .start()
            .expect("corrald starts with TLS");
        // corrald binds its unix socket (which `start` waits for) before the TCP listener.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS listener never came up:\n{}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (d, port)
    }
}

impl Default for TlsSetup {
    fn default() -> Self {
        TlsSetup::new()
    }
}
