//! Who is calling, and what they may do.
//!
//! Every caller is resolved to a [`Caller`] by its listener's middleware:
//! - on the unix socket, from the peer's credentials (`SO_PEERCRED`): corrald's own user,
//!   root and members of `--admin-group` are admins; another user only as an identity of the
//!   store names its uid;
//! - on TCP (TLS), from a client certificate (mTLS, its SHA-256 fingerprint names an
//!   identity) or a bearer token (an identity's BLAKE3 hash, or a line of `--token-file`).
//!
//! What a caller may do comes from its role — `admin` everything, `operator` read and write,
//! `viewer` read — and the separate `memory` grant; [`Caller::may`] maps them onto the
//! [`Permission`] every route and method declares, and [`Caller::is_admin`] is the one place
//! that decides who is an admin.

mod peer;
mod registry;
mod tokens;

use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use corral_contract::{Identity, Role};
use corral_service::{AuditEntry, AuditLog};

pub use peer::{PeerCred, TlsPeer};
pub use registry::{AdminGroup, Registry};
pub use tokens::{Scopes, TokenFileError, Tokens, hash_line};

use crate::api::Permission;
use crate::api::error::{is_grpc, refusal};

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its role.
    pub role: Role,
    /// Whether it may read guest memory.
    pub memory: bool,
    /// The projects it works in (empty: `default`); admins work in all.
    pub projects: Vec<String>,
}

/// The authenticated caller of a request, put in its extensions by the listener's middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How audit lines name it: `unix:uid=0,pid=12`, `identity:ci`, `token:0123abcd`.
    pub name: String,
    /// The store identity it is, whose revocation ends its requests and streams.
    pub identity: Option<String>,
    /// What it may do.
    pub principal: Principal,
    /// The node it is, for an agent's node certificate (signed by the cluster CA): such a
    /// caller may only act for its own node ([`Permission::Node`]), nothing else.
    pub node: Option<String>,
}

/// A caller the listener could not identify, and why: refused by the authorization layer
/// (open routes still answer it).
#[derive(Debug, Clone)]
pub struct Unidentified {
    /// How audit lines name it.
    pub name: String,
    /// Why it is not an identity, and what to do.
    pub why: String,
}

impl Caller {
    /// An admin by who it is (a local admin user), not by a stored identity.
    pub fn admin(name: String) -> Caller {
        Caller {
            name,
            identity: None,
            principal: Principal {
                role: Role::Admin,
                memory: true,
                projects: Vec::new(),
            },
            node: None,
        }
    }

    /// The agent of node `node`, known by its node certificate.
    pub fn node(node: &str) -> Caller {
        Caller {
            name: format!("node:{node}"),
            identity: None,
            principal: Principal {
                role: Role::Viewer,
                memory: false,
                projects: Vec::new(),
            },
            node: Some(node.to_owned()),
        }
    }

    /// The caller a stored identity makes.
    pub fn of(id: &Identity) -> Caller {
        Caller {
            name: format!("identity:{}", id.metadata.name),
            identity: Some(id.metadata.name.to_string()),
            principal: Principal {
                role: id.spec.role,
                memory: id.spec.memory,
                projects: id.spec.projects.iter().map(|p| p.to_string()).collect(),
            },
            node: None,
        }
    }

