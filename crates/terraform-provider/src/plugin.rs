//! The go-plugin side of a provider process: the environment Terraform starts it with, the
//! handshake line, the unix socket with AutoMTLS, and the services go-plugin expects beside the
//! provider's own (health, controller, stdio).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::pb::plugin as gp;
use crate::pb::tfplugin6::provider_server::ProviderServer;
use crate::server::ProviderService;
use crate::tls::{AutoMtls, TlsError};

/// The variable Terraform sets to tell a plugin it was started by Terraform.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// Its value (the same for every Terraform plugin).
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's own protocol version, the first field of the handshake line.
const CORE_PROTOCOL_VERSION: u32 = 1;
/// The Terraform plugin protocol this provider speaks.
pub const PROTOCOL_VERSION: u32 = 6;

/// Why the plugin cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Run by hand, not by Terraform.
    #[error(
        "this is a Terraform provider plugin: Terraform starts it, it is not run by hand.\n\
         To use it, put a `corral-vm/corral` provider in a Terraform configuration and run \
         `terraform plan`; see crates/terraform-provider/docs/index.md. \
         ({MAGIC_COOKIE_KEY} is not set to Terraform's value.)"
    )]
    NotStartedByTerraform,
    /// Terraform speaks other protocol versions only.
    #[error(
        "Terraform offers plugin protocol versions {offered:?}; this provider speaks {PROTOCOL_VERSION}: \
         use Terraform 1.0 or newer"
    )]
    Protocol {
        /// `PLUGIN_PROTOCOL_VERSIONS`.
        offered: String,
    },
    /// AutoMTLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PluginError {
    let what = what.into();
    move |source| PluginError::Io { what, source }
}

/// Checks the environment Terraform starts a plugin with.
pub fn check_environment(env: impl Fn(&str) -> Option<String>) -> Result<(), PluginError> {
    if env(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(PluginError::NotStartedByTerraform);
    }
    if let Some(offered) = env("PLUGIN_PROTOCOL_VERSIONS") {
        let speaks = offered
            .split(',')
            .any(|v| v.trim() == PROTOCOL_VERSION.to_string());
        if !speaks {
            return Err(PluginError::Protocol { offered });
        }
    }
    Ok(())
}

/// The line go-plugin reads from the plugin's stdout:
/// `CORE-VERSION|APP-VERSION|NETWORK|ADDRESS|PROTOCOL|SERVER-CERT`, the certificate as
/// unpadded standard base64 of its DER (empty without AutoMTLS).
pub fn handshake_line(socket: &Path, server_cert_der: Option<&[u8]>) -> String {
    let cert = server_cert_der
        .map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der))
        .unwrap_or_default();
    format!(
        "{CORE_PROTOCOL_VERSION}|{PROTOCOL_VERSION}|unix|{}|grpc|{cert}",
        socket.display()
    )
}

/// Serves the provider until Terraform asks it to shut down.
pub async fn serve(provider: ProviderService) -> Result<(), PluginError> {
    check_environment(|name| std::env::var(name).ok())?;
    let tls = match std::env::var("PLUGIN_CLIENT_CERT") {
        Ok(pem) if !pem.trim().is_empty() => Some(AutoMtls::new(&pem)?),
        _ => None,
    };

    // go-plugin's own rule: PLUGIN_UNIX_SOCKET_DIR, else the temporary directory.
    let parent = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("corral-tf-")
        .tempdir_in(&parent)
        .map_err(io(format!(
            "creating a socket directory in {}",
            parent.display()
        )))?;
    // Only this user may reach the socket; TLS then admits only Terraform.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("securing {}", dir.path().display())))?;
    let socket = dir.path().join("plugin.sock");
    let listener =
        UnixListener::bind(&socket).map_err(io(format!("binding {}", socket.display())))?;

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let shutdown_tx = Arc::new(shutdown_tx);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    let incoming = accept(
        listener,
        tls.as_ref().map(|t| TlsAcceptor::from(t.config.clone())),
    );
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(gp::grpc_controller_server::GrpcControllerServer::new(
            Controller(shutdown_tx.clone()),
        ))
        .add_service(gp::grpc_stdio_server::GrpcStdioServer::new(Stdio))
        .add_service(ProviderServer::new(provider));

    let line = handshake_line(&socket, tls.as_ref().map(|t| t.server_cert_der.as_slice()));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(io("writing the handshake line"))?;
    drop(stdout);
    tracing::info!(socket = %socket.display(), tls = tls.is_some(), "serving");

    // Terraform forwards Ctrl-C to its plugins' process group but stops them through
    // StopProvider and GRPCController; a SIGINT must not end an apply half-way.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("handling SIGINT"))?;
    tokio::spawn(async move {
        while sigint.recv().await.is_some() {
            tracing::info!("interrupt received; waiting for Terraform to stop the provider");
        }
    });
    // SIGTERM ends the provider as Shutdown does, removing its socket directory.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("handling SIGTERM"))?;
    tokio::spawn(async move {
        if sigterm.recv().await.is_some() {
            tracing::info!("SIGTERM received; shutting down");
            let _ = shutdown_tx.send(true);
        }
    });

    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        })
        .await?;
    drop(dir);
    Ok(())
}

