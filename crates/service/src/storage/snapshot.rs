use corral_contract::{Phase, Snapshot, SnapshotStatus, StoragePhase, ValidationError};

use super::{ANNOTATION_RESTORE, StorageService};
use crate::ServiceError;
use crate::objects::now;

fn vm_is_live(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Starting | Phase::Running | Phase::Paused | Phase::Stopping
    )
}

impl StorageService {
    /// Declares a snapshot of a VM; the storage controller takes it. A memory snapshot needs
    /// the VM running or paused, a disk-only one needs it stopped.
    pub async fn create_snapshot(&self, mut snap: Snapshot) -> Result<Snapshot, ServiceError> {
        snap.metadata.validate()?;
        let vm = match self.vms.get(snap.spec.vm.as_str()).await {
            Ok(vm) => vm,
            Err(ServiceError::NotFound { .. }) => {
                return Err(ServiceError::Invalid(ValidationError::new(
                    "spec.vm",
                    format!("VM {:?} not found", snap.spec.vm.as_str()),
                )));
            }
            Err(e) => return Err(e),
        };
        check_vm_state(&snap, vm.status.phase, "take")?;
        if vm.spec.volume_names().next().is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "VM {:?} has no volumes: a snapshot lives in the VM's qcow2 volumes",
                snap.spec.vm.as_str()
            )));
        }
        snap.status = SnapshotStatus::default();
        self.snapshots.create(snap).await
    }

    /// Snapshots, all or those of one VM.
    pub async fn list_snapshots(&self, vm: Option<&str>) -> Result<Vec<Snapshot>, ServiceError> {
        let (items, _) = self.snapshots.list("").await?;
        Ok(items
            .into_iter()
            .filter(|s| vm.is_none_or(|vm| s.spec.vm.as_str() == vm))
            .collect())
    }

    /// Asks for the VM to be put back to a snapshot.
    pub async fn restore_snapshot(&self, name: &str) -> Result<Snapshot, ServiceError> {
        let snap = self.snapshots.get(name).await?;
        if snap.status.phase != StoragePhase::Ready {
            return Err(ServiceError::FailedPrecondition(format!(
                "snapshot {name:?} is {}, not Ready",
                snap.status.phase
            )));
        }
        let vm = self.vms.get(snap.spec.vm.as_str()).await?;
        check_vm_state(&snap, vm.status.phase, "restore")?;
        self.snapshots
            .modify(name, 0, |s| {
                if s.metadata.deleting {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "snapshot {name:?} is being deleted"
                    )));
                }
                s.metadata
                    .annotations
                    .insert(ANNOTATION_RESTORE.into(), now());
                Ok(true)
            })
            .await
    }

    /// Marks a snapshot for deletion; the controller removes it from the volumes (which, and
    /// their images, stay).
    pub async fn delete_snapshot(&self, name: &str) -> Result<Snapshot, ServiceError> {
        self.snapshots.mark_deleting(name).await
    }
}

fn check_vm_state(snap: &Snapshot, phase: Phase, verb: &str) -> Result<(), ServiceError> {
    let live = vm_is_live(phase);
    let vm = snap.spec.vm.as_str();
    if snap.spec.memory && !live {
        return Err(ServiceError::FailedPrecondition(format!(
            "VM {vm:?} is {phase}: a memory snapshot is taken and restored while it runs (start it, or {verb} a disk-only snapshot)"
        )));
    }
    if !snap.spec.memory && live {
        return Err(ServiceError::FailedPrecondition(format!(
            "VM {vm:?} is {phase}: a disk-only snapshot is taken and restored while it is stopped (corral vm stop {vm} --wait)"
        )));
    }
    Ok(())
}
