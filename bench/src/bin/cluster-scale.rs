//! The cluster at scale: the real scheduler on a real etcd with 1,000 simulated nodes and
//! 10,000 VMs.
//!
//! ```text
//! cargo run --release -p corral-bench --bin cluster-scale -- \
//!     [--nodes 1000] [--vms 10000] [--dead 100] [--lists 15] [--base-vms 100]
//! ```
//!
//! One etcd member (Debian's etcd-server, on loopback, data on the temporary directory's
//! disk) holds everything; this process plays the rest:
//! - **Nodes**: each registers and then heartbeats every 2 s through `NodeService`, as an
//!   agent does (one status write per heartbeat). A node's VMs are "started" by a node
//!   simulator that watches the VMs and, for each VM bound to a live simulated node, makes
//!   the status write a node makes when its VM runs (phase `Running`, a pid). No QEMU: this
//!   measures the control plane.
//! - **The scheduler**: the real [`corral_controller::Scheduler`], elected through etcd, with
//!   the default node TTL (10 s) and fence margin (5 s).
//!
//! Measured, each first with one node and `--base-vms` VMs on their own key prefix (the
//! single-node figures), then at full size:
//! - placements per second: `--vms` VMs are created while no scheduler runs, then one is
//!   started; from its start until the last VM is bound;
//! - etcd transactions per placement: the cluster revision's growth meanwhile (every etcd
//!   transaction bumps it once), less the heartbeats and node writes counted by this
//!   program. The scheduler binds up to 128 VMs in one transaction, so this is far below 1;
//! - list latency: `VmService::list` of every VM (the read behind `GET /v1/vms`), median
//!   of `--lists`;
//! - failover: `--dead` nodes stop heartbeating; the time until every VM they held is bound
//!   to a live node. The scheduler may move them only after the TTL and the fence margin
//!   (15 s by default, the time a lost node's fence needs): both the total and what it took
//!   after that wait are printed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use corral_bench::{flag, median, ms, ratio};
use corral_contract::{
    Accel, Arch, Boot, ByteSize, Node, NodeResources, NodeStatus, Phase, RestartPolicy, Vm, VmSpec,
};
use corral_controller::{Scheduler, SchedulerConfig};
use corral_service::{NodeService, VmService};
use corral_store::{EtcdConfig, EtcdCoordinator, EtcdStore, Store};
use corral_testkit::EtcdCluster;
use futures_util::{StreamExt, stream};
use tokio::sync::watch;

/// How often a simulated node reports, as an agent does.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Writes this program keeps in flight while creating objects.
const IN_FLIGHT: usize = 64;

