use std::sync::Arc;
use std::time::SystemTime;

use corral_contract::{Boot, Phase, Power, ValidationError, Vm, VmSpec, VmStatus};
use corral_store::{EventType, Object, Selector, Store, WatchStream};

use crate::ServiceError;
use crate::access::{self, PortRange};

const KIND: &str = "Vm";

/// Annotation whose new value asks for a restart (set by [`VmService::restart`]).
pub const ANNOTATION_RESTART: &str = "corral.dev/restart-requested-at";
/// Annotation `force` on a VM whose `spec.power` is `stopped`: stop without waiting for the
/// guest to shut down.
pub const ANNOTATION_STOP_MODE: &str = "corral.dev/stop-mode";

/// How many times a read-modify-write retries on a conflict before giving up.
const CAS_RETRIES: usize = 16;

/// The VM operations every transport exposes.
#[derive(Debug, Clone)]
pub struct VmService {
    store: Arc<dyn Store>,
    check_host_paths: bool,
    ports: PortRange,
    // Held from reading who holds which port or MAC until the write that claims one, so two
    // writers never pick the same.
    allocating: Arc<tokio::sync::Mutex<()>>,
}

/// What happened to a VM, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEventType {
    /// Created.
    Added,
    /// Changed (spec, labels, status …).
    Modified,
    /// Removed from the store.
    Deleted,
}

/// One change seen by [`VmService::watch`].
#[derive(Debug, Clone)]
pub struct VmEvent {
    /// What happened.
    pub event: VmEventType,
    /// The store revision of the change; resume a watch after it.
    pub revision: u64,
    /// The VM after the change (its last state, for a deletion).
    pub vm: Vm,
}

/// A stream of [`VmEvent`]s, optionally for one VM.
#[derive(Debug)]
pub struct VmWatch {
    inner: WatchStream,
    name: Option<String>,
}

