use corral_contract::names::annotations;
use corral_contract::{Phase, Power, Snapshot, StoragePhase, Vm};
use corral_store::Store;

use super::StorageService;
use crate::resources::{Strategy, now, read};
use crate::{ServiceError, Stored};

/// How snapshots are admitted: a VM that exists must have volumes, and its declared power
/// must not contradict the snapshot (memory: running or paused; disk-only: stopped). A VM
/// that does not exist yet, or has not reached its declared state, is waited for: the storage
/// controller takes the snapshot once the VM is there, and finalizes its delete (the volumes,
/// and their images, stay).
#[derive(Debug, Default)]
pub struct SnapshotKind;

impl Strategy for SnapshotKind {
    type Object = Snapshot;
    const FINALIZED: bool = true;

    async fn admit(
        &self,
        store: &dyn Store,
        snap: &Snapshot,
        current: Option<&Snapshot>,
    ) -> Result<(), ServiceError> {
        if current.is_some() {
            return Ok(());
        }
        let Some(vm) = read::<Vm>(store, &snap.metadata.key_of(&snap.spec.vm)).await? else {
            return Ok(());
        };
        if vm.spec.volume_names().next().is_none() {
            return Err(ServiceError::WrongState {
                kind: Vm::NOUN,
                name: snap.spec.vm.to_string(),
                state: "without volumes".into(),
                rule: "a snapshot lives in the VM's qcow2 volumes".into(),
            });
        }
        let declared_live = vm.spec.power != Power::Stopped;
        if declared_live != snap.spec.memory {
            return Err(wrong_state(snap, &vm.spec.power.to_string(), "take"));
        }
        Ok(())
    }
}

impl StorageService {
    /// Declares a snapshot of a VM; the storage controller takes it. A memory snapshot needs
    /// the VM running or paused, a disk-only one needs it stopped.
    pub async fn create_snapshot(&self, snap: Snapshot) -> Result<Snapshot, ServiceError> {
        self.snapshots.create(snap).await
    }

    /// Snapshots, all or those of one VM.
    /// `vm` is a store key.
    pub async fn list_snapshots(
        &self,
        vm: Option<&str>,
        projects: &crate::Projects,
    ) -> Result<Vec<Snapshot>, ServiceError> {
        let (items, _) = self.snapshots.list_in("", projects).await?;
        Ok(items
            .into_iter()
            .filter(|s| vm.is_none_or(|vm| s.metadata.key_of(&s.spec.vm) == vm))
            .collect())
    }

    /// Asks for the VM to be put back to a snapshot.
    pub async fn restore_snapshot(&self, name: &str) -> Result<Snapshot, ServiceError> {
        let snap = self.snapshots.get(name).await?;
        if snap.status.phase != StoragePhase::Ready {
            return Err(ServiceError::NotReady {
                kind: Snapshot::NOUN,
                name: name.to_owned(),
                phase: snap.status.phase.to_string(),
                message: None,
            });
        }
        let vm = self.vms.get(&snap.metadata.key_of(&snap.spec.vm)).await?;
        check_vm_state(&snap, vm.status.phase, "restore")?;
        self.snapshots
            .modify_live(name, |s| {
                s.metadata
                    .annotations
                    .insert(annotations::RESTORE_REQUESTED_AT.into(), now());
                Ok(true)
            })
            .await
    }

    /// Marks a snapshot for deletion; the controller removes it from the volumes (which, and
    /// their images, stay).
    pub async fn delete_snapshot(&self, name: &str) -> Result<Snapshot, ServiceError> {
        self.snapshots.delete(name, None).await
    }
}

fn check_vm_state(snap: &Snapshot, phase: Phase, verb: &str) -> Result<(), ServiceError> {
    let live = matches!(
        phase,
        Phase::Starting | Phase::Running | Phase::Paused | Phase::Stopping
    );
    if live == snap.spec.memory {
        return Ok(());
    }
    Err(wrong_state(snap, &phase.to_string(), verb))
}

/// The VM is `state`, which the snapshot cannot be taken or restored in.
fn wrong_state(snap: &Snapshot, state: &str, verb: &str) -> ServiceError {
    let vm = snap.spec.vm.as_str();
    let rule = if snap.spec.memory {
        format!(
            "a memory snapshot is taken and restored while it runs (start it, or {verb} a disk-only snapshot)"
        )
    } else {
        format!(
            "a disk-only snapshot is taken and restored while it is stopped (corral vm stop {vm} --wait)"
        )
    };
    ServiceError::WrongState {
        kind: Vm::NOUN,
        name: vm.to_owned(),
        state: state.to_owned(),
        rule,
    }
}
