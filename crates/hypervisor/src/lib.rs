//! The narrow interface between Corral's controllers and whatever runs VMs.
//!
//! Controllers describe a VM as a [`VmConfig`] — a host-level, fully resolved launch description
//! built from a [`corral_contract::VmSpec`] — and drive it through the [`Hypervisor`] trait:
//! start, adopt after a restart, pause, resume, reset, stop, and watch for exits.
//!
//! Two implementations exist: the QEMU backend (`corral-qemu`), and [`FakeHypervisor`] here, for
//! controller unit tests and scale simulation. End-to-end tests always use the real one.
//!
//! ```
//! use corral_hypervisor::{FakeHypervisor, Hypervisor, StopMode, VmConfig, VmState};
//! use corral_contract::{Boot, VmSpec};
//!
//! # tokio_test_block_on(async {
//! let spec = VmSpec::builder(Boot::kernel("/boot/vmlinuz")).build().unwrap();
//! let config = VmConfig::from_spec("0b1c", "web-1", &spec);
//! let hv = FakeHypervisor::new();
//! let info = hv.start(&config).await.unwrap();
//! assert!(info.pid > 0);
//! assert_eq!(hv.state("0b1c").await.unwrap(), VmState::Running);
//! hv.stop("0b1c", StopMode::Force).await.unwrap();
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
#![deny(missing_docs)]

mod config;
mod console;
mod error;
mod fake;
mod memory;
mod net;
mod types;

pub use config::{
    BootSource, DiskConfig, PassedFiles, ShareConfig, VmConfig, format_from_extension,
    guest_ram_name,
};
pub use console::{Console, ConsoleInput, ConsolePublisher};
pub use corral_contract::DiskFormat;
pub use error::Error;
pub use fake::FakeHypervisor;
pub use memory::{GuestRamMap, RamRegion};
pub use net::{HostForward, NetBackend, NicConfig};
pub use types::{
    DiskExport, DiskMirror, DiskMirrorInfo, Exit, FileOwner, MigrationInfo, MigrationLimits,
    MigrationSetup, MigrationTls, MirrorSync, StopMode, VmEvent, VmEventKind, VmInfo, VmState,
};

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

