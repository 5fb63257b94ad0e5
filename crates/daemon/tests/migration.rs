//! Live migration end to end: two nodes (`corrald --role all`, each with its own run and data
//! directories) on one real etcd, a real guest moved from one to the other while it runs.
//! Evidence from inside the guest: its heartbeat counter carries on in the target's QEMU
//! (never resets, no second boot), and it answers a command typed on the target's console.
//! Never two QEMUs running the guest: the source's QEMU is gone once the target owns it. A
//! drained node's VM moves live too.

use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint};
use corral_contract::names::annotations;
use corral_contract::{MigrationPhase, Phase, Vm};
use corral_testkit::{
    Corrald, EtcdCluster, HEARTBEAT, kit_vm, type_on_console, wait_console, wait_phase,
};

/// `corrald cluster init` in a new directory: the cluster CA both nodes take with
/// `--cluster-dir`, so that each migrates over TLS on a node certificate of its own from it.
fn cluster_ca() -> anyhow::Result<(tempfile::TempDir, String)> {
    let tmp = tempfile::Builder::new()
        .prefix("crl-mig-ca")
        .tempdir_in("/tmp")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corrald"))
        .args([
            "cluster",
            "init",
            "--server-name",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(tmp.path())
        .output()?;
    anyhow::ensure!(out.status.success(), "cluster init: {out:?}");
    let dir = tmp.path().join("cluster").to_str().unwrap().to_owned();
    Ok((tmp, dir))
}

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
    let (_ca, ca_dir) = cluster_ca()?;
    let start = |name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name, "--cluster-dir", &ca_dir])
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
    assert!(m.tls, "not over TLS: {m:?}");
    println!(
        "migrated node-a → node-b over TLS: downtime {:?} ms, total {:?} ms, {} bytes",
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

    // Post-copy needs userfaultfd, which QEMU (unprivileged, 7.2) has only where the host
    // allows it to all users: elsewhere the move is refused, saying why, and the VM stays.
    let postcopy = corral_contract::MigrationOptions {
        postcopy: true,
        ..corral_contract::MigrationOptions::default()
    };
    let userfaultfd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .is_ok_and(|v| v.trim() == "1");
    if !userfaultfd {
        cb.migrate_vm_with("mover", None, postcopy).await?;
        let vm = migration_ended(&cb, "mover", logs).await;
        let m = vm.status.migration.clone().expect("status.migration");
        assert_eq!(m.phase, MigrationPhase::Failed, "{m:?}\n{}", logs());
        let why = m.message.unwrap_or_default();
        assert!(
            why.contains("post-copy") && why.contains("userfaultfd"),
            "{why}"
        );
        assert_eq!(vm.status.node.as_deref(), Some("node-b"));
        assert_eq!(vm.status.phase, Phase::Running);
    }

    // Back again, the scheduler choosing the node (the only other one is node-a), with
    // auto-converge (and post-copy where the host allows it); QEMU on both sides took the
    // capabilities, or the migration would have failed saying so.
    let options = corral_contract::MigrationOptions {
        auto_converge: true,
        postcopy: userfaultfd,
        bandwidth: None,
    };
    cb.migrate_vm_with("mover", None, options).await?;
    let vm = migration_ended(&cb, "mover", logs).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert_eq!(m.phase, MigrationPhase::Completed, "{m:?}\n{}", logs());
    assert!(m.auto_converge && m.tls, "{m:?}");
    assert_eq!(
        vm.status.node.as_deref(),
        Some("node-a"),
        "{:?}\n{}",
        vm.status,
        logs()
    );
    assert!(b.qemu_pids().is_empty(), "node-b's QEMU is gone");
    assert_eq!(a.qemu_pids().len(), 1, "one QEMU, on node-a");

    // Draining node-a moves it live again (never stopped: the counter carries on).
    let before = last_heartbeat(&ca.console_log("mover", 0).await?).unwrap_or_default();
    ca.drain_node("node-a").await?;
    let vm = migration_ended(&cb, "mover", logs).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert_eq!(m.phase, MigrationPhase::Completed, "{m:?}\n{}", logs());
    assert_eq!(vm.status.node.as_deref(), Some("node-b"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = cb.console_log("mover", 0).await?;
        if last_heartbeat(&log).is_some_and(|n| n > before) {
            assert!(!String::from_utf8_lossy(&log).contains("CORRAL_BOOT_OK"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the drain\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(a.qemu_pids().is_empty(), "nothing runs on the drained node");
    ca.cordon_node("node-a", false).await?;

    // A stopped VM does not move live.
    cb.stop_vm("mover", true).await?;
    wait_phase(&cb, &b, "mover", Phase::Stopped).await?;
    let stopped = cb.migrate_vm("mover", Some("node-a")).await.unwrap_err();
    assert!(
        stopped.to_string().contains("only a running or paused VM"),
        "{stopped}"
    );
    drop(etcd);
    Ok(())
}

/// Waits until `name`'s current migration reaches `phase` (any of them).
async fn migration_reaches(
    c: &Client,
    name: &str,
    phases: &[MigrationPhase],
    log: impl Fn() -> String,
) -> Vm {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(vm) = c.get_vm(name).await {
            let request = vm.metadata.annotations.get(annotations::MIGRATE_TO);
            let at = vm.status.migration.as_ref().is_some_and(|m| {
                Some(&m.request) == request
                    && phases.contains(&m.phase)
                    && (m.phase != MigrationPhase::Migrating || m.transferred_bytes > 0)
            });
            if at {
                return vm;
            }
        }
        assert!(Instant::now() < deadline, "no {phases:?}\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With the migration slowed down (`--migration-bandwidth`): a cancel half-way leaves the
/// guest running on the source; a source corrald killed half-way (`kill -9`) and started
/// again finishes the move, and the guest runs in exactly one QEMU; so does a target corrald
/// killed half-way and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_interrupted_migration_leaves_one_running_guest() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let start = |name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name, "--migration-bandwidth", "8M"])
            .start()
    };
    let mut a = start("node-a")?;
    let b = start("node-b")?;
    let cb = Client::connect(Endpoint::Unix(b.socket())).await?;
    let logs = |a: &Corrald| format!("node-a:\n{}\nnode-b:\n{}", a.log(), b.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while cb.cordon_node("node-b", true).await.is_err() {
        assert!(Instant::now() < deadline, "node-b never registered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cb.create_vm(&kit_vm("slow", |b| b)).await?;
    let vm = wait_phase(&cb, &b, "slow", Phase::Running).await?;
    assert_eq!(vm.status.node.as_deref(), Some("node-a"));
    cb.cordon_node("node-b", false).await?;
    let ca = Client::connect(Endpoint::Unix(a.socket())).await?;
    wait_console(&ca, &a, "slow", &format!("{HEARTBEAT} 2"), 0).await?;

    // Cancelled half-way: it stays on node-a and carries on there.
    cb.migrate_vm("slow", Some("node-b")).await?;
    migration_reaches(&cb, "slow", &[MigrationPhase::Migrating], || logs(&a)).await;
    cb.cancel_vm_migration("slow").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let vm = loop {
        let vm = cb.get_vm("slow").await?;
        let m = vm.status.migration.clone().unwrap_or_default();
        if m.phase == MigrationPhase::Cancelled && b.qemu_pids().is_empty() {
            break vm;
        }
        assert!(
            Instant::now() < deadline,
            "not cancelled: {m:?}\n{}",
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vm.status.node.as_deref(), Some("node-a"));
    assert_eq!(vm.status.phase, Phase::Running);
    let mark = ca.console_log("slow", 0).await?.len();
    let before = last_heartbeat(&ca.console_log("slow", 0).await?).unwrap_or_default();
    wait_console(
        &ca,
        &a,
        "slow",
        &format!("{HEARTBEAT} {}", before + 1),
        mark,
    )
    .await?;
    assert_eq!(a.qemu_pids().len(), 1, "one QEMU, on node-a");

    // The source killed half-way and started again: the move completes, one QEMU runs it.
    cb.migrate_vm("slow", Some("node-b")).await?;
    migration_reaches(&cb, "slow", &[MigrationPhase::Migrating], || logs(&a)).await;
    a.kill_9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.restart()?;
    let vm = migration_ended(&cb, "slow", || logs(&a)).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert_eq!(m.phase, MigrationPhase::Completed, "{m:?}\n{}", logs(&a));
    assert_eq!(vm.status.node.as_deref(), Some("node-b"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.qemu_pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "node-a still runs a QEMU\n{}",
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.qemu_pids().len(), 1, "one QEMU, on node-b");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = cb.console_log("slow", 0).await?;
        if last_heartbeat(&log).is_some_and(|n| n > before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on node-b\n{}",
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The target killed half-way and started again: the move completes or is given up, and
    // either way one QEMU runs the guest, which counts on.
    let before = last_heartbeat(&cb.console_log("slow", 0).await?).unwrap_or_default();
    cb.migrate_vm("slow", Some("node-a")).await?;
    migration_reaches(&cb, "slow", &[MigrationPhase::Migrating], || logs(&a)).await;
    a.kill_9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.restart()?;
    let vm = migration_ended(&cb, "slow", || logs(&a)).await;
    let m = vm.status.migration.clone().expect("status.migration");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (home, pid) = loop {
        let vm = cb.get_vm("slow").await?;
        let (on_a, on_b) = (a.qemu_pids(), b.qemu_pids());
        let home = match vm.status.node.as_deref() {
            Some("node-a") => Some((&a, &on_a)),
            Some("node-b") => Some((&b, &on_b)),
            _ => None,
        };
        if let (Some((home, pids)), Some(pid), Phase::Running) =
            (home, vm.status.pid, vm.status.phase)
        {
            if on_a.len() + on_b.len() == 1 && pids.contains(&pid) {
                break (home, pid);
            }
        }
        assert!(
            Instant::now() < deadline,
            "not one running QEMU after the target's restart ({m:?}): node-a {on_a:?}, \
             node-b {on_b:?}, status {:?}\n{}",
            vm.status,
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "target restarted half-way: migration {:?}, the guest runs in QEMU {pid}",
        m.phase
    );
    let client = Client::connect(Endpoint::Unix(home.socket())).await?;
    // It runs now (a heartbeat newer than any yet), and it is the same boot (never reset).
    let seen = last_heartbeat(&client.console_log("slow", 0).await?).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = last_heartbeat(&client.console_log("slow", 0).await?);
        if last.is_some_and(|n| n > seen && n > before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest does not count on past {seen} (before the move {before}), last {last:?}\n{}",
            logs(&a)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(etcd);
    Ok(())
}

/// The volume files in a node's data directory.
fn volume_files(node: &Corrald) -> Vec<String> {
    std::fs::read_dir(node.data_dir().join("volumes"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".qcow2"))
                .collect()
        })
        .unwrap_or_default()
}

/// A guest on a node-local volume moves with its disk (two `--role all` nodes on etcd, over
/// TLS, the migration slowed to 8 MB/s): data written to the disk before the move is read back
/// from the target's file after it, with the page cache dropped, and the heartbeat counts on.
/// Cancelled half-way (its disk mirrored, its RAM on the way) it stays running on the source
/// and the target keeps no file. A drain of a node with three VMs moves all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_move_with_their_disks_and_a_drain_moves_all_three() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    let (_ca, ca_dir) = cluster_ca()?;
    let start = |name: &str| {
        Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
            .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
            .args(&["--node-name", name, "--cluster-dir", &ca_dir])
            .args(&["--migration-bandwidth", "8M"])
            .start()
    };
    let a = start("node-a")?;
    let b = start("node-b")?;
    let ca = Client::connect(Endpoint::Unix(a.socket())).await?;
    let cb = Client::connect(Endpoint::Unix(b.socket())).await?;
    let logs = || format!("node-a:\n{}\nnode-b:\n{}", a.log(), b.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ca.cordon_node("node-b", true).await.is_err() {
        assert!(Instant::now() < deadline, "node-b never registered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Three VMs on node-a; "disky" has a blank volume, and writes a marker on it.
    ca.create_volume(&serde_json::from_value(serde_json::json!({
        "metadata": {"name": "data"},
        "spec": {"size": 32 << 20},
    }))?)
    .await?;
    let data = corral_contract::VolumeAttachment {
        volume: "data".parse()?,
        readonly: false,
        serial: None,
    };
    ca.create_vm(&kit_vm("disky", |s| s.volume(data))).await?;
    for name in ["plain-1", "plain-2"] {
        ca.create_vm(&kit_vm(name, |s| s)).await?;
    }
    for name in ["disky", "plain-1", "plain-2"] {
        let vm = wait_phase(&ca, &a, name, Phase::Running).await?;
        assert_eq!(vm.status.node.as_deref(), Some("node-a"));
    }
    wait_console(&ca, &a, "disky", &format!("{HEARTBEAT} 2"), 0).await?;
    let on_a = volume_files(&a);
    assert_eq!(on_a.len(), 1, "node-a holds the volume: {on_a:?}");
    type_on_console(
        &ca,
        "disky",
        "printf 'disk-marker-%s\\n' $((6*7)) > /dev/vda; sync; echo wrote-$((1+1))",
        "wrote-2",
    )
    .await?;
    ca.cordon_node("node-b", false).await?;

    // Cancelled half-way: the disk is mirrored and the RAM on its way when it is withdrawn.
    ca.migrate_vm("disky", Some("node-b")).await?;
    let vm = migration_reaches(&ca, "disky", &[MigrationPhase::Migrating], logs).await;
    let m = vm.status.migration.clone().expect("status.migration");
    assert!(m.disks_ready && m.disk_total_bytes > 0, "{m:?}");
    assert!(m.disk_address.is_some() && m.tls, "{m:?}");
    ca.cancel_vm_migration("disky").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vm = ca.get_vm("disky").await?;
        let m = vm.status.migration.clone().unwrap_or_default();
        if m.phase == MigrationPhase::Cancelled
            && b.qemu_pids().is_empty()
            && volume_files(&b).is_empty()
        {
            assert_eq!(vm.status.node.as_deref(), Some("node-a"));
            assert_eq!(vm.status.phase, Phase::Running);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not cancelled cleanly: {m:?}, node-b files {:?}\n{}",
            volume_files(&b),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mark = ca.console_log("disky", 0).await?.len();
    let before = last_heartbeat(&ca.console_log("disky", 0).await?).unwrap_or_default();
    wait_console(
        &ca,
        &a,
        "disky",
        &format!("{HEARTBEAT} {}", before + 1),
        mark,
    )
    .await?;
    assert_eq!(volume_files(&a), on_a, "node-a's file is untouched");

    // A drain moves all three live; the disk's data is read back on node-b from its file.
    let before = last_heartbeat(&ca.console_log("disky", 0).await?).unwrap_or_default();
    ca.drain_node("node-a").await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    for name in ["disky", "plain-1", "plain-2"] {
        loop {
            let vm = cb.get_vm(name).await?;
            let done = vm
                .status
                .migration
                .as_ref()
                .is_some_and(|m| m.phase == MigrationPhase::Completed && m.target == "node-b");
            if done && vm.status.node.as_deref() == Some("node-b") && vm.status.pid.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not move: {:?}\n{}",
                vm.status,
                logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(b.qemu_pids().len(), 3, "three QEMUs on node-b\n{}", logs());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.qemu_pids().is_empty() || !volume_files(&a).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node-a still has QEMUs {:?} or volume files {:?}",
            a.qemu_pids(),
            volume_files(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let volume = cb.get_volume("data").await?;
    let path = volume.status.path.clone().unwrap_or_default();
    assert!(
        path.starts_with(b.data_dir().to_str().unwrap_or("?")),
        "the volume's file is node-b's: {path}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = cb.console_log("disky", 0).await?;
        if last_heartbeat(&log).is_some_and(|n| n > before) {
            assert!(!String::from_utf8_lossy(&log).contains("CORRAL_BOOT_OK"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat on node-b\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    type_on_console(
        &cb,
        "disky",
        "echo 3 > /proc/sys/vm/drop_caches; head -c 15 /dev/vda",
        "disk-marker-42",
    )
    .await?;
    drop(etcd);
    Ok(())
}
