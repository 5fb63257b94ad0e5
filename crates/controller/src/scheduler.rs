//! The scheduler loop: binds every VM without a node to one ([`place`]) by a
//! compare-and-swap write of `status.node`, marks nodes whose heartbeats stopped as lost, and
//! removes deleted VMs no node holds. One scheduler acts at a time: it leads an election
//! first, and stops acting the moment its leadership is lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_contract::{Condition, Node, Phase, Vm, set_condition};
use corral_service::{NodeService, ServiceError, VmService};
use corral_store::Elections;
use tokio::sync::{Notify, watch};

use crate::schedule::{ScheduleConfig, place};

/// The condition the scheduler sets on a VM: `true` once bound, `false` with the reason
/// while no node can take it.
pub const SCHEDULED: &str = "Scheduled";

/// The election every scheduler campaigns in.
const ELECTION: &str = "scheduler";

/// How the scheduler loop runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How nodes are weighed.
    pub placement: ScheduleConfig,
    /// A node whose last heartbeat is older than this is marked not `Ready`.
    pub node_ttl: Duration,
    /// This candidate's name in the election (unique per server).
    pub candidate: String,
    /// The lease its leadership is held with.
    pub leader_ttl: Duration,
    /// A full pass runs at least this often, events or not.
    pub resync: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            placement: ScheduleConfig::default(),
            node_ttl: Duration::from_secs(10),
            candidate: "local".into(),
            leader_ttl: Duration::from_secs(5),
            resync: Duration::from_secs(2),
        }
    }
}

/// Binds VMs to nodes. Run several (one per server): one leads, the others wait.
#[derive(Debug)]
pub struct Scheduler {
    vms: VmService,
    nodes: NodeService,
    elections: Arc<dyn Elections>,
    config: SchedulerConfig,
    wake: Notify,
}

impl Scheduler {
    /// A scheduler over the VMs and nodes of one store, electing its leader through
    /// `elections`.
    pub fn new(
        vms: VmService,
        nodes: NodeService,
        elections: Arc<dyn Elections>,
        config: SchedulerConfig,
    ) -> Self {
        Scheduler {
            vms,
            nodes,
            elections,
            config,
            wake: Notify::new(),
        }
    }

    /// Runs until `shutdown` turns true: campaigns, then — while leading — places VMs on
    /// every VM or node change and every `resync`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let this = self.clone();
        let follow = tokio::spawn(async move { this.follow().await });
        loop {
            let campaign =
                self.elections
                    .campaign(ELECTION, &self.config.candidate, self.config.leader_ttl);
            let leadership = tokio::select! {
                l = campaign => l,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let leadership = match leadership {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot campaign for the scheduler; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(candidate = %self.config.candidate, "leading the scheduler");
            tokio::select! {
                _ = leadership.lost() => {
                    tracing::warn!("scheduler leadership lost; campaigning again");
                }
                _ = self.lead() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        follow.abort();
    }

    /// Wakes the loop on every VM or node change.
    async fn follow(&self) {
        let store = self.vms.store().clone();
        loop {
            // Every pass lists everything, so a watch only needs to start from now.
            let watch = match store.revision().await {
                Ok(revision) => store.watch(None, revision).await,
                Err(e) => Err(e),
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot watch; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(Ok(event)) = watch.recv().await {
                if matches!(event.object.kind.as_str(), "Vm" | "Node") {
                    self.wake.notify_one();
                }
            }
            self.wake.notify_one();
        }
    }

    async fn lead(&self) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "scheduling pass failed; retrying");
            }
            let _ = tokio::time::timeout(self.config.resync, self.wake.notified()).await;
        }
    }

