//! `corral.v1.NodeService`: decode, call the node service, encode.

use corral_contract::Node;
use corral_contract::pb::{self, node_service_server::NodeService};
use corral_service::ServiceError;
use tonic::{Request, Response, Status};

use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.NodeService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.NodeService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.NodeService/Cordon", Permission::Admin),
    GrpcMethod::new("/corral.v1.NodeService/Uncordon", Permission::Admin),
    GrpcMethod::new("/corral.v1.NodeService/Drain", Permission::Admin),
    GrpcMethod::new("/corral.v1.NodeService/CreateJoinToken", Permission::Admin),
];

/// `corral.v1.NodeService` over the node service.
#[derive(Debug, Clone)]
pub struct NodeGrpc(pub Shared);

fn out(result: Result<Node, ServiceError>) -> Result<Response<pb::Node>, Status> {
    result
        .map(|n| Response::new(pb::Node::from(&n)))
        .map_err(status)
}

#[tonic::async_trait]
impl NodeService for NodeGrpc {
    async fn list(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let selector = req.into_inner().label_selector;
        let (items, _) = self.0.nodes.list(&selector).await.map_err(status)?;
        Ok(Response::new(pb::ListNodesResponse {
            items: items.iter().map(pb::Node::from).collect(),
        }))
    }

    async fn get(&self, req: Request<pb::NodeName>) -> Result<Response<pb::Node>, Status> {
        out(self.0.nodes.get(&req.into_inner().name).await)
    }

    async fn cordon(&self, req: Request<pb::NodeName>) -> Result<Response<pb::Node>, Status> {
        out(self.0.nodes.cordon(&req.into_inner().name, true).await)
    }

    async fn uncordon(&self, req: Request<pb::NodeName>) -> Result<Response<pb::Node>, Status> {
        out(self.0.nodes.cordon(&req.into_inner().name, false).await)
    }

    async fn drain(&self, req: Request<pb::NodeName>) -> Result<Response<pb::Node>, Status> {
        let name = req.into_inner().name;
        out(self.0.nodes.drain(&name, &self.0.vms).await.map(|(n, _)| n))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let req = req.into_inner();
        let ttl = super::rest::join_token_ttl(&req.ttl).map_err(status)?;
        let node = Some(req.node.as_str()).filter(|n| !n.is_empty());
        let t = self.0.joins.mint(ttl, node).await.map_err(status)?;
        Ok(Response::new(pb::JoinToken {
            token: t.token,
            expires: t.expires,
            ca_sha256: t.ca_sha256,
        }))
    }
}
