//! Virtual machines: the [`VmKind`] strategy (host-path and volume checks, MACs and host
//! ports allocated once, disks changed only while stopped) and the power verbs.

use corral_contract::names::annotations;
use corral_contract::{
    Boot, DiskFormat, MigrationOptions, Phase, Power, ResourceName, ValidationError, Vm, VmSpec,
};
use corral_hypervisor::format_from_extension;
use corral_storage::{HostAccess, HostPaths};
use corral_store::Store;

use crate::allocate::{self, PortRange};
use crate::resources::{Resources, Strategy, now};
use crate::{ServiceError, Stored};

/// VMs: create, update, delete (marked for the VM controller to finalize), power verbs.
pub type VmService = Resources<VmKind>;

/// How VMs are admitted.
#[derive(Debug, Default)]
pub struct VmKind {
    host_paths: Option<HostPaths>,
    ports: PortRange,
    /// The VMs' forwards listen on other hosts (a cluster's nodes): a port is not checked
    /// against what listens on this one.
    ports_elsewhere: bool,
    // Held from reading who holds which port or MAC until the write that claims one, so two
    // writers never pick the same.
    allocating: tokio::sync::Mutex<()>,
}

impl VmKind {
    /// Refuses boot files that a caller with `access` may not name (or that do not exist);
    /// the error names the field. A disk given by a confined caller must be raw: a qcow2
    /// header can name further host files (backing or data file) that QEMU would open.
    fn check_paths(&self, spec: &VmSpec, access: HostAccess) -> Result<(), ValidationError> {
        let Some(rules) = &self.host_paths else {
            return Ok(());
        };
        let file = |field: &str, path: &std::path::Path| {
            rules
                .open(path, access)
                .map(drop)
                .map_err(|e| ValidationError::new(field, e.to_string()))
        };
        for (i, share) in spec.shares.iter().enumerate() {
            rules.open_dir(&share.host_path, access).map_err(|e| {
                ValidationError::new(format!("spec.shares[{i}].host_path"), e.to_string())
            })?;
        }
        match &spec.boot {
            Boot::Kernel { kernel, initrd, .. } => {
                file("spec.boot.kernel.kernel", kernel)?;
                if let Some(initrd) = initrd {
                    file("spec.boot.kernel.initrd", initrd)?;
                }
                Ok(())
            }
            Boot::Disk { path, format } => {
                file("spec.boot.disk.path", path)?;
                let format = format.unwrap_or_else(|| format_from_extension(path));
                let confined = access == HostAccess::Confined || rules.is_confined(path);
                if confined && format != DiskFormat::Raw {
                    return Err(ValidationError::new(
                        "spec.boot.disk.format",
                        format!(
                            "{format}: a disk given by path must be raw unless an admin names it \
                             outside the allowed directories (a qcow2 header can name other host \
                             files); import it as an image and boot a volume made from it"
                        ),
                    ));
                }
                Ok(())
            }
            Boot::Volume { .. } => Ok(()),
        }
    }
}

/// Every volume the spec names must exist (and not be on its way out).
fn is_live(vm: &Vm) -> bool {
    vm.status.pid.is_some()
        || matches!(
            vm.status.phase,
            Phase::Starting | Phase::Running | Phase::Paused | Phase::Stopping
        )
}

impl Strategy for VmKind {
    type Object = Vm;
    const FINALIZED: bool = true;

    async fn admit(
        &self,
        store: &dyn Store,
        vm: &Vm,
        current: Option<&Vm>,
    ) -> Result<(), ServiceError> {
        // Volumes and networks it names need not exist yet: the VM waits in Pending until
        // they are Ready (its controller says which it waits for). Host files are checked
        // for the caller by `create_as` / `update_as`.
        let _ = (store, vm, current);
        Ok(())
    }

    fn allocation_lock(&self) -> Option<&tokio::sync::Mutex<()>> {
        Some(&self.allocating)
    }

    fn usage(&self, vm: &Vm) -> crate::Usage {
        crate::Usage::of_vm(vm)
    }

    async fn prepare(
        &self,
        store: &dyn Store,
        vm: &mut Vm,
        current: Option<&Vm>,
    ) -> Result<(), ServiceError> {
        let uid = current
            .map_or(&vm.metadata.uid, |c| &c.metadata.uid)
            .clone();
        allocate::allocate(
            store,
            &self.ports,
            !self.ports_elsewhere,
            vm.metadata.project(),
            &uid,
            &mut vm.spec,
            current.map(|c| &c.spec),
        )
        .await
    }

