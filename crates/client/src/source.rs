//! Git sources.

use corral_contract::pb::source_service_client::SourceServiceClient;
use corral_contract::{Source, pb};

use crate::{Client, ClientError};

impl Client {
    fn sources_client(&self) -> SourceServiceClient<crate::client::Transport> {
        SourceServiceClient::new(self.transport.clone())
    }

    fn decode_source(&self, s: pb::Source) -> Result<Source, ClientError> {
        Source::try_from(s).map_err(|e| ClientError::Other {
            message: format!("the server sent a source that does not validate: {e}"),
        })
    }

    /// Creates a source.
    pub async fn create_source(&self, source: &Source) -> Result<Source, ClientError> {
        let req = pb::CreateSourceRequest {
            source: Some(pb::Source::from(source)),
        };
        let s = self
            .sources_client()
            .create(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_source(s.into_inner())
    }

    /// Sources matching a label selector (`""` for all).
    pub async fn list_sources(&self, selector: &str) -> Result<Vec<Source>, ClientError> {
        let req = pb::ListSourcesRequest {
            label_selector: selector.into(),
        };
        let list = self
            .sources_client()
            .list(req)
            .await
            .map_err(|s| self.status(s))?;
        list.into_inner()
            .items
            .into_iter()
            .map(|s| self.decode_source(s))
            .collect()
    }

    /// One source.
    pub async fn get_source(&self, name: &str) -> Result<Source, ClientError> {
        let s = self
            .sources_client()
            .get(pb::SourceName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_source(s.into_inner())
    }

    /// Deletes a source (what it applied stays).
    pub async fn delete_source(&self, name: &str) -> Result<Source, ClientError> {
        let s = self
            .sources_client()
            .delete(pb::SourceName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_source(s.into_inner())
    }

    /// Asks for a reconcile now.
    pub async fn reconcile_source(&self, name: &str) -> Result<Source, ClientError> {
        let s = self
            .sources_client()
            .reconcile(pb::SourceName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_source(s.into_inner())
    }

    /// Lets the next reconcile prune past the mass-prune guard.
    pub async fn approve_source(&self, name: &str) -> Result<Source, ClientError> {
        let s = self
            .sources_client()
            .approve(pb::SourceName { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.decode_source(s.into_inner())
    }
}
