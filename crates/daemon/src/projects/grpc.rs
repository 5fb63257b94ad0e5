//! `corral.v1.ProjectService`: decode, call the project service, encode.

use corral_contract::Project;
use corral_contract::pb::{self, project_service_server::ProjectService};
use corral_service::ServiceError;
use tonic::{Request, Response, Status};

use crate::api::error::{required, status};
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.ProjectService/Create", Permission::Admin),
    GrpcMethod::new("/corral.v1.ProjectService/Update", Permission::Admin),
    GrpcMethod::new("/corral.v1.ProjectService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.ProjectService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.ProjectService/Delete", Permission::Admin),
];

/// `corral.v1.ProjectService` over the project service.
#[derive(Debug, Clone)]
pub struct ProjectGrpc(pub Shared);

fn out(result: Result<Project, ServiceError>) -> Result<Response<pb::Project>, Status> {
    result
        .map(|p| Response::new(pb::Project::from(&p)))
        .map_err(status)
}

#[tonic::async_trait]
impl ProjectService for ProjectGrpc {
    async fn create(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let p = Project::try_from(required(req.into_inner().project, "project")?)?;
        out(self.0.projects.create(p).await)
    }

    async fn update(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let p = Project::try_from(required(req.into_inner().project, "project")?)?;
        out(self.0.projects.update(p).await)
    }

    async fn get(&self, req: Request<pb::ProjectName>) -> Result<Response<pb::Project>, Status> {
        out(self.0.projects.get(&req.into_inner().name).await)
    }

    async fn list(
        &self,
        _req: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let (items, _) = self.0.projects.list("").await.map_err(status)?;
        Ok(Response::new(pb::ListProjectsResponse {
            items: items.iter().map(pb::Project::from).collect(),
        }))
    }

    async fn delete(&self, req: Request<pb::ProjectName>) -> Result<Response<pb::Project>, Status> {
        out(self.0.projects.delete(&req.into_inner().name, None).await)
    }
}
