//! `corral.v1.ImageService`: decode, call the storage service, encode.

use corral_contract::Image;
use corral_contract::pb::{self, image_service_server::ImageService};
use corral_service::{ImportProgress, ServiceError};
use futures_util::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::api::Scope;
use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.ImageService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.ImageService/Upload", Permission::Write),
    GrpcMethod::new("/corral.v1.ImageService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.ImageService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.ImageService/Verify", Permission::Write),
    GrpcMethod::new("/corral.v1.ImageService/Delete", Permission::Write),
];

/// `corral.v1.ImageService` over the storage service.
#[derive(Debug, Clone)]
pub struct ImageGrpc(pub Shared);

fn image_out(r: Result<Image, ServiceError>) -> Result<Response<pb::Image>, Status> {
    r.map(|i| Response::new(pb::Image::from(&i)))
        .map_err(status)
}

#[tonic::async_trait]
impl ImageService for ImageGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let scope = Scope::of(req.extensions());
        let access = crate::auth::host_access(req.extensions().get());
        let mut image = Image::try_from(required(req.into_inner().image, "image")?)?;
        scope.place(&mut image).map_err(status)?;
        image_out(
            self.0
                .storage
                .create_image(image, ImportProgress::default(), access)
                .await,
        )
    }

    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadImageChunk>>,
    ) -> Result<Response<pb::Image>, Status> {
        let scope = Scope::of(req.extensions());
        let access = crate::auth::host_access(req.extensions().get());
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("image: the first message must carry it"))?;
        let mut image = Image::try_from(required(first.image, "image")?)?;
        scope.place(&mut image).map_err(status)?;
        let head = futures_util::stream::iter([Ok(first.data)]);
        let rest = stream.map(|chunk| {
            chunk
                .map(|c| c.data)
                .map_err(|source| ServiceError::Interrupted {
                    what: "upload",
                    source: Box::new(source),
                })
        });
        let chunks = head.chain(rest).filter(|c| {
            let keep = !matches!(c, Ok(data) if data.is_empty());
            async move { keep }
        });
        image_out(
            self.0
                .storage
                .upload_image(image, first.size, Box::pin(chunks), access)
                .await,
        )
    }

    async fn get(&self, req: Request<pb::ImageNameRequest>) -> Result<Response<pb::Image>, Status> {
        let scope = Scope::of(req.extensions());
        image_out(
            self.0
                .storage
                .images
                .get(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let (items, _) = self
            .0
            .storage
            .images
            .list_in(&req.into_inner().label_selector, &scope.listed)
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
        let scope = Scope::of(req.extensions());
        let (image, ok) = self
            .0
            .storage
            .verify_image(&scope.key(&req.into_inner().name))
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
        let scope = Scope::of(req.extensions());
        image_out(
            self.0
                .storage
                .delete_image(&scope.key(&req.into_inner().name))
                .await,
        )
    }
}
