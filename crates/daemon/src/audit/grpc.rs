//! `corral.v1.AuditService`: the audit log's records, filtered.

use corral_contract::pb::{self, audit_service_server::AuditService};
use corral_service::AuditRecord;
use tonic::{Request, Response, Status};

use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[GrpcMethod::new(
    "/corral.v1.AuditService/List",
    Permission::Admin,
)];

/// `corral.v1.AuditService` over the audit log.
#[derive(Debug, Clone)]
pub struct AuditGrpc(pub Shared);

fn record(r: AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        time: r.time,
        identity: r.identity,
        project: r.project,
        verb: r.verb,
        kind: r.kind,
        name: r.name,
        outcome: r.outcome,
        reason: r.reason,
    }
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn list(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let q = req.into_inner();
        let items = super::read(&self.0, &q.since, q.identity, q.project, q.limit as usize)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse {
            items: items.into_iter().map(record).collect(),
        }))
    }
}
