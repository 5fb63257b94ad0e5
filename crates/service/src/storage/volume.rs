use corral_contract::{
    ByteSize, Image, StoragePhase, ValidationError, Vm, Volume, VolumeKind as Kind,
};
use corral_store::Store;

use super::StorageService;
use crate::resources::{Strategy, may_refer, read_all, refuse_if_used, resolve};
use crate::{ServiceError, Stored};

/// How volumes are admitted: the image a volume clones must be a Ready image that fits; only
/// the size may change, and only grow; no delete while a VM uses it (the storage controller
/// finalizes the delete by removing the file).
#[derive(Debug, Default)]
pub struct VolumeKind;

impl Strategy for VolumeKind {
    type Object = Volume;
    const FINALIZED: bool = true;

    fn usage(&self, volume: &Volume) -> crate::Usage {
        crate::Usage::of_volume(volume)
    }

    async fn admit(
        &self,
        store: &dyn Store,
        volume: &Volume,
        current: Option<&Volume>,
    ) -> Result<(), ServiceError> {
        let Some(name) = volume.spec.image.as_ref().filter(|_| current.is_none()) else {
            return Ok(());
        };
        // An image that is missing or not Ready yet is waited for (the storage controller
        // makes the volume once it is); one that is Ready is checked now.
        let project = volume.metadata.project();
        let Some(image) = resolve::<Image>(store, project, name.as_str()).await? else {
            return Ok(());
        };
        if image.status.phase != StoragePhase::Ready {
            return Ok(());
        }
        let is_disk = image.status.format.is_some_and(|f| f.is_disk());
        if volume.spec.kind == Kind::Disk && !is_disk {
            return Err(ValidationError::new(
                "spec.image",
                format!(
                    "image {:?} is not a disk image (qcow2 or raw): a disk volume cannot clone it",
                    name.as_str()
                ),
            )
            .into());
        }
        if let (Some(size), Some(virt)) = (volume.spec.size, image.status.virtual_size) {
            if size.as_u64() < virt {
                return Err(ValidationError::new(
                    "spec.size",
                    format!(
                        "{size} is smaller than image {:?} ({}): leave size out or give at least that",
                        name.as_str(),
                        ByteSize::new(virt)
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    fn check_update(&self, current: &Volume, desired: &Volume) -> Result<(), ServiceError> {
        let (old, new) = (&current.spec, &desired.spec);
        for (field, same) in [
            ("spec.kind", old.kind == new.kind),
            ("spec.format", old.format() == new.format()),
            ("spec.image", old.image == new.image),
            ("spec.pool", old.pool == new.pool),
        ] {
            if !same {
                return Err(ServiceError::Immutable {
                    kind: Volume::NOUN,
                    field,
                });
            }
        }
        let now = current.status.size.or(old.size.map(ByteSize::as_u64));
        if let (Some(now), Some(want)) = (now, new.size) {
            if want.as_u64() < now {
                return Err(ValidationError::new(
                    "spec.size",
                    format!(
                        "volumes only grow: {want} is smaller than the current {}",
                        ByteSize::new(now)
                    ),
                )
                .into());
            }
        }
        if old.size.is_some() && new.size.is_none() {
            return Err(ValidationError::new("spec.size", "cannot be removed once set").into());
        }
        Ok(())
    }

    async fn check_delete(&self, store: &dyn Store, volume: &Volume) -> Result<(), ServiceError> {
        let vms = read_all::<Vm>(store).await?.into_iter();
        refuse_if_used(
            volume,
            vms.filter(|vm| {
                vm.spec
                    .volume_names()
                    .any(|v| may_refer(&vm.metadata, v, volume))
            }),
            "detach it (VM stopped) or delete the VM first",
        )
    }
}

impl StorageService {
    /// Declares a volume; the storage controller makes its file.
    pub async fn create_volume(&self, volume: Volume) -> Result<Volume, ServiceError> {
        self.volumes.create(volume).await
    }

    /// Replaces labels, annotations and spec. Only the size may change, and only grow.
    pub async fn update_volume(&self, volume: Volume) -> Result<Volume, ServiceError> {
        self.volumes.update(volume).await
    }

    /// Grows a volume to `size` (online when it is attached to a running VM).
    pub async fn resize_volume(&self, name: &str, size: ByteSize) -> Result<Volume, ServiceError> {
        let mut volume = self.volumes.get(name).await?;
        if volume.spec.kind == Kind::Weights {
            return Err(ValidationError::new(
                "spec.size",
                "a weights volume is an exact copy of its image and cannot be resized",
            )
            .into());
        }
        volume.spec.size = Some(size);
        volume.metadata.resource_version = 0;
        self.volumes.update(volume).await
    }

    /// Marks a volume for deletion; refused while a VM uses it.
    pub async fn delete_volume(&self, name: &str) -> Result<Volume, ServiceError> {
        self.volumes.delete(name, None).await
    }
}