    fn check_update(&self, current: &Vm, desired: &Vm) -> Result<(), ServiceError> {
        // Shares are devices too: QEMU gets them at start.
        let disks_changed = current.spec.volumes != desired.spec.volumes
            || current.spec.boot != desired.spec.boot
            || current.spec.shares != desired.spec.shares;
        if disks_changed && is_live(current) {
            let name = current.metadata.name.as_str();
            return Err(ServiceError::WrongState {
                kind: Vm::NOUN,
                name: name.to_owned(),
                state: current.status.phase.to_string(),
                rule: format!(
                    "volumes and boot are changed only while it is stopped, and so are shares (corral vm stop {name} --wait)"
                ),
            });
        }
        Ok(())
    }
}

/// The longest grace period a delete may ask for.
pub const MAX_DELETE_GRACE_SECONDS: u32 = 3600;

impl Resources<VmKind> {
    /// Creates a VM for a caller with `access` to host files: the files its boot names must be
    /// ones that caller may name. (Plain [`Resources::create`] trusts its caller.)
    pub async fn create_as(&self, vm: Vm, access: HostAccess) -> Result<Vm, ServiceError> {
        self.create_as_opts(vm, access, false).await
    }

    /// [`create_as`](Self::create_as), or only its checks with `dry_run`.
    pub async fn create_as_opts(
        &self,
        vm: Vm,
        access: HostAccess,
        dry_run: bool,
    ) -> Result<Vm, ServiceError> {
        corral_contract::Object::validate(&vm)?;
        self.strategy().check_paths(&vm.spec, access)?;
        self.create_opts(vm, dry_run).await
    }

    /// Updates a VM for a caller with `access` to host files; a boot that changes is checked
    /// like on [`create_as`](Self::create_as).
    pub async fn update_as(&self, vm: Vm, access: HostAccess) -> Result<Vm, ServiceError> {
        self.update_as_opts(vm, access, false).await
    }

    /// [`update_as`](Self::update_as), or only its checks with `dry_run`.
    pub async fn update_as_opts(
        &self,
        vm: Vm,
        access: HostAccess,
        dry_run: bool,
    ) -> Result<Vm, ServiceError> {
        corral_contract::Object::validate(&vm)?;
        let current = self.get(&vm.metadata.key()).await?;
        if current.spec.boot != vm.spec.boot || current.spec.shares != vm.spec.shares {
            self.strategy().check_paths(&vm.spec, access)?;
        }
        self.update_opts(vm, dry_run).await
    }

    /// Marks a VM for deletion like [`Resources::delete`], with how long its guest gets to
    /// shut down first: `Some(0)` skips the graceful stop (a guest that ignores the power
    /// button holds nothing up), `None` leaves the daemon's default.
    pub async fn delete_with_grace(
        &self,
        name: &str,
        resource_version: Option<u64>,
        grace_seconds: Option<u32>,
    ) -> Result<Vm, ServiceError> {
        let Some(grace) = grace_seconds else {
            return self.delete(name, resource_version).await;
        };
        if grace > MAX_DELETE_GRACE_SECONDS {
            return Err(ValidationError::new(
                "grace",
                format!("{grace} s is more than the {MAX_DELETE_GRACE_SECONDS} s allowed"),
            )
            .into());
        }
        self.modify(name, resource_version.unwrap_or(0), |vm| {
            let value = grace.to_string();
            let before = vm
                .metadata
                .annotations
                .insert(annotations::DELETE_GRACE_SECONDS.into(), value.clone());
            Ok(before.as_deref() != Some(value.as_str()))
        })
        .await?;
        self.delete(name, None).await
    }

    /// Picks host ports for forwards from `range` (default 20000-29999).
    pub fn with_port_range(self, range: PortRange) -> Self {
        let kind = VmKind {
            host_paths: self.strategy().host_paths.clone(),
            ports: range,
            ports_elsewhere: self.strategy().ports_elsewhere,
            allocating: Default::default(),
        };
        Resources::with_strategy(self.store().clone(), kind)
    }

