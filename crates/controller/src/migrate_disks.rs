//! The VM's node-local volumes moving with a live migration (see `migrate.rs` for the
//! steps): the target makes an empty qcow2 file of the same virtual size for each volume,
//! at the path the volume has on that node, and exports them over NBD; the source mirrors
//! its disks into them (sync `full`: the target's file holds nothing, and need not hold the
//! volume's image either) before the RAM moves. After the switch of `status.node`, the
//! volumes point at the target's files and the source removes its own; a migration that
//! did not end on the target removes the target's files.

use std::path::PathBuf;

use corral_contract::{DiskFormat, MigrationPhase, Vm, Volume, VolumeKind};
use corral_hypervisor::{DiskExport, DiskMirror, DiskMirrorInfo, MirrorSync, VmConfig};
use corral_service::{StorageService, VolumeFormat};

use crate::VmController;
use crate::disks::attached_volumes;

/// One node-local volume of the VM, as attached.
pub(crate) struct LocalDisk {
    /// Its index in the VM's disks (QEMU node `disk<i>`).
    pub index: usize,
    /// The Volume.
    pub volume: Volume,
}

impl LocalDisk {
    /// The file a migration makes for this volume on the node whose settings `storage` has:
    /// a qcow2, whatever the source's file is.
    fn incoming_path(&self, storage: &StorageService) -> Result<PathBuf, String> {
        storage
            .config()
            .volume_file_as(&self.volume, VolumeFormat::Disk(DiskFormat::Qcow2))
            .map_err(|e| e.to_string())
    }
}

impl VmController {
    fn volume_storage(&self) -> Result<&StorageService, String> {
        self.storage
            .as_ref()
            .ok_or_else(|| "this node has no storage service to move volumes with".into())
    }

    /// The VM's volumes on this node's disk, in disk order: all but those of a shared pool,
    /// which every node reaches already. `Err`: why they cannot move.
    pub(crate) async fn local_disks(&self, vm: &Vm) -> Result<Vec<LocalDisk>, String> {
        let attached = attached_volumes(&vm.spec);
        if attached.is_empty() {
            return Ok(Vec::new());
        }
        let storage = self.volume_storage()?;
        let mut out = Vec::new();
        for a in attached {
            let volume = storage
                .volumes
                .get(&vm.metadata.key_of(&a.volume))
                .await
                .map_err(|e| e.to_string())?;
            if volume.status.shared {
                continue;
            }
            if a.readonly || volume.spec.kind == VolumeKind::Weights {
                return Err(format!(
                    "its read-only volume {} cannot move with it yet; stop it and start it on \
                     the other node instead",
                    a.volume
                ));
            }
            out.push(LocalDisk {
                index: a.index,
                volume,
            });
        }
        Ok(out)
    }

