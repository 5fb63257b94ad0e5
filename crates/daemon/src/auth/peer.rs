//! What a listener knows of a connection before any request: the unix peer's credentials,
//! the TLS client certificate's fingerprint.

use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

use crate::serve::Counted;

/// The credentials of a unix-socket peer, taken when the connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub(super) uid: Option<u32>,
    pub(super) pid: Option<i32>,
}

impl PeerCred {
    /// The credentials of the peer of `stream`.
    pub fn of(stream: &UnixStream) -> Self {
        let cred = stream.peer_cred().ok();
        PeerCred {
            uid: cred.as_ref().map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// The TLS client certificate of a TCP connection, if the client sent one the CA of
/// `--tls-client-ca` signed.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// SHA-256 of the leaf certificate's DER bytes, 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// The leaf certificate's DER bytes (a node certificate names its node).
    pub leaf: Option<std::sync::Arc<[u8]>>,
}

impl TlsPeer {
    /// The client certificate of the connection `stream`, if it sent one.
    pub fn of(stream: &TlsStream<Counted<TcpStream>>) -> Self {
        let (_, session) = stream.get_ref();
        let leaf = session.peer_certificates().and_then(|chain| chain.first());
        TlsPeer {
            sha256: leaf.map(|leaf| fingerprint(leaf.as_ref())),
            leaf: leaf.map(|leaf| std::sync::Arc::from(leaf.as_ref())),
        }
    }
}

/// The SHA-256 of `der`, as identities name certificates.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
