//! The scheduler loop: binds every VM without a node to one ([`place`]) by a
//! compare-and-swap write of `status.node`, marks nodes whose heartbeats stopped as lost, and
//! removes deleted VMs no node holds. One scheduler acts at a time: it leads an election
//! first, and stops acting the moment its leadership is lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_contract::{Condition, Node, Phase, Vm, set_condition};
use std::collections::{HashMap, HashSet};

use corral_service::{NodeService, Resources, ServiceError, VmService, VolumeKind};
use corral_store::{Elections, Store};
use tokio::sync::{Notify, mpsc, watch};

use futures_util::StreamExt;

use crate::schedule::{Fleet, Loads, ScheduleConfig, VolumeNeeds};

/// Binds written together, in one store transaction (at most
/// [`MAX_TXN_OBJECTS`](corral_store::MAX_TXN_OBJECTS)): one etcd transaction of 128 writes
/// costs etcd a fraction of 128 transactions (`bench/src/bin/cluster-scale.rs`: 6,600
/// placements/s against 2,300 with one transaction per bind). A chunk etcd refuses as a
/// whole (one VM changed since the list, or the request too large) is bound one by one.
const BINDS_PER_WRITE: usize = 128;

/// Bind writes a pass keeps in flight at once (etcd commits concurrent writes together).
const WRITES_IN_FLIGHT: usize = 8;

/// Writes for the VMs of lost nodes (and of nodes back) a pass keeps in flight at once.
const NODE_WRITES_IN_FLIGHT: usize = 64;

/// The condition the scheduler sets on a VM: `true` once bound, `false` with the reason
/// while no node can take it.
pub const SCHEDULED: &str = "Scheduled";