    /// Whether the caller is an admin: the one decision every admin-only act (host paths,
    /// bridge networks, identities, the audit log) asks.
    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }

    /// What the caller may do to the host itself (host files, bridge networks), for the
    /// service calls that touch it: an admin's all, everyone else's confined.
    pub fn host_access(&self) -> corral_service::HostAccess {
        if self.is_admin() {
            corral_service::HostAccess::Admin
        } else {
            corral_service::HostAccess::Confined
        }
    }

    /// Whether the caller works in `project`: admins in all, others in the projects their
    /// identity lists (`default` when it lists none).
    pub fn works_in(&self, project: &str) -> bool {
        if self.node.is_some() {
            return false;
        }
        if self.is_admin() {
            return true;
        }
        match self.principal.projects.as_slice() {
            [] => project == corral_contract::DEFAULT_PROJECT,
            projects => projects.iter().any(|p| p == project),
        }
    }

    /// Why the caller may not act in `project`.
    pub fn outside(&self, project: &str) -> String {
        let theirs = if self.principal.projects.is_empty() {
            corral_contract::DEFAULT_PROJECT.to_owned()
        } else {
            self.principal.projects.join(", ")
        };
        format!(
            "{self} works in project(s) {theirs}, not in {project:?}, where these objects are \
             (an admin adds the project with `corral auth … --project {project}`)"
        )
    }

    /// Whether the caller holds `permission`: viewers read, operators read and write, admins
    /// do everything, and reading guest memory needs the `memory` grant (or admin).
    pub fn may(&self, permission: Permission) -> bool {
        if self.node.is_some() {
            // A node's agent is no user: it acts for its node and nothing else.
            return matches!(permission, Permission::Open | Permission::Node);
        }
        let role = self.principal.role;
        match permission {
            Permission::Node => role == Role::Admin,
            Permission::Open | Permission::Read => true,
            Permission::Write => matches!(role, Role::Admin | Role::Operator),
            Permission::Memory => role == Role::Admin || self.principal.memory,
            Permission::Admin => role == Role::Admin,
        }
    }

    /// Why the caller is refused `permission`, and what to do about it.
    pub fn refusal(&self, permission: Permission) -> String {
        if let Some(node) = &self.node {
            return format!(
                "{self} is the agent of node {node:?}: a node certificate may only report its \
                 own node, not {permission}"
            );
        }
        let role = self.principal.role;
        match permission {
            Permission::Node => {
                format!("{self} has role {role}; reporting a node is for its agent (or an admin)")
            }
            Permission::Memory => format!(
                "{self} may not read guest memory: reading a VM's RAM needs the `memory` grant \
                 (`corral auth token create NAME --memory`, or scope `memory` in the token file)"
            ),
            Permission::Admin => format!(
                "{self} has role {role}; this needs role admin (managing identities, reading \
                 the audit log, host resources)"
            ),
            _ => format!(
                "{self} has role {role}, which may not {permission}: writing needs role \
                 operator or admin"
            ),
        }
    }
}

