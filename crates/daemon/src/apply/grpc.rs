//! `corral.v1.ApplyService`: decode, call the apply service, encode.

use corral_contract::ApplyRequest;
use corral_contract::pb::{self, apply_service_server::ApplyService};
use corral_service::HostAccess;
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::auth::Caller;
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[GrpcMethod::new(
    "/corral.v1.ApplyService/Apply",
    Permission::Write,
)];

/// `corral.v1.ApplyService` over the apply service.
#[derive(Debug, Clone)]
pub struct ApplyGrpc(pub Shared);

#[tonic::async_trait]
impl ApplyService for ApplyGrpc {
    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        // The authorization layer put the caller there; without one, nothing is admin.
        let access = req
            .extensions()
            .get::<Caller>()
            .map_or(HostAccess::Confined, Caller::host_access);
        let scope = Scope::of(req.extensions());
        let request = ApplyRequest::try_from(req.into_inner())?;
        let report = self
            .0
            .apply
            .apply(request, access, &scope.project)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApplyResponse::from(&report)))
    }
}
