//! The host files a VM's spec names (kernel, initrd, boot disk), opened when it starts.
//!
//! Admission checked them when the spec was written; here they are opened again under the same
//! rules ([`HostPaths`]) at the moment of use, and QEMU gets the opened descriptor
//! (`/dev/fd/N`), so a file swapped for a symlink, or a directory made to point elsewhere, in
//! between is refused instead of followed.

use std::path::PathBuf;

use corral_contract::{DiskFormat, VmSpec};
use corral_hypervisor::{BootSource, FileOwner, PassedFiles, ShareConfig, VmConfig};
use corral_storage::{HostAccess, HostPathError, HostPaths};

use crate::ControllerError;

/// Replaces the host paths in `config` (built from `spec`) by descriptors opened under `rules`.
///
/// Which caller wrote the spec is not recorded, so what admission let through decides: a path
/// below an allowed directory is opened beneath it whoever wrote it (only such paths pass a
/// confined caller's admission); any other path was admitted for an admin. For everyone the
/// file must still be a regular file that is not corrald's own state.
pub fn open(
    rules: &HostPaths,
    spec: &VmSpec,
    config: &mut VmConfig,
) -> Result<(), ControllerError> {
    let mut open = |field: &'static str, path: &PathBuf| -> Result<PathBuf, ControllerError> {
        let file = rules
            .open(path, HostAccess::Admin)
            .map_err(|source| ControllerError::HostFile { field, source })?;
        Ok(config.files.pass(file.file))
    };
    let (mut kernel_path, mut initrd_path) = (None, None);
    if let BootSource::Kernel { kernel, initrd, .. } = &config.boot {
        kernel_path = Some(open("spec.boot.kernel.kernel", kernel)?);
        if let Some(initrd) = initrd {
            initrd_path = Some(open("spec.boot.kernel.initrd", initrd)?);
        }
    }
    if let (Some(k), BootSource::Kernel { kernel, initrd, .. }) = (kernel_path, &mut config.boot) {
        *kernel = k;
        if let Some(i) = initrd_path {
            *initrd = Some(i);
        }
    }
    if let corral_contract::Boot::Disk { .. } = &spec.boot {
        let Some(disk) = config.disks.first().cloned() else {
            return Ok(());
        };
        if rules.is_confined(&disk.path) && disk.format != DiskFormat::Raw {
            return Err(ControllerError::HostFile {
                field: "spec.boot.disk.format",
                source: HostPathError::Refused {
                    path: disk.path,
                    what: "a qcow2 disk below an allowed directory (its header could name other host files): only raw disks boot by path there",
                },
            });
        }
        let path = rules
            .open(&disk.path, HostAccess::Admin)
            .map_err(|source| ControllerError::HostFile {
                field: "spec.boot.disk.path",
                source,
            })?;
        let passed = config.files.pass(path.file);
        if let Some(first) = config.disks.first_mut() {
            first.path = passed;
            first.readonly = true;
        }
    }
    Ok(())
}

/// Opens the folders the spec shares under `rules` (as admission let them through, like
/// [`open`]) and adds them to `config`: each served from the opened directory, as its owner.
pub fn open_shares(
    rules: &HostPaths,
    spec: &VmSpec,
    config: &mut VmConfig,
) -> Result<(), ControllerError> {
    for share in &spec.shares {
        let dir = rules
            .open_dir(&share.host_path, HostAccess::Admin)
            .map_err(|source| ControllerError::HostFile {
                field: "spec.shares.host_path",
                source,
            })?;
        let mut passed = PassedFiles::default();
        passed.pass(dir.fd);
        config.shares.push(ShareConfig {
            tag: share.tag.clone(),
            path: dir.real_path,
            read_only: share.read_only,
            owner: FileOwner {
                uid: dir.uid,
                gid: dir.gid,
            },
            dir: passed,
        });
    }
    Ok(())
}
