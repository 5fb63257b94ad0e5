//! Who is calling, and what they may do.
//!
//! TCP clients present a bearer token. The token file holds only BLAKE3 hashes, one
//! `blake3:<hex> [scopes=vms,memory,admin]` per line, so reading it does not reveal a token.
//! Scopes: `vms` (every VM operation), `memory` (reading guest RAM, a privileged act of its
//! own) and `admin` (what touches the host itself: host files outside the allowed directories,
//! bridge networks); a line without `scopes=` means `vms` only. Unix-socket clients are the socket's owner (mode
//! 0600) and may do everything; they are identified by the peer's credentials (`SO_PEERCRED`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::Permission;
use crate::api::error::{is_grpc, refusal};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    /// Create, read, change and delete VMs.
    pub vms: bool,
    /// Read guest memory (read, find, snapshot, map, stream).
    pub memory: bool,
    /// Act on the host itself: host files outside the allowed directories, bridge networks.
    pub admin: bool,
}

impl Scopes {
    /// What a token line without `scopes=` grants.
    pub const DEFAULT: Scopes = Scopes {
        vms: true,
        memory: false,
        admin: false,
    };

    /// Parses `vms,memory,admin`.
    pub fn parse(list: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes {
            vms: false,
            memory: false,
            admin: false,
        };
        for scope in list.split(',').map(str::trim) {
            match scope {
                "vms" => scopes.vms = true,
                "memory" => scopes.memory = true,
                "admin" => scopes.admin = true,
                other => {
                    return Err(format!(
                        "unknown scope {other:?}; the scopes are `vms`, `memory` and `admin`"
                    ));
                }
            }
        }
        Ok(scopes)
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.vms, "vms"),
            (self.memory, "memory"),
            (self.admin, "admin"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// The authenticated caller of a request, put in its extensions by the listener's middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A client on the unix socket (the socket's owner).
    Unix {
        /// The peer's user id.
        uid: u32,
        /// The peer's process id, when the kernel reports it.
        pid: Option<i32>,
    },
    /// A TCP client with a bearer token.
    Token {
        /// The first 8 hex digits of the token's hash: names it in logs without revealing it.
        id: String,
        /// What the token grants.
        scopes: Scopes,
    },
}

impl Caller {
    /// Whether the caller holds `permission`: a unix-socket peer holds every one; a token
    /// reads and writes with the `vms` scope and reads guest memory with `memory`.
    pub fn may(&self, permission: Permission) -> bool {
        match (self, permission) {
            (_, Permission::Open) | (Caller::Unix { .. }, _) => true,
            (Caller::Token { scopes, .. }, Permission::Read | Permission::Write) => scopes.vms,
            (Caller::Token { scopes, .. }, Permission::Memory) => scopes.memory,
        }
    }

    /// Whether the caller is an admin, who may act on the host itself (any host file, bridge
    /// networks): a unix-socket peer (the socket is its owner's alone), or a token with the
    /// `admin` scope. The one place this is decided.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Unix { .. } => true,
            Caller::Token { scopes, .. } => scopes.admin,
        }
    }

    /// What the caller may do to the host, for the service calls that touch it.
    pub fn host_access(&self) -> corral_service::HostAccess {
        if self.is_admin() {
            corral_service::HostAccess::Admin
        } else {
            corral_service::HostAccess::Confined
        }
    }

    /// Why the caller is refused `permission`, and what to do about it.
    pub fn refusal(&self, permission: Permission) -> String {
        match permission {
            Permission::Memory => format!(
                "{self} may not read guest memory: reading a VM's RAM needs the `memory` scope \
                 (make the token's line with `corrald hash-token --scope memory`)"
            ),
            _ => format!(
                "this token lacks the `vms` scope, which {permission} operations need \
                 (see `corrald hash-token --help`)"
            ),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Unix {
                uid,
                pid: Some(pid),
            } => write!(f, "unix:uid={uid},pid={pid}"),
            Caller::Unix { uid, pid: None } => write!(f, "unix:uid={uid}"),
            Caller::Token { id, .. } => write!(f, "token:{id}"),
        }
    }
}

/// What a request's caller may do with host files; a request without a recorded caller is
/// confined.
pub fn host_access(caller: Option<&Caller>) -> corral_service::HostAccess {
    caller.map_or(corral_service::HostAccess::Confined, Caller::host_access)
}

/// Accepted token hashes and their scopes.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<HashMap<[u8; 32], Scopes>>);

