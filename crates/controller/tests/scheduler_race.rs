//! Two schedulers on one store, both acting at once (each believes it leads): every VM is
//! bound exactly once, and no binding ever changes — the compare-and-swap write decides.
//! The store's own event log is the evidence.

use std::collections::BTreeMap;
use std::sync::Arc;

use corral_contract::{Accel, Arch, Boot, ByteSize, Node, NodeResources, Vm, VmSpec};
use corral_controller::{ScheduleConfig, Scheduler, SchedulerConfig};
use corral_service::{NodeService, VmService};
use corral_store::{LocalCoordinator, SqliteStore, Store};

#[tokio::test]
async fn two_schedulers_racing_never_bind_one_vm_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let vms = VmService::new(store.clone());
    let nodes = NodeService::new(store.clone());
    for name in ["n1", "n2", "n3"] {
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
            .heartbeat(name, nodes.get(name).await.unwrap().status)
            .await
            .unwrap();
    }
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
    assert!(all.iter().all(|vm| vm.status.node.is_some()), "every VM is bound");

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