    /// One pass: nodes whose heartbeats stopped are marked lost, then every VM without a
    /// node is placed (or told why it cannot be).
    pub async fn pass(&self) -> Result<(), ServiceError> {
        let (mut nodes, _) = self.nodes.list("").await?;
        for node in &mut nodes {
            if node.ready() && stale(node, self.config.node_ttl) {
                let message = format!(
                    "no heartbeat for {} (last {})",
                    humantime::format_duration(self.config.node_ttl),
                    node.status.heartbeat.as_deref().unwrap_or("never")
                );
                tracing::warn!(node = %node.metadata.name, %message, "node lost");
                *node = self
                    .nodes
                    .mark_lost(node.metadata.name.as_str(), &message)
                    .await?;
            }
        }
        let (vms, _) = self.vms.list("").await?;
        let mut bound: Vec<Vm> = vms
            .iter()
            .filter(|vm| vm.status.node.is_some())
            .cloned()
            .collect();
        for vm in vms.iter().filter(|vm| vm.status.node.is_none()) {
            let key = vm.metadata.key();
            if vm.metadata.deleting {
                // Nothing runs it anywhere: nothing to stop, only the object to remove.
                match self.vms.remove(&key, vm.metadata.resource_version).await {
                    Ok(()) | Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            let pinned = pinned_node(vm, &bound);
            match place(
                vm,
                &nodes,
                &bound,
                pinned.as_deref(),
                &self.config.placement,
            ) {
                Ok(node) => {
                    if let Some(vm) = self.bind(&key, &node).await? {
                        tracing::info!(vm = %key, %node, "bound");
                        bound.push(vm);
                    }
                }
                Err(why) => self.unschedulable(&key, &why.to_string()).await?,
            }
        }
        Ok(())
    }

    /// Binds `key` to `node` unless it is bound already: the write is a compare-and-swap on
    /// the VM's version, and a VM found bound on a retry is left as it is. Returns the VM
    /// if this call bound it.
    async fn bind(&self, key: &str, node: &str) -> Result<Option<Vm>, ServiceError> {
        let mut won = false;
        let result = self
            .vms
            .modify(key, 0, |vm| {
                won = false;
                if vm.status.node.is_some() || vm.metadata.deleting {
                    return Ok(false);
                }
                vm.status.node = Some(node.to_owned());
                let mut c = Condition::new(SCHEDULED, true, "Bound", format!("on node {node}"));
                c.last_transition = Some(now());
                set_condition(&mut vm.status.conditions, c);
                won = true;
                Ok(true)
            })
            .await;
        match result {
            Ok(vm) => Ok(won.then_some(vm)),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Leaves the VM `Pending` with `Scheduled=false` and the reason per class of node.
    async fn unschedulable(&self, key: &str, why: &str) -> Result<(), ServiceError> {
        let result = self
            .vms
            .update_status(key, |vm, s| {
                if vm.status.node.is_some() {
                    return false;
                }
                let same = s
                    .condition(SCHEDULED)
                    .is_some_and(|c| !c.status && c.message == why);
                if same {
                    return false;
                }
                let mut c = Condition::new(SCHEDULED, false, "Unschedulable", why);
                c.last_transition = Some(now());
                set_condition(&mut s.conditions, c);
                s.phase = Phase::Pending;
                s.message = Some(format!("waiting for a node: {why}"));
                true
            })
            .await;
        match result {
            Ok(_) | Err(ServiceError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether `node`'s last heartbeat is older than `ttl` (or it never sent one).
pub fn stale(node: &Node, ttl: Duration) -> bool {
    let Some(at) = node.status.heartbeat.as_deref() else {
        return true;
    };
    match humantime::parse_rfc3339_weak(at) {
        Ok(at) => SystemTime::now()
            .duration_since(at)
            .is_ok_and(|age| age > ttl),
        Err(_) => true,
    }
}

/// The node a VM's node-local volumes are on: where another VM using one of them is bound.
fn pinned_node(vm: &Vm, bound: &[Vm]) -> Option<String> {
    let project = vm.metadata.project();
    let mine: Vec<_> = vm.spec.volume_names().collect();
    if mine.is_empty() {
        return None;
    }
    bound
        .iter()
        .filter(|other| other.metadata.project() == project)
        .find(|other| other.spec.volume_names().any(|v| mine.contains(&v)))
        .and_then(|other| other.status.node.clone())
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
