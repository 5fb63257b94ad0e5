//! `corral.v1.VmService`: decode, call the VM service, encode.

use std::pin::Pin;
use std::sync::Arc;

use corral_contract::pb::{self, vm_service_server::VmService};
use corral_contract::{Power, ResourceName, Vm};
use corral_service::{EventType, ServiceError};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::Scope;
use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::state::Daemon;

/// What each method needs.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::new("/corral.v1.VmService/Create", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Get", Permission::Read),
    GrpcMethod::new("/corral.v1.VmService/List", Permission::Read),
    GrpcMethod::new("/corral.v1.VmService/Update", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Delete", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Watch", Permission::Read),
    GrpcMethod::new("/corral.v1.VmService/Start", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Stop", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Pause", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Resume", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Restart", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/Migrate", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/CancelMigration", Permission::Write),
    GrpcMethod::new("/corral.v1.VmService/ConsoleLog", Permission::Read),
];

/// `corral.v1.VmService` over the service layer.
#[derive(Debug, Clone)]
pub struct VmGrpc(pub Arc<Daemon>);

fn vm_in(vm: Option<pb::Vm>) -> Result<Vm, Status> {
    let vm = vm.ok_or_else(|| Status::invalid_argument("vm: required"))?;
    Vm::try_from(vm).map_err(Status::from)
}

fn vm_out(result: Result<Vm, ServiceError>) -> Result<Response<pb::Vm>, Status> {
    result
        .map(|vm| Response::new(pb::Vm::from(&vm)))
        .map_err(status)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::VmEvent, Status>> + Send>>;

#[tonic::async_trait]
impl VmService for VmGrpc {
    async fn create(&self, req: Request<pb::CreateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        let access = crate::auth::host_access(req.extensions().get());
        let mut vm = vm_in(req.into_inner().vm)?;
        scope.place(&mut vm).map_err(status)?;
        vm_out(self.0.vms.create_as(vm, access).await)
    }

    async fn get(&self, req: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(self.0.vms.get(&scope.key(&req.into_inner().name)).await)
    }

    async fn list(
        &self,
        req: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let (vms, revision) = self
            .0
            .vms
            .list_in(&req.into_inner().label_selector, &scope.listed)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListVmsResponse {
            items: vms.iter().map(pb::Vm::from).collect(),
            revision,
        }))
    }

    async fn update(&self, req: Request<pb::UpdateVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        let access = crate::auth::host_access(req.extensions().get());
        let mut vm = vm_in(req.into_inner().vm)?;
        scope.place(&mut vm).map_err(status)?;
        vm_out(self.0.vms.update_as(vm, access).await)
    }

    async fn delete(&self, req: Request<pb::DeleteVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        let version = (req.resource_version != 0).then_some(req.resource_version);
        let grace = if req.force {
            Some(0)
        } else {
            req.grace_seconds
        };
        vm_out(
            self.0
                .vms
                .delete_with_grace(&scope.key(&req.name), version, grace)
                .await,
        )
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchVmsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        let name = (!req.name.is_empty()).then(|| scope.key(&req.name));
        let mut watch = self
            .0
            .vms
            .watch_in(name.as_deref(), req.after_revision, scope.listed)
            .await
            .map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(event) = watch.recv().await {
                let item = event.map_err(status).map(|e| pb::VmEvent {
                    r#type: match e.event {
                        EventType::Added => pb::EventType::Added,
                        EventType::Modified => pb::EventType::Modified,
                        EventType::Deleted => pb::EventType::Deleted,
                    } as i32,
                    revision: e.revision,
                    vm: Some(pb::Vm::from(&e.object)),
                });
                if tx.send(item).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn start(&self, req: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(
            self.0
                .vms
                .set_power(&scope.key(&req.into_inner().name), Power::Running, false)
                .await,
        )
    }

    async fn stop(&self, req: Request<pb::StopVmRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        vm_out(
            self.0
                .vms
                .set_power(&scope.key(&req.name), Power::Stopped, req.force)
                .await,
        )
    }

    async fn pause(&self, req: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(
            self.0
                .vms
                .set_power(&scope.key(&req.into_inner().name), Power::Paused, false)
                .await,
        )
    }

    async fn resume(&self, req: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(
            self.0
                .vms
                .set_power(&scope.key(&req.into_inner().name), Power::Running, false)
                .await,
        )
    }

    async fn restart(&self, req: Request<pb::VmActionRequest>) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(self.0.vms.restart(&scope.key(&req.into_inner().name)).await)
    }

    async fn migrate(
        &self,
        req: Request<pb::MigrateVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        // Empty (proto3's default): the scheduler picks.
        let to =
            migration_target(Some(req.to.as_str()).filter(|t| !t.is_empty())).map_err(status)?;
        let options = corral_contract::MigrationOptions {
            auto_converge: req.auto_converge,
            postcopy: req.postcopy,
            bandwidth: Some(req.bandwidth).filter(|b| *b > 0),
        };
        vm_out(
            self.0
                .vms
                .migrate(&scope.key(&req.name), to.as_ref(), options)
                .await,
        )
    }

    async fn cancel_migration(
        &self,
        req: Request<pb::VmActionRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let scope = Scope::of(req.extensions());
        vm_out(
            self.0
                .vms
                .cancel_migration(&scope.key(&req.into_inner().name))
                .await,
        )
    }

    async fn console_log(
        &self,
        req: Request<pb::ConsoleLogRequest>,
    ) -> Result<Response<pb::ConsoleLogResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let req = req.into_inner();
        let data = self
            .0
            .consoles
            .log(&scope.key(&req.name), req.tail_bytes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ConsoleLogResponse { data }))
    }
}

/// The node a migration request names, checked as a name.
pub(crate) fn migration_target(to: Option<&str>) -> Result<Option<ResourceName>, ServiceError> {
    to.map(|to| {
        to.parse()
            .map_err(|e| ServiceError::from(corral_contract::ValidationError::new("to", e)))
    })
    .transpose()
}
