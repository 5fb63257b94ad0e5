//! Nodes: this host registers itself and heartbeats; everyone reads nodes, admins cordon and
//! drain them.

pub mod grpc;
pub(crate) mod link;
pub mod rest;

use std::path::Path;
use std::time::Duration;

use corral_contract::{
    Accel, Arch, ByteSize, Node, NodePool, NodeResources, NodeStatus, ResourceName,
};
use corral_service::NodeService;
use tokio::sync::watch;

/// How often the agent reports.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The storage pools a node declares (`--storage-pool`), as its status shows them.
pub type Pools = std::collections::BTreeMap<String, corral_service::PoolConfig>;

/// What this host has: vCPUs, RAM, the data directory's disk, the guest architectures QEMU
/// runs here (the host's own first), the accelerators it can use and its storage pools.
pub fn probe(data_dir: &Path, pools: &Pools) -> NodeStatus {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .unwrap_or_default();
    let disk = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    let capacity = NodeResources {
        cpus,
        memory: ByteSize::new(memory),
        disk: ByteSize::new(disk),
    };
    // The host keeps a little for itself: a tenth of RAM, at most 1G.
    let reserve = (memory / 10).min(1 << 30);
    let allocatable = NodeResources {
        memory: ByteSize::new(memory - reserve),
        ..capacity.clone()
    };
    let host = corral_qemu::HostCaps::probe();
    let mut arches: Vec<Arch> = [Arch::X86_64, Arch::Aarch64]
        .into_iter()
        .filter(|a| on_path(a.qemu_binary()))
        .collect();
    arches.sort_by_key(|a| a.to_string() != host.arch);
    let mut accelerators = Vec::new();
    if let Some(native) = arches
        .first()
        .copied()
        .filter(|a| a.to_string() == host.arch)
    {
        if corral_qemu::resolve_accel(Accel::Kvm, native, &host).is_ok() {
            accelerators.push(Accel::Kvm);
        }
    }
    accelerators.push(Accel::Tcg);
    NodeStatus {
        capacity,
        allocatable,
        arches,
        accelerators,
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        pools: pools
            .iter()
            .map(|(name, pool)| NodePool {
                name: name.clone(),
                shared: pool.shared,
            })
            .collect(),
        ..NodeStatus::default()
    }
}

fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

/// Registers `name` with what `data_dir`'s host has, then heartbeats every [`HEARTBEAT`]
/// until `stop` turns true. A failed report is retried; it never ends the loop.
///
/// Fencing: once no report has succeeded for `ttl` — counted from when the last successful
/// one was *sent*, so before the servers can judge the node lost (they wait `ttl` plus a
/// margin from when they *received* it) — every VM process of this host is stopped. The
/// servers may then start those VMs elsewhere; none runs twice. The same deadline goes to
/// the node's fence guard after every successful report, which enforces it should this
/// process be killed or frozen.
pub async fn heartbeat(
    nodes: NodeService,
    name: ResourceName,
    data_dir: std::path::PathBuf,
    pools: Pools,
    address: Option<std::net::SocketAddr>,
    fence: Fence,
    mut stop: watch::Receiver<bool>,
) {
    // The node as the last report wrote it: the next report is one compare-and-swap on it.
    let mut last: Option<Node> = None;
    let mut last_ok = std::time::Instant::now();
    loop {
        let sent = std::time::Instant::now();
        let sent_boottime = crate::fence_guard::boottime();
        let mut status = probe(&data_dir, &pools);
        status.address = address;
        let registered = last.is_some();
        let result = if registered {
            nodes.heartbeat(name.as_str(), status, last.take()).await
        } else {
            let mut node = Node::new(name.clone());
            node.status = status.clone();
            match nodes.register(node).await {
                Ok(_) => nodes.heartbeat(name.as_str(), status, None).await,
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(node) => {
                last = Some(node);
                if let Some(guard) = &fence.guard {
                    if let Err(e) = guard.renewed(sent_boottime) {
                        tracing::error!(node = %name, error = %e, "cannot hand the fence guard its new deadline");
                    }
                }
                if !registered {
                    tracing::info!(node = %name, "node registered");
                }
                last_ok = sent;
                if fence.state.set(false) {
                    tracing::info!(node = %name, "reports reach the cluster again: unfenced");
                }
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "cannot report the node; retrying");
                if last_ok.elapsed() >= fence.ttl {
                    fence.stop_all(&name).await;
                }
            }
        }
        fence.look_at_guard(&name).await;
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// What a node that cannot report does: stop every VM process of this host.
#[derive(Debug, Clone)]
pub struct Fence {
    /// How long without a successful report before fencing.
    pub ttl: Duration,
    /// The VMs' hypervisor.
    pub hypervisor: std::sync::Arc<dyn corral_hypervisor::Hypervisor>,
    /// Set while fenced: the VM controller starts nothing until a report succeeds again.
    pub state: std::sync::Arc<corral_controller::FenceState>,
    /// The node's fence guard, which kills the VMs at the deadline should this process be
    /// gone or frozen by then (in a cluster; `None` on a single host).
    pub guard: Option<std::sync::Arc<crate::fence_guard::FenceGuard>>,
}

impl Fence {
    /// Takes what the guard killed (those VMs did not stop by their own choice: they start
    /// again if still this node's), and starts a guard again should it be gone.
    async fn look_at_guard(&self, node: &ResourceName) {
        let Some(guard) = &self.guard else {
            return;
        };
        for f in guard.take_fenced() {
            tracing::warn!(%node, uid = %f.uid, pid = f.pid, "the fence guard killed this VM's QEMU: no report reached the cluster in time");
            self.state.stopped(&f.uid);
        }
        match guard.ensure_running().await {
            Ok(Some(pid)) => {
                tracing::warn!(%node, pid, "the fence guard was gone: started it again")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(%node, error = %e, "cannot start the fence guard"),
        }
    }

    async fn stop_all(&self, node: &ResourceName) {
        self.state.set(true);
        let uids = match self.hypervisor.list().await {
            Ok(uids) => uids,
            Err(e) => {
                tracing::error!(error = %e, "fencing: cannot list VM processes");
                return;
            }
        };
        for uid in uids {
            let _ = self.hypervisor.adopt(&uid).await;
            self.state.stopped(&uid);
            match self
                .hypervisor
                .stop(&uid, corral_hypervisor::StopMode::Force)
                .await
            {
                Ok(_) => {
                    tracing::warn!(%node, %uid, "fenced: no report reached the cluster for the node TTL; VM stopped")
                }
                Err(corral_hypervisor::Error::NotFound(_)) => {}
                Err(e) => tracing::error!(%node, %uid, error = %e, "fencing: cannot stop VM"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reports_memory_cpus_and_tcg() {
        assert_eq!(
            mem_total("MemTotal:       16318480 kB\nMemFree: 1 kB\n"),
            Some(16_710_123_520)
        );
        let pools = [(
            "nfs".to_owned(),
            corral_service::PoolConfig {
                path: "/mnt/nfs".into(),
                shared: true,
            },
        )]
        .into();
        let status = probe(Path::new("/"), &pools);
        assert!(status.has_pool("nfs") && status.pools[0].shared);
        assert!(status.capacity.cpus >= 1);
        assert!(status.allocatable.memory < status.capacity.memory);
        assert_eq!(status.accelerators.last(), Some(&Accel::Tcg));
    }
}