/// What a controller needs from a hypervisor backend. Every method is keyed by the VM's uid.
///
/// Implementations must be safe to call concurrently for different VMs, must never start a
/// second process for a uid that already runs, and must leave nothing behind when `start`
/// fails.
#[async_trait]
pub trait Hypervisor: Send + Sync + std::fmt::Debug + 'static {
    /// Launches the VM and returns once it runs (or is paused, when `config.start_paused`).
    async fn start(&self, config: &VmConfig) -> Result<VmInfo, Error>;

    /// Takes over a VM that a previous instance of the backend started and that is still
    /// running, after verifying that it is what the runtime directory says it is.
    async fn adopt(&self, uid: &str) -> Result<VmInfo, Error>;

    /// The uids of VMs launched on this host and not cleaned up since (running, or ended while
    /// nobody watched), for adoption at start-up.
    async fn list(&self) -> Result<Vec<String>, Error>;

    /// What the VM is doing now, from the process and the monitor.
    async fn state(&self, uid: &str) -> Result<VmState, Error>;

    /// Pauses the guest's vCPUs.
    async fn pause(&self, uid: &str) -> Result<(), Error>;

    /// Resumes a paused guest.
    async fn resume(&self, uid: &str) -> Result<(), Error>;

    /// Hard-resets the guest, as the reset button would.
    async fn reset(&self, uid: &str) -> Result<(), Error>;

    /// Stops the VM and returns how its process ended.
    async fn stop(&self, uid: &str, mode: StopMode) -> Result<Exit, Error>;

    /// Removes every runtime file of a VM that no longer runs. Idempotent.
    async fn cleanup(&self, uid: &str) -> Result<(), Error>;

    /// The serial console of a VM this backend manages.
    fn console(&self, uid: &str) -> Result<Console, Error>;

    /// Events for every VM this backend manages (exits, pauses, resets …).
    fn subscribe(&self) -> broadcast::Receiver<VmEvent>;

    /// Who must own the files the emulator opens by itself (volumes, seeds), when that is not
    /// the caller's own user: the backend drops privileges before it runs an emulator.
    fn file_owner(&self) -> Option<FileOwner> {
        None
    }

    /// Grows disk `disk` (its index in [`VmConfig::disks`]) of a running VM to `bytes`
    /// through the emulator, which owns the file while the VM runs; the guest sees the new
    /// size at once.
    async fn resize_disk(&self, uid: &str, disk: usize, bytes: u64) -> Result<(), Error> {
        let _ = (disk, bytes);
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "resize a disk",
            state: "managed by a backend without online resize".into(),
        })
    }

    /// Takes, loads or deletes the internal snapshot `tag` of a running VM's disks `disks`
    /// (indices in [`VmConfig::disks`]); `Save` and `Load` also save or load RAM and device
    /// state, kept in disk `disks[0]`.
    async fn snapshot(
        &self,
        uid: &str,
        op: SnapshotOp,
        tag: &str,
        disks: &[usize],
    ) -> Result<(), Error> {
        let _ = (op, tag, disks);
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "snapshot",
            state: "managed by a backend without snapshots".into(),
        })
    }

    /// Where running VM `uid`'s RAM is shared with the host and how its guest-physical
    /// addresses map into that file (discovered from the emulator, for VMs launched with a
    /// [`VmConfig::memory_file`]). Serves guest-memory reads on the node that runs the VM.
    async fn guest_ram(&self, uid: &str) -> Result<GuestRamMap, Error> {
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "share its RAM",
            state: "managed by a backend without shared guest RAM".into(),
        })
    }

    /// Runs `work` with VM `uid`'s vCPUs stopped and returns how long the guest was paused.
    /// Nothing resumes the guest before `work` returns — a controller's resume waits — so a
    /// copy made by `work` is atomic. A guest that was already paused stays paused.
    async fn run_paused<'a>(
        &'a self,
        uid: &'a str,
        work: Box<dyn FnOnce() + Send + 'a>,
    ) -> Result<Duration, Error> {
        let _ = work;
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "pause for a copy",
            state: "managed by a backend without pause-for-copy".into(),
        })
    }

    /// Saves running VM `uid`'s RAM and device state into `into` with its vCPUs stopped, runs
    /// `work` while they still are (a copy of its disks made there matches the saved state),
    /// then lets the guest run on as before; returns how long it was paused. A VM started
    /// with [`VmConfig::restore`] from `into`, with the same devices, runs on from that
    /// instant. Nothing resumes the guest before `work` returns.
    async fn save_state<'a>(
        &'a self,
        uid: &'a str,
        into: std::fs::File,
        work: Box<dyn FnOnce() + Send + 'a>,
    ) -> Result<Duration, Error> {
        let _ = (into, work);
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "save its state",
            state: "managed by a backend without saved states".into(),
        })
    }

    /// Tells running VM `uid`'s guest, through its guest agent, its hostname and the MACs
    /// its NICs have now (a guest started from saved state still has those of the VM the
    /// state was saved from). Returns what it did, for people; fails when no agent answers
    /// within `within`.
    async fn set_guest_identity(
        &self,
        uid: &str,
        hostname: &str,
        within: Duration,
    ) -> Result<String, Error> {
        let _ = (hostname, within);
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "reach its guest agent",
            state: "managed by a backend without a guest agent channel".into(),
        })
    }

    /// Sets up VM `uid`'s side of a live migration (TLS credentials, capabilities) before
    /// [`Hypervisor::migrate_incoming`] or [`Hypervisor::migrate`]; again for each attempt.
    async fn prepare_migration(&self, uid: &str, setup: &MigrationSetup) -> Result<(), Error> {
        let _ = setup;
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "set up a live migration",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Makes VM `uid`, started with [`VmConfig::incoming`], listen for its migrating state at
    /// `uri` (`tcp:HOST:PORT`).
    async fn migrate_incoming(&self, uid: &str, uri: &str) -> Result<(), Error> {
        let _ = uri;
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "receive a live migration",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Starts sending running VM `uid` to the target listening at `uri`, within `limits`.
    async fn migrate(&self, uid: &str, uri: &str, limits: MigrationLimits) -> Result<(), Error> {
        let _ = (uri, limits);
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "live-migrate",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Switches VM `uid`'s outgoing migration (set up with post-copy) to post-copy: the guest
    /// stops here, and the rest of its RAM follows it to the target.
    async fn migrate_start_postcopy(&self, uid: &str) -> Result<(), Error> {
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "switch a live migration to post-copy",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Where VM `uid`'s outgoing migration stands.
    async fn migration(&self, uid: &str) -> Result<MigrationInfo, Error> {
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "report a live migration",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Cancels VM `uid`'s outgoing migration; the VM runs on here.
    async fn migrate_cancel(&self, uid: &str) -> Result<(), Error> {
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "cancel a live migration",
            state: "managed by a backend without live migration".into(),
        })
    }

    /// Target side: exports the disks of VM `uid` (started with [`VmConfig::incoming`],
    /// before [`Hypervisor::migrate_incoming`]) writable over NBD, for the source to mirror
    /// into.
    async fn export_disks(&self, uid: &str, export: &DiskExport) -> Result<(), Error> {
        let _ = export;
        Err(no_disk_mirror(uid, "export its disks"))
    }

    /// Target side: closes the NBD server of [`Hypervisor::export_disks`]; nothing when none
    /// runs.
    async fn stop_disk_export(&self, uid: &str) -> Result<(), Error> {
        Err(no_disk_mirror(uid, "stop exporting its disks"))
    }

    /// Source side: starts copying VM `uid`'s disks into the target's export, then keeps
    /// following the guest's writes. The RAM migration starts once every mirror is ready.
    async fn mirror_disks(&self, uid: &str, mirror: &DiskMirror) -> Result<(), Error> {
        let _ = mirror;
        Err(no_disk_mirror(uid, "mirror its disks"))
    }

    /// Source side: where each disk mirror stands.
    async fn disk_mirrors(&self, uid: &str) -> Result<Vec<DiskMirrorInfo>, Error> {
        Err(no_disk_mirror(uid, "report its disk mirrors"))
    }

    /// Source side, after the RAM migration completed: copies what is still dirty and ends
    /// the mirrors, so the target's disks equal the source's at the handover. Fails if a
    /// mirror failed.
    async fn complete_disk_mirrors(&self, uid: &str) -> Result<(), Error> {
        Err(no_disk_mirror(uid, "complete its disk mirrors"))
    }

    /// Source side: stops the mirrors at once and drops the connections to the target; the
    /// VM's own disks are untouched. Nothing when no mirror runs.
    async fn abort_disk_mirrors(&self, uid: &str) -> Result<(), Error> {
        Err(no_disk_mirror(uid, "abort its disk mirrors"))
    }

    /// The last `max` bytes of VM `uid`'s serial output as kept on this node (also after the
    /// VM stopped); empty when it never printed.
    async fn console_log(&self, uid: &str, max: u64) -> Result<Vec<u8>, Error> {
        let _ = max;
        Err(Error::InvalidState {
            uid: uid.to_owned(),
            op: "read its console log",
            state: "managed by a backend without a console log".into(),
        })
    }
}

fn no_disk_mirror(uid: &str, op: &'static str) -> Error {
    Error::InvalidState {
        uid: uid.to_owned(),
        op,
        state: "managed by a backend without disk mirroring".into(),
    }
}

/// What [`Hypervisor::snapshot`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    /// Save disks, RAM and device state.
    Save,
    /// Put disks, RAM and device state back; the guest continues from there.
    Load,
    /// Remove the snapshot from the disks.
    Delete,
}
