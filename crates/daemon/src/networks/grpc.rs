//! `corral.v1.NetworkService`: decode, call the network service, encode.

use corral_contract::Network;
use corral_contract::pb::{self, network_service_server::NetworkService};
use corral_service::{HostAccess, ServiceError};
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::auth::Caller;
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.NetworkService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.NetworkService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.NetworkService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.NetworkService/Delete", Permission::Write),
];

/// `corral.v1.NetworkService` over the network service.
#[derive(Debug, Clone)]
pub struct NetworkGrpc(pub Shared);

fn net_out(result: Result<Network, ServiceError>) -> Result<Response<pb::Network>, Status> {
    result
        .map(|n| Response::new(pb::Network::from(&n)))
        .map_err(status)
}

#[tonic::async_trait]
impl NetworkService for NetworkGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let scope = Scope::of(req.extensions());
        // The authorization layer put the caller there; without one, nothing is admin.
        let access = req
            .extensions()
            .get::<Caller>()
            .map_or(HostAccess::Confined, Caller::host_access);
        let mut net = Network::try_from(required(req.into_inner().network, "network")?)?;
        scope.place(&mut net).map_err(status)?;
        net_out(self.0.networks.create_as(net, access).await)
    }

    async fn get(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let scope = Scope::of(req.extensions());
        net_out(
            self.0
                .networks
                .get(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let nets = self
            .0
            .networks
            .list_in(&req.into_inner().label_selector, &scope.listed)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListNetworksResponse {
            items: nets.0.iter().map(pb::Network::from).collect(),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let scope = Scope::of(req.extensions());
        net_out(
            self.0
                .networks
                .delete(&scope.key(&req.into_inner().name), None)
                .await,
        )
    }
}
