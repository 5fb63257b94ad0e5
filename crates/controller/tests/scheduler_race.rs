//! Two schedulers on one store, both acting at once (each believes it leads): every VM is
//! bound exactly once, and no binding ever changes — the compare-and-swap write decides.
//! The store's own event log is the evidence.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use corral_contract::{
    Accel, Arch, Boot, ByteSize, Node, NodeResources, RestartPolicy, StoragePhase, Vm, VmSpec,
    Volume, VolumeAttachment, VolumeSpec,
};
use corral_controller::{NODE_LOST, ScheduleConfig, Scheduler, SchedulerConfig};
use corral_service::{NodeService, Resources, VmService, VolumeKind};
use corral_store::{LocalCoordinator, SqliteStore, Store};

async fn cluster(
    dir: &std::path::Path,
    names: &[&str],
) -> (Arc<dyn Store>, VmService, NodeService) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("state.db")).await.unwrap());
    let vms = VmService::new(store.clone());
    let nodes = NodeService::new(store.clone());
    for name in names {
        let mut node = Node::new(name.parse().unwrap());
        node.status.allocatable = NodeResources {
            cpus: 64,
            memory: ByteSize::from_gib(64),
            disk: ByteSize::from_gib(100),
        };
        node.status.arches = vec![Arch::X86_64];
        node.status.accelerators = vec![Accel::Tcg];
        nodes.register(node).await.unwrap();
        nodes
            .heartbeat(name, nodes.get(name).await.unwrap().status, None)
            .await
            .unwrap();
    }
    (store, vms, nodes)
}

#[tokio::test]
async fn two_schedulers_racing_never_bind_one_vm_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vms, nodes) = cluster(dir.path(), &["n1", "n2", "n3"]).await;
    const VMS: usize = 60;
    for i in 0..VMS {
        let spec = VmSpec::builder(Boot::kernel("/boot/vmlinuz"))
            .memory(ByteSize::from_mib(64))
            .build()
            .unwrap();
        vms.create(Vm::new(format!("vm-{i}").parse().unwrap(), spec))
            .await
            .unwrap();
    }
    let scheduler = |placement| {
        Arc::new(Scheduler::new(
            vms.clone(),
            nodes.clone(),
            // Each its own coordinator: both lead, as two servers would during a split.
            Arc::new(LocalCoordinator::default()),
            SchedulerConfig {
                placement,
                ..SchedulerConfig::default()
            },
        ))
    };
    // Different weighings, so that the two would pick different nodes for most VMs.
    let spread = scheduler(ScheduleConfig::default());
    let pack = scheduler(ScheduleConfig {
        spread: false,
        ..ScheduleConfig::default()
    });
    let (a, b) = tokio::join!(spread.pass(), pack.pass());
    a.unwrap();
    b.unwrap();

    let (all, revision) = vms.list("").await.unwrap();
    assert_eq!(all.len(), VMS);
    assert!(
        all.iter().all(|vm| vm.status.node.is_some()),
        "every VM is bound"
    );

    // Replay every write of every VM: its node goes from none to one node, once.
    let mut watch = store.watch(Some("Vm"), 0).await.unwrap();
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut bindings = 0;
    while let Some(event) = watch.recv().await {
        let event = event.unwrap();
        let vm: Vm = serde_json::from_str(&event.object.body).unwrap();
        let before = seen.insert(event.object.name.clone(), vm.status.node.clone());
        match (before.flatten(), vm.status.node) {
            (None, Some(_)) => bindings += 1,
            (Some(a), Some(b)) => assert_eq!(a, b, "{} moved from {a} to {b}", event.object.name),
            (Some(a), None) => panic!("{} lost its node {a}", event.object.name),
            (None, None) => {}
        }
        if event.revision >= revision {
            break;
        }
    }
    assert_eq!(bindings, VMS, "one binding per VM");
}

