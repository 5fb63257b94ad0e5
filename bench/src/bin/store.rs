//! What the etcd store costs against the embedded SQLite store, and how many etcd writes
//! one VM create makes.
//!
//! ```text
//! cargo build -p corral-daemon && cargo run --release -p corral-bench --bin store -- \
//!     [--objects 500] [--lists 50] [--corrald target/debug/corrald] [--vms 3]
//! ```
//!
//! Both stores run in this process: SQLite on a file in a temporary directory, etcd as one
//! real member (`etcd` from the Debian package etcd-server) on loopback with its data in a
//! temporary directory. For each: `--objects` creates, as many updates (compare-and-swap),
//! `--lists` lists of all objects, and the watch delay (from calling `update` to its event
//! arriving on a watch opened earlier). Prints medians and p99 per operation and the ratio
//! etcd/SQLite of the medians.
//!
//! Then a corrald (the debug build beside this program unless `--corrald` names one) on
//! that etcd: `--vms` VMs created and booted one after another; the etcd revision before
//! and after each (every etcd write bumps it by one) gives the writes per VM create, from
//! the API call until the VM is Running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_bench::{flag, median, ms, percentile, ratio};
use corral_client::{Client, Endpoint};
use corral_contract::Phase;
use corral_store::{EtcdConfig, EtcdStore, Object, Selector, SqliteStore, Store};
use corral_testkit::{Corrald, EtcdCluster, kit_vm, wait_phase};

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

/// Latencies of one backend, per operation.
struct Figures {
    create: Vec<Duration>,
    update: Vec<Duration>,
    list: Vec<Duration>,
    watch: Vec<Duration>,
}

fn object(i: usize) -> Object {
    let body = serde_json::json!({
        "metadata": {"name": format!("vm-{i:05}"), "labels": {"tier": "web"}},
        "spec": {"cpus": 2, "memory": "1GiB", "power": "running",
                 "boot": {"kernel": {"kernel": "/var/lib/corral/k", "initrd": "/var/lib/corral/i"}}},
        "status": {"phase": "Running", "pid": 1234 + i},
    });
    Object::new(
        "Vm",
        format!("vm-{i:05}"),
        format!("uid-{i}"),
        body.to_string(),
    )
    .with_label("tier", "web")
}

async fn measure(store: &dyn Store, objects: usize, lists: usize) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        create: Vec::with_capacity(objects),
        update: Vec::with_capacity(objects),
        list: Vec::with_capacity(lists),
        watch: Vec::with_capacity(objects),
    };
    let mut stored = Vec::with_capacity(objects);
    for i in 0..objects {
        let started = Instant::now();
        stored.push(store.create(object(i)).await?);
        figures.create.push(started.elapsed());
    }
    let from = store.revision().await?;
    let mut watch = store.watch(Some("Vm"), from).await?;
    for obj in &mut stored {
        let mut changed = obj.clone();
        changed.body = changed.body.replace("\"Running\"", "\"Stopped\"");
        let started = Instant::now();
        let updated = store.update(changed).await?;
        figures.update.push(started.elapsed());
        let event = watch
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
        figures.watch.push(started.elapsed());
        anyhow::ensure!(
            event.revision == updated.resource_version,
            "watch out of step"
        );
        *obj = updated;
    }
    for _ in 0..lists {
        let started = Instant::now();
        let (all, _) = store.list("Vm", &Selector::everything()).await?;
        figures.list.push(started.elapsed());
        anyhow::ensure!(all.len() == objects, "list returned {} objects", all.len());
    }
    Ok(figures)
}

fn row(what: &str, sqlite: &[Duration], etcd: &[Duration]) {
    println!(
        "{what:<22} {:>10} {:>10} {:>10} {:>10} {:>8.1}x",
        ms(median(sqlite)),
        ms(percentile(sqlite, 99.0)),
        ms(median(etcd)),
        ms(percentile(etcd, 99.0)),
        ratio(median(etcd), median(sqlite)),
    );
}

async fn bench() -> anyhow::Result<()> {
    let objects: usize = flag("--objects", 500);
    let lists: usize = flag("--lists", 50);
    let vms: usize = flag("--vms", 3);
    let corrald: PathBuf = flag(
        "--corrald",
        std::env::current_exe()?
            .parent()
            .and_then(|dir| dir.parent())
            .map(|target| target.join("debug/corrald"))
            .unwrap_or_default(),
    );

    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(dir.path().join("state.db")).await?;
    let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let etcd_store = EtcdStore::connect(EtcdConfig::new(etcd.endpoints())).await?;

    eprintln!("measuring SQLite ({objects} objects)…");
    let on_sqlite = measure(&sqlite, objects, lists).await?;
    eprintln!("measuring etcd ({objects} objects)…");
    let on_etcd = measure(&etcd_store, objects, lists).await?;

    println!(
        "store latencies, {objects} objects of ~{} bytes, one etcd member on loopback",
        object(0).body.len()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "operation", "sqlite p50", "sqlite p99", "etcd p50", "etcd p99", "etcd/sql"
    );
    row("create", &on_sqlite.create, &on_etcd.create);
    row("update (CAS)", &on_sqlite.update, &on_etcd.update);
    row("update → watch event", &on_sqlite.watch, &on_etcd.watch);
    row(&format!("list {objects}"), &on_sqlite.list, &on_etcd.list);

    if vms == 0 {
        return Ok(());
    }
    anyhow::ensure!(
        corrald.exists(),
        "{} is missing: cargo build -p corral-daemon, or pass --corrald PATH",
        corrald.display()
    );
    let d = Corrald::builder(&corrald)
        .quiet()
        .args(&[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint(0),
            "--etcd-prefix",
            "/bench/",
        ])
        .start()?;
    let client = Client::connect(Endpoint::Unix(d.socket())).await?;
    let probe = EtcdStore::connect(EtcdConfig::new(etcd.endpoints())).await?;
    let mut writes = Vec::new();
    for i in 0..vms {
        let name = format!("bench-{i}");
        let before = probe.revision().await?;
        client.create_vm(&kit_vm(&name, |b| b)).await?;
        wait_phase(&client, &d, &name, Phase::Running).await?;
        // Let the controller's last status write land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        writes.push(probe.revision().await? - before);
    }
    println!(
        "etcd writes per VM create (API call to Running, {vms} VMs): {writes:?}, median {}",
        {
            let mut sorted = writes.clone();
            sorted.sort_unstable();
            sorted[sorted.len() / 2]
        }
    );
    Ok(())
}