    /// Target: makes an empty qcow2 file for each of `disks` at its path on this node and
    /// points `config` at them. A file already there (storage shared with the source, or a
    /// volume made here) is never touched: the move is refused.
    pub(crate) async fn make_incoming_disks(
        &self,
        disks: &[LocalDisk],
        config: &mut VmConfig,
    ) -> Result<(), String> {
        let storage = self.volume_storage()?.clone();
        let owner = self.hv.file_owner();
        for disk in disks {
            let name = disk.volume.metadata.name.as_str();
            let path = disk.incoming_path(&storage)?;
            let size = disk
                .volume
                .status
                .size
                .ok_or_else(|| format!("volume {name} has no size yet"))?;
            let Some(slot) = config.disks.get_mut(disk.index) else {
                return Err(format!("volume {name} is not among the VM's disks"));
            };
            let qemu_img = storage.qemu_img().clone();
            let file = path.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                use std::os::unix::fs::OpenOptionsExt;
                // create_new: a file there is someone's; it is never overwritten.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&file)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => format!(
                            "{} is already there (is the volumes directory shared with the \
                             source?)",
                            file.display()
                        ),
                        _ => format!("creating {}: {e}", file.display()),
                    })?;
                let made = qemu_img
                    .create(&file, "qcow2", Some(size), None)
                    .map_err(|e| e.to_string())
                    .and_then(|()| match owner {
                        Some(o) => std::os::unix::fs::chown(&file, Some(o.uid), Some(o.gid))
                            .map_err(|e| format!("giving {} to QEMU: {e}", file.display())),
                        None => Ok(()),
                    });
                if made.is_err() {
                    let _ = std::fs::remove_file(&file);
                }
                made
            })
            .await
            .map_err(|e| e.to_string())??;
            slot.path = path;
            slot.format = DiskFormat::Qcow2;
        }
        Ok(())
    }

    /// Target: removes the files a migration made here for `vm` that are not (or not yet)
    /// its volumes' files. Safe to call again and after a restart.
    pub(crate) async fn remove_incoming_disks(&self, vm: &Vm) {
        let Ok(disks) = self.local_disks(vm).await else {
            return;
        };
        let Ok(storage) = self.volume_storage() else {
            return;
        };
        for disk in disks {
            let Ok(path) = disk.incoming_path(storage) else {
                continue;
            };
            if disk.volume.status.path.as_deref() == path.to_str() {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(vm = %vm.metadata.key(), path = %path.display(), "removed a disk made for a migration that did not end here")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a disk made for a migration")
                }
            }
        }
    }

    /// Target, after the switch: the VM's volumes point at the files that came here.
    pub(crate) async fn take_moved_volumes(&self, vm: &Vm) -> Result<(), String> {
        let disks = self.local_disks(vm).await?;
        let storage = self.volume_storage()?;
        let me = self.config.node.clone();
        for disk in disks {
            let path = disk.incoming_path(storage)?.display().to_string();
            if disk.volume.status.path.as_deref() == Some(path.as_str())
                && disk.volume.status.node == me
            {
                continue;
            }
            storage
                .volumes
                .modify(&disk.volume.metadata.key(), 0, |v| {
                    v.status.path = Some(path.clone());
                    v.status.format = Some(DiskFormat::Qcow2);
                    v.status.node = me.clone();
                    Ok(true)
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(vm = %vm.metadata.key(), volume = %disk.volume.metadata.key(), %path, "the volume moved here with its VM");
        }
        Ok(())
    }

    /// Source, after the switch: removes this node's files of the VM's volumes.
    pub(crate) async fn remove_moved_away_disks(&self, vm: &Vm) {
        let Ok(disks) = self.local_disks(vm).await else {
            return;
        };
        let Ok(storage) = self.volume_storage() else {
            return;
        };
        // The file here was in the format it had before the move, which the volume's status
        // may no longer say (the target writes qcow2): whichever of the two is here.
        let files = disks.iter().flat_map(|disk| {
            [DiskFormat::Qcow2, DiskFormat::Raw].map(|f| {
                storage
                    .config()
                    .volume_file_as(&disk.volume, VolumeFormat::Disk(f))
            })
        });
        for path in files.flatten() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(vm = %vm.metadata.key(), path = %path.display(), "removed the disk that moved away")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a disk that moved away")
                }
            }
        }
    }

    /// Target: exports the disks for the source to mirror into; their address.
    pub(crate) async fn export_incoming_disks(
        &self,
        uid: &str,
        disks: &[LocalDisk],
        tls: bool,
    ) -> Result<String, String> {
        let host = self.config.migration_address;
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port on {host}: {e}"))?
            .port();
        let export = DiskExport {
            host: host.to_string(),
            port,
            disks: disks.iter().map(|d| d.index).collect(),
            tls,
        };
        self.hv
            .export_disks(uid, &export)
            .await
            .map_err(|e| format!("exporting the disks: {e}"))?;
        Ok(match host {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        })
    }

    /// Source: starts mirroring the disks to `address` (`HOST:PORT`) at up to `bandwidth`
    /// bytes a second, checking the target's certificate for `peer` when the migration is
    /// TLS.
    pub(crate) async fn start_mirrors(
        &self,
        uid: &str,
        disks: &[LocalDisk],
        address: &str,
        tls_peer: Option<String>,
        bandwidth: Option<u64>,
    ) -> Result<(), String> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_start_matches('[').trim_end_matches(']'),
                    p.parse().ok()?,
                ))
            })
            .ok_or_else(|| format!("the target's disk address {address} is not HOST:PORT"))?;
        let mirror = DiskMirror {
            host: host.to_owned(),
            port,
            disks: disks.iter().map(|d| (d.index, MirrorSync::Full)).collect(),
            tls_hostname: tls_peer,
            bandwidth,
        };
        self.hv
            .mirror_disks(uid, &mirror)
            .await
            .map_err(|e| format!("mirroring the disks: {e}"))
    }
}

/// The disks' progress, summed: (copied, total, all ready).
pub(crate) fn mirror_progress(mirrors: &[DiskMirrorInfo]) -> (u64, u64, bool) {
    let copied = mirrors.iter().map(|m| m.copied).sum();
    let total = mirrors.iter().map(|m| m.total).sum();
    let ready = !mirrors.is_empty() && mirrors.iter().all(|m| m.ready);
    (copied, total, ready)
}

/// Whether `vm` came to node `me` by a migration that carried disks.
pub(crate) fn moved_here_with_disks(vm: &Vm, me: &str) -> bool {
    vm.status.migration.as_ref().is_some_and(|m| {
        m.phase == MigrationPhase::Completed && m.target == me && m.disk_address.is_some()
    })
}

/// Whether a migration of `vm` towards node `me` ended without moving it here.
pub(crate) fn failed_towards(vm: &Vm, me: &str) -> bool {
    vm.status.node.as_deref() != Some(me)
        && vm.status.migration.as_ref().is_some_and(|m| {
            m.target == me
                && m.disk_address.is_some()
                && matches!(m.phase, MigrationPhase::Failed | MigrationPhase::Cancelled)
        })
}
