use std::time::Duration;

use corral_contract::Accel;
use serde::{Deserialize, Serialize};

/// The unprivileged identity a backend runs its emulators as. The VM files an emulator opens
/// by itself (volumes, seeds, guest RAM files) belong to it, mode 0600, so that it can use
/// them without ever holding root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    /// User id.
    pub uid: u32,
    /// Primary group id; the directories on the way to VM files are searchable by this group.
    pub gid: u32,
}

/// How an outgoing live migration may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationLimits {
    /// Longest the guest may be stopped for the switch, in milliseconds.
    pub downtime_ms: u64,
    /// Most bytes a second the migration may send (`None`: the emulator's default).
    pub bandwidth: Option<u64>,
}

/// The credentials a node's emulators encrypt and authenticate live migrations with: the
/// node's certificate from the cluster CA (valid for TLS clients and servers) and the CA.
#[derive(Clone, PartialEq, Eq)]
pub struct MigrationTls {
    /// The cluster CA certificate, PEM: the only one a peer's certificate may chain to.
    pub ca: String,
    /// This node's certificate, PEM (its name is the node's).
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

impl std::fmt::Debug for MigrationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationTls").finish_non_exhaustive()
    }
}

/// One side of a live migration, set up before the target listens or the source sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSetup {
    /// TLS on the stream (the target accepts any client certificate the CA signed).
    pub tls: Option<MigrationTls>,
    /// This side receives (`true`) or sends.
    pub incoming: bool,
    /// The name the target's certificate must carry (the source checks it): the target node's.
    pub peer: String,
    /// Slow the vCPUs down when the migration does not converge (source only).
    pub auto_converge: bool,
    /// Allow post-copy (on both sides).
    pub postcopy: bool,
}

/// How a disk mirror copies a disk into the target's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MirrorSync {
    /// Every block: the target file starts empty.
    Full,
    /// Only what the disk's own layer holds: the target file is a clone backed by the same
    /// base image, so what the base holds is already there.
    Top,
}

/// The target of a live migration exporting its disks, for the source to mirror into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskExport {
    /// Address the NBD server listens on.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// Indexes (into [`VmConfig::disks`](crate::VmConfig)) of the disks to export writable.
    pub disks: Vec<usize>,
    /// Serve with the TLS credentials [`Hypervisor::prepare_migration`](crate::Hypervisor)
    /// loaded (clients need a certificate of the same CA).
    pub tls: bool,
}

/// The source of a live migration mirroring its disks into the target's export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMirror {
    /// The target's NBD server.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// The disks to mirror (indexes into [`VmConfig::disks`](crate::VmConfig)) and how.
    pub disks: Vec<(usize, MirrorSync)>,
    /// The name the target's certificate must carry, with TLS from the credentials
    /// [`Hypervisor::prepare_migration`](crate::Hypervisor) loaded; `None` for plain TCP.
    pub tls_hostname: Option<String>,
    /// At most this many bytes a second for all the mirrors together (shared evenly among
    /// the disks); `None` for no limit. The node's migration bandwidth, as for the RAM.
    pub bandwidth: Option<u64>,
}

/// Where one disk's mirror stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMirrorInfo {
    /// The disk's index in [`VmConfig::disks`](crate::VmConfig).
    pub disk: usize,
    /// Bytes copied so far.
    pub copied: u64,
    /// Bytes to copy in all (grows while the guest writes).
    pub total: u64,
    /// Everything was copied once; new writes follow as they come.
    pub ready: bool,
    /// Why the mirror failed.
    pub error: Option<String>,
}

/// Where an outgoing live migration stands, as the emulator reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `device`, `completed`, `failed`, `cancelling`, `cancelled` …
    pub status: String,
    /// RAM bytes sent so far.
    pub transferred: u64,
    /// RAM bytes still to send.
    pub remaining: u64,
    /// Guest RAM in bytes.
    pub total: u64,
    /// Pages the guest dirties per second.
    pub dirty_pages_rate: u64,
    /// Passes over RAM begun (1 during the first; 2 once the first is sent).
    pub dirty_sync_count: u64,
    /// Milliseconds since the migration began (total once completed).
    pub total_time_ms: u64,
    /// Milliseconds the guest was stopped for the switch (once completed).
    pub downtime_ms: Option<u64>,
    /// Milliseconds of downtime expected at the current rates.
    pub expected_downtime_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl MigrationInfo {
    /// The migration ended well: the target has the VM.
    pub fn completed(&self) -> bool {
        self.status == "completed"
    }

    /// The migration ended without moving the VM; the source runs on.
    pub fn failed(&self) -> bool {
        matches!(self.status.as_str(), "failed" | "cancelled")
    }
}

/// What a backend reports about a VM it started or adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's uid.
    pub uid: String,
    /// Host pid of the process that runs it.
    pub pid: u32,
    /// The accelerator actually in use (never `auto`).
    pub accel: Accel,
    /// Version of the emulator, e.g. `7.2.22`.
    pub emulator_version: String,
    /// Whether the VM was taken over rather than started by this backend instance.
    pub adopted: bool,
}

/// What a VM is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// vCPUs are paused (by request, or by the emulator, e.g. on an I/O error).
    Paused {
        /// The emulator's reason, e.g. `paused`, `io-error`, `guest-panicked`.
        reason: String,
    },
    /// The guest shut down and the process is on its way out.
    ShuttingDown,
    /// The process is gone.
    Exited(Exit),
}

/// How a VM's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, when it exited normally and the code is known.
    pub code: Option<i32>,
    /// Signal that killed it, when it was killed and that is known.
    pub signal: Option<i32>,
    /// Why, in words: the guest powered off, the host asked it to quit, killed by SIGKILL …
    pub reason: String,
}

impl Exit {
    /// Whether this exit looks like a failure (killed, crashed or non-zero), rather than a
    /// guest power-off or a stop Corral asked for. An end nobody saw the cause of (neither a
    /// code nor a signal known: an adopted QEMU that vanished without announcing a shutdown)
    /// counts as a failure, so a restart policy treats adopted VMs like its own children.
    pub fn is_failure(&self) -> bool {
        match (self.code, self.signal) {
            (_, Some(_)) => true,
            (Some(code), None) => code != 0,
            (None, None) => true,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "killed by signal {sig} ({})", self.reason),
            (Some(code), None) => write!(f, "exited with code {code} ({})", self.reason),
            (None, None) => write!(f, "exited ({})", self.reason),
        }
    }
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// ACPI power button; after `timeout`, ask the emulator to quit; then kill it.
    Graceful {
        /// How long the guest gets to shut down.
        timeout: Duration,
    },
    /// Quit at once (the guest gets no say); kill the process if that does not work.
    Force,
}

/// Something that happened to a VM, as seen by its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEvent {
    /// The VM's uid.
    pub uid: String,
    /// What happened.
    pub kind: VmEventKind,
}

/// The kinds of [`VmEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEventKind {
    /// vCPUs paused.
    Paused,
    /// vCPUs resumed.
    Resumed,
    /// The guest was reset (by itself or by request).
    Reset,
    /// The guest reported a panic.
    GuestPanicked,
    /// The process ended.
    Exited(Exit),
}
