//! The one authorization layer: every REST route and gRPC method declares a [`Permission`]
//! where it is registered (see [`super::routes`]); [`authorize`] looks the request's entry up
//! and checks the caller the listener identified, before any handler runs. It audits every
//! refusal and every change, and ends the open streams of a caller whose identity is revoked.

use std::collections::HashMap;
use std::sync::Arc;

use axum::RequestExt;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use corral_service::{AuditEntry, MemoryAccess, MemoryOp};

use super::scope::{self, Scope};

use super::act::{self, Act};
use super::error::{is_grpc, refusal};
use super::json::parse_u64;
use super::revoke::{REVOKED, until_revoked};
use super::routes::{GrpcMethod, Route};
use crate::auth::{Caller, Unidentified};
use crate::state::Shared;

/// What a caller must be allowed to do for a route or method.
///
/// Roles map onto these (see [`Caller::may`]): a viewer reads, an operator reads and writes,
/// an admin does everything, and the `memory` grant adds [`Memory`](Permission::Memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Any caller the listener let in: health checks, the API description.
    Open,
    /// Read objects: VMs, images, volumes, snapshots, networks, logs, metrics.
    Read,
    /// Create, change and delete objects; power actions; typing on a console.
    Write,
    /// Read guest memory — a privileged act of its own; refusals are audited.
    Memory,
    /// Manage identities, read the audit log: admins only.
    Admin,
    /// Report a node (its heartbeat): the node's own agent, by its node certificate, or an
    /// admin. The handler checks the node named is the caller's.
    Node,
}

impl Permission {
    /// `open`, `read`, `write`, `memory`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Open => "open",
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Memory => "memory",
            Permission::Admin => "admin",
            Permission::Node => "node",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the layer knows of one entry.
#[derive(Clone)]
struct Rule {
    permission: Permission,
    audit: Audit,
    /// REST: the path template and operation id, which name the act in the audit log.
    rest: Option<(&'static str, &'static str)>,
}

/// How a refused memory request is described in the audit log.
#[derive(Clone, Copy)]
enum Audit {
    None,
    /// A REST route: the VM from the `{name}` path parameter, the range from `addr`/`len`.
    Rest(MemoryOp),
    /// A gRPC method: the decoded request message says.
    Grpc(fn(&[u8]) -> MemoryAccess),
}

/// The tables [`authorize`] enforces, and the daemon it audits through.
#[derive(Clone)]
pub struct Authorizer {
    rest: Arc<HashMap<(Method, &'static str), Rule>>,
    grpc: Arc<HashMap<&'static str, Rule>>,
    daemon: Shared,
}

impl Authorizer {
    /// From the route table and the gRPC method table.
    pub(crate) fn new(daemon: Shared, routes: &[Route], methods: &[GrpcMethod]) -> Self {
        let rest = routes
            .iter()
            .map(|r| {
                let audit = r.audit.map_or(Audit::None, Audit::Rest);
                let rule = Rule {
                    permission: r.info.permission,
                    audit,
                    rest: Some((r.info.path, r.info.operation_id)),
                };
                ((r.info.method.clone(), r.info.path), rule)
            })
            .collect();
        let grpc = methods
            .iter()
            .map(|m| {
                let audit = m.audit.map_or(Audit::None, Audit::Grpc);
                let rule = Rule {
                    permission: m.permission,
                    audit,
                    rest: None,
                };
                (m.path, rule)
            })
            .collect();
        Authorizer {
            rest: Arc::new(rest),
            grpc: Arc::new(grpc),
            daemon,
        }
    }

    fn rule(&self, request: &Request) -> Option<Rule> {
        if let Some(path) = request.extensions().get::<MatchedPath>() {
            let find = |method: &Method| self.rest.get(&(method.clone(), path.as_str())).cloned();
            // `GET` routes answer `HEAD` too.
            return find(request.method()).or_else(|| {
                (request.method() == Method::HEAD)
                    .then(|| find(&Method::GET))
                    .flatten()
            });
        }
        if is_grpc(request.headers()) {
            return self.grpc.get(request.uri().path()).cloned();
        }
        None
    }