/// The line to put in a token file for `token` with `scopes`.
pub fn hash_line(token: &str, scopes: Scopes) -> String {
    let hash = blake3::hash(token.trim().as_bytes()).to_hex();
    if scopes == Scopes::DEFAULT {
        format!("blake3:{hash}")
    } else {
        format!("blake3:{hash} scopes={scopes}")
    }
}

impl Tokens {
    /// Reads a token file; comments (`#`) and blank lines are skipped.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| format!("token file {} line {}: {msg}", path.display(), i + 1);
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            let hex = first.strip_prefix("blake3:").ok_or_else(|| {
                at(
                    "expected `blake3:<hex> [scopes=vms,memory,admin]`; store hashes, not tokens \
                    (make the line with `corrald hash-token`)"
                        .into(),
                )
            })?;
            let hash = blake3::Hash::from_hex(hex).map_err(|e| at(e.to_string()))?;
            let mut scopes = Scopes::DEFAULT;
            for word in words {
                let list = word.strip_prefix("scopes=").ok_or_else(|| {
                    at(format!(
                        "unexpected {word:?}; expected `scopes=vms,memory,admin`"
                    ))
                })?;
                scopes = Scopes::parse(list).map_err(at)?;
            }
            hashes.insert(*hash.as_bytes(), scopes);
        }
        if hashes.is_empty() {
            return Err(format!("token file {} holds no token", path.display()));
        }
        Ok(Tokens(Arc::new(hashes)))
    }

    /// The caller `token` identifies, if it is accepted.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        // Hashing first makes the lookup independent of how much of a token matches.
        let hash = blake3::hash(token.as_bytes());
        self.0.get(hash.as_bytes()).map(|scopes| Caller::Token {
            id: hash.to_hex()[..8].to_owned(),
            scopes: *scopes,
        })
    }

    /// Whether `token` is accepted.
    pub fn accepts(&self, token: &str) -> bool {
        self.caller(token).is_some()
    }
}

/// Middleware on the TCP listener: refuses requests without an accepted
/// `authorization: Bearer <token>` header and records the caller; what the caller may do is
/// decided by the API's authorization layer.
pub async fn require_token(
    State(tokens): State<Tokens>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| tokens.caller(token));
    let Some(caller) = caller else {
        return refusal(
            is_grpc(request.headers()),
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token",
        );
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The credentials of a unix-socket peer, taken when the connection is accepted.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    uid: Option<u32>,
    pid: Option<i32>,
}

impl PeerCred {
    /// The credentials of the peer of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Self {
        let cred = stream.peer_cred().ok();
        PeerCred {
            uid: cred.as_ref().map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// Middleware on the unix socket: records the peer as the caller.
pub async fn unix_caller(mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerCred>>()
        .map(|info| info.0);
    if let Some(PeerCred {
        uid: Some(uid),
        pid,
    }) = peer
    {
        request.extensions_mut().insert(Caller::Unix { uid, pid });
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_plain_lines_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let all = Scopes {
            vms: true,
            memory: true,
            admin: false,
        };
        std::fs::write(
            &file,
            format!(
                "# ops\n{}\n{}\n",
                hash_line("s3cret", Scopes::DEFAULT),
                hash_line("peek", all)
            ),
        )
        .unwrap();
        let tokens = Tokens::load(&file).unwrap();
        assert!(tokens.accepts("s3cret"));
        assert!(!tokens.accepts("s3cre"));
        let Some(Caller::Token { id, scopes }) = tokens.caller("s3cret") else {
            panic!("s3cret refused")
        };
        assert_eq!((id.len(), scopes), (8, Scopes::DEFAULT));
        let s3cret = tokens.caller("s3cret").unwrap();
        assert!(s3cret.may(Permission::Write) && !s3cret.may(Permission::Memory));
        assert!(tokens.caller("peek").unwrap().may(Permission::Memory));
        assert!(!tokens.caller("peek").unwrap().is_admin());
        let admin = Scopes::parse("vms,admin").unwrap();
        assert!(admin.admin && admin.vms && !admin.memory);
        assert!(hash_line("root", admin).ends_with(" scopes=vms,admin"));
        assert!(Caller::Unix { uid: 0, pid: None }.is_admin());
        assert!(hash_line("peek", all).ends_with(" scopes=vms,memory"));
        std::fs::write(
            &file,
            format!("{} scopes=vms,disk\n", hash_line("x", Scopes::DEFAULT)),
        )
        .unwrap();
        let err = Tokens::load(&file).unwrap_err();
        assert!(err.contains("line 1") && err.contains("\"disk\""), "{err}");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert!(
            Tokens::load(&file)
                .unwrap_err()
                .contains("store hashes, not tokens")
        );
    }
}
