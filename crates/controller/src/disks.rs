//! From a VM's declared volumes to the disks its QEMU gets.

use corral_contract::{Boot, ResourceName, StoragePhase, Vm, VmSpec, VolumeKind};
use corral_hypervisor::{DiskConfig, VmConfig};
use corral_service::{ServiceError, StorageService};

use crate::ControllerError;
use corral_service::Stored;

/// One volume as attached: its index in [`VmConfig::disks`], name and whether read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedVolume {
    /// Index in the VM's disk list (node `disk<i>` in QEMU).
    pub index: usize,
    /// The Volume's name.
    pub volume: ResourceName,
    /// Attached read-only as declared (weights volumes are read-only whatever this says).
    pub readonly: bool,
    /// Serial number.
    pub serial: Option<String>,
}

/// The VM's volumes in disk order: a boot volume first, then `spec.volumes` (after the disk
/// image of a `boot.disk`).
pub fn attached_volumes(spec: &VmSpec) -> Vec<AttachedVolume> {
    let mut out = Vec::new();
    match &spec.boot {
        Boot::Volume { volume } => out.push(AttachedVolume {
            index: 0,
            volume: volume.clone(),
            readonly: false,
            serial: None,
        }),
        Boot::Disk { .. } | Boot::Kernel { .. } => {}
    }
    let first = match &spec.boot {
        Boot::Kernel { .. } => 0,
        Boot::Disk { .. } | Boot::Volume { .. } => 1,
    };
    for (i, a) in spec.volumes.iter().enumerate() {
        out.push(AttachedVolume {
            index: first + i,
            volume: a.volume.clone(),
            readonly: a.readonly,
            serial: a.serial.clone(),
        });
    }
    out
}

/// Resolves the VM's volumes into `config.disks`, verifying weights volumes against their
/// digest. The error's message is a sentence for the VM's status.
pub async fn resolve(
    storage: &StorageService,
    vm: &Vm,
    config: &mut VmConfig,
) -> Result<(), ControllerError> {
    for a in attached_volumes(&vm.spec) {
        let name = a.volume.as_str();
        let volume = storage.volumes.get(&vm.metadata.key_of(&a.volume)).await?;
        if volume.metadata.deleting {
            return Err(ServiceError::Deleting {
                kind: corral_contract::Volume::NOUN,
                name: name.to_owned(),
            }
            .into());
        }
        let (Some(format), StoragePhase::Ready) = (volume.status.format, volume.status.phase)
        else {
            return Err(ServiceError::NotReady {
                kind: corral_contract::Volume::NOUN,
                name: name.to_owned(),
                phase: volume.status.phase.to_string(),
                message: volume.status.message,
            }
            .into());
        };
        // This node's own path for it: the status was written by whichever node made it.
        let path = storage.config().volume_file(&volume)?;
        let weights = volume.spec.kind == VolumeKind::Weights;
        if weights {
            let want = volume.status.digest.clone().unwrap_or_default();
            let file = path.clone();
            let got =
                tokio::task::spawn_blocking(move || corral_storage::hash_file(&file)).await??;
            if got.0.to_string() != want {
                return Err(ControllerError::WeightsCorrupt {
                    volume: name.to_owned(),
                    expected: want,
                    actual: got.0.to_string(),
                });
            }
        }
        let disk = DiskConfig {
            path,
            format,
            readonly: a.readonly || weights,
            serial: a.serial.clone(),
        };
        if a.index > config.disks.len() {
            return Err(ControllerError::DiskOrder {
                volume: name.to_owned(),
            });
        }
        config.disks.insert(a.index, disk);
    }
    Ok(())
}
