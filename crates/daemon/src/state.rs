//! What every transport shares: the service layer, the backend and the metrics.

use std::sync::Arc;

use corral_qemu::QemuBackend;
use corral_service::{ConsoleService, MemoryService, NetworkService, StorageService, VmService};

use crate::config::Config;
use crate::metrics::Metrics;

/// The running daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    /// Settings.
    pub config: Config,
    /// VMs.
    pub vms: VmService,
    /// Guest memory, audited.
    pub memory: MemoryService,
    /// Serial consoles.
    pub consoles: ConsoleService,
    /// Networks.
    pub networks: NetworkService,
    /// Images, volumes and snapshots.
    pub storage: StorageService,
    /// The node's attestation key.
    pub node_key: corral_storage::attest::NodeKey,
    /// The QEMU backend (for process figures).
    pub backend: Arc<QemuBackend>,
    /// This node's name.
    pub node: String,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// A handle transports hold.
pub type Shared = Arc<Daemon>;