#[tokio::test]
async fn a_lost_nodes_vms_move_after_the_fence_deadline_unless_they_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vms, nodes) = cluster(dir.path(), &["n1"]).await;
    let vm = |name: &str, policy, volume: Option<&str>| {
        let mut b = VmSpec::builder(Boot::kernel("/boot/vmlinuz")).restart_policy(policy);
        if let Some(v) = volume {
            b = b.volume(VolumeAttachment {
                volume: v.parse().unwrap(),
                readonly: false,
                serial: None,
            });
        }
        Vm::new(name.parse().unwrap(), b.build().unwrap())
    };
    vms.create(vm("moves", RestartPolicy::Always, None))
        .await
        .unwrap();
    vms.create(vm("never", RestartPolicy::Never, None))
        .await
        .unwrap();
    vms.create(vm("pinned", RestartPolicy::Always, Some("data")))
        .await
        .unwrap();
    vms.create(vm("pooled", RestartPolicy::Always, Some("nfs-data")))
        .await
        .unwrap();
    // Made on n1: "data" on its disk, "nfs-data" in the pool every node mounts.
    let volumes: Resources<VolumeKind> = Resources::new(store.clone());
    for (name, pool) in [("data", None), ("nfs-data", Some("nfs"))] {
        let spec = VolumeSpec {
            kind: corral_contract::VolumeKind::Disk,
            format: None,
            size: Some(ByteSize::from_mib(8)),
            image: None,
            pool: pool.map(|p| p.parse().unwrap()),
        };
        volumes
            .create(Volume::new(name.parse().unwrap(), spec))
            .await
            .unwrap();
        volumes
            .update_status(name, |_, s| {
                s.phase = StoragePhase::Ready;
                s.node = Some("n1".into());
                s.shared = pool.is_some();
                true
            })
            .await
            .unwrap();
    }
    // Every node mounts the shared pool.
    let mut with_pool = nodes.get("n1").await.unwrap().status;
    with_pool.pools = vec![corral_contract::NodePool {
        name: "nfs".into(),
        shared: true,
    }];
    nodes.heartbeat("n1", with_pool, None).await.unwrap();
    let ttl = Duration::from_millis(300);
    let scheduler = Scheduler::new(
        vms.clone(),
        nodes.clone(),
        Arc::new(LocalCoordinator::default()),
        SchedulerConfig {
            node_ttl: ttl,
            fence_margin: ttl,
            ..SchedulerConfig::default()
        },
    );
    scheduler.pass().await.unwrap();
    for name in ["moves", "never", "pinned", "pooled"] {
        assert_eq!(
            vms.get(name).await.unwrap().status.node.as_deref(),
            Some("n1")
        );
    }
    // n1 stops heartbeating; n2 joins and keeps reporting.
    nodes
        .register(Node::new("n2".parse().unwrap()))
        .await
        .unwrap();
    let mut status = nodes.get("n1").await.unwrap().status;
    status.heartbeat = None;
    let beat = |nodes: NodeService, status: corral_contract::NodeStatus| async move {
        nodes.heartbeat("n2", status, None).await.unwrap();
    };
    beat(nodes.clone(), status.clone()).await;
    // Past the TTL: lost, but not yet past the fence margin — nothing moves.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    beat(nodes.clone(), status.clone()).await;
    scheduler.pass().await.unwrap();
    assert!(!nodes.get("n1").await.unwrap().ready(), "n1 is marked lost");
    assert_eq!(
        vms.get("moves").await.unwrap().status.node.as_deref(),
        Some("n1")
    );
    // Past TTL + margin: the restartable VMs without volumes on n1's disk move (to n2, which
    // has the shared pool), the others say why not.
    tokio::time::sleep(ttl).await;
    beat(nodes.clone(), status.clone()).await;
    scheduler.pass().await.unwrap();
    scheduler.pass().await.unwrap();
    for name in ["moves", "pooled"] {
        assert_eq!(
            vms.get(name).await.unwrap().status.node.as_deref(),
            Some("n2"),
            "{name}"
        );
    }
    for (name, why) in [
        ("never", "restart policy is never"),
        ("pinned", "volume data"),
    ] {
        let vm = vms.get(name).await.unwrap();
        assert_eq!(vm.status.node.as_deref(), Some("n1"), "{name} stays");
        let lost = vm.status.condition(NODE_LOST).expect("NodeLost");
        assert!(
            lost.status && lost.message.contains(why),
            "{name}: {lost:?}"
        );
    }
}
