//! Nodes: read by everyone, cordoned and drained by admins.

use corral_contract::pb::node_service_client::NodeServiceClient;
use corral_contract::{Node, pb};

use crate::{Client, ClientError};

impl Client {
    fn nodes_client(&self) -> NodeServiceClient<crate::client::Transport> {
        NodeServiceClient::new(self.transport.clone())
    }

    fn decode_node(&self, n: pb::Node) -> Result<Node, ClientError> {
        Node::try_from(n).map_err(|e| ClientError::Other {
            message: format!("the server sent a node that does not validate: {e}"),
        })
    }

    /// Nodes matching a label selector (`""` for all), sorted by name.
    pub async fn list_nodes(&self, selector: &str) -> Result<Vec<Node>, ClientError> {
        let req = pb::ListNodesRequest {
            label_selector: selector.into(),
        };
        let list = self
            .nodes_client()
            .list(req)
            .await
            .map_err(|s| self.status(s))?;
        list.into_inner()
            .items
            .into_iter()
            .map(|n| self.decode_node(n))
            .collect()
    }

    /// One node.
    pub async fn get_node(&self, name: &str) -> Result<Node, ClientError> {
        let n = self
            .nodes_client()
            .get(pb::NodeName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_node(n.into_inner())
    }

    /// Cordons (`true`) or uncordons a node.
    pub async fn cordon_node(&self, name: &str, cordoned: bool) -> Result<Node, ClientError> {
        let req = pb::NodeName { name: name.into() };
        let mut client = self.nodes_client();
        let n = if cordoned {
            client.cordon(req).await
        } else {
            client.uncordon(req).await
        }
        .map_err(|s| self.status(s))?;
        self.decode_node(n.into_inner())
    }

    /// Mints a single-use join token for an agent, accepted for `ttl` (`""`: an hour), for
    /// node `node` only (`""`: any).
    pub async fn create_join_token(
        &self,
        ttl: &str,
        node: &str,
    ) -> Result<pb::JoinToken, ClientError> {
        let req = pb::CreateJoinTokenRequest {
            ttl: ttl.into(),
            node: node.into(),
        };
        let t = self
            .nodes_client()
            .create_join_token(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(t.into_inner())
    }

    /// Cordons a node and moves its VMs elsewhere: live where they can move, else stopped
    /// there and placed again.
    pub async fn drain_node(&self, name: &str) -> Result<Node, ClientError> {
        let n = self
            .nodes_client()
            .drain(pb::NodeName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_node(n.into_inner())
    }
}
