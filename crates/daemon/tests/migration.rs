//! Live migration end to end: two nodes (`corrald --role all`, each with its own run and data
//! directories) on one real etcd, a real guest moved from one to the other while it runs.
//! Evidence from inside the guest: its heartbeat counter carries on in the target's QEMU
//! (never resets, no second boot), and it answers a command typed on the target's console.
//! Never two QEMUs running the guest: the source's QEMU is gone once the target owns it.

use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint};
use corral_contract::names::annotations;
use corral_contract::{MigrationPhase, Phase, Vm};
use corral_testkit::{Corrald, EtcdCluster, HEARTBEAT, kit_vm, wait_console, wait_phase};

/// The highest heartbeat count in a console log.
fn last_heartbeat(log: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| l.split_once(HEARTBEAT))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .max()
}

/// Waits until `vm`'s migration has ended; the VM as it is then.
async fn migration_ended(c: &Client, name: &str, log: impl Fn() -> String) -> Vm {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let vm = c.get_vm(name).await.expect("the VM");
        // The migration of the current request (a finished one may still be shown).
        let request = vm.metadata.annotations.get(annotations::MIGRATE_TO);
        let ended = vm
            .status
            .migration
            .as_ref()
            .is_some_and(|m| Some(&m.request) == request && m.phase.ended());
        // Moved: until the target's controller has taken it over, the status has no pid.
        let taken_over = vm.status.migration.as_ref().is_none_or(|m| {
            m.phase != MigrationPhase::Completed
                || (vm.status.node.as_deref() == Some(m.target.as_str()) && vm.status.pid.is_some())
        });
        let settled = taken_over && matches!(vm.status.phase, Phase::Running | Phase::Paused);
        if ended && settled {
            return vm;
        }
        assert!(
            Instant::now() < deadline,
            "migration not over: {:?}\n{}",
            vm.status,
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_to_another_node_and_carries_on() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let start = |name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name])
            .start()
    };
    let a = start("node-a")?;
    let b = start("node-b")?;
    let ca = Client::connect(Endpoint::Unix(a.socket())).await?;
    let cb = Client::connect(Endpoint::Unix(b.socket())).await?;
    let logs = || format!("node-a:\n{}\nnode-b:\n{}", a.log(), b.log());

    // Placed on node-a (node-b cordoned meanwhile), booted, counting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ca.cordon_node("node-b", true).await.is_err() {
        assert!(Instant::now() < deadline, "node-b never registered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ca.create_vm(&kit_vm("mover", |b| b)).await?;
    let vm = wait_phase(&ca, &a, "mover", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("node-a"));
    wait_console(&ca, &a, "mover", &format!("{HEARTBEAT} 3"), 0).await?;
    ca.cordon_node("node-b", false).await?;

    // Mistakes are refused at once, naming what is wrong.
    let nowhere = ca.migrate_vm("mover", Some("node-z")).await.unwrap_err();
    assert!(nowhere.to_string().contains("node-z"), "{nowhere}");
    let here = ca.migrate_vm("mover", Some("node-a")).await.unwrap_err();
    assert!(here.to_string().contains("already runs there"), "{here}");

    // Moved to node-b while it runs.
    ca.migrate_vm("mover", Some("node-b")).await?;
    let vm = migration_ended(&ca, "mover", logs).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert_eq!(m.phase, MigrationPhase::Completed, "{m:?}\n{}", logs());
    assert_eq!((m.source.as_str(), m.target.as_str()), ("node-a", "node-b"));
    assert_eq!(vm.status.node.as_deref(), Some("node-b"));
    let pid = vm.status.pid.expect("the target's QEMU's pid");
    assert_eq!(b.qemu_pids(), [pid], "the status names node-b's QEMU");
    assert!(m.transferred_bytes > 0 && m.downtime_ms.is_some(), "{m:?}");
    println!(
        "migrated node-a → node-b: downtime {:?} ms, total {:?} ms, {} bytes",
        m.downtime_ms, m.total_time_ms, m.transferred_bytes
    );
    let before = last_heartbeat(&ca.console_log("mover", 0).await.unwrap_or_default());

    // The guest carried on in node-b's QEMU: counting on from where it was, never booting
    // again, and it answers there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let log = cb.console_log("mover", 0).await?;
        if let Some(n) = last_heartbeat(&log) {
            assert!(
                !String::from_utf8_lossy(&log).contains("CORRAL_BOOT_OK"),
                "the guest booted again"
            );
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on node-b\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(after >= 3, "heartbeat {after} on node-b");
    if let Some(before) = before {
        assert!(after > before, "heartbeat {after} after {before}: reset");
    }
    let mut console = cb.attach_console("mover", true, false).await?;
    console
        .input
        .send(b"echo moved-$((40+2))\n".to_vec())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("moved-42") {
        assert!(Instant::now() < deadline, "no answer on node-b: {seen}");
        if let Ok(Some(Ok(bytes))) =
            tokio::time::timeout(Duration::from_secs(1), console.output.recv()).await
        {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    drop(console);
    assert!(a.qemu_pids().is_empty(), "node-a's QEMU is gone");
    assert_eq!(b.qemu_pids().len(), 1, "one QEMU, on node-b");

    // Back again, the scheduler choosing the node (the only other one is node-a).
    cb.migrate_vm("mover", None).await?;
    let vm = migration_ended(&cb, "mover", logs).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert_eq!(m.phase, MigrationPhase::Completed, "{m:?}\n{}", logs());
    assert_eq!(
        vm.status.node.as_deref(),
        Some("node-a"),
        "{:?}\n{}",
        vm.status,
        logs()
    );
    assert!(b.qemu_pids().is_empty(), "node-b's QEMU is gone");
    assert_eq!(a.qemu_pids().len(), 1, "one QEMU, on node-a");

    // A stopped VM does not move live.
    ca.stop_vm("mover", true).await?;
    wait_phase(&ca, &a, "mover", Phase::Stopped).await?;
    let stopped = ca.migrate_vm("mover", Some("node-b")).await.unwrap_err();
    assert!(
        stopped.to_string().contains("only a running or paused VM"),
        "{stopped}"
    );
    drop(etcd);
    Ok(())
}
