//! Corral's controllers. They own the world: only they start processes, create files or talk
//! to QEMU. Each is level-triggered — it reads the declared spec and the actual state and acts
//! on the difference — idempotent, and safe to run again after a crash at any line.
//!
//! [`VmController`] drives VMs through a [`Hypervisor`](corral_hypervisor::Hypervisor): start,
//! stop, pause, resume, restart by policy, re-adoption after a daemon restart, deletion.
#![deny(missing_docs)]

mod bridge;
mod deps;
mod disks;
mod error;
mod failover;
mod fence;
mod git;
mod host_files;
mod migrate;
mod migrate_disks;
mod prepare;
mod queue;
mod restart;
mod schedule;
mod scheduler;
mod source;
mod ssh;
mod storage;
mod template;
mod vm;

pub use bridge::NetworkController;
pub use disks::{AttachedVolume, attached_volumes};
pub use error::ControllerError;
pub use failover::{Failover, failover};
pub use fence::FenceState;
pub use git::{Checkout, GitError, fetch as git_fetch};
pub use migrate::DOWNTIME_LIMIT_MS;
pub use queue::WorkQueue;
pub use schedule::{
    Fleet, Loads, Misfit, ScheduleConfig, Unschedulable, VolumeNeeds, place, place_with,
};
pub use scheduler::{NODE_LOST, SCHEDULED, Scheduler, SchedulerConfig, stale};
pub use source::{RunOptions, SourceController, SourceReconciler};
pub use ssh::ssh_banner;
pub use storage::{BlobSource, StorageController};
pub use vm::{ControllerConfig, ReconcileObserver, VmController};