/// What a request's caller may do to the host; a request without a recorded caller is
/// confined.
pub fn host_access(caller: Option<&Caller>) -> corral_service::HostAccess {
    caller.map_or(corral_service::HostAccess::Confined, Caller::host_access)
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// What the TCP listener's middleware needs: who credentials are, and where refusals go.
#[derive(Debug, Clone)]
pub struct TcpGate {
    /// Resolves certificates and tokens.
    pub registry: Arc<Registry>,
    /// Where refusals are recorded.
    pub audit: Arc<AuditLog>,
    /// Browser sessions of the web console.
    pub sessions: Arc<crate::ui::Sessions>,
    /// The cluster CA, whose node certificates make node callers.
    pub cluster_ca: Option<Arc<corral_service::ClusterCa>>,
}

/// Where agents join: the one route a TCP caller without credentials reaches (besides the web
/// console's login pages).
const JOIN_PATH: &str = "/v1/nodes/join";

/// Middleware on the TCP listener: identifies the caller by its client certificate, else its
/// `authorization: Bearer <token>` header, and refuses (401, audited) anyone it cannot
/// identify, whatever the route; what an identified caller may do is decided by the API's
/// authorization layer.
pub async fn tcp_caller(State(gate): State<TcpGate>, mut request: Request, next: Next) -> Response {
    let registry = &gate.registry;
    let tls = request
        .extensions()
        .get::<ConnectInfo<TlsPeer>>()
        .map(|info| info.0.clone());
    let peer = tls.as_ref().and_then(|t| t.sha256.clone());
    // An agent's node certificate, signed by the cluster CA, makes a node caller.
    let node = gate
        .cluster_ca
        .as_ref()
        .zip(tls.as_ref().and_then(|t| t.leaf.clone()))
        .and_then(|(ca, leaf)| ca.node_of(&leaf));
    if let Some(node) = node {
        request.extensions_mut().insert(Caller::node(node.as_str()));
        return next.run(request).await;
    }
    // An agent joining has no credential yet: its join token, in the body, is checked there.
    if request.uri().path() == JOIN_PATH && request.method() == axum::http::Method::POST {
        request.extensions_mut().insert(Unidentified {
            name: "joining-agent".into(),
            why: "not yet joined".into(),
        });
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let by_cert = peer.as_deref().and_then(|fp| registry.cert(fp));
    if let Some(caller) = by_cert.or_else(|| token.and_then(|t| registry.token(t))) {
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    }
    // A browser of the web console: its session cookie, or nothing yet on the console's own
    // pages (the login form), which open routes answer and others refuse.
    let session = match crate::ui::session_caller(&gate.sessions, &request) {
        Some(Ok(caller)) if token.is_none() => {
            request.extensions_mut().insert(caller);
            return next.run(request).await;
        }
        Some(Err(why)) => Some(why),
        _ => None,
    };
    if crate::ui::is_console_path(request.uri().path()) && token.is_none() {
        request.extensions_mut().insert(Unidentified {
            name: "anonymous".into(),
            why: session.unwrap_or_else(|| "not logged in".into()),
        });
        return next.run(request).await;
    }
    let revoked = token.and_then(|t| registry.revoked_token(t));
    let (name, why) = match (peer, token, revoked) {
        (_, Some(_), Some(name)) => (
            format!("identity:{name}"),
            "unknown bearer token: its identity was revoked",
        ),
        (_, Some(_), None) => ("token:unknown".to_owned(), "unknown bearer token"),
        (Some(fp), None, _) => (
            format!("cert:{}", &fp[..16.min(fp.len())]),
            "the client certificate names no identity and no bearer token was sent",
        ),
        (None, None, _) => ("anonymous".to_owned(), "missing or unknown bearer token"),
    };
    let why = match &session {
        Some(session) => session.as_str(),
        None => why,
    };
    let verb = request.method().as_str().to_ascii_lowercase();
    let reason = format!("{} {}: {why}", request.method(), request.uri().path());
    gate.audit.record(&AuditEntry {
        identity: &name,
        verb: &verb,
        outcome: "denied",
        reason: Some(&reason),
        ..AuditEntry::default()
    });
    refusal(is_grpc(request.headers()), StatusCode::UNAUTHORIZED, why)
}

/// Middleware on the unix socket: identifies the peer by its credentials.
pub async fn unix_caller(
    State(registry): State<Arc<Registry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerCred>>()
        .map(|info| info.0);
    match peer.and_then(|p| p.uid.map(|uid| (uid, p.pid))) {
        Some((uid, pid)) => match registry.unix(uid, pid) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
            }
            Err(why) => {
                request.extensions_mut().insert(Unidentified {
                    name: format!("unix:uid={uid}"),
                    why,
                });
            }
        },
        None => {
            request.extensions_mut().insert(Unidentified {
                name: "unix:unknown".into(),
                why: "the peer's credentials could not be read".into(),
            });
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, memory: bool) -> Caller {
        Caller {
            name: "identity:x".into(),
            identity: Some("x".into()),
            principal: Principal {
                role,
                memory,
                projects: vec![],
            },
            node: None,
        }
    }

    #[test]
    fn roles_map_onto_permissions() {
        use Permission::*;
        let table = [
            (Role::Viewer, false, [true, true, false, false, false]),
            (Role::Viewer, true, [true, true, false, true, false]),
            (Role::Operator, false, [true, true, true, false, false]),
            (Role::Operator, true, [true, true, true, true, false]),
            (Role::Admin, false, [true, true, true, true, true]),
        ];
        for (role, memory, allowed) in table {
            let c = caller(role, memory);
            let got = [Open, Read, Write, Memory, Admin].map(|p| c.may(p));
            assert_eq!(got, allowed, "{role} memory={memory}");
            assert_eq!(c.is_admin(), role == Role::Admin);
        }
        let node = Caller::node("n1");
        let got = [Open, Read, Write, Memory, Admin, Node].map(|p| node.may(p));
        assert_eq!(got, [true, false, false, false, false, true]);
        assert!(!node.works_in(corral_contract::DEFAULT_PROJECT) && !node.is_admin());
        assert!(node.refusal(Read).contains("node \"n1\""));
        let msg = caller(Role::Viewer, false).refusal(Write);
        assert!(
            msg.contains("role viewer") && msg.contains("operator"),
            "{msg}"
        );
    }
}
