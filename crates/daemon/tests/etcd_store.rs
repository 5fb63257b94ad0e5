//! corrald on the etcd store (`--store etcd`): a real etcd member (TLS with client
//! certificates), a real daemon and a real QEMU guest. The VM is declared through the API, kept in etcd (not in a SQLite file), boots
//! (evidence from its console), and survives a daemon restart: the new daemon reads it back
//! from etcd and adopts the running QEMU instead of starting another.

use std::time::Duration;

use corral_client::{Client, Endpoint};
use corral_contract::{Phase, Power, Project, ProjectSpec};
use corral_store::{EtcdConfig, EtcdStore, EtcdTls, Selector, Store};
use corral_testkit::{
    Corrald, EtcdCluster, boots, kit_vm, last_heartbeat, wait_console, wait_phase,
};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_kept_in_etcd_boots_and_is_adopted_after_a_daemon_restart() -> anyhow::Result<()> {
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start_tls(1)).await??;
    let endpoint = etcd.endpoint(0);
    let files = etcd.tls().expect("a TLS cluster").clone();
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_owned();
    let mut d = Corrald::builder(env!("CARGO_BIN_EXE_corrald"))
        .args(&["--store", "etcd", "--etcd-endpoints", &endpoint])
        .args(&["--etcd-ca-file", &path(&files.ca)])
        .args(&["--etcd-cert", &path(&files.client_cert)])
        .args(&["--etcd-key", &path(&files.client_key)])
        .start()?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    c.create_vm(&kit_vm("on-etcd", |b| b)).await?;
    let pid = wait_phase(&c, &d, "on-etcd", Phase::Running)
        .await?
        .status
        .pid
        .expect("a running VM has a pid");
    wait_console(&c, &d, "on-etcd", "CORRAL_HEARTBEAT 1", 0).await?;
    let beat = last_heartbeat(&c, "on-etcd").await?.expect("heartbeats");

    // The same name in another project: a store name with '/' in it.
    c.create_project(&Project::new("team-a".parse()?, ProjectSpec::default()))
        .await?;
    let team = c.clone().in_project(Some("team-a"), false)?;
    team.create_vm(&kit_vm("on-etcd", |b| b.power(Power::Stopped)))
        .await?;

    // The declarations live in etcd, under corrald's prefix; no SQLite store was made.
    let mut config = EtcdConfig::new([endpoint.clone()]);
    config.tls = Some(EtcdTls {
        ca: std::fs::read_to_string(&files.ca)?,
        identity: Some((
            std::fs::read_to_string(&files.client_cert)?,
            std::fs::read_to_string(&files.client_key)?,
        )),
    });
    let store = EtcdStore::connect(config).await?;
    let (vms, _) = store.list("Vm", &Selector::everything()).await?;
    let names: Vec<&str> = vms.iter().map(|vm| vm.name.as_str()).collect();
    assert!(
        names.contains(&"on-etcd") && names.contains(&"team-a/on-etcd"),
        "both VMs are stored in etcd: {names:?}"
    );
    assert!(
        !d.data_dir().join("state.db").exists(),
        "corrald on etcd keeps no SQLite store"
    );
    let version = c.version().await?;
    assert_eq!(version.store, format!("etcd:{endpoint}/corral/"));

    d.restart()?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while !d.log().contains("adopted running VM") {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted daemon did not adopt the VM: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vm = wait_phase(&c, &d, "on-etcd", Phase::Running).await?;
    assert_eq!(vm.status.pid, Some(pid), "the VM kept its QEMU");
    assert_eq!(d.qemu_pids(), [pid], "no second QEMU");
    // Inside the guest: the same boot goes on.
    wait_console(
        &c,
        &d,
        "on-etcd",
        &format!("CORRAL_HEARTBEAT {}", beat + 2),
        0,
    )
    .await?;
    assert_eq!(boots(&c, "on-etcd").await?, 1, "the guest was not rebooted");
    let team = c.clone().in_project(Some("team-a"), false)?;
    let twin = team.get_vm("on-etcd").await?;
    assert_eq!(twin.metadata.project(), "team-a");
    assert_eq!(twin.spec.power, Power::Stopped);
    // The adopted VM is under control: stop it through the restarted daemon.
    c.stop_vm("on-etcd", false).await?;
    wait_phase(&c, &d, "on-etcd", Phase::Stopped).await?;
    Ok(())
}

/// Started before its etcd answers, corrald waits for it (`--etcd-wait`) instead of failing:
/// users start both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrald_waits_for_an_etcd_that_is_not_up_yet() -> anyhow::Result<()> {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let endpoint = etcd.endpoint(0);
    etcd.kill(0);
    let builder = Corrald::builder(env!("CARGO_BIN_EXE_corrald")).args(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoint,
        "--etcd-wait",
        "2m",
    ]);
    let starting = tokio::task::spawn_blocking(move || builder.start());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!starting.is_finished(), "corrald is up without its store");
    tokio::task::block_in_place(|| etcd.restart(0))?;
    let d = starting.await??;
    assert!(
        d.log().contains("etcd does not answer yet"),
        "corrald said it was waiting: {}",
        d.log()
    );
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    assert!(c.version().await?.store.starts_with("etcd:"));
    Ok(())
}

/// An etcd that never answers: corrald gives up after `--etcd-wait`, naming the endpoints
/// and the flag, and serves nothing.
#[test]
fn corrald_gives_up_on_an_etcd_that_never_answers() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("crl-e")
        .tempdir_in("/tmp")?;
    let port = corral_testkit::http::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_corrald"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CORRAL_") {
            cmd.env_remove(key);
        }
    }
    let output = cmd
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .arg("--run-dir")
        .arg(dir.path().join("r"))
        .args(["--store", "etcd", "--etcd-endpoints", &endpoint])
        .args(["--etcd-wait", "1s"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "corrald started: {stderr}");
    assert!(
        stderr.contains(&format!("connecting to the etcd store at {endpoint}"))
            && stderr.contains("--etcd-wait"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("r/corral.sock").exists(),
        "no API is served without the store"
    );
    Ok(())
}
