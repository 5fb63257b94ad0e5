//! What every transport shares: the service layer, the backend, the metrics, who callers are
//! and the audit log.

use std::sync::Arc;

use corral_qemu::QemuBackend;
use corral_service::{
    ApplyService, AuditLog, ConsoleService, IdentityService, JoinService, MemoryService,
    NetworkService, NodeRoute, NodeService, ProjectService, ServiceError, SourceService,
    StorageService, VmService,
};

use crate::auth::Registry;
use crate::config::Config;
use crate::metrics::Metrics;

/// The running daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    /// Settings.
    pub config: Config,
    /// Applying declared resources as an owner.
    pub apply: ApplyService,
    /// Git sources.
    pub sources: SourceService,
    /// VMs.
    pub vms: VmService,
    /// Guest memory, audited.
    pub memory: MemoryService,
    /// Serial consoles.
    pub consoles: ConsoleService,
    /// Tunnels to VMs' forwarded ports.
    pub tunnels: corral_service::TunnelService,
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
    /// Identities, as stored.
    pub identities: IdentityService,
    /// Projects and their limits.
    pub projects: ProjectService,
    /// Nodes of the cluster (this host's among them).
    pub nodes: NodeService,
    /// The store, for the node-scoped view agents use ([`corral_service::NodeScope`]).
    pub store: Arc<dyn corral_store::Store>,
    /// Join tokens and agents' node certificates (with the cluster CA, if this server has one).
    pub joins: JoinService,
    /// Who each credential is; revocations.
    pub registry: Arc<Registry>,
    /// The audit log of changes, refusals and memory reads.
    pub audit: Arc<AuditLog>,
    /// CPU and memory samples of the VMs this node runs.
    pub history: crate::vms::history::History,
    /// The web console's sessions and local listener.
    pub ui: crate::ui::Ui,
    /// How a server reaches the agents that run VMs (none on a single host).
    pub route: Option<NodeRoute>,
}

impl Daemon {
    /// VM `key`'s attestation, signed by the node that runs it (asked of its agent when that
    /// is another node): the DSSE envelope and the signing node's public key, PEM.
    pub async fn attestation(&self, key: &str) -> Result<(Vec<u8>, String), ServiceError> {
        if let Some(route) = &self.route {
            let vm = self.vms.get(key).await?;
            if let Some(node) = route.elsewhere(&vm) {
                return route.link().attest(node, key).await;
            }
        }
        let envelope = self.storage.attest(key, &self.node_key, &self.node).await?;
        Ok((envelope, self.node_key.public_pem()))
    }
}

/// A handle transports hold.
pub type Shared = Arc<Daemon>;