fn main() -> anyhow::Result<()> {
    // `CORRAL_LOG=corral_controller=debug` shows where each scheduling pass spends its time.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CORRAL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

/// What one run measured.
struct Figures {
    nodes: usize,
    vms: usize,
    place: Duration,
    scheduler_writes: f64,
    list: Duration,
    failover: Option<(usize, Duration)>,
}

async fn bench() -> anyhow::Result<()> {
    let nodes: usize = flag("--nodes", 1000);
    let vms: usize = flag("--vms", 10_000);
    let dead: usize = flag("--dead", 100);
    let lists: usize = flag("--lists", 15);
    let base_vms: usize = flag("--base-vms", 100);
    let etcd = EtcdCluster::start(1)?;
    eprintln!("etcd at {}", etcd.endpoint(0));

    let single = run(&etcd, "/scale-single/", 1, base_vms, 0, lists).await?;
    let full = run(&etcd, "/scale-full/", nodes, vms, dead, lists).await?;

    println!("cluster scale: real scheduler on one real etcd member, nodes simulated in-process");
    let rate = |f: &Figures| f.vms as f64 / f.place.as_secs_f64();
    println!(
        "placements/s, {} node / {} VMs:        {:>9.0}",
        single.nodes,
        single.vms,
        rate(&single)
    );
    println!(
        "placements/s, {} nodes / {} VMs:   {:>9.0}  ({:.2}x the single node; target >= 5000/s, Nomad C1M 3750/s)",
        full.nodes,
        full.vms,
        rate(&full),
        rate(&full) / rate(&single)
    );
    println!(
        "scheduler's etcd transactions per placement: {:.3} (single node {:.3})",
        full.scheduler_writes, single.scheduler_writes
    );
    println!(
        "list of all VMs, median of {lists}:       {} for {} VMs, {} for {} ({:.1}x for {:.0}x the VMs)",
        ms(full.list),
        full.vms,
        ms(single.list),
        single.vms,
        ratio(full.list, single.list),
        full.vms as f64 / single.vms as f64
    );
    if let Some((moved, took)) = full.failover {
        let wait = SchedulerConfig::default();
        println!(
            "failover: {dead} nodes stop; their {moved} VMs all bound elsewhere {} after the stop \
             (the scheduler waits TTL + fence margin = {} from each node's last heartbeat, sent \
             up to {} before)",
            ms(took),
            ms(wait.node_ttl + wait.fence_margin),
            ms(HEARTBEAT)
        );
    }
    Ok(())
}

/// One cluster of `nodes` simulated nodes and `vms` VMs under `prefix`.
async fn run(
    etcd: &EtcdCluster,
    prefix: &str,
    nodes: usize,
    vms: usize,
    dead: usize,
    lists: usize,
) -> anyhow::Result<Figures> {
    let mut config = EtcdConfig::new(etcd.endpoints());
    config.prefix = prefix.to_owned();
    let etcd_store = EtcdStore::connect(config).await?;
    let elections = Arc::new(EtcdCoordinator::new(&etcd_store));
    let store: Arc<dyn Store> = Arc::new(etcd_store);
    let vm_service = VmService::new(store.clone());
    let node_service = NodeService::new(store.clone());
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:04}")).collect();

    eprintln!("{prefix}: registering {nodes} nodes…");
    stream::iter(names.clone())
        .map(|name| {
            let node_service = node_service.clone();
            async move {
                let mut node = Node::new(name.parse()?);
                node.status = node_status();
                node_service.register(node).await?;
                node_service.heartbeat(&name, node_status(), None).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;
    let (stop_tx, stop) = watch::channel(false);
    let silenced: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let heartbeats = Arc::new(AtomicU64::new(0));
    tokio::spawn(heartbeat_all(
        node_service.clone(),
        names.clone(),
        silenced.clone(),
        heartbeats.clone(),
        stop.clone(),
    ));

    eprintln!("{prefix}: creating {vms} VMs…");
    let created = Instant::now();
    stream::iter(0..vms)
        .map(|i| {
            let vm_service = vm_service.clone();
            async move {
                vm_service
                    .create(vm(i)?)
                    .await
                    .map(drop)
                    .map_err(Into::into)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<anyhow::Result<()>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<()>>()?;
    eprintln!(
        "{prefix}: {vms} VMs created in {} ({:.0}/s)",
        ms(created.elapsed()),
        vms as f64 / created.elapsed().as_secs_f64()
    );

    // Nodes "start" what is bound to them; the watch also tells when all are bound.
    let placed = Arc::new(Placements::default());
    let node_writes = Arc::new(AtomicU64::new(0));
    let from = store.revision().await?;
    tokio::spawn(simulate_nodes(
        store.clone(),
        vm_service.clone(),
        from,
        silenced.clone(),
        placed.clone(),
        node_writes.clone(),
        stop.clone(),
    ));

    eprintln!("{prefix}: scheduling…");
    let (beats_before, writes_before) = (
        heartbeats.load(Ordering::Relaxed),
        node_writes.load(Ordering::Relaxed),
    );
    let revision_before = store.revision().await?;
    let started = Instant::now();
    let scheduler = Arc::new(Scheduler::new(
        vm_service.clone(),
        node_service.clone(),
        elections,
        SchedulerConfig {
            candidate: format!("bench{}", prefix.trim_matches('/')),
            ..SchedulerConfig::default()
        },
    ));
    tokio::spawn(scheduler.clone().run(stop.clone()));
    placed.wait_for(vms, Duration::from_secs(600)).await?;
    let place = started.elapsed();
    let revision_after = store.revision().await?;
    let others = (heartbeats.load(Ordering::Relaxed) - beats_before)
        + (node_writes.load(Ordering::Relaxed) - writes_before);
    let scheduler_writes =
        (revision_after - revision_before).saturating_sub(others) as f64 / vms as f64;
    eprintln!(
        "{prefix}: {vms} placed in {} ({:.0}/s)",
        ms(place),
        vms as f64 / place.as_secs_f64()
    );

    let mut samples = Vec::with_capacity(lists);
    for _ in 0..lists {
        let t = Instant::now();
        let (all, _) = vm_service.list("").await?;
        samples.push(t.elapsed());
        anyhow::ensure!(all.len() == vms, "listed {} of {vms} VMs", all.len());
    }
    let list = median(&samples);

    let mut failover = None;
    if dead > 0 {
        // Give the node writes time to settle: the VMs run before their nodes die.
        placed.wait_running(vms, Duration::from_secs(300)).await?;
        let victims: HashSet<String> = names.iter().take(dead).cloned().collect();
        let held = placed.held_by(&victims);
        eprintln!(
            "{prefix}: stopping {dead} nodes' heartbeats ({} VMs)…",
            held.len()
        );
        let killed = Instant::now();
        silenced.lock().unwrap().extend(victims.iter().cloned());
        placed
            .wait_moved(&held, &victims, Duration::from_secs(600))
            .await?;
        failover = Some((held.len(), killed.elapsed()));
    }
    let _ = stop_tx.send(true);
    Ok(Figures {
        nodes,
        vms,
        place,
        scheduler_writes,
        list,
        failover,
    })
}

/// A node with room for many small VMs.
fn node_status() -> NodeStatus {
    let room = NodeResources {
        cpus: 64,
        memory: ByteSize::from_gib(512),
        disk: ByteSize::from_gib(2048),
    };
    NodeStatus {
        capacity: room.clone(),
        allocatable: room,
        arches: vec![Arch::X86_64],
        accelerators: vec![Accel::Kvm, Accel::Tcg],
        version: Some("bench".into()),
        ..NodeStatus::default()
    }
}

fn vm(i: usize) -> anyhow::Result<Vm> {
    let spec = VmSpec::builder(Boot::kernel("/var/lib/corral/kernel"))
        .cpus(1)
        .memory(ByteSize::from_mib(512))
        .restart_policy(RestartPolicy::Always)
        .build()?;
    Ok(Vm::new(format!("vm-{i:05}").parse()?, spec))
}

/// Every node not silenced reports every [`HEARTBEAT`], spread evenly over it.
async fn heartbeat_all(
    nodes: NodeService,
    names: Vec<String>,
    silenced: Arc<std::sync::Mutex<HashSet<String>>>,
    count: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT / names.len().max(1) as u32);
    let mut next = 0;
    // Each node as its last heartbeat wrote it, as an agent keeps it: one write a beat.
    let last: Arc<std::sync::Mutex<HashMap<String, Node>>> = Arc::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let name = names[next].clone();
        next = (next + 1) % names.len();
        if silenced.lock().unwrap().contains(&name) {
            continue;
        }
        let (nodes, count, last) = (nodes.clone(), count.clone(), last.clone());
        tokio::spawn(async move {
            let seen = last.lock().unwrap().remove(&name);
            if let Ok(node) = nodes.heartbeat(&name, node_status(), seen).await {
                last.lock().unwrap().insert(name, node);
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Where each VM is bound and whether it runs, as the VM watch tells.
#[derive(Default)]
struct Placements {
    state: std::sync::Mutex<HashMap<String, (Option<String>, bool)>>,
    changed: tokio::sync::Notify,
}

impl Placements {
    fn record(&self, vm: &Vm) {
        let running = vm.status.phase == Phase::Running;
        self.state
            .lock()
            .unwrap()
            .insert(vm.metadata.key(), (vm.status.node.clone(), running));
        self.changed.notify_waiters();
    }

    async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&HashMap<String, (Option<String>, bool)>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&self.state.lock().unwrap()) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    async fn wait_for(&self, vms: usize, limit: Duration) -> anyhow::Result<()> {
        self.wait_until("every VM bound", limit, |s| {
            s.values().filter(|(node, _)| node.is_some()).count() >= vms
        })
        .await
    }

    async fn wait_running(&self, vms: usize, limit: Duration) -> anyhow::Result<()> {
        self.wait_until("every VM running", limit, |s| {
            s.values().filter(|(_, running)| *running).count() >= vms
        })
        .await
    }

    fn held_by(&self, nodes: &HashSet<String>) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .iter()
            .filter(|(_, (node, _))| node.as_ref().is_some_and(|n| nodes.contains(n)))
            .map(|(key, _)| key.clone())
            .collect()
    }

    async fn wait_moved(
        &self,
        vms: &[String],
        dead: &HashSet<String>,
        limit: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until("every VM of the dead nodes bound elsewhere", limit, |s| {
            vms.iter().all(|key| {
                s.get(key)
                    .and_then(|(node, _)| node.as_ref())
                    .is_some_and(|n| !dead.contains(n))
            })
        })
        .await
    }
}

/// The nodes' side: each VM bound to a live node gets the write its node makes once the
/// VM runs. Every VM event is recorded in `placed`.
async fn simulate_nodes(
    store: Arc<dyn Store>,
    vms: VmService,
    from: u64,
    silenced: Arc<std::sync::Mutex<HashSet<String>>>,
    placed: Arc<Placements>,
    writes: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut events = store.watch(Some("Vm"), from).await?;
    let (start_tx, mut start_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    // The writes, many in flight as many nodes would make them.
    let writer = {
        let (vms, writes) = (vms.clone(), writes.clone());
        tokio::spawn(async move {
            let mut pending = stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    Some((key, node)) = start_rx.recv(), if pending.len() < IN_FLIGHT => {
                        let (vms, writes) = (vms.clone(), writes.clone());
                        pending.push(async move {
                            let result = vms
                                .update_status(&key, |vm, s| {
                                    if vm.status.node.as_deref() != Some(node.as_str())
                                        || s.phase == Phase::Running
                                    {
                                        return false;
                                    }
                                    s.phase = Phase::Running;
                                    s.pid = Some(4242);
                                    true
                                })
                                .await;
                            if result.is_ok() {
                                writes.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Some(()) = pending.next(), if !pending.is_empty() => {}
                    else => break,
                }
            }
        })
    };
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(Ok(event)) = event else { break };
        let Ok(mut vm) = serde_json::from_str::<Vm>(&event.object.body) else {
            continue;
        };
        vm.metadata.resource_version = event.object.resource_version;
        placed.record(&vm);
        if let Some(node) = vm.status.node.clone() {
            let alive = !silenced.lock().unwrap().contains(&node);
            if alive && vm.status.phase != Phase::Running {
                let _ = start_tx.send((vm.metadata.key(), node));
            }
        }
    }
    drop(start_tx);
    writer.abort();
    Ok(())
}
