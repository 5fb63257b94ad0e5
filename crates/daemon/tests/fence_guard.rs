//! The node's fence guard end to end: two nodes (`corrald --role all`, each with its own run
//! and data directories) on one real etcd, a real guest. QEMU outlives corrald, so a
//! `kill -9`'d corrald would leave its VM running while the other node starts it again; the
//! guard (`corrald fence-guard`, started by corrald and outliving it) kills that QEMU at the
//! fence deadline, before any server may move the VM. A corrald restarted in time takes the
//! guard over and nothing is killed. Evidence: the host's processes sampled throughout, the
//! guard's log and record, and the guest's console on each node.

use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint};
use corral_contract::{Phase, RestartPolicy};
use corral_daemon::fence_guard::{GuardPaths, Stamp, boottime};
use corral_testkit::{
    Corrald, EtcdCluster, HEARTBEAT, kit_vm, last_heartbeat, wait_console, wait_phase,
};

/// The deadline the node's corrald last handed its guard.
fn deadline(d: &Corrald) -> Option<Duration> {
    Stamp::read(&GuardPaths::new(&d.run_dir()).stamp)
        .ok()
        .flatten()
        .map(|s| s.deadline())
}

fn guard_log(d: &Corrald) -> String {
    std::fs::read_to_string(GuardPaths::new(&d.run_dir()).log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_kills_a_dead_corralds_vm_before_it_moves_and_spares_one_restarted_in_time()
-> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let start = |name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name, "--node-ttl", "8s"])
            .start()
    };
    let mut a = start("node-a")?;
    let b = start("node-b")?;
    let ca = Client::connect(Endpoint::Unix(a.socket())).await?;
    let cb = Client::connect(Endpoint::Unix(b.socket())).await?;

    // One guard per node, started by its corrald.
    let guard_a = a
        .fence_guard_pid()
        .expect("node-a's corrald started a guard");
    assert!(b.fence_guard_pid().is_some(), "node-b has its own guard");
    assert_ne!(b.fence_guard_pid(), Some(guard_a));
    // A second guard on the same node refuses to run.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_corrald"))
        .arg("--run-dir")
        .arg(a.run_dir())
        .arg("fence-guard")
        .output()?;
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && said.contains(&format!("pid {guard_a}")),
        "a second guard: {}\n{said}",
        second.status
    );

    // Placed on node-a (node-b cordoned meanwhile), booted, counting.
    let deadline_at = Instant::now() + Duration::from_secs(60);
    while ca.cordon_node("node-b", true).await.is_err() {
        assert!(Instant::now() < deadline_at, "node-b never registered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ca.create_vm(&kit_vm("twice", |s| {
        s.restart_policy(RestartPolicy::Always)
    }))
    .await?;
    let vm = wait_phase(&ca, &a, "twice", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("node-a"));
    let uid = vm.metadata.uid.clone();
    let pid = vm.status.pid.expect("a pid");
    wait_console(&ca, &a, "twice", &format!("{HEARTBEAT} 1"), 0).await?;
    ca.cordon_node("node-b", false).await?;

    // 1. corrald killed and restarted before its deadline: the new corrald re-attaches to
    // the same guard and renews the deadline; the guard kills nothing, the guest counts on.
    let before = deadline(&a).expect("node-a's corrald stamped a deadline");
    let count_before = last_heartbeat(&ca, "twice").await?.unwrap_or(0);
    a.restart()?;
    assert_eq!(a.fence_guard_pid(), Some(guard_a), "the same guard");
    assert!(a.log().contains("re-attached"), "{}", a.log());
    let patience = Instant::now() + Duration::from_secs(60);
    // Until the old deadline is behind us, and the new corrald renewed it.
    while boottime() <= before + Duration::from_secs(1) || deadline(&a) <= Some(before) {
        assert!(
            Instant::now() < patience,
            "the deadline was not renewed:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(corral_qemu::is_alive(pid), "the guard spared the QEMU");
    assert_eq!(a.qemu_pids(), [pid]);
    assert!(!guard_log(&a).contains("QEMU killed"), "{}", guard_log(&a));
    assert!(!GuardPaths::new(&a.run_dir()).fenced.exists());
    let ca = Client::connect(Endpoint::Unix(a.socket())).await?;
    let vm = wait_phase(&ca, &a, "twice", Phase::Running).await?;
    assert_eq!(vm.status.pid, Some(pid), "adopted, not restarted");
    let mark = format!("{HEARTBEAT} {}", count_before + 3);
    wait_console(&ca, &a, "twice", &mark, 0).await?;

    // 2. corrald killed for good: the guard kills the QEMU before node-b may start the VM,
    // and the VM then runs once, on node-b. Sampled: the VM's status (through node-b), then
    // the old QEMU, then every QEMU of both nodes.
    let killed_at = Instant::now();
    a.kill_9();
    let mut gone_at = None;
    let mut most_at_once = 0;
    let patience = Instant::now() + Duration::from_secs(180);
    let moved = loop {
        let vm = cb.get_vm("twice").await?;
        let old_alive = corral_qemu::is_alive(pid);
        let running = a.qemu_pids().len() + b.qemu_pids().len();
        most_at_once = most_at_once.max(running);
        assert!(running <= 1, "two QEMUs for one VM:\n{}", guard_log(&a));
        if !old_alive && gone_at.is_none() {
            gone_at = Some(killed_at.elapsed());
        }
        if vm.status.node.as_deref() == Some("node-b") {
            assert!(
                !old_alive,
                "the VM moved to node-b while node-a's QEMU still ran:\n{}",
                guard_log(&a)
            );
        }
        if vm.status.node.as_deref() == Some("node-b")
            && vm.status.phase == Phase::Running
            && vm.status.pid.is_some()
        {
            break vm;
        }
        assert!(
            Instant::now() < patience,
            "not running on node-b: {:?}\nguard:\n{}\nnode-b:\n{}",
            vm.status,
            guard_log(&a),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "corrald killed → QEMU killed by the guard {:?} → VM running on node-b {:?}",
        gone_at,
        killed_at.elapsed()
    );
    assert_eq!(
        a.fence_guard_pid(),
        Some(guard_a),
        "the guard outlived corrald"
    );
    let log = guard_log(&a);
    assert!(
        log.contains("QEMU killed") && log.contains(&format!("pid={pid}")),
        "the guard says what it did:\n{log}"
    );
    let record = std::fs::read_to_string(GuardPaths::new(&a.run_dir()).fenced)?;
    assert!(
        record.contains(&uid) && record.contains(&format!("\"pid\":{pid}")),
        "{record}"
    );
    let new_pid = moved.status.pid.expect("a pid");
    wait_console(&cb, &b, "twice", "CORRAL_BOOT_OK", 0).await?;
    assert_eq!(b.qemu_pids(), [new_pid]);
    assert!(a.qemu_pids().is_empty());
    assert_eq!(most_at_once, 1);

    // 3. node-a back: corrald takes the guard's record, and starts nothing of what moved.
    a.restart()?;
    let patience = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&a.run_dir())
        .join("vms")
        .join(&uid)
        .exists()
        || GuardPaths::new(&a.run_dir()).fenced.exists()
    {
        assert!(
            Instant::now() < patience,
            "node-a did not clear what the guard killed:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.log().contains("the fence guard killed"),
        "node-a says what happened while it was away:\n{}",
        a.log()
    );
    assert!(a.qemu_pids().is_empty());
    assert_eq!(b.qemu_pids(), [new_pid]);
    assert_eq!(
        cb.get_vm("twice").await?.status.node.as_deref(),
        Some("node-b")
    );
    drop(etcd);
    Ok(())
}
