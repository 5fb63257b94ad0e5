//! The provider process as go-plugin sees it: the handshake line, and AutoMTLS that admits the
//! client certificate Terraform passed and nobody else.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

struct Plugin {
    child: Child,
    socket: PathBuf,
    server_cert: Vec<u8>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Plugin {
    /// SIGTERM, as a service manager would stop it; returns its exit code.
    fn terminate(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("waiting for the provider").code()
    }
}

/// Starts the provider as Terraform does, with `client_pem` as its client certificate.
fn start(client_pem: &str) -> Plugin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_terraform-provider-corral"))
        .env(
            "TF_PLUGIN_MAGIC_COOKIE",
            corral_terraform_provider::plugin::MAGIC_COOKIE_VALUE,
        )
        .env("PLUGIN_PROTOCOL_VERSIONS", "6")
        .env("PLUGIN_CLIENT_CERT", client_pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("handshake line");
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{line:?}");
    assert_eq!(&fields[..3], ["1", "6", "unix"], "{line:?}");
    assert_eq!(fields[4], "grpc", "{line:?}");
    let server_cert = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(fields[5])
        .expect("unpadded base64, as go-plugin reads it");
    Plugin {
        child,
        socket: PathBuf::from(fields[3]),
        server_cert,
    }
}

/// Trusts exactly the certificate from the handshake line, for `localhost` (as go-plugin).
#[derive(Debug)]
struct Pinned(Vec<u8>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the handshake certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects with TLS (and `identity` as client certificate, if any), sends the HTTP/2
/// preface and reads the server's first bytes: the server's SETTINGS frame when it admits the
/// client, an error when it does not.
async fn talk(
    plugin: &Plugin,
    identity: Option<&rcgen::CertifiedKey<rcgen::KeyPair>>,
) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(plugin.server_cert.clone())));
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.cert.der().clone()],
                PrivateKeyDer::try_from(id.signing_key.serialize_der()).expect("key"),
            )
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let stream = UnixStream::connect(&plugin.socket)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    // Under TLS 1.3 the server judges the client certificate after the client's handshake is
    // done, so a refused client may see its write fail (broken pipe) before it reads the
    // server's alert: read anyway, and report the alert when there is one.
    let wrote = async {
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        tls.flush().await
    }
    .await;
    let mut buf = vec![0u8; 9];
    let read = tls.read_exact(&mut buf).await;
    match (wrote, read) {
        (_, Err(e)) | (Err(e), Ok(_)) => Err(e.to_string()),
        (Ok(()), Ok(_)) => Ok(buf),
    }
}

fn identity() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate")
}

#[tokio::test]
async fn only_the_client_certificate_terraform_passed_gets_in() {
    let terraform = identity();
    let plugin = start(&terraform.cert.pem());
    // The socket lives in a directory only this user can enter.
    let dir = plugin.socket.parent().expect("a directory").to_owned();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "socket directory mode {mode:o}");

    let frame = talk(&plugin, Some(&terraform)).await.expect("admitted");
    assert_eq!(
        frame[3], 0x4,
        "the server's first HTTP/2 frame is SETTINGS: {frame:?}"
    );

    let err = talk(&plugin, None)
        .await
        .expect_err("no client certificate");
    assert!(err.contains("fatal alert"), "{err}");
    let stranger = identity();
    let err = talk(&plugin, Some(&stranger))
        .await
        .expect_err("another certificate");
    assert!(err.contains("fatal alert"), "{err}");

    // Still serving Terraform after refusing others.
    assert!(talk(&plugin, Some(&terraform)).await.is_ok());

    // Stopped, it exits cleanly and takes its socket directory with it.
    let mut plugin = plugin;
    assert_eq!(plugin.terminate(), Some(0));
    assert!(!dir.exists(), "{} left behind", dir.display());
}