/// The condition set on a VM whose node is lost and that cannot move.
pub const NODE_LOST: &str = "NodeLost";

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
    /// How long after `node_ttl` a lost node's VMs are moved: the node has fenced itself
    /// (stopped them) by then.
    pub fence_margin: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            placement: ScheduleConfig::default(),
            node_ttl: Duration::from_secs(10),
            candidate: "local".into(),
            leader_ttl: Duration::from_secs(5),
            resync: Duration::from_secs(2),
            fence_margin: Duration::from_secs(5),
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
    // Node loss is judged only after a scheduler has watched for a TTL: one just started
    // (after a server restart) has not seen the heartbeats that may have come meanwhile.
    started: std::time::Instant,
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
            started: std::time::Instant::now(),
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
            // A heartbeat rewrites its Node every few seconds; only what placement or
            // failover looks at wakes a pass (the periodic one judges silent nodes).
            let mut shapes: HashMap<String, String> = HashMap::new();
            while let Some(Ok(event)) = watch.recv().await {
                let wake = match event.object.kind.as_str() {
                    "Vm" => true,
                    "Node" if event.event == corral_store::EventType::Deleted => {
                        shapes.remove(&event.object.name);
                        true
                    }
                    "Node" => {
                        let shape = serde_json::from_str::<Node>(&event.object.body)
                            .map(|node| shape(&node))
                            .unwrap_or_default();
                        shapes.insert(event.object.name.clone(), shape.clone()) != Some(shape)
                    }
                    _ => false,
                };
                if wake {
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
        let began = std::time::Instant::now();
        let (mut nodes, _) = self.nodes.list("").await?;
        let judging = self.started.elapsed() > self.config.node_ttl;
        for node in &mut nodes {
            if judging && node.ready() && stale(node, self.config.node_ttl) {
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
        let (mut vms, _) = self.vms.list("").await?;
        let listed = began.elapsed();
        // What a node's state asks of its VMs: those of a lost node move on (or are marked
        // lost), those that stayed on a node that is back are its again. Many at once.
        let by_name: HashMap<&str, &Node> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_str(), n))
            .collect();
        // (Owned copies: a future holding borrows of `vms` would not be `Send` for every
        // lifetime the scheduler's task needs.)
        let affected: Vec<(usize, Vm, Node)> = vms
            .iter()
            .enumerate()
            .filter_map(|(i, vm)| {
                let node = *by_name.get(vm.status.node.as_deref()?)?;
                let lost = judging && !node.ready();
                let back = node.ready() && vm.status.condition(NODE_LOST).is_some();
                (lost || back).then(|| (i, vm.clone(), node.clone()))
            })
            .collect();
        let mut results = futures_util::stream::iter(affected)
            .map(|(i, vm, node)| async move { (i, self.follow_node(&vm, &node, judging).await) })
            .buffer_unordered(NODE_WRITES_IN_FLIGHT);
        let mut written = Vec::new();
        while let Some((i, result)) = results.next().await {
            if let Some(vm) = result? {
                written.push((i, vm));
            }
        }
        drop(results);
        for (i, vm) in written {
            vms[i] = vm;
        }
        let mut bound: Vec<Vm> = vms
            .iter()
            .filter(|vm| vm.status.node.is_some())
            .cloned()
            .collect();
        let mut fleet = Fleet::new(&nodes, Loads::of(&bound));
        // Where volumes are, read only when a VM to place has any.
        let volumes = if vms
            .iter()
            .any(|vm| vm.status.node.is_none() && vm.spec.volume_names().next().is_some())
        {
            VolumePlaces::read(self.vms.store(), &nodes).await?
        } else {
            VolumePlaces::default()
        };
        // Decisions, each counting the ones before it, go out in chunks as they are made;
        // each chunk is bound in one store write (one etcd transaction), several in flight,
        // while the next ones are decided. A bind that loses its compare-and-swap leaves the
        // VM to the next pass, which counts from the store again.
        let (chunks, mut decisions) = mpsc::channel::<Vec<(String, Vm, String)>>(WRITES_IN_FLIGHT);
        let decide = async move {
            let mut placed = 0;
            let mut chunk = Vec::with_capacity(BINDS_PER_WRITE);
            for vm in vms.into_iter().filter(|vm| vm.status.node.is_none()) {
                let key = vm.metadata.key();
                if vm.metadata.deleting {
                    // Nothing runs it anywhere: nothing to stop, only the object to remove.
                    match self.vms.remove(&key, vm.metadata.resource_version).await {
                        Ok(())
                        | Err(ServiceError::NotFound { .. } | ServiceError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                let needs = volumes.needs(&vm, &bound);
                match fleet.place(&vm, &needs, &self.config.placement) {
                    Ok(i) => {
                        fleet.add(&vm, i);
                        let node = fleet.name(i).to_owned();
                        if vm.spec.volume_names().next().is_some() {
                            // Later VMs sharing a volume follow it to this node.
                            let mut follower = vm.clone();
                            follower.status.node = Some(node.clone());
                            bound.push(follower);
                        }
                        chunk.push((key, vm, node));
                        placed += 1;
                    }
                    Err(why) => self.unschedulable(&vm, &why.to_string()).await?,
                }
                if chunk.len() == BINDS_PER_WRITE {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(BINDS_PER_WRITE));
                    if chunks.send(full).await.is_err() {
                        return Ok(placed);
                    }
                    // Let the binds go out while the next chunk is decided.
                    tokio::task::yield_now().await;
                }
            }
            if !chunk.is_empty() {
                let _ = chunks.send(chunk).await;
            }
            Ok(placed)
        };
        let bind = async {
            let mut results = futures_util::stream::poll_fn(|cx| decisions.poll_recv(cx))
                .map(|chunk| self.bind_all(chunk))
                .buffer_unordered(WRITES_IN_FLIGHT);
            while let Some(result) = results.next().await {
                result?;
            }
            Ok(())
        };
        let (placed, ()) = tokio::try_join!(decide, bind)?;
        if placed > 0 {
            tracing::debug!(
                placed,
                listed_ms = listed.as_secs_f64() * 1e3,
                total_ms = began.elapsed().as_secs_f64() * 1e3,
                "scheduling pass"
            );
        }
        Ok(())
    }

    /// Binds each VM of `binds` (key, the VM as the pass listed it, node) in one store write;
    /// when that is refused (one of them changed since the list, say), each on its own.
    async fn bind_all(&self, binds: Vec<(String, Vm, String)>) -> Result<(), ServiceError> {
        let nodes: HashMap<String, String> = binds
            .iter()
            .map(|(key, _, node)| (key.clone(), node.clone()))
            .collect();
        let seen: Vec<Vm> = binds.iter().map(|(_, vm, _)| vm.clone()).collect();
        let together = self
            .vms
            .modify_all_seen(seen, |vm| {
                let key = vm.metadata.key();
                match nodes.get(&key) {
                    Some(node) if vm.status.node.is_none() && !vm.metadata.deleting => {
                        bind_to(vm, node);
                        true
                    }
                    _ => false,
                }
            })
            .await;
        match together {
            Ok(bound) => {
                for vm in bound {
                    let node = vm.status.node.as_deref().unwrap_or_default();
                    tracing::info!(vm = %vm.metadata.key(), %node, "bound");
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, binds = binds.len(), "binding together refused; one by one");
                for (key, vm, node) in binds {
                    if self.bind(&key, vm, &node).await?.is_some() {
                        tracing::info!(vm = %key, %node, "bound");
                    }
                }
                Ok(())
            }
        }
    }

    /// Binds `key` to `node` unless it is bound already: the write is a compare-and-swap on
    /// the version `seen` (the VM as the pass listed it), and a VM found bound on a retry
    /// is left as it is. Returns the VM if this call bound it.
    async fn bind(&self, key: &str, seen: Vm, node: &str) -> Result<Option<Vm>, ServiceError> {
        let mut won = false;
        let result = self
            .vms
            .modify_seen(key, seen, |vm| {
                won = false;
                if vm.status.node.is_some() || vm.metadata.deleting {
                    return Ok(false);
                }
                bind_to(vm, node);
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

    /// A VM bound to `node`, which is lost (when `judging`) or back: the VM as written, if
    /// it was.
    async fn follow_node(
        &self,
        vm: &Vm,
        node: &Node,
        judging: bool,
    ) -> Result<Option<Vm>, ServiceError> {
        if judging && !node.ready() {
            return self.fail_over(vm, node).await;
        }
        // The node is back: what stayed bound to it is its again.
        let key = vm.metadata.key();
        match self
            .vms
            .update_status(&key, |_, s| {
                s.conditions.retain(|c| c.type_ != NODE_LOST);
                true
            })
            .await
        {
            Ok(updated) => Ok(Some(updated)),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A VM on a lost node: unbound for the scheduler once the node has fenced itself, or
    /// marked `NodeLost` when it cannot move. Returns the VM as written.
    async fn fail_over(&self, vm: &Vm, node: &Node) -> Result<Option<Vm>, ServiceError> {
        let key = vm.metadata.key();
        let lost_on = node.metadata.name.to_string();
        let on_node = self.volume_on(vm, &lost_on).await?;
        let decision = crate::failover(
            vm,
            on_node.as_deref(),
            silent(node),
            self.config.node_ttl,
            self.config.fence_margin,
        );
        let written = match decision {
            crate::Failover::Wait(_) => return Ok(None),
            crate::Failover::Reschedule => {
                tracing::warn!(vm = %key, node = %lost_on, "node lost: placing the VM again");
                self.vms
                    .update_status(&key, |vm, s| {
                        if vm.status.node.as_deref() != Some(lost_on.as_str()) {
                            return false;
                        }
                        s.node = None;
                        s.pid = None;
                        s.phase = Phase::Pending;
                        s.message = Some(format!("node {lost_on} was lost; placing it again"));
                        s.conditions.retain(|c| c.type_ != NODE_LOST);
                        true
                    })
                    .await
            }
            crate::Failover::Lost(why) => {
                self.vms
                    .update_status(&key, |vm, s| {
                        if vm.status.node.as_deref() != Some(lost_on.as_str())
                            || s.condition(NODE_LOST).is_some_and(|c| c.status)
                        {
                            return false;
                        }
                        let mut c = Condition::new(NODE_LOST, true, "NodeLost", why.clone());
                        c.last_transition = Some(now());
                        set_condition(&mut s.conditions, c);
                        s.message = Some(format!("node {lost_on} was lost: {why}"));
                        true
                    })
                    .await
            }
        };
        match written {
            Ok(vm) => Ok(Some(vm)),
            Err(ServiceError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One of `vm`'s volumes whose file is on node `node`'s own disk: made there, not in a
    /// shared pool.
    async fn volume_on(&self, vm: &Vm, node: &str) -> Result<Option<String>, ServiceError> {
        let volumes: Resources<VolumeKind> = Resources::new(self.vms.store().clone());
        for name in vm.spec.volume_names() {
            match volumes.get(&vm.metadata.key_of(name)).await {
                Ok(v) if !v.status.shared && v.status.node.as_deref() == Some(node) => {
                    return Ok(Some(name.to_string()));
                }
                Ok(_) | Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Leaves the VM `Pending` with `Scheduled=false` and the reason per class of node.
    /// Nothing is written (not even read) when it says so already.
    async fn unschedulable(&self, seen: &Vm, why: &str) -> Result<(), ServiceError> {
        let told = seen
            .status
            .condition(SCHEDULED)
            .is_some_and(|c| !c.status && c.message == why);
        if told {
            return Ok(());
        }
        let key = seen.metadata.key();
        let result = self
            .vms
            .update_status(&key, |vm, s| {
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

/// What of a node the scheduler places by: readiness, cordon, labels and what it can run.
fn shape(node: &Node) -> String {
    let alloc = &node.status.allocatable;
    format!(
        "{} {} {:?} {} {} {:?} {:?} {:?}",
        node.ready(),
        node.spec.unschedulable,
        node.metadata.labels,
        alloc.cpus,
        alloc.memory.as_u64(),
        node.status.arches,
        node.status.accelerators,
        node.status.pools,
    )
}

/// Whether `node`'s last heartbeat is older than `ttl` (or it never sent one).
pub fn stale(node: &Node, ttl: Duration) -> bool {
    silent(node) > ttl
}

/// How long since `node`'s last heartbeat (forever if it never sent one).
fn silent(node: &Node) -> Duration {
    node.status
        .heartbeat
        .as_deref()
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
        .map_or(Duration::MAX, |at| {
            SystemTime::now()
                .duration_since(at)
                .unwrap_or(Duration::ZERO)
        })
}

/// Where the volumes are, as placement needs it.
#[derive(Debug, Default)]
struct VolumePlaces {
    /// By volume key: its pool and the node it is on, if it is node-local and made.
    volumes: HashMap<String, (Option<String>, Option<String>)>,
    /// Pools some node declares shared.
    shared_pools: HashSet<String>,
}

impl VolumePlaces {
    async fn read(store: &Arc<dyn Store>, nodes: &[Node]) -> Result<Self, ServiceError> {
        let (volumes, _) = Resources::<VolumeKind>::new(store.clone()).list("").await?;
        Ok(VolumePlaces {
            volumes: volumes
                .into_iter()
                .map(|v| {
                    let node = v.status.node.filter(|_| !v.status.shared);
                    (v.metadata.key(), (v.spec.pool.map(|p| p.to_string()), node))
                })
                .collect(),
            shared_pools: nodes
                .iter()
                .flat_map(|n| &n.status.pools)
                .filter(|p| p.shared)
                .map(|p| p.name.clone())
                .collect(),
        })
    }

    /// What `vm`'s volumes ask: the pools they are in, and the node its node-local volumes
    /// are on — the node a volume says it is on, else where another VM using one of them is
    /// bound (a volume not made yet is made on its first VM's node). Volumes of a shared
    /// pool pin nothing.
    fn needs(&self, vm: &Vm, bound: &[Vm]) -> VolumeNeeds {
        let mut needs = VolumeNeeds::default();
        let mut local = Vec::new();
        for name in vm.spec.volume_names() {
            let (pool, node) = self
                .volumes
                .get(&vm.metadata.key_of(name))
                .cloned()
                .unwrap_or_default();
            if let Some(pool) = &pool {
                needs.add_pool(pool);
                if self.shared_pools.contains(pool) {
                    continue;
                }
            }
            if needs.pinned.is_none() {
                needs.pinned = node;
            }
            local.push(name);
        }
        if needs.pinned.is_none() && !local.is_empty() {
            let project = vm.metadata.project();
            needs.pinned = bound
                .iter()
                .filter(|other| other.metadata.project() == project)
                .find(|other| other.spec.volume_names().any(|v| local.contains(&v)))
                .and_then(|other| other.status.node.clone());
        }
        needs
    }
}

/// `vm` bound to `node`: its `status.node` and `Scheduled` condition.
fn bind_to(vm: &mut Vm, node: &str) {
    vm.status.node = Some(node.to_owned());
    let mut c = Condition::new(SCHEDULED, true, "Bound", format!("on node {node}"));
    c.last_transition = Some(now());
    set_condition(&mut vm.status.conditions, c);
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use corral_contract::{
        Accel, Arch, Boot, ByteSize, NodeResources, NodeStatus, VmSpec, VolumeAttachment,
    };

    use super::*;

    fn vm_with(name: &str, volumes: &[&str], node: Option<&str>) -> Vm {
        let mut spec = VmSpec::builder(Boot::kernel("/k")).build().unwrap();
        for v in volumes {
            spec.volumes.push(VolumeAttachment {
                volume: v.parse().unwrap(),
                readonly: false,
                serial: None,
            });
        }
        let mut vm = Vm::new(name.parse().unwrap(), spec);
        vm.status.node = node.map(Into::into);
        vm
    }

    #[test]
    fn volumes_of_a_shared_pool_pin_nothing_and_every_pool_is_asked_for() {
        let places = VolumePlaces {
            volumes: HashMap::from([
                // Node-local and made on node a.
                ("local".to_owned(), (None, Some("a".to_owned()))),
                // In a shared pool; made on b, which manages it now.
                ("nfs-data".to_owned(), (Some("nfs".to_owned()), None)),
                // In a node-local pool, not made yet.
                ("fast-data".to_owned(), (Some("fast".to_owned()), None)),
            ]),
            shared_pools: HashSet::from(["nfs".to_owned()]),
        };
        let needs = |vm: &Vm, bound: &[Vm]| places.needs(vm, bound);
        assert_eq!(
            needs(&vm_with("v", &["nfs-data"], None), &[]),
            VolumeNeeds {
                pinned: None,
                pools: vec!["nfs".into()],
            }
        );
        assert_eq!(
            needs(&vm_with("v", &["nfs-data", "local"], None), &[]),
            VolumeNeeds {
                pinned: Some("a".into()),
                pools: vec!["nfs".into()],
            }
        );
        // A VM bound on c shares the unmade node-local volume: this one follows it there;
        // one sharing only a shared volume does not.
        let bound = [
            vm_with("w", &["fast-data"], Some("c")),
            vm_with("x", &["nfs-data"], Some("d")),
        ];
        assert_eq!(
            needs(&vm_with("v", &["fast-data"], None), &bound),
            VolumeNeeds {
                pinned: Some("c".into()),
                pools: vec!["fast".into()],
            }
        );
        assert_eq!(
            needs(&vm_with("v", &["nfs-data"], None), &bound),
            VolumeNeeds {
                pinned: None,
                pools: vec!["nfs".into()],
            }
        );
        // A volume not declared yet asks nothing.
        assert_eq!(
            needs(&vm_with("v", &["later"], None), &[]),
            VolumeNeeds::NONE
        );
    }

    #[test]
    fn a_heartbeat_alone_does_not_change_what_placement_sees() {
        let mut node = Node::new("a".parse().unwrap());
        node.status = NodeStatus {
            allocatable: NodeResources {
                cpus: 4,
                memory: ByteSize::from_gib(8),
                disk: ByteSize::from_gib(100),
            },
            arches: vec![Arch::X86_64],
            accelerators: vec![Accel::Tcg],
            ..NodeStatus::default()
        };
        node.set_ready(true, "Heartbeat", "", "t0");
        let before = shape(&node);
        // What every heartbeat rewrites: the time, and the disk's free space.
        node.status.heartbeat = Some("2026-12-05T06:00:02Z".into());
        node.status.allocatable.disk = ByteSize::from_gib(99);
        assert_eq!(shape(&node), before);
        // What placement looks at does.
        for change in [
            |n: &mut Node| n.spec.unschedulable = true,
            |n: &mut Node| n.set_ready(false, "NodeLost", "", "t1"),
            |n: &mut Node| n.status.allocatable.cpus = 8,
            |n: &mut Node| {
                n.metadata.labels.insert("zone".into(), "b".into());
            },
        ] {
            let mut changed = node.clone();
            change(&mut changed);
            assert_ne!(shape(&changed), before);
        }
    }
}
