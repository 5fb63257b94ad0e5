use corral_contract::{ByteSize, StoragePhase, ValidationError, Volume, VolumeKind, VolumeStatus};

use super::StorageService;
use crate::ServiceError;

impl StorageService {
    /// Declares a volume; the storage controller makes its file.
    pub async fn create_volume(&self, mut volume: Volume) -> Result<Volume, ServiceError> {
        volume.metadata.validate()?;
        volume.spec.validate()?;
        if let Some(name) = &volume.spec.image {
            let image = match self.images.get(name.as_str()).await {
                Ok(image) => image,
                Err(ServiceError::NotFound { .. }) => {
                    return Err(ServiceError::Invalid(ValidationError::new(
                        "spec.image",
                        format!("image {:?} not found: import it first", name.as_str()),
                    )));
                }
                Err(e) => return Err(e),
            };
            if image.status.phase != StoragePhase::Ready {
                return Err(ServiceError::FailedPrecondition(format!(
                    "image {:?} is not ready: {}",
                    name.as_str(),
                    image.status.message.unwrap_or_default()
                )));
            }
            let is_disk = image.status.format.is_some_and(|f| f.is_disk());
            if volume.spec.kind == VolumeKind::Disk && !is_disk {
                return Err(ServiceError::Invalid(ValidationError::new(
                    "spec.image",
                    format!(
                        "image {:?} is not a disk image (qcow2 or raw): a disk volume cannot clone it",
                        name.as_str()
                    ),
                )));
            }
            if let (Some(size), Some(virt)) = (volume.spec.size, image.status.virtual_size) {
                if size.as_u64() < virt {
                    return Err(ServiceError::Invalid(ValidationError::new(
                        "spec.size",
                        format!(
                            "{size} is smaller than image {:?} ({}): leave size out or give at least that",
                            name.as_str(),
                            ByteSize::new(virt)
                        ),
                    )));
                }
            }
        }
        volume.status = VolumeStatus::default();
        self.volumes.create(volume).await
    }

    /// Replaces labels, annotations and spec. Only the size may change, and only grow.
    pub async fn update_volume(&self, volume: Volume) -> Result<Volume, ServiceError> {
        volume.metadata.validate()?;
        volume.spec.validate()?;
        let expected = volume.metadata.resource_version;
        self.volumes
            .modify(volume.metadata.name.as_str(), expected, |current| {
                if current.metadata.deleting {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "volume {:?} is being deleted",
                        current.metadata.name.as_str()
                    )));
                }
                let (old, new) = (&current.spec, &volume.spec);
                for (field, same) in [
                    ("spec.kind", old.kind == new.kind),
                    ("spec.format", old.format() == new.format()),
                    ("spec.image", old.image == new.image),
                ] {
                    if !same {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            field,
                            "cannot change after creation: create another volume",
                        )));
                    }
                }
                let now = current.status.size.or(old.size.map(ByteSize::as_u64));
                if let (Some(now), Some(want)) = (now, new.size) {
                    if want.as_u64() < now {
                        return Err(ServiceError::Invalid(ValidationError::new(
                            "spec.size",
                            format!(
                                "volumes only grow: {want} is smaller than the current {}",
                                ByteSize::new(now)
                            ),
                        )));
                    }
                }
                if old.size.is_some() && new.size.is_none() {
                    return Err(ServiceError::Invalid(ValidationError::new(
                        "spec.size",
                        "cannot be removed once set",
                    )));
                }
                let spec_changed = *old != *new;
                let changed = spec_changed
                    || current.metadata.labels != volume.metadata.labels
                    || current.metadata.annotations != volume.metadata.annotations;
                current.spec = new.clone();
                current.metadata.labels = volume.metadata.labels.clone();
                current.metadata.annotations = volume.metadata.annotations.clone();
                if spec_changed {
                    current.metadata.generation += 1;
                }
                Ok(changed)
            })
            .await
    }

    /// Grows a volume to `size` (online when it is attached to a running VM).
    pub async fn resize_volume(&self, name: &str, size: ByteSize) -> Result<Volume, ServiceError> {
        let mut volume = self.volumes.get(name).await?;
        if volume.spec.kind == VolumeKind::Weights {
            return Err(ServiceError::Invalid(ValidationError::new(
                "spec.size",
                "a weights volume is an exact copy of its image and cannot be resized",
            )));
        }
        volume.spec.size = Some(size);
        volume.metadata.resource_version = 0;
        self.update_volume(volume).await
    }

    /// Marks a volume for deletion; refused while a VM uses it.
    pub async fn delete_volume(&self, name: &str) -> Result<Volume, ServiceError> {
        self.volumes.get(name).await?;
        let (vms, _) = self.vms.list("").await?;
        if let Some(vm) = vms
            .iter()
            .find(|vm| vm.spec.volume_names().any(|v| v.as_str() == name))
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "volume {name:?} is used by VM {:?}: detach it (VM stopped) or delete the VM first",
                vm.metadata.name.as_str()
            )));
        }
        self.volumes.mark_deleting(name).await
    }
}
