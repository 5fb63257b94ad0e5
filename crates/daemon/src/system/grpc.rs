//! `corral.v1.SystemService`.

use std::sync::Arc;

use corral_contract::pb::{self, system_service_server::SystemService};
use tonic::{Request, Response, Status};

use crate::api::{GrpcMethod, Permission};
use crate::state::Daemon;

/// What each method needs; health checks (`grpc.health.v1`) are open, reflection reads.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.SystemService/Version", Permission::Read),
    GrpcMethod::new("/grpc.health.v1.Health/Check", Permission::Open),
    GrpcMethod::new("/grpc.health.v1.Health/Watch", Permission::Open),
    GrpcMethod::new(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Permission::Read,
    ),
    GrpcMethod::new(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Permission::Read,
    ),
];

/// `corral.v1.SystemService`.
#[derive(Debug, Clone)]
pub struct SystemGrpc(pub Arc<Daemon>);

#[tonic::async_trait]
impl SystemService for SystemGrpc {
    async fn version(
        &self,
        _: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: option_env!("CORRAL_GIT_COMMIT").map(str::to_owned),
            store: self.0.config.store_description(),
            node: self.0.node.clone(),
        }))
    }
}
