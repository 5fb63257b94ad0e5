use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use corral_contract::{Accel, Arch, Boot, DiskFormat, Machine, Power, VmSpec};
use serde::{Deserialize, Serialize};

/// Everything a backend needs to launch one VM, resolved to host paths.
///
/// Controllers build it from the declared [`VmSpec`] (volume names resolved to files, networks to
/// devices); the backend never reads the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The VM's uid: names its runtime directory and never changes.
    pub uid: String,
    /// The VM's name, shown in process listings.
    pub name: String,
    /// Guest architecture.
    pub arch: Arch,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator asked for; `auto` is resolved by the backend.
    pub accel: Accel,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// What the guest boots.
    pub boot: BootSource,
    /// Block devices, in order (`/dev/vda`, `/dev/vdb` …).
    pub disks: Vec<DiskConfig>,
    /// Back guest RAM with a shared file at this path (guest memory introspection); see
    /// [`guest_ram_name`].
    pub memory_file: Option<PathBuf>,
    /// Leave the vCPUs paused after start.
    pub start_paused: bool,
    /// Start as the target of a live migration: the emulator waits for the VM's state
    /// ([`Hypervisor::migrate_incoming`](crate::Hypervisor::migrate_incoming)) and its vCPUs
    /// stay paused after it arrived, until the caller resumes them.
    #[serde(default)]
    pub incoming: bool,
    /// Start from saved RAM and device state (a template's, see
    /// [`Hypervisor::save_state`](crate::Hypervisor::save_state)) instead of booting: the
    /// emulator reads it from this file at start and the guest runs on where it was saved.
    /// The devices must be the ones the state was saved from. Not part of a launch record.
    #[serde(skip)]
    pub restore: PassedFiles,
    /// Network interfaces, in order.
    #[serde(default)]
    pub nics: Vec<crate::NicConfig>,
    /// Host files the controller opened and checked for this launch; `/dev/fd/N` paths in
    /// `boot` and `disks` name them, so QEMU reads the very file that was checked. Not part of
    /// a launch record.
    #[serde(skip)]
    pub files: PassedFiles,
    /// Host folders the guest mounts (virtiofs).
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
}

/// A host folder the guest mounts by `tag`, served by a virtiofsd of its own that runs as the
/// folder's owner, mapped to the guest's root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareConfig {
    /// The tag the guest mounts.
    pub tag: String,
    /// The folder (as it was resolved when it was opened, for the launch record).
    pub path: PathBuf,
    /// Serve it read-only.
    pub read_only: bool,
    /// Who owns it: virtiofsd runs as this user, who is root in the guest's view.
    pub owner: crate::FileOwner,
    /// The folder opened and checked by the controller; virtiofsd starts in it. Not part of
    /// a launch record.
    #[serde(skip)]
    pub dir: PassedFiles,
}

/// Open files handed to QEMU by descriptor (see [`VmConfig::files`]).
#[derive(Debug, Clone, Default)]
pub struct PassedFiles(Vec<Arc<OwnedFd>>);

impl PartialEq for PassedFiles {
    fn eq(&self, other: &Self) -> bool {
        self.raw_fds() == other.raw_fds()
    }
}

impl PassedFiles {
    /// Keeps `file` open for the launch and returns the path QEMU opens it by.
    pub fn pass(&mut self, file: impl Into<OwnedFd>) -> PathBuf {
        let fd: OwnedFd = file.into();
        let path = PathBuf::from(format!("/dev/fd/{}", fd.as_raw_fd()));
        self.0.push(Arc::new(fd));
        path
    }

    /// The first descriptor kept.
    pub fn first(&self) -> Option<RawFd> {
        self.0.first().map(|fd| fd.as_raw_fd())
    }

    /// The descriptors QEMU must inherit.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.0.iter().map(|fd| fd.as_raw_fd()).collect()
    }
}

/// What the guest boots from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootSource {
    /// Direct kernel boot.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// An initial ramdisk.
        initrd: Option<PathBuf>,
        /// The kernel command line.
        cmdline: Option<String>,
    },
    /// Firmware boots the first disk in [`VmConfig::disks`].
    Firmware,
}

/// One virtio block device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub readonly: bool,
    /// Serial number the guest sees.
    pub serial: Option<String>,
}

/// Guesses a disk's format from its file name: `.raw`/`.img` are raw, everything else qcow2.
pub fn format_from_extension(path: &std::path::Path) -> DiskFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("raw" | "img") => DiskFormat::Raw,
        _ => DiskFormat::Qcow2,
    }
}

impl VmConfig {
    /// Builds the launch description of a VM from its declared spec.
    pub fn from_spec(uid: &str, name: &str, spec: &VmSpec) -> Self {
        let (boot, disks) = match &spec.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => (
                BootSource::Kernel {
                    kernel: kernel.clone(),
                    initrd: initrd.clone(),
                    cmdline: cmdline.clone(),
                },
                Vec::new(),
            ),
            // The controller resolves the volume and puts its disk first.
            Boot::Volume { .. } => (BootSource::Firmware, Vec::new()),
            Boot::Disk { path, format } => {
                // Formats are always given to QEMU, never probed: probing a raw image that
                // looks like qcow2 is a known escape.
                let format = format.unwrap_or_else(|| format_from_extension(path));
                // A host file given by path is never written: it may be an image-store blob
                // or a file other VMs boot too.
                let disk = DiskConfig {
                    path: path.clone(),
                    format,
                    readonly: true,
                    serial: None,
                };
                (BootSource::Firmware, vec![disk])
            }
        };
        VmConfig {
            uid: uid.to_owned(),
            name: name.to_owned(),
            arch: spec.arch,
            machine: spec.machine(),
            accel: spec.accel,
            cpus: spec.cpus,
            memory_bytes: spec.memory.as_u64(),
            boot,
            disks,
            memory_file: None,
            start_paused: spec.power == Power::Paused,
            incoming: false,
            restore: PassedFiles::default(),
            nics: Vec::new(),
            files: PassedFiles::default(),
            shares: Vec::new(),
        }
    }
}

/// The name of VM `uid`'s guest RAM file (in `/dev/shm`) on node `node`: `corral-<uid>.<node>`.
/// The node is in the name because two nodes may share a host (and its `/dev/shm`) — in tests,
/// a demo, or a migration between two agents on one machine — and the VM's RAM file on the
/// target must not be the source's, nor be removed when the source's QEMU is cleaned up.
pub fn guest_ram_name(uid: &str, node: Option<&str>) -> String {
    match node {
        Some(node) => format!("corral-{uid}.{node}"),
        None => format!("corral-{uid}"),
    }
}
