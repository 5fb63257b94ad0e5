//! Templates: an Image saved from a running VM — its disk as a standalone qcow2 (what volumes
//! clone), and its RAM and device state as a second blob of the image store — so that new
//! VMs start where it was saved instead of booting (`corral template create`, `corral vm
//! create --template`).
//!
//! The save happens on the node that runs the VM, through the hypervisor: the guest is
//! stopped, its state streamed out by QEMU's migration, its disk copied while it is still
//! stopped (so disk and RAM belong to the same instant), and then it runs on. Only the
//! image's own project's VMs may be saved, and only one with a single volume and no shared
//! folders: a VM started from the template gets exactly those devices.

use std::path::PathBuf;
use std::sync::Arc;

use corral_contract::{
    Boot, Image, ImageSource, Phase, Power, ResourceName, TemplateStatus, ValidationError, Vm,
};
use corral_hypervisor::Hypervisor;
use corral_storage::{Digest, HostAccess};

use super::image::ImportProgress;

/// How long saving a template waits for a VM that is on its way up.
const TEMPLATE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
use super::{StorageService, blocking};
use crate::ServiceError;

impl StorageService {
    /// Lets this service save templates of the VMs `hypervisor` runs (a node's corrald).
    #[must_use]
    pub fn with_hypervisor(mut self, hypervisor: Arc<dyn Hypervisor>) -> Self {
        self.hypervisor = Some(hypervisor);
        self
    }

