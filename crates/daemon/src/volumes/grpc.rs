//! `corral.v1.VolumeService`: decode, call the storage service, encode.

use corral_contract::pb::{self, volume_service_server::VolumeService};
use corral_contract::{ByteSize, Volume};
use corral_service::ServiceError;
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.VolumeService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.VolumeService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.VolumeService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.VolumeService/Update", Permission::Write),
    GrpcMethod::new("/corral.v1.VolumeService/Resize", Permission::Write),
    GrpcMethod::new("/corral.v1.VolumeService/Delete", Permission::Write),
];

/// `corral.v1.VolumeService` over the storage service.
#[derive(Debug, Clone)]
pub struct VolumeGrpc(pub Shared);

fn volume_out(r: Result<Volume, ServiceError>) -> Result<Response<pb::Volume>, Status> {
    r.map(|v| Response::new(pb::Volume::from(&v)))
        .map_err(status)
}

#[tonic::async_trait]
impl VolumeService for VolumeGrpc {
    async fn create(
        &self,
        req: Request<pb::VolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let scope = Scope::of(req.extensions());
        let mut volume = Volume::try_from(required(req.into_inner().volume, "volume")?)?;
        scope.place(&mut volume).map_err(status)?;
        volume_out(self.0.storage.create_volume(volume).await)
    }

    async fn get(
        &self,
        req: Request<pb::VolumeNameRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let scope = Scope::of(req.extensions());
        volume_out(
            self.0
                .storage
                .volumes
                .get(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let (items, _) = self
            .0
            .storage
            .volumes
            .list_in(&req.into_inner().label_selector, &scope.listed)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListVolumesResponse {
            items: items.iter().map(pb::Volume::from).collect(),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::VolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let scope = Scope::of(req.extensions());
        let mut volume = Volume::try_from(required(req.into_inner().volume, "volume")?)?;
        scope.place(&mut volume).map_err(status)?;
        volume_out(self.0.storage.update_volume(volume).await)
    }

    async fn resize(
        &self,
        req: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        volume_out(
            self.0
                .storage
                .resize_volume(&scope.key(&req.name), ByteSize::new(req.size_bytes))
                .await,
        )
    }

    async fn delete(
        &self,
        req: Request<pb::VolumeNameRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let scope = Scope::of(req.extensions());
        volume_out(
            self.0
                .storage
                .delete_volume(&scope.key(&req.into_inner().name))
                .await,
        )
    }
}
