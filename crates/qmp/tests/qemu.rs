//! The client against a real `qemu-system-x86_64` (TCG, `-S`, no guest).
//!
//! A missing QEMU fails the test (run `scripts/setup.sh`): it never passes without running.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use corral_qmp::{Error, Event, EventKind, Qmp, RunState};
use tokio::process::Command;
use tokio::sync::broadcast;

const QEMU: &str = "qemu-system-x86_64";
const PATIENCE: Duration = Duration::from_secs(10);

fn find_qemu() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(QEMU))
        .find(|candidate| candidate.is_file())
}

async fn next_event(events: &mut broadcast::Receiver<Event>) -> Event {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("event within 10 s")
        .expect("event stream open")
}

#[tokio::test]
async fn real_qemu_session() {
    let qemu = find_qemu()
        .unwrap_or_else(|| panic!("{QEMU} is not on PATH: install it with scripts/setup.sh"));
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("qmp.sock");
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
        ])
        .args(["-object", "memory-backend-ram,id=mem0,size=64M"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn QEMU");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let qmp = loop {
        match Qmp::connect(&socket).await {
            Ok(qmp) => break qmp,
            Err(err) if tokio::time::Instant::now() < deadline => {
                if let Some(status) = child.try_wait().expect("poll QEMU") {
                    panic!("QEMU exited with {status} before accepting QMP ({err})");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("no QMP connection within {PATIENCE:?}: {err}"),
        }
    };
    let version = qmp.greeting().version.clone();
    assert!(version.major >= 7, "{version}");
    let mut events = qmp.subscribe();

    let status = qmp.query_status().await.expect("query-status");
    assert!(!status.running);
    assert!(
        matches!(status.status, RunState::Prelaunch | RunState::Paused),
        "{}",
        status.status
    );

    let objects = qmp.qom_list("/objects").await.expect("qom-list");
    assert!(
        objects
            .iter()
            .any(|p| p.name == "mem0" && p.type_ == "child<memory-backend-ram>"),
        "{objects:?}"
    );
    let size = qmp.qom_get("/objects/mem0", "size").await.expect("qom-get");
    assert_eq!(size, 64 << 20);
    let memdevs = qmp.query_memdev().await.expect("query-memdev");
    let mem0 = memdevs
        .iter()
        .find(|m| m.id.as_deref() == Some("mem0"))
        .expect("mem0 listed");
    assert_eq!(mem0.size, 64 << 20);
    assert_eq!(mem0.policy, "default");

    let text = qmp
        .human_monitor_command("info version")
        .await
        .expect("hmp");
    let numbers = format!("{}.{}.{}", version.major, version.minor, version.micro);
    assert!(text.contains(&numbers), "{text:?}");

    let err = qmp
        .execute("no-such-command", None)
        .await
        .expect_err("unknown command");
    assert!(
        matches!(&err, Error::Qmp { class, .. } if class == "CommandNotFound"),
        "{err:?}"
    );

    qmp.cont().await.expect("cont");
    assert_eq!(next_event(&mut events).await.kind, EventKind::Resume);
    assert_eq!(
        qmp.query_status().await.expect("query-status").status,
        RunState::Running
    );
    qmp.stop().await.expect("stop");
    let stop = next_event(&mut events).await;
    assert_eq!(stop.kind, EventKind::Stop);
    assert!(stop.timestamp.is_some());
    assert_eq!(
        qmp.query_status().await.expect("query-status").status,
        RunState::Paused
    );
    qmp.system_reset().await.expect("system_reset");
    let reset = EventKind::Reset {
        guest: false,
        reason: "host-qmp-system-reset".into(),
    };
    assert_eq!(next_event(&mut events).await.kind, reset);
    qmp.system_powerdown().await.expect("system_powerdown");
    assert_eq!(next_event(&mut events).await.kind, EventKind::Powerdown);

    // QEMU keeps migration parameters from one migration to the next: a migration without a
    // limit of its own runs at QEMU's default, not at the limit of the one before.
    let max_bandwidth = || async {
        qmp.query_migrate_parameters()
            .await
            .expect("query-migrate-parameters")["max-bandwidth"]
            .as_u64()
    };
    let ended = || async {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = qmp.query_migrate().await.expect("query-migrate")["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if ["completed", "cancelled", "failed"].contains(&status.as_str()) {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "migration {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    qmp.migrate("exec:cat > /dev/null", 300, Some(1 << 20))
        .await
        .expect("migrate");
    assert_eq!(max_bandwidth().await, Some(1 << 20));
    let _ = qmp.migrate_cancel().await;
    ended().await;
    qmp.migrate("exec:cat > /dev/null", 300, None)
        .await
        .expect("migrate");
    assert_eq!(max_bandwidth().await, Some(corral_qmp::QEMU_MAX_BANDWIDTH));
    assert_eq!(ended().await, "completed");

    qmp.quit().await.expect("quit");
    let shutdown = EventKind::Shutdown {
        guest: false,
        reason: "host-qmp-quit".into(),
    };
    assert_eq!(next_event(&mut events).await.kind, shutdown);
    let exit = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("QEMU exits after quit")
        .expect("wait for QEMU");
    assert!(exit.success(), "{exit}");
    tokio::time::timeout(PATIENCE, qmp.closed())
        .await
        .expect("connection closes");
    assert!(matches!(
        qmp.execute("query-status", None).await,
        Err(Error::Closed)
    ));
}
