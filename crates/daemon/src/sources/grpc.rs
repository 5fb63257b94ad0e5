//! `corral.v1.SourceService`: decode, call the source service, encode.

use corral_contract::Source;
use corral_contract::pb::{self, source_service_server::SourceService};
use corral_service::{HostAccess, ServiceError};
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::auth::Caller;
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.SourceService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.SourceService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.SourceService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.SourceService/Delete", Permission::Write),
    GrpcMethod::new("/corral.v1.SourceService/Reconcile", Permission::Write),
    GrpcMethod::new("/corral.v1.SourceService/Approve", Permission::Write),
];

/// `corral.v1.SourceService` over the source service.
#[derive(Debug, Clone)]
pub struct SourceGrpc(pub Shared);

fn out(result: Result<Source, ServiceError>) -> Result<Response<pb::Source>, Status> {
    result
        .map(|s| Response::new(pb::Source::from(&s)))
        .map_err(status)
}

#[tonic::async_trait]
impl SourceService for SourceGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let scope = Scope::of(req.extensions());
        // The authorization layer put the caller there; without one, nothing is admin.
        let access = req
            .extensions()
            .get::<Caller>()
            .map_or(HostAccess::Confined, Caller::host_access);
        let mut source = Source::try_from(required(req.into_inner().source, "source")?)?;
        scope.place(&mut source).map_err(status)?;
        out(self.0.sources.create_as(source, access).await)
    }

    async fn get(&self, req: Request<pb::SourceName>) -> Result<Response<pb::Source>, Status> {
        let scope = Scope::of(req.extensions());
        out(self.0.sources.get(&scope.key(&req.into_inner().name)).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let (items, _) = self
            .0
            .sources
            .list_in(&req.into_inner().label_selector, &scope.listed)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSourcesResponse {
            items: items.iter().map(pb::Source::from).collect(),
        }))
    }

    async fn delete(&self, req: Request<pb::SourceName>) -> Result<Response<pb::Source>, Status> {
        let scope = Scope::of(req.extensions());
        out(self
            .0
            .sources
            .delete(&scope.key(&req.into_inner().name), None)
            .await)
    }

    async fn reconcile(
        &self,
        req: Request<pb::SourceName>,
    ) -> Result<Response<pb::Source>, Status> {
        let scope = Scope::of(req.extensions());
        out(self
            .0
            .sources
            .request_reconcile(&scope.key(&req.into_inner().name))
            .await)
    }

    async fn approve(&self, req: Request<pb::SourceName>) -> Result<Response<pb::Source>, Status> {
        let scope = Scope::of(req.extensions());
        out(self
            .0
            .sources
            .approve_prune(&scope.key(&req.into_inner().name))
            .await)
    }
}
