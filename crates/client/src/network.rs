//! Networks.

use corral_contract::pb::network_service_client::NetworkServiceClient;
use corral_contract::{Network, pb};

use crate::{Client, ClientError};

impl Client {
    fn networks_client(&self) -> NetworkServiceClient<crate::client::Transport> {
        NetworkServiceClient::new(self.transport.clone())
    }

    fn decode_network(&self, net: pb::Network) -> Result<Network, ClientError> {
        Network::try_from(net).map_err(|e| ClientError::Other {
            message: format!("the server sent a network that does not validate: {e}"),
        })
    }

    /// Creates a network.
    pub async fn create_network(&self, net: &Network) -> Result<Network, ClientError> {
        let req = pb::CreateNetworkRequest {
            network: Some(pb::Network::from(net)),
        };
        let net = self
            .networks_client()
            .create(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_network(net.into_inner())
    }

    /// One network.
    pub async fn get_network(&self, name: &str) -> Result<Network, ClientError> {
        let req = pb::GetNetworkRequest { name: name.into() };
        let net = self
            .networks_client()
            .get(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_network(net.into_inner())
    }

    /// Networks matching a label selector (`""` for all).
    pub async fn list_networks(&self, selector: &str) -> Result<Vec<Network>, ClientError> {
        let req = pb::ListNetworksRequest {
            label_selector: selector.into(),
        };
        let list = self
            .networks_client()
            .list(req)
            .await
            .map_err(|s| self.status(s))?;
        list.into_inner()
            .items
            .into_iter()
            .map(|n| self.decode_network(n))
            .collect()
    }

    /// Deletes a network no VM joins.
    pub async fn delete_network(&self, name: &str) -> Result<Network, ClientError> {
        let req = pb::DeleteNetworkRequest { name: name.into() };
        let net = self
            .networks_client()
            .delete(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_network(net.into_inner())
    }
}
