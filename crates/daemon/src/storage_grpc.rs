//! gRPC for images, volumes, snapshots and attestations: decode, call the storage service,
//! encode.

use std::sync::Arc;

use corral_contract::pb::{
    self, attestation_service_server::AttestationService,
    attestation_service_server::AttestationServiceServer, image_service_server::ImageService,
    image_service_server::ImageServiceServer, snapshot_service_server::SnapshotService,
    snapshot_service_server::SnapshotServiceServer, volume_service_server::VolumeService,
    volume_service_server::VolumeServiceServer,
};
use corral_contract::{ByteSize, Image, Snapshot, Volume};
use corral_service::{ImportProgress, ServiceError};
use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::status;
use crate::state::Daemon;

/// Storage services over the daemon's state.
#[derive(Debug, Clone)]
pub struct StorageGrpc(pub Arc<Daemon>);

/// Adds the storage services to the gRPC routes.
pub fn add_services(
    routes: tonic::service::Routes,
    daemon: &Arc<Daemon>,
) -> tonic::service::Routes {
    let s = StorageGrpc(daemon.clone());
    routes
        .add_service(ImageServiceServer::new(s.clone()))
        .add_service(VolumeServiceServer::new(s.clone()))
        .add_service(SnapshotServiceServer::new(s.clone()))
        .add_service(AttestationServiceServer::new(s))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

fn image_out(r: Result<Image, ServiceError>) -> Result<Response<pb::Image>, Status> {
    r.map(|i| Response::new(pb::Image::from(&i)))
        .map_err(status)
}

fn volume_out(r: Result<Volume, ServiceError>) -> Result<Response<pb::Volume>, Status> {
    r.map(|v| Response::new(pb::Volume::from(&v)))
        .map_err(status)
}

fn snapshot_out(r: Result<Snapshot, ServiceError>) -> Result<Response<pb::Snapshot>, Status> {
    r.map(|s| Response::new(pb::Snapshot::from(&s)))
        .map_err(status)
}

#[tonic::async_trait]
impl ImageService for StorageGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let image = Image::try_from(required(req.into_inner().image, "image")?)?;
        image_out(
            self.0
                .storage
                .create_image(image, ImportProgress::default())
                .await,
        )
    }

    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadImageChunk>>,
    ) -> Result<Response<pb::Image>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("image: the first message must carry it"))?;
        let image = Image::try_from(required(first.image, "image")?)?;
        let head = futures_util::stream::iter([Ok(first.data)]);
        let rest = stream.map(|chunk| {
            chunk
                .map(|c| c.data)
                .map_err(|e| ServiceError::Interrupted {
                    what: "upload",
                    source: e.into(),
                })
        });
        let chunks = head.chain(rest).filter(|c| {
            let keep = !matches!(c, Ok(data) if data.is_empty());
            async move { keep }
        });
        image_out(
            self.0
                .storage
                .upload_image(image, first.size, Box::pin(chunks))
                .await,
        )
    }

    async fn get(&self, req: Request<pb::ImageNameRequest>) -> Result<Response<pb::Image>, Status> {
        image_out(self.0.storage.images.get(&req.into_inner().name).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let (items, _) = self
            .0
            .storage
            .images
            .list(&req.into_inner().label_selector)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListImagesResponse {
            items: items.iter().map(pb::Image::from).collect(),
        }))
    }

    async fn verify(
        &self,
        req: Request<pb::ImageNameRequest>,
    ) -> Result<Response<pb::VerifyImageResponse>, Status> {
        let (image, ok) = self
            .0
            .storage
            .verify_image(&req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::VerifyImageResponse {
            image: Some(pb::Image::from(&image)),
            ok,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::ImageNameRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        image_out(self.0.storage.delete_image(&req.into_inner().name).await)
    }
}

#[tonic::async_trait]
impl VolumeService for StorageGrpc {
    async fn create(
        &self,
        req: Request<pb::VolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let volume = Volume::try_from(required(req.into_inner().volume, "volume")?)?;
        volume_out(self.0.storage.create_volume(volume).await)
    }

    async fn get(
        &self,
        req: Request<pb::VolumeNameRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        volume_out(self.0.storage.volumes.get(&req.into_inner().name).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let (items, _) = self
            .0
            .storage
            .volumes
            .list(&req.into_inner().label_selector)
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
        let volume = Volume::try_from(required(req.into_inner().volume, "volume")?)?;
        volume_out(self.0.storage.update_volume(volume).await)
    }

    async fn resize(
        &self,
        req: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        let req = req.into_inner();
        volume_out(
            self.0
                .storage
                .resize_volume(&req.name, ByteSize::new(req.size_bytes))
                .await,
        )
    }

    async fn delete(
        &self,
        req: Request<pb::VolumeNameRequest>,
    ) -> Result<Response<pb::Volume>, Status> {
        volume_out(self.0.storage.delete_volume(&req.into_inner().name).await)
    }
}

#[tonic::async_trait]
impl SnapshotService for StorageGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        let snap = Snapshot::try_from(required(req.into_inner().snapshot, "snapshot")?)?;
        snapshot_out(self.0.storage.create_snapshot(snap).await)
    }

    async fn get(
        &self,
        req: Request<pb::SnapshotNameRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        snapshot_out(self.0.storage.snapshots.get(&req.into_inner().name).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let vm = req.into_inner().vm;
        let items = self
            .0
            .storage
            .list_snapshots((!vm.is_empty()).then_some(vm.as_str()))
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
        snapshot_out(
            self.0
                .storage
                .restore_snapshot(&req.into_inner().name)
                .await,
        )
    }

    async fn delete(
        &self,
        req: Request<pb::SnapshotNameRequest>,
    ) -> Result<Response<pb::Snapshot>, Status> {
        snapshot_out(self.0.storage.delete_snapshot(&req.into_inner().name).await)
    }
}

#[tonic::async_trait]
impl AttestationService for StorageGrpc {
    async fn get(
        &self,
        req: Request<pb::GetAttestationRequest>,
    ) -> Result<Response<pb::Attestation>, Status> {
        let d = &self.0;
        let envelope = d
            .storage
            .attest(&req.into_inner().vm, &d.node_key, &d.node)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Attestation {
            envelope,
            public_key_pem: d.node_key.public_pem(),
        }))
    }
}
