//! `corral.v1.AttestationService`: a VM's attestation, signed by the node key.

use corral_contract::pb::{self, attestation_service_server::AttestationService};
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[GrpcMethod::new(
    "/corral.v1.AttestationService/Get",
    Permission::Read,
)];

/// `corral.v1.AttestationService` over the storage service.
#[derive(Debug, Clone)]
pub struct AttestationGrpc(pub Shared);

#[tonic::async_trait]
impl AttestationService for AttestationGrpc {
    async fn get(
        &self,
        req: Request<pb::GetAttestationRequest>,
    ) -> Result<Response<pb::Attestation>, Status> {
        let scope = Scope::of(req.extensions());
        let (envelope, public_key_pem) = self
            .0
            .attestation(&scope.key(&req.into_inner().vm))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::Attestation {
            envelope,
            public_key_pem,
        }))
    }
}