    /// The VMs run on other hosts (the nodes of a cluster), so their forwards listen there:
    /// a host port is checked only against the ports other VMs hold (the registry), not
    /// against what listens on this host, which says nothing of the node that will run it.
    pub fn with_ports_elsewhere(self) -> Self {
        let kind = VmKind {
            host_paths: self.strategy().host_paths.clone(),
            ports: self.strategy().ports.clone(),
            ports_elsewhere: true,
            allocating: Default::default(),
        };
        Resources::with_strategy(self.store().clone(), kind)
    }

    /// Checks the boot files of specs written through [`create_as`](Self::create_as) and
    /// [`update_as`](Self::update_as) under `rules` (for a daemon whose VMs run where it runs),
    /// so a typo or a file the caller may not name fails the request instead of the VM.
    pub fn with_host_paths(self, rules: HostPaths) -> Self {
        let kind = VmKind {
            host_paths: Some(rules),
            ports: self.strategy().ports.clone(),
            ports_elsewhere: self.strategy().ports_elsewhere,
            allocating: Default::default(),
        };
        Resources::with_strategy(self.store().clone(), kind)
    }

    /// Removes a VM object for good. For controllers, once nothing of the VM is left.
    pub async fn finalize_delete(
        &self,
        name: &str,
        resource_version: u64,
    ) -> Result<(), ServiceError> {
        self.remove(name, resource_version).await
    }

    /// Declares the power state: start is `Running`, stop `Stopped`, pause `Paused`. Asking
    /// again for the state already declared is a new intent too (a VM that the guest shut down
    /// is started again by `Running`).
    pub async fn set_power(
        &self,
        name: &str,
        power: Power,
        force: bool,
    ) -> Result<Vm, ServiceError> {
        self.modify_live(name, |vm| {
            vm.spec.power = power;
            if power == Power::Stopped && force {
                vm.metadata.annotations.insert(
                    annotations::STOP_MODE.into(),
                    annotations::STOP_MODE_FORCE.into(),
                );
            } else {
                vm.metadata.annotations.remove(annotations::STOP_MODE);
            }
            vm.metadata.generation += 1;
            Ok(true)
        })
        .await
    }

    /// Asks for a restart: the VM's QEMU is stopped and started again (with the current spec).
    pub async fn restart(&self, name: &str) -> Result<Vm, ServiceError> {
        self.modify_live(name, |vm| {
            vm.spec.power = Power::Running;
            vm.metadata
                .annotations
                .insert(annotations::RESTART_REQUESTED_AT.into(), now());
            vm.metadata.annotations.remove(annotations::STOP_MODE);
            vm.metadata.generation += 1;
            Ok(true)
        })
        .await
    }
}

impl VmService {
    /// Asks for a live migration of running or paused VM `name` to node `to` (`None`: the
    /// scheduler picks among the other nodes). The nodes carry it out and report in
    /// `status.migration`; a request replaces one in flight. `options` go with the request.
    pub async fn migrate(
        &self,
        name: &str,
        to: Option<&ResourceName>,
        options: MigrationOptions,
    ) -> Result<Vm, ServiceError> {
        if let Some(to) = to {
            let nodes = crate::NodeService::new(self.store().clone());
            nodes.get(to.as_str()).await?;
        }
        let request = format!("{}@{}", to.map(ResourceName::as_str).unwrap_or(""), now());
        self.modify_live(name, |vm| {
            let movable = matches!(vm.status.phase, Phase::Running | Phase::Paused)
                && vm.spec.power != Power::Stopped;
            if !movable {
                return Err(ServiceError::WrongState {
                    kind: Vm::NOUN,
                    name: vm.metadata.name.to_string(),
                    state: vm.status.phase.to_string(),
                    rule: "only a running or paused VM moves live: start it first, or stop it \
                           and let the scheduler place it again"
                        .into(),
                });
            }
            if to.is_some_and(|to| vm.status.node.as_deref() == Some(to.as_str())) {
                return Err(ServiceError::WrongState {
                    kind: Vm::NOUN,
                    name: vm.metadata.name.to_string(),
                    state: format!("on node {}", to.map(ResourceName::as_str).unwrap_or("")),
                    rule: "it already runs there: name another node, or leave --to out".into(),
                });
            }
            vm.metadata
                .annotations
                .insert(annotations::MIGRATE_TO.into(), request.clone());
            match options.to_annotation() {
                Some(o) => vm
                    .metadata
                    .annotations
                    .insert(annotations::MIGRATE_OPTIONS.into(), o),
                None => vm.metadata.annotations.remove(annotations::MIGRATE_OPTIONS),
            };
            Ok(true)
        })
        .await
    }

