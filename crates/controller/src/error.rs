//! Why a reconcile step failed. Controllers log these and retry, and write their messages
//! into `status.message`, so each names the object, what failed and, where it helps, what to
//! do.

use std::path::PathBuf;

use corral_hypervisor::Error as HvError;
use corral_service::ServiceError;
use corral_storage::{CasError, QemuImgError};

/// A reconcile step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Reading or writing objects failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The host's network could not be read.
    #[error(transparent)]
    HostNet(#[from] corral_service::HostNetError),
    /// The hypervisor refused or failed.
    #[error(transparent)]
    Hypervisor(#[from] HvError),
    /// `qemu-img` failed.
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    /// The image store failed.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// A file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done (`writing`, `moving into place` …).
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A host command failed.
    #[error("{command}: {stderr}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr, or why it could not run.
        stderr: String,
        /// What to do, e.g. which package to install.
        hint: Option<&'static str>,
    },
    /// A host file the VM's spec names may not be opened (any more).
    #[error("{field}: {source}")]
    HostFile {
        /// The spec field that names it.
        field: &'static str,
        /// Why it was refused.
        #[source]
        source: corral_storage::HostPathError,
    },
    /// An image's bytes could not be fetched from the cluster.
    #[error("fetching image blob {digest}: {reason}")]
    Fetch {
        /// The blob's digest.
        digest: String,
        /// Why not.
        reason: String,
    },
    /// A weights volume's copy does not hash to its image's digest.
    #[error("the image's stored bytes hash to {actual}, not {expected}: verify the image")]
    DigestMismatch {
        /// The digest the image records.
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// A VM has nowhere to keep a snapshot.
    #[error("VM {vm} has no writable qcow2 volume to hold a snapshot")]
    NoSnapshotDisk {
        /// The VM.
        vm: String,
    },
    /// A VM is not in the state a snapshot step needs.
    #[error("VM {vm} is {state}: {need}")]
    VmState {
        /// The VM.
        vm: String,
        /// Its state, e.g. `not running`.
        state: &'static str,
        /// What the step needs.
        need: &'static str,
    },
    /// A VM's NIC cannot be set up on the network it joins.
    #[error("network {network:?}: {problem}")]
    Nic {
        /// The network.
        network: String,
        /// What is wrong.
        problem: NicProblem,
    },
    /// A VM's cloud-init seed could not be built.
    #[error("building the cloud-init seed: {0}")]
    Seed(#[source] std::io::Error),
    /// A weights volume's bytes changed since it was made.
    #[error(
        "weights volume {volume:?} is corrupted: its bytes hash to {actual} but must be {expected}; the VM was not started (recreate the volume from its image)"
    )]
    WeightsCorrupt {
        /// The volume.
        volume: String,
        /// What it must hash to.
        expected: String,
        /// What it hashes to.
        actual: String,
    },
    /// The VM's volumes do not map to a consistent disk order.
    #[error("volume {volume:?}: disk order is inconsistent")]
    DiskOrder {
        /// The volume.
        volume: String,
    },
    /// The VM has volumes but this node runs no storage service.
    #[error("this node has no storage configured for volumes")]
    NoStorage,
    /// A blocking task ended abnormally.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a NIC cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NicProblem {
    /// The service did not fill in what it allocates (the spec was written around it).
    #[error("no {0} was allocated")]
    NotAllocated(String),
    /// Port forwards on a network that is not a user network.
    #[error("port forwards are for user networks; reach a bridged guest at its own address")]
    ForwardsOnBridge,
    /// The network's mode does not exist on this host.
    #[error("mode {0} is not available on this host")]
    ModeUnavailable(corral_contract::NetworkMode),
    /// Making the TAP device failed.
    #[error(transparent)]
    Tap(Box<ControllerError>),
}

impl ControllerError {
    /// Adds what to do to a failed host command (which package to install …).
    pub(crate) fn hint(self, hint: &'static str) -> Self {
        match self {
            ControllerError::Command {
                command, stderr, ..
            } => ControllerError::Command {
                command,
                stderr,
                hint: Some(hint),
            },
            other => other,
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ControllerError::Io {
            context,
            path,
            source,
        }
    }
}
