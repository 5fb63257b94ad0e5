//! Identities, the audit log and projects.

use corral_contract::pb::audit_service_client::AuditServiceClient;
use corral_contract::pb::identity_service_client::IdentityServiceClient;
use corral_contract::{Identity, Project, pb};

use crate::{Client, ClientError};

/// One audited act, as the server reads it back.
pub type AuditRecord = pb::AuditRecord;

/// Which audit records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// RFC 3339 time, or a duration back from now (`1h`); empty for all kept.
    pub since: String,
    /// Only this caller's records (`identity:ci`).
    pub identity: String,
    /// Only this project's records.
    pub project: String,
    /// At most this many of the newest; 0 for the server's cap.
    pub limit: u32,
}

impl Client {
    fn identities_client(&self) -> IdentityServiceClient<crate::client::Transport> {
        IdentityServiceClient::new(self.transport.clone())
    }

    fn decode_identity(&self, id: pb::Identity) -> Result<Identity, ClientError> {
        Identity::try_from(id).map_err(|e| ClientError::Other {
            message: format!("the server sent an identity that does not validate: {e}"),
        })
    }

    /// Adds an identity; returns it and, when the server made one (a token credential
    /// without a hash), the token, which is shown only this once.
    pub async fn create_identity(
        &self,
        id: &Identity,
    ) -> Result<(Identity, Option<String>), ClientError> {
        let req = pb::CreateIdentityRequest {
            identity: Some(pb::Identity::from(id)),
        };
        let made = self
            .identities_client()
            .create(req)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let id = made.identity.ok_or_else(|| ClientError::Other {
            message: "the server sent no identity".into(),
        })?;
        let token = (!made.token.is_empty()).then_some(made.token);
        Ok((self.decode_identity(id)?, token))
    }

    /// Every identity, sorted by name.
    pub async fn list_identities(&self) -> Result<Vec<Identity>, ClientError> {
        let list = self
            .identities_client()
            .list(pb::ListIdentitiesRequest {})
            .await
            .map_err(|s| self.status(s))?;
        list.into_inner()
            .items
            .into_iter()
            .map(|i| self.decode_identity(i))
            .collect()
    }

    /// Revokes (deletes) an identity: its requests are refused and its streams closed.
    pub async fn revoke_identity(&self, name: &str) -> Result<Identity, ClientError> {
        let req = pb::RevokeIdentityRequest { name: name.into() };
        let id = self
            .identities_client()
            .revoke(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_identity(id.into_inner())
    }

    /// Audit records matching `filter`, oldest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, ClientError> {
        let req = pb::ListAuditRequest {
            since: filter.since.clone(),
            identity: filter.identity.clone(),
            project: filter.project.clone(),
            limit: filter.limit,
        };
        let list = AuditServiceClient::new(self.transport.clone())
            .list(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(list.into_inner().items)
    }
}

impl Client {
    fn projects_client(
        &self,
    ) -> corral_contract::pb::project_service_client::ProjectServiceClient<crate::client::Transport>
    {
        corral_contract::pb::project_service_client::ProjectServiceClient::new(
            self.transport.clone(),
        )
    }

    fn decode_project(&self, p: pb::Project) -> Result<Project, ClientError> {
        Project::try_from(p).map_err(|e| ClientError::Other {
            message: format!("the server sent a project that does not validate: {e}"),
        })
    }

    /// Adds a project (admin only).
    pub async fn create_project(&self, p: &Project) -> Result<Project, ClientError> {
        let req = pb::CreateProjectRequest {
            project: Some(pb::Project::from(p)),
        };
        let p = self
            .projects_client()
            .create(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_project(p.into_inner())
    }

    /// Changes a project's limits (admin only).
    pub async fn update_project(&self, p: &Project) -> Result<Project, ClientError> {
        let req = pb::CreateProjectRequest {
            project: Some(pb::Project::from(p)),
        };
        let p = self
            .projects_client()
            .update(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_project(p.into_inner())
    }

    /// One project.
    pub async fn get_project(&self, name: &str) -> Result<Project, ClientError> {
        let req = pb::ProjectName { name: name.into() };
        let p = self
            .projects_client()
            .get(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_project(p.into_inner())
    }

    /// Every project, sorted by name.
    pub async fn list_projects(&self) -> Result<Vec<Project>, ClientError> {
        let list = self
            .projects_client()
            .list(pb::ListProjectsRequest {})
            .await
            .map_err(|s| self.status(s))?;
        list.into_inner()
            .items
            .into_iter()
            .map(|p| self.decode_project(p))
            .collect()
    }

    /// Deletes a project (admin only).
    pub async fn delete_project(&self, name: &str) -> Result<Project, ClientError> {
        let req = pb::ProjectName { name: name.into() };
        let p = self
            .projects_client()
            .delete(req)
            .await
            .map_err(|s| self.status(s))?;
        self.decode_project(p.into_inner())
    }
}