    /// Asks for VM `name` to move off its node, which is being drained: live, to a node the
    /// scheduler picks; if it cannot move, its node stops it and it is placed again.
    pub async fn migrate_for_drain(&self, name: &str) -> Result<Vm, ServiceError> {
        let request = format!("@{}{}", annotations::MIGRATE_DRAIN, now());
        self.modify_live(name, |vm| {
            if !matches!(vm.status.phase, Phase::Running | Phase::Paused) {
                return Err(ServiceError::WrongState {
                    kind: Vm::NOUN,
                    name: vm.metadata.name.to_string(),
                    state: vm.status.phase.to_string(),
                    rule: "only a running or paused VM moves live".into(),
                });
            }
            vm.metadata
                .annotations
                .insert(annotations::MIGRATE_TO.into(), request.clone());
            vm.metadata.annotations.remove(annotations::MIGRATE_OPTIONS);
            Ok(true)
        })
        .await
    }

    /// Withdraws VM `name`'s migration request: one not yet switched over is cancelled and the
    /// VM runs on where it is.
    pub async fn cancel_migration(&self, name: &str) -> Result<Vm, ServiceError> {
        self.modify_live(name, |vm| {
            vm.metadata.annotations.remove(annotations::MIGRATE_OPTIONS);
            if vm
                .metadata
                .annotations
                .remove(annotations::MIGRATE_TO)
                .is_none()
            {
                return Err(ServiceError::WrongState {
                    kind: Vm::NOUN,
                    name: vm.metadata.name.to_string(),
                    state: "not asked to migrate".into(),
                    rule: "there is no migration to cancel".into(),
                });
            }
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::EventType;
    use annotations::{
        RESTART_REQUESTED_AT as ANNOTATION_RESTART, STOP_MODE as ANNOTATION_STOP_MODE,
    };
    use corral_contract::{Boot, VmSpec};
    use corral_store::SqliteStore;

    async fn service() -> (VmService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap();
        (VmService::new(Arc::new(store)), dir)
    }

    fn vm(name: &str) -> Vm {
        let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz")).build().unwrap();
        Vm::new(name.parse().unwrap(), spec)
    }

    #[tokio::test]
    async fn missing_boot_files_are_refused_naming_the_field() {
        let (svc, _dir) = service().await;
        let svc = svc.with_host_paths(HostPaths::new());
        let err = svc.create_as(vm("a"), HostAccess::Admin).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.boot.kernel.kernel: /k/vmlinuz: No such file"),
            "{err}"
        );
        let err = svc
            .create_as(vm("a"), HostAccess::Confined)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("only an admin may name host files outside the allowed directories"),
            "{err}"
        );
        assert!(svc.list("").await.unwrap().0.is_empty(), "nothing created");
    }

    #[tokio::test]
    async fn shared_folders_outside_allowed_dirs_are_admin_only() {
        let (svc, dir) = service().await;
        let allowed = dir.path().join("projects");
        std::fs::create_dir_all(allowed.join("shop")).unwrap();
        let svc = svc.with_host_paths(
            HostPaths::new()
                .allow(&allowed)
                .private(dir.path().join("data")),
        );
        let kernel = allowed.join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        let sharing = |path: &str| {
            let spec = VmSpec::builder(Boot::kernel(&kernel))
                .share(corral_contract::Share::new(path, "project"))
                .build()
                .unwrap();
            Vm::new("a".parse().unwrap(), spec)
        };
        for path in ["/etc", "/"] {
            let err = svc
                .create_as(sharing(path), HostAccess::Confined)
                .await
                .unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "spec.shares[0].host_path: {path}: only an admin may name host files"
                )),
                "{err}"
            );
        }
        let escape = format!("{}/shop/../../", allowed.display());
        let err = svc
            .create_as(sharing(&escape), HostAccess::Confined)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("leaves the allowed directory"),
            "{err}"
        );
        assert!(svc.list("").await.unwrap().0.is_empty(), "nothing created");
        let shop = allowed.join("shop");
        svc.create_as(sharing(shop.to_str().unwrap()), HostAccess::Confined)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn create_assigns_identity_and_ignores_status() {
        let (svc, _dir) = service().await;
        let mut input = vm("a");
        input.status.pid = Some(42);
        let created = svc.create(input).await.unwrap();
        assert_eq!(created.metadata.uid.len(), 36);
        assert_eq!(created.metadata.generation, 1);
        assert!(created.metadata.resource_version > 0);
        assert_eq!(created.status.pid, None);
        assert!(matches!(
            svc.create(vm("a")).await,
            Err(ServiceError::AlreadyExists { .. })
        ));
    }

    #[tokio::test]
    async fn spec_changes_bump_generation_labels_do_not() {
        let (svc, _dir) = service().await;
        let created = svc.create(vm("a")).await.unwrap();
        let mut labelled = created.clone();
        labelled.metadata.labels.insert("tier".into(), "web".into());
        let labelled = svc.update(labelled).await.unwrap();
        assert_eq!(labelled.metadata.generation, 1);
        let mut bigger = labelled.clone();
        bigger.spec.cpus = 2;
        let bigger = svc.update(bigger).await.unwrap();
        assert_eq!(bigger.metadata.generation, 2);
        assert_eq!(bigger.metadata.uid, created.metadata.uid);
        // Same content again: nothing written.
        let again = svc.update(bigger.clone()).await.unwrap();
        assert_eq!(
            again.metadata.resource_version,
            bigger.metadata.resource_version
        );
    }

    #[tokio::test]
    async fn racing_writers_one_wins_the_other_conflicts() {
        let (svc, _dir) = service().await;
        let created = svc.create(vm("a")).await.unwrap();
        let mut first = created.clone();
        first.spec.cpus = 2;
        let mut second = created.clone();
        second.spec.cpus = 3;
        svc.update(first).await.unwrap();
        let err = svc.update(second).await.unwrap_err();
        assert!(matches!(err, ServiceError::Conflict { .. }), "{err}");
        assert_eq!(svc.get("a").await.unwrap().spec.cpus, 2);
    }

    #[tokio::test]
    async fn power_changes_are_spec_changes_and_status_is_separate() {
        let (svc, _dir) = service().await;
        svc.create(vm("a")).await.unwrap();
        let stopped = svc.set_power("a", Power::Stopped, true).await.unwrap();
        assert_eq!(stopped.spec.power, Power::Stopped);
        assert_eq!(stopped.metadata.annotations[ANNOTATION_STOP_MODE], "force");
        assert_eq!(stopped.metadata.generation, 2);
        let restarted = svc.restart("a").await.unwrap();
        assert!(
            restarted
                .metadata
                .annotations
                .contains_key(ANNOTATION_RESTART)
        );
        assert!(
            !restarted
                .metadata
                .annotations
                .contains_key(ANNOTATION_STOP_MODE)
        );
        let with_status = svc
            .update_status("a", |_, s| {
                s.pid = Some(7);
                true
            })
            .await
            .unwrap();
        assert_eq!(with_status.status.pid, Some(7));
        assert_eq!(
            with_status.metadata.generation,
            restarted.metadata.generation
        );
    }

    #[tokio::test]
    async fn delete_marks_then_finalize_removes_and_watch_sees_it() {
        let (svc, _dir) = service().await;
        svc.create(vm("a")).await.unwrap();
        svc.create(vm("b")).await.unwrap();
        let mut watch = svc.watch(Some("a"), 0).await.unwrap();
        let marked = svc.delete("a", None).await.unwrap();
        assert!(marked.metadata.deleting);
        assert!(svc.set_power("a", Power::Running, false).await.is_err());
        svc.finalize_delete("a", marked.metadata.resource_version)
            .await
            .unwrap();
        let kinds: Vec<EventType> = [
            watch.recv().await.unwrap().unwrap(),
            watch.recv().await.unwrap().unwrap(),
            watch.recv().await.unwrap().unwrap(),
        ]
        .iter()
        .map(|e| e.event)
        .collect();
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
        assert!(matches!(
            svc.get("a").await,
            Err(ServiceError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn list_filters_by_selector_and_rejects_bad_ones() {
        let (svc, _dir) = service().await;
        let mut web = vm("web");
        web.metadata.labels.insert("tier".into(), "web".into());
        svc.create(web).await.unwrap();
        svc.create(vm("db")).await.unwrap();
        let (vms, _) = svc.list("tier=web").await.unwrap();
        assert_eq!(vms.len(), 1);
        assert_eq!(svc.list("").await.unwrap().0.len(), 2);
        let err = svc.list("=web").await.unwrap_err();
        assert!(err.to_string().starts_with("label_selector"), "{err}");
    }
}
