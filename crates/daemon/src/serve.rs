//! Listeners: the unix socket (mode 0600) and, when configured, TCP with TLS and tokens;
//! both served within the daemon's connection limits (see `serve/conn.rs`).

mod authority;
mod conn;

pub use conn::{Capped, ConnCap, Counted, serve};

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ConnLimits;

/// The API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live corrald already answers there.
    #[error("another corrald is serving on {0}")]
    InUse(PathBuf),
    /// A file system step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// Binds the API socket at `path` (its directory is created 0700 when missing). The socket is
/// never wider than 0600, whatever the umask: it is bound inside a fresh 0700 directory, made
/// 0600, and only then renamed into place. A socket left by a dead daemon is replaced; one a
/// live daemon answers on is not.
pub async fn bind_unix(path: &Path) -> Result<UnixSocket, SocketError> {
    let io = |step: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SocketError::Io { step, path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io("removing stale socket", path))?;
    }
    let mut private = path.as_os_str().to_owned();
    private.push(format!(".bind-{}", std::process::id()));
    let private = PathBuf::from(private);
    // Left by a corrald that died here with the same pid: only ever ours.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("creating", &private))?;
    let bound = private.join("s");
    let result = UnixListener::bind(&bound)
        .map_err(io("binding", &bound))
        .and_then(|listener| {
            std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))
                .map_err(io("chmod 0600", &bound))?;
            std::fs::rename(&bound, path).map_err(io("moving the socket to", path))?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&private);
    Ok(UnixSocket(result?))
}

/// The API socket: its connections reach the server through [`FixAuthority`], so gRPC
/// clients that send the socket path as `:authority` are served (see `serve/authority.rs`).
#[derive(Debug)]
pub struct UnixSocket(UnixListener);

/// An accepted unix-socket connection.
pub type UnixConnection = authority::FixAuthority<tokio::net::UnixStream>;

impl axum::serve::Listener for UnixSocket {
    type Io = UnixConnection;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (authority::FixAuthority::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        axum::serve::Listener::local_addr(&self.0)
    }
}

/// A TCP listener that hands the server only connections whose TLS handshake completed.
///
/// Each accepted connection takes a place of the listener's [`ConnCap`] before its
/// handshake (a connection finding none is closed at once) and keeps it until it closes.
/// Handshakes run in their own tasks, each bounded by the header timeout, so a slow or
/// silent client never delays anyone else's accept.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<Counted<TcpStream>>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    /// Binds `addr` with the certificate chain and key from PEM files, taking at most
    /// `limits.max_connections` connections at once. With `client_ca`, clients may present a
    /// certificate that CA signed (mTLS); clients without one still connect and identify
    /// themselves with a bearer token. With `cluster_ca` (DER), agents' node certificates that
    /// CA signed are accepted too.
    pub async fn bind(
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        cluster_ca: Option<CertificateDer<'static>>,
        limits: &ConnLimits,
    ) -> Result<TlsListener, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect())
            .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("TLS key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if client_ca.is_none() && cluster_ca.is_none() {
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_verifier(client_verifier(client_ca, cluster_ca, provider)?)
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS certificate and key: {e}"))?;
        TlsListener::listen(addr, config, limits).await
    }

    /// An agent's node listener at `addr`: its node certificate and key (PEM), and only
    /// clients with a certificate the cluster CA (`ca`, PEM) signed — which of those may do
    /// what is the router's to decide (servers only, see `agent/streams.rs`).
    pub async fn bind_node(
        addr: SocketAddr,
        cert: &str,
        key: &str,
        ca: &str,
        limits: &ConnLimits,
    ) -> Result<TlsListener, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the node certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| format!("the node key: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let cert = cert.map_err(|e| format!("the cluster CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the cluster CA: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("the cluster CA: {e}"))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| format!("the node certificate and key: {e}"))?;
        TlsListener::listen(addr, config, limits).await
    }

    /// Listens on `addr` with `config`.
    async fn listen(
        addr: SocketAddr,
        mut config: ServerConfig,
        limits: &ConnLimits,
    ) -> Result<TlsListener, String> {
        // gRPC needs HTTP/2; REST clients may speak either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let addr = tcp
            .local_addr()
            .map_err(|e| format!("binding {addr}: {e}"))?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let handshakes = Handshakes {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cap: ConnCap::new(limits.max_connections),
            timeout: limits.header_timeout,
        };
        tokio::spawn(handshakes.accept_loop(tcp, tx));
        Ok(TlsListener { ready, addr })
    }
}

/// Accepts client certificates `ca` (PEM) or `cluster_ca` signed; lets clients without one in.
fn client_verifier(
    ca: Option<&Path>,
    cluster_ca: Option<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
        }
    }
    if let Some(cert) = cluster_ca {
        roots
            .add(cert)
            .map_err(|e| format!("the cluster CA: {e}"))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client certificate CAs: {e}"))
}

/// How the TLS listener admits connections.
struct Handshakes {
    acceptor: TlsAcceptor,
    cap: ConnCap,
    timeout: Duration,
}

impl Handshakes {
    /// Accepts TCP connections and completes their handshakes concurrently, until the
    /// listener is dropped.
    async fn accept_loop(
        self,
        tcp: TcpListener,
        ready: tokio::sync::mpsc::Sender<(TlsStream<Counted<TcpStream>>, SocketAddr)>,
    ) {
        loop {
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                () = ready.closed() => return,
            };
            let (stream, addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Replies are small and often written in two pieces (HTTP/2 data, then trailers):
            // with Nagle's algorithm the second waits for the client's delayed ACK, ~40 ms.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%addr, error = %e, "TCP_NODELAY");
            }
            let Some(stream) = self.cap.admit(stream) else {
                tracing::debug!(%addr, "connection limit reached: closing a new connection");
                continue;
            };
            let (acceptor, ready, timeout) = (self.acceptor.clone(), ready.clone(), self.timeout);
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send((tls, addr)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Counted<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[tokio::test]
    async fn the_socket_is_0600_in_place_and_nothing_else_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/corral.sock");
        let _socket = bind_unix(&path).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::metadata(tmp.path().join("run")).unwrap().mode() & 0o7777,
            0o700
        );
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["corral.sock"]);
        tokio::net::UnixStream::connect(&path).await.unwrap();
    }

    #[tokio::test]
    async fn a_live_socket_is_kept_and_a_stale_one_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("corral.sock");
        let live = bind_unix(&path).await.unwrap();
        let err = bind_unix(&path).await.unwrap_err();
        assert!(
            err.to_string().starts_with("another corrald is serving on"),
            "{err}"
        );
        drop(live);
        let _again = bind_unix(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    }
}
