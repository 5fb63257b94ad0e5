//! `corral.v1.SnapshotService`: decode, call the storage service, encode.

use corral_contract::Snapshot;
use corral_contract::pb::{self, snapshot_service_server::SnapshotService};
use corral_service::ServiceError;
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.SnapshotService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.SnapshotService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.SnapshotService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.SnapshotService/Restore", Permission::Write),
    GrpcMethod::new("/corral.v1.SnapshotService/Delete", Permission::Write),
];

/// `corral.v1.SnapshotService` over the storage service.
#[derive(Debug, Clone)]
pub struct SnapshotGrpc(pub Shared);

fn snapshot_out(r: Result<Snapshot, ServiceError>) -> Result<Response<pb::Snapshot>, Status> {
    r.map(|s| Response::new(pb::Snapshot::from(&s)))
        .map_err(status)
}

#[tonic::async_trait]
impl SnapshotService for SnapshotGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let scope = Scope::of(req.extensions());
        let mut snap = Snapshot::try_from(required(req.into_inner().snapshot, "snapshot")?)?;
        scope.place(&mut snap).map_err(status)?;
        snapshot_out(self.0.storage.create_snapshot(snap).await)
    }

    async fn get(
        &self,
        req: Request<pb::SnapshotNameRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let scope = Scope::of(req.extensions());
        snapshot_out(
            self.0
                .storage
                .snapshots
                .get(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let vm = req.into_inner().vm;
        let vm = (!vm.is_empty()).then(|| scope.key(&vm));
        let items = self
            .0
            .storage
            .list_snapshots(vm.as_deref(), &scope.listed)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            items: items.iter().map(pb::Snapshot::from).collect(),
        }))
    }

    async fn restore(
        &self,
        req: Request<pb::SnapshotNameRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let scope = Scope::of(req.extensions());
        snapshot_out(
            self.0
                .storage
                .restore_snapshot(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn delete(
        &self,
        req: Request<pb::SnapshotNameRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let scope = Scope::of(req.extensions());
        snapshot_out(
            self.0
                .storage
                .delete_snapshot(&scope.key(&req.into_inner().name))
                .await,
        )
    }
}