/// Accepted connections, after the TLS handshake when there is TLS. A failed handshake is
/// logged and dropped; it does not stop the server.
fn accept(
    listener: UnixListener,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<Result<Conn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn = match tls {
                    None => Conn::Plain(stream),
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => Conn::Tls(Box::new(stream)),
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS handshake refused");
                            return;
                        }
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// One connection from Terraform.
#[derive(Debug)]
pub enum Conn {
    /// Without AutoMTLS.
    Plain(UnixStream),
    /// With AutoMTLS.
    Tls(Box<TlsStream<UnixStream>>),
}

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `plugin.GRPCController`: Terraform's request to exit once it is done with the plugin.
#[derive(Debug)]
struct Controller(Arc<watch::Sender<bool>>);

#[tonic::async_trait]
impl gp::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _: tonic::Request<gp::Empty>,
    ) -> Result<tonic::Response<gp::Empty>, tonic::Status> {
        tracing::info!("Terraform asked the provider to shut down");
        let _ = self.0.send(true);
        Ok(tonic::Response::new(gp::Empty {}))
    }
}

/// `plugin.GRPCStdio`: the provider writes nothing to stdout after the handshake and logs to
/// stderr, which go-plugin reads directly, so the stream ends at once.
#[derive(Debug)]
struct Stdio;

#[tonic::async_trait]
impl gp::grpc_stdio_server::GrpcStdio for Stdio {
    type StreamStdioStream = tokio_stream::Empty<Result<gp::StdioData, tonic::Status>>;

    async fn stream_stdio(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<Self::StreamStdioStream>, tonic::Status> {
        Ok(tonic::Response::new(tokio_stream::empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_line_follows_go_plugin() {
        let line = handshake_line(Path::new("/tmp/x/plugin.sock"), Some(&[1, 2, 3, 4]));
        // Unpadded standard base64, as go-plugin decodes it (RawStdEncoding).
        assert_eq!(line, "1|6|unix|/tmp/x/plugin.sock|grpc|AQIDBA");
        let line = handshake_line(Path::new("/s"), None);
        assert_eq!(line, "1|6|unix|/s|grpc|");
    }

    #[test]
    fn run_by_hand_explains_what_the_binary_is() {
        let err = check_environment(|_| None).unwrap_err().to_string();
        assert!(err.contains("Terraform starts it"), "{err}");
        let env = |offered: &'static str| {
            move |name: &str| match name {
                MAGIC_COOKIE_KEY => Some(MAGIC_COOKIE_VALUE.to_owned()),
                "PLUGIN_PROTOCOL_VERSIONS" => Some(offered.to_owned()),
                _ => None,
            }
        };
        assert!(check_environment(env("5,6")).is_ok());
        let err = check_environment(env("5")).unwrap_err().to_string();
        assert!(err.contains("speaks 6"), "{err}");
    }
}
