//! Node fencing end to end: corrald on a real etcd, a real QEMU guest. When the node can no
//! longer report to the cluster (etcd killed) for its TTL, it stops its VMs itself — before
//! any server could move them — and starts nothing; once reports reach etcd again it is
//! unfenced and the VM, still bound to it, boots again. Evidence: the host's QEMU processes
//! and the guest's console.

use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint};
use corral_contract::Phase;
use corral_testkit::{Corrald, EtcdCluster, kit_vm, wait_console, wait_phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_report_fences_its_vms_and_resumes_after() -> anyhow::Result<()> {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let d = Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
        .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
        .args(&["--node-name", "fenced", "--node-ttl", "3s"])
        .start()?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    c.create_vm(&kit_vm("guarded", |b| b)).await?;
    let vm = wait_phase(&c, &d, "guarded", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("fenced"));
    let pid = vm.status.pid.expect("a pid");
    wait_console(&c, &d, "guarded", "CORRAL_HEARTBEAT 1", 0).await?;
    let mark = c.console_log("guarded", 0).await?.len();

    etcd.kill(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.qemu_pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU still runs with the node cut off:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        d.log().contains("fenced"),
        "the daemon says why:\n{}",
        d.log()
    );
    // Fenced, it starts nothing while it still cannot report.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(d.qemu_pids().is_empty(), "nothing restarts while fenced");

    let _etcd = tokio::task::spawn_blocking(move || etcd.restart(0).map(|()| etcd)).await??;
    // The daemon's etcd client reconnects in its own time: reads may fail for a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    let vm = loop {
        match c.get_vm("guarded").await {
            Ok(vm) if vm.status.phase == Phase::Running && vm.status.pid != Some(pid) => break vm,
            _ => {}
        }
        assert!(Instant::now() < deadline, "not running again:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(vm.status.node.as_deref(), Some("fenced"));
    wait_console(&c, &d, "guarded", "CORRAL_BOOT_OK", mark).await?;
    assert_eq!(d.qemu_pids().len(), 1, "one QEMU for the VM");
    Ok(())
}

/// Two servers and one node on one etcd: one server's scheduler leads; killed (`kill -9`),
/// the other takes over and places the next VM, which boots on the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_scheduler_is_taken_over_by_the_other() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let start = |role: &str, name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--role", role, "--node-name", name])
            .start()
    };
    let mut servers = [start("server", "srv-a")?, start("server", "srv-b")?];
    let node = start("all", "host-n")?;
    let on_node = Client::connect(Endpoint::Unix(node.socket())).await?;
    let leader = |servers: &[Corrald]| {
        servers
            .iter()
            .position(|s| s.log().contains("leading the scheduler"))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(i) = leader(&servers) {
            break i;
        }
        // The node's corrald campaigns too: wait until one of the servers leads.
        assert!(Instant::now() < deadline, "no server leads");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let via = Client::connect(Endpoint::Unix(servers[first].socket())).await?;
    via.create_vm(&kit_vm("before", |b| b)).await?;
    let vm = wait_phase(&on_node, &node, "before", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("host-n"));
    wait_console(&on_node, &node, "before", "CORRAL_BOOT_OK", 0).await?;

    servers[first].kill_9();
    let other = 1 - first;
    let via = Client::connect(Endpoint::Unix(servers[other].socket())).await?;
    via.create_vm(&kit_vm("after", |b| b)).await?;
    let vm = wait_phase(&on_node, &node, "after", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("host-n"));
    wait_console(&on_node, &node, "after", "CORRAL_BOOT_OK", 0).await?;
    assert!(
        servers[other].log().contains("leading the scheduler"),
        "the other server took over:\n{}",
        servers[other].log()
    );
    assert_eq!(node.qemu_pids().len(), 2, "one QEMU per VM");
    assert!(servers[other].qemu_pids().is_empty(), "servers run no VMs");
    drop(etcd);
    Ok(())
}