impl VmWatch {
    /// The next event; `None` when the stream ended.
    pub async fn recv(&mut self) -> Option<Result<VmEvent, ServiceError>> {
        loop {
            let event = match self.inner.recv().await? {
                Ok(event) => event,
                Err(e) => return Some(Err(ServiceError::Store(e))),
            };
            if self.name.as_deref().is_some_and(|n| n != event.object.name) {
                continue;
            }
            let kind = match event.event {
                EventType::Added => VmEventType::Added,
                EventType::Modified => VmEventType::Modified,
                EventType::Deleted => VmEventType::Deleted,
            };
            return Some(from_object(event.object).map(|vm| VmEvent {
                event: kind,
                revision: event.revision,
                vm,
            }));
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn to_object(vm: &Vm) -> Result<Object, ServiceError> {
    let body = serde_json::to_string(vm)
        .map_err(|e| ServiceError::FailedPrecondition(format!("cannot encode VM: {e}")))?;
    let mut obj = Object::new(
        KIND,
        vm.metadata.name.as_str(),
        vm.metadata.uid.clone(),
        body,
    );
    obj.labels = vm.metadata.labels.clone();
    obj.resource_version = vm.metadata.resource_version;
    Ok(obj)
}

fn from_object(obj: Object) -> Result<Vm, ServiceError> {
    let mut vm: Vm = serde_json::from_str(&obj.body).map_err(|e| {
        ServiceError::FailedPrecondition(format!("stored VM {:?} does not decode: {e}", obj.name))
    })?;
    vm.metadata.resource_version = obj.resource_version;
    Ok(vm)
}

impl VmService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        VmService {
            store,
            check_host_paths: false,
            ports: PortRange::default(),
            allocating: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Picks host ports for forwards from `range` (default 20000-29999).
    pub fn with_port_range(mut self, range: PortRange) -> Self {
        self.ports = range;
        self
    }

    /// Refuses specs whose boot files do not exist on this host (for a daemon whose VMs run
    /// where it runs), so a typo fails the request instead of the VM.
    pub fn with_host_path_check(mut self) -> Self {
        self.check_host_paths = true;
        self
    }

    fn check_paths(&self, spec: &VmSpec) -> Result<(), ValidationError> {
        if !self.check_host_paths {
            return Ok(());
        }
        let file = |field: &str, path: &std::path::Path| match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(_) => Err(ValidationError::new(
                field,
                format!("{} is not a file", path.display()),
            )),
            Err(e) => Err(ValidationError::new(
                field,
                format!("{}: {e}", path.display()),
            )),
        };
        match &spec.boot {
            Boot::Kernel { kernel, initrd, .. } => {
                file("spec.boot.kernel.kernel", kernel)?;
                if let Some(initrd) = initrd {
                    file("spec.boot.kernel.initrd", initrd)?;
                }
                Ok(())
            }
            Boot::Disk { path, .. } => file("spec.boot.disk.path", path),
            Boot::Volume { .. } => Ok(()),
        }
    }

    /// Every volume the spec names must exist (and not be on its way out).
    async fn check_volumes(&self, spec: &VmSpec) -> Result<(), ServiceError> {
        let boot = matches!(spec.boot, Boot::Volume { .. }) as usize;
        for (i, name) in spec.volume_names().enumerate() {
            let field = if i < boot {
                "spec.boot.volume.volume".to_owned()
            } else {
                format!("spec.volumes[{}].volume", i - boot)
            };
            match self.store.get("Volume", name.as_str()).await {
                Ok(obj)
                    if serde_json::from_str::<corral_contract::Volume>(&obj.body)
                        .is_ok_and(|v| v.metadata.deleting) =>
                {
                    return Err(ValidationError::new(
                        field,
                        format!("volume {:?} is being deleted", name.as_str()),
                    )
                    .into());
                }
                Ok(_) => {}
                Err(corral_store::StoreError::NotFound { .. }) => {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "volume {:?} not found: create it first (corral volume create)",
                            name.as_str()
                        ),
                    )
                    .into());
                }
                Err(e) => return Err(ServiceError::from_store("Volume", e)),
            }
        }
        Ok(())
    }

    /// The store underneath (for controllers that share it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Creates a VM. The server assigns uid, generation and creation time; a status in the
    /// request is ignored (status is written by controllers only).
    pub async fn create(&self, mut vm: Vm) -> Result<Vm, ServiceError> {
        vm.metadata.validate()?;
        vm.spec.validate()?;
        self.check_paths(&vm.spec)?;
        self.check_volumes(&vm.spec).await?;
        vm.metadata.uid = uuid::Uuid::new_v4().to_string();
        vm.metadata.generation = 1;
        vm.metadata.resource_version = 0;
        vm.metadata.created_at = Some(now());
        vm.metadata.deleting = false;
        vm.status = VmStatus::default();
        let _claim = self.allocating.lock().await;
        access::allocate(
            &*self.store,
            &self.ports,
            &vm.metadata.uid,
            &mut vm.spec,
            None,
        )
        .await?;
        let stored = self
            .store
            .create(to_object(&vm)?)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        from_object(stored)
    }

    /// One VM by name.
    pub async fn get(&self, name: &str) -> Result<Vm, ServiceError> {
        let obj = self
            .store
            .get(KIND, name)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        from_object(obj)
    }

    /// VMs matching a label selector (`""` for all), sorted by name, and the store revision
    /// of that snapshot (watch after it to follow changes).
    pub async fn list(&self, selector: &str) -> Result<(Vec<Vm>, u64), ServiceError> {
        let selector: Selector = selector
            .parse()
            .map_err(|e| ValidationError::new("label_selector", e))?;
        let (objects, revision) = self
            .store
            .list(KIND, &selector)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        let vms = objects
            .into_iter()
            .map(from_object)
            .collect::<Result<_, _>>()?;
        Ok((vms, revision))
    }

    /// Replaces a VM's spec, labels and annotations. With `metadata.resource_version` set, the
    /// write happens only if nobody changed the VM since (else [`ServiceError::Conflict`]);
    /// with 0 it applies to the current version. A changed spec bumps the generation; a
    /// running VM picks up hardware changes at its next start.
    pub async fn update(&self, mut vm: Vm) -> Result<Vm, ServiceError> {
        vm.metadata.validate()?;
        vm.spec.validate()?;
        let _claim = self.allocating.lock().await;
        let current = match vm.spec.networks.is_empty() {
            true => None,
            false => Some(self.get(vm.metadata.name.as_str()).await?),
        };
        if let Some(current) = &current {
            access::allocate(
                &*self.store,
                &self.ports,
                &current.metadata.uid,
                &mut vm.spec,
                Some(&current.spec),
            )
            .await?;
        }
        let expected = vm.metadata.resource_version;
        let mut paths_checked = false;
        self.check_volumes(&vm.spec).await?;
        self.modify(vm.metadata.name.as_str(), expected, |current| {
            if current.metadata.deleting {
                return Err(ServiceError::FailedPrecondition(format!(
                    "VM {:?} is being deleted",
                    current.metadata.name.as_str()
                )));
            }
            let changed_spec = current.spec != vm.spec;
            let disks_changed =
                current.spec.volumes != vm.spec.volumes || current.spec.boot != vm.spec.boot;
            let live = current.status.pid.is_some()
                || matches!(
                    current.status.phase,
                    Phase::Starting | Phase::Running | Phase::Paused | Phase::Stopping
                );
            if disks_changed && live {
                return Err(ServiceError::FailedPrecondition(format!(
                    "VM {:?} is {}: volumes and boot are changed only while it is stopped (corral vm stop {} --wait)",
                    current.metadata.name.as_str(),
                    current.status.phase,
                    current.metadata.name.as_str()
                )));
            }
            if changed_spec && !paths_checked {
                self.check_paths(&vm.spec)?;
                paths_checked = true;
            }
            let changed = changed_spec
                || current.metadata.labels != vm.metadata.labels
                || current.metadata.annotations != vm.metadata.annotations;
            current.spec = vm.spec.clone();
            current.metadata.labels = vm.metadata.labels.clone();
            current.metadata.annotations = vm.metadata.annotations.clone();
            if changed_spec {
                current.metadata.generation += 1;
            }
            Ok(changed)
        })
        .await
    }

    /// Marks a VM for deletion. Its controller stops QEMU, removes its files, then removes the
    /// object; watch for the deletion to know when that is done.
    pub async fn delete(
        &self,
        name: &str,
        resource_version: Option<u64>,
    ) -> Result<Vm, ServiceError> {
        self.modify(name, resource_version.unwrap_or(0), |vm| {
            let first = !vm.metadata.deleting;
            vm.metadata.deleting = true;
            Ok(first)
        })
        .await
    }

    /// Removes a VM object for good. For controllers, once nothing of the VM is left.
    pub async fn finalize_delete(
        &self,
        name: &str,
        resource_version: u64,
    ) -> Result<(), ServiceError> {
        self.store
            .delete(KIND, name, Some(resource_version))
            .await
            .map(drop)
            .map_err(|e| ServiceError::from_store(KIND, e))
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
        self.modify(name, 0, |vm| {
            refuse_deleting(vm)?;
            vm.spec.power = power;
            if power == Power::Stopped && force {
                vm.metadata
                    .annotations
                    .insert(ANNOTATION_STOP_MODE.into(), "force".into());
            } else {
                vm.metadata.annotations.remove(ANNOTATION_STOP_MODE);
            }
            vm.metadata.generation += 1;
            Ok(true)
        })
        .await
    }

    /// Asks for a restart: the VM's QEMU is stopped and started again (with the current spec).
    pub async fn restart(&self, name: &str) -> Result<Vm, ServiceError> {
        self.modify(name, 0, |vm| {
            refuse_deleting(vm)?;
            vm.spec.power = Power::Running;
            vm.metadata
                .annotations
                .insert(ANNOTATION_RESTART.into(), now());
            vm.metadata.annotations.remove(ANNOTATION_STOP_MODE);
            vm.metadata.generation += 1;
            Ok(true)
        })
        .await
    }

    /// Follows VM changes after store revision `after` (0: from the oldest kept), for one VM
    /// or all.
    pub async fn watch(&self, name: Option<&str>, after: u64) -> Result<VmWatch, ServiceError> {
        let inner = self
            .store
            .watch(Some(KIND), after)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        Ok(VmWatch {
            inner,
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        })
    }

    /// Writes a VM's status (controllers only): `f` edits it and says whether anything
    /// changed. Retries on conflicts with other writers of spec or status.
    pub async fn update_status(
        &self,
        name: &str,
        mut f: impl FnMut(&Vm, &mut VmStatus) -> bool,
    ) -> Result<Vm, ServiceError> {
        self.modify(name, 0, |vm| {
            let mut status = vm.status.clone();
            let changed = f(vm, &mut status);
            vm.status = status;
            Ok(changed)
        })
        .await
    }

    /// Read-modify-write with compare-and-swap. `expected` 0 retries on conflicts; otherwise
    /// a conflict is the caller's to handle. `f` returns whether it changed anything.
    async fn modify(
        &self,
        name: &str,
        expected: u64,
        mut f: impl FnMut(&mut Vm) -> Result<bool, ServiceError>,
    ) -> Result<Vm, ServiceError> {
        for _ in 0..CAS_RETRIES {
            let mut vm = self.get(name).await?;
            if expected != 0 && vm.metadata.resource_version != expected {
                return Err(ServiceError::Conflict {
                    kind: KIND,
                    name: name.to_owned(),
                    expected,
                    actual: vm.metadata.resource_version,
                });
            }
            if !f(&mut vm)? {
                return Ok(vm);
            }
            match self.store.update(to_object(&vm)?).await {
                Ok(stored) => return from_object(stored),
                Err(corral_store::StoreError::Conflict { .. }) if expected == 0 => continue,
                Err(e) => return Err(ServiceError::from_store(KIND, e)),
            }
        }
        Err(ServiceError::FailedPrecondition(format!(
            "VM {name:?} changed {CAS_RETRIES} times while being updated; try again"
        )))
    }
}

fn refuse_deleting(vm: &Vm) -> Result<(), ServiceError> {
    if vm.metadata.deleting {
        return Err(ServiceError::FailedPrecondition(format!(
            "VM {:?} is being deleted",
            vm.metadata.name.as_str()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let svc = svc.with_host_path_check();
        let err = svc.create(vm("a")).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.boot.kernel.kernel: /k/vmlinuz: No such file"),
            "{err}"
        );
        assert!(svc.list("").await.unwrap().0.is_empty(), "nothing created");
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
        let kinds: Vec<VmEventType> = [
            watch.recv().await.unwrap().unwrap(),
            watch.recv().await.unwrap().unwrap(),
            watch.recv().await.unwrap().unwrap(),
        ]
        .iter()
        .map(|e| e.event)
        .collect();
        assert_eq!(
            kinds,
            [
                VmEventType::Added,
                VmEventType::Modified,
                VmEventType::Deleted
            ]
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
