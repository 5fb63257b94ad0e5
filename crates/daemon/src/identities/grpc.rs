//! `corral.v1.IdentityService`: decode, call the identity service, encode.

use corral_contract::Identity;
use corral_contract::pb::{self, identity_service_server::IdentityService};
use tonic::{Request, Response, Status};

use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.IdentityService/Create", Permission::Admin),
    GrpcMethod::new("/corral.v1.IdentityService/List", Permission::Admin),
    GrpcMethod::new("/corral.v1.IdentityService/Revoke", Permission::Admin),
];

/// `corral.v1.IdentityService` over the identity service.
#[derive(Debug, Clone)]
pub struct IdentityGrpc(pub Shared);

#[tonic::async_trait]
impl IdentityService for IdentityGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateIdentityRequest>,
    ) -> Result<Response<pb::CreateIdentityResponse>, Status> {
        let id = Identity::try_from(required(req.into_inner().identity, "identity")?)?;
        let (id, token) = self.0.identities.issue(id).await.map_err(status)?;
        Ok(Response::new(pb::CreateIdentityResponse {
            identity: Some(pb::Identity::from(&id)),
            token: token.unwrap_or_default(),
        }))
    }

    async fn list(
        &self,
        _req: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        let (items, _) = self.0.identities.list("").await.map_err(status)?;
        Ok(Response::new(pb::ListIdentitiesResponse {
            items: items.iter().map(pb::Identity::from).collect(),
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeIdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        let removed = super::revoke(&self.0, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Identity::from(&removed)))
    }
}