    /// Saves template `image` from the running VM its source names and creates it.
    pub(super) async fn create_template(
        &self,
        image: Image,
        progress: ImportProgress,
        access: HostAccess,
    ) -> Result<Image, ServiceError> {
        let ImageSource::Template(source) = &image.spec.source else {
            unreachable!("create_template is called for template sources only");
        };
        let field = |message: String| {
            ServiceError::Invalid(ValidationError::new("spec.source.template.vm", message))
        };
        let Some(hypervisor) = self.hypervisor.clone() else {
            return Err(field(
                "a template is saved by the corrald that runs its VM, and this one runs none \
                 (--role server): send the request to the VM's node"
                    .into(),
            ));
        };
        let name = image.metadata.name.to_string();
        let vm = self
            .running_vm(&image.metadata.key_of(&source.vm), &source.vm)
            .await?;
        let volume = template_volume(&vm).map_err(field)?;
        let volume = self.volumes.get(&vm.metadata.key_of(&volume)).await?;
        if volume.status.path.is_none() {
            return Err(field(format!(
                "the VM's volume {} has no file yet",
                volume.metadata.name
            )));
        }
        let disk = self.config.volume_file(&volume)?;
        self.check_new_image(&image, access).await?;

        let work = self
            .config
            .data_dir
            .join(format!("template-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&work).map_err(|source| ServiceError::Io {
            context: format!("creating {}", work.display()),
            source,
        })?;
        let saved = self
            .save(&*hypervisor, &vm, &disk, &work, &name, progress)
            .await;
        let result = match saved {
            Ok((state, flat, paused)) => {
                let template = TemplateStatus {
                    state_digest: state.digest.to_string(),
                    state_size: state.size,
                    vm: vm.metadata.name.to_string(),
                    spec: Box::new(vm.spec.clone()),
                    paused_ms: paused.as_millis() as u64,
                };
                let stored = self.store_template_disk(image, &flat, template).await;
                if stored.is_err() && !state.existed {
                    self.images
                        .strategy()
                        .remove_blob_if_unused(&**self.images.store(), &state.digest)
                        .await;
                }
                stored
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&work);
        result
    }

    /// VM `key` once it runs. One on its way up (asked to run, not there yet: a template
    /// made right after its VM, or in the same manifest) is waited for, up to
    /// [`TEMPLATE_WAIT`]; one that will not run by itself is refused at once.
    async fn running_vm(&self, key: &str, name: &ResourceName) -> Result<Vm, ServiceError> {
        let deadline = tokio::time::Instant::now() + TEMPLATE_WAIT;
        loop {
            let vm: Vm = self.vms.get(key).await?;
            if vm.status.phase == Phase::Running {
                return Ok(vm);
            }
            let coming = vm.spec.power == Power::Running
                && matches!(vm.status.phase, Phase::Pending | Phase::Starting);
            if !coming || tokio::time::Instant::now() >= deadline {
                let rule = if coming {
                    format!(
                        "a template is saved from a running VM, and this one did not run within \
                         {}s",
                        TEMPLATE_WAIT.as_secs()
                    )
                } else {
                    "a template is saved from a running VM: start it (it is not asked to run)"
                        .into()
                };
                return Err(ServiceError::WrongState {
                    kind: "VM",
                    name: name.to_string(),
                    state: vm.status.phase.to_string(),
                    rule,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Stops the guest, streams its state into the image store and copies its disk to
    /// `work/disk.qcow2` while it is stopped; returns the state's blob, the disk copy and how
    /// long the guest was paused.
    async fn save(
        &self,
        hypervisor: &dyn Hypervisor,
        vm: &Vm,
        disk: &std::path::Path,
        work: &std::path::Path,
        name: &str,
        progress: ImportProgress,
    ) -> Result<(corral_storage::Blob, PathBuf, std::time::Duration), ServiceError> {
        let state_path = work.join("state");
        let flat = work.join("disk.qcow2");
        let into = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&state_path)
            .map_err(|source| ServiceError::Io {
                context: format!("creating {}", state_path.display()),
                source,
            })?;
        let qemu_img = self.qemu_img.clone();
        let copied = std::sync::Mutex::new(None);
        let (from, to) = (disk.to_path_buf(), flat.clone());
        let paused = hypervisor
            .save_state(
                vm.metadata.uid.as_str(),
                into,
                Box::new(|| {
                    let result = qemu_img.flatten(&from, &to);
                    *copied.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                }),
            )
            .await
            .map_err(|e| ServiceError::import(name, e))?;
        match copied.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(ServiceError::import(name, e)),
            None => return Err(ServiceError::import(name, "the disk was not copied")),
        }
        let cas = self.cas.clone();
        let n = name.to_owned();
        let state = blocking(move || {
            cas.import_file(&state_path, |b| progress.set(b))
                .map_err(|e| ServiceError::import(&n, e))
        })
        .await?;
        tracing::info!(image = name, vm = %vm.metadata.name, state = state.size, paused_ms = paused.as_millis() as u64, "template saved");
        Ok((state, flat, paused))
    }

    /// The state blob of template `image`, for a VM starting from it.
    pub fn template_state(&self, image: &Image) -> Result<(PathBuf, Digest), ServiceError> {
        let template = image.status.template.as_ref().ok_or_else(|| {
            ServiceError::Invalid(ValidationError::new(
                "spec.template",
                format!(
                    "image {} is not a template (make one with corral template create)",
                    image.metadata.name
                ),
            ))
        })?;
        let digest: Digest = template.state_digest.parse()?;
        Ok((self.cas.path(&digest), digest))
    }
}

/// The one volume a template of `vm` saves: its boot volume, or its only volume.
fn template_volume(vm: &Vm) -> Result<corral_contract::ResourceName, String> {
    if !vm.spec.shares.is_empty() {
        return Err(format!(
            "vm/{} has shared folders, whose state lives outside the VM: a template cannot \
             hold them",
            vm.metadata.name
        ));
    }
    let mut volumes: Vec<_> = vm.spec.volumes.iter().map(|a| a.volume.clone()).collect();
    match &vm.spec.boot {
        Boot::Volume { volume } => volumes.insert(0, volume.clone()),
        Boot::Disk { .. } => {
            return Err(format!(
                "vm/{} boots a host disk file: a template saves a VM that boots a volume or a \
                 kernel with one volume",
                vm.metadata.name
            ));
        }
        Boot::Kernel { .. } => {}
    }
    match volumes.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "vm/{} has no volume: a template saves a VM's disk with its RAM",
            vm.metadata.name
        )),
        _ => Err(format!(
            "vm/{} has {} volumes: a template saves a VM with exactly one",
            vm.metadata.name,
            volumes.len()
        )),
    }
}