    fn record(&self, who: &str, act: &Act, outcome: &str, reason: Option<&str>) {
        self.daemon.audit.record(&AuditEntry {
            identity: who,
            project: act.project.as_deref(),
            verb: &act.verb,
            kind: (!act.kind.is_empty()).then_some(act.kind.as_str()),
            name: &act.name,
            outcome,
            reason,
            ..AuditEntry::default()
        });
    }
}

/// The most of a refused gRPC request read to describe it in the audit log.
const MAX_AUDITED_BODY: usize = 64 << 10;

/// Middleware on the merged router: lets a request through only when its caller holds the
/// permission its route or method declares. Requests no entry matches reach no handler (the
/// router answers 404 or 405, tonic `UNIMPLEMENTED`), so they pass. Refusals and changes are
/// audited; a caller's streams end when its identity is revoked.
pub async fn authorize(
    State(auth): State<Authorizer>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(rule) = auth.rule(&request) else {
        return next.run(request).await;
    };
    if rule.permission == Permission::Open {
        return next.run(request).await;
    }
    let grpc = is_grpc(request.headers());
    let mut act = match rule.rest {
        Some((path, id)) => Act::rest(&mut request, path, id).await,
        None => Act::grpc(request.uri().path()),
    };
    let caller = request.extensions().get::<Caller>().cloned();
    let registry = &auth.daemon.registry;
    let caller = match caller {
        Some(c) if c.identity.as_ref().is_none_or(|name| registry.holds(name)) => c,
        Some(c) => {
            act.read_refused(request, grpc).await;
            auth.record(&c.name, &act, "denied", Some(REVOKED));
            return refusal(grpc, StatusCode::UNAUTHORIZED, REVOKED);
        }
        None => {
            let (who, why) = match request.extensions().get::<Unidentified>() {
                Some(u) => (u.name.clone(), u.why.clone()),
                None => (
                    "anonymous".into(),
                    "the caller could not be identified".into(),
                ),
            };
            act.read_refused(request, grpc).await;
            auth.record(&who, &act, "denied", Some(&why));
            return refusal(grpc, StatusCode::UNAUTHORIZED, &why);
        }
    };
    // Objects live in projects: the caller must work in the one the request names (checked
    // below), and its lists show only projects it works in.
    // The daemon's own objects (identities, projects, the audit log) are in none: their
    // requests are not read for one (there a `project` parameter is the route's own, the audit
    // log's filter).
    let read = if act.in_project() {
        Scope::read(request.uri(), request.headers(), &caller)
    } else {
        Ok(Scope::default())
    };
    let scope = match read {
        Ok(scope) => scope,
        Err(e) => {
            let message = e.to_string();
            act.read_refused(request, grpc).await;
            auth.record(&caller.name, &act, "denied", Some(&message));
            return refusal(grpc, StatusCode::BAD_REQUEST, &message);
        }
    };
    if act.in_project() {
        act.project = Some(scope.project.clone());
    }
    if !caller.may(rule.permission) {
        let message = caller.refusal(rule.permission);
        if !matches!(rule.audit, Audit::None) {
            // Memory refusals get the memory line, with the range asked for.
            if let Some(access) = describe(rule.audit, request).await {
                auth.daemon
                    .memory
                    .refused(&caller.to_string(), &access, &message);
            }
        } else {
            act.read_refused(request, grpc).await;
            auth.record(&caller.name, &act, "denied", Some(&message));
        }
        return refusal(grpc, StatusCode::FORBIDDEN, &message);
    }
    if act.in_project() && !caller.works_in(&scope.project) {
        let message = caller.outside(&scope.project);
        act.read_refused(request, grpc).await;
        auth.record(&caller.name, &act, "denied", Some(&message));
        return refusal(grpc, StatusCode::FORBIDDEN, &message);
    }
    scope::strip_query(request.uri_mut(), act.in_project());
    request.extensions_mut().insert(scope);
    let audited = match rule.permission {
        Permission::Write => true,
        Permission::Admin | Permission::Node => grpc || request.method() != Method::GET,
        _ => false,
    };
    let revoked = registry.revoked(&caller);
    let response = if audited {
        let (request, tapped) = if grpc {
            let (request, seen) = act::tap(request);
            (request, Some(seen))
        } else {
            (request, None)
        };
        let mut response = next.run(request).await;
        if let Some(seen) = tapped {
            act.name = act::grpc_name(&seen.lock().unwrap_or_else(|e| e.into_inner()));
        } else if act.name.is_empty() && response.status() == StatusCode::CREATED {
            let (whole, name) = act::created_name(response).await;
            response = whole;
            act.name = name;
        }
        let (outcome, reason) = act::outcome(&response, grpc);
        auth.record(&caller.name, &act, outcome, reason.as_deref());
        response
    } else {
        next.run(request).await
    };
    if caller.identity.is_some() {
        return until_revoked(response, revoked, grpc);
    }
    response
}

/// What a refused memory request asked for, read from its path and query or gRPC message.
async fn describe(audit: Audit, mut request: Request) -> Option<MemoryAccess> {
    match audit {
        Audit::None => None,
        Audit::Rest(op) => {
            let Path(params) = request
                .extract_parts::<Path<HashMap<String, String>>>()
                .await
                .ok()?;
            let query = request
                .extract_parts::<Query<HashMap<String, String>>>()
                .await
                .map(|Query(q)| q)
                .unwrap_or_default();
            let number = |field| query.get(field).and_then(|v| parse_u64(field, v).ok());
            let range = number("addr").zip(number("len"));
            Some(MemoryAccess {
                op,
                vm: params.get("name").cloned().unwrap_or_default(),
                range,
            })
        }
        Audit::Grpc(decode) => {
            let body = axum::body::to_bytes(request.into_body(), MAX_AUDITED_BODY)
                .await
                .unwrap_or_default();
            // One length-prefixed message: a compression flag byte, a 4-byte length, the bytes.
            Some(decode(body.get(5..).unwrap_or_default()))
        }
    }
}
