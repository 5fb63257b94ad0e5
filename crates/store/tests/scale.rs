//! 10,000 objects through the trait: prints creates/s and list time (run with
//! `--nocapture`; nothing here asserts on time).

mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use corral_store::{Object, Selector, SqliteStore, Store};
use serde_json::json;

const OBJECTS: usize = 10_000;

fn resource(i: usize) -> Object {
    let name = format!("vm-{i:05}");
    let uid = format!("5f0c6a4e-0000-4000-8000-{i:012}");
    let body = json!({
        "kind": "Vm",
        "metadata": {
            "name": name, "uid": uid, "labels": {"tier": "web", "shard": (i % 8).to_string()},
            "annotations": {"corral.dev/owner": "bench"}, "generation": 1,
            "created_at": "2026-01-01T00:00:00Z", "resource_version": 0,
        },
        "spec": {
            "cpus": 2, "memory": "2GiB", "power": "running", "machine": "q35",
            "boot": {"kernel": "images/blake3/4f1c2e", "cmdline": "console=ttyS0 quiet"},
            "volumes": [{"name": "root", "volume": format!("vol-{i}"), "read_only": false}],
            "networks": [{"network": "default", "mac": "52:54:00:12:34:56"}],
        },
        "status": {"phase": "Pending", "conditions": []},
    });
    let mut obj = Object::new("Vm", name, uid, body.to_string())
        .with_label("tier", "web")
        .with_label("shard", (i % 8).to_string());
    if i % 10 == 0 {
        obj = obj.with_label("gpu", "a100");
    }
    obj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_objects() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("state.db")).await?);
    let objects: Vec<_> = (0..OBJECTS).map(resource).collect();

    let start = Instant::now();
    for obj in objects {
        store.create(obj).await?;
    }
    let create = start.elapsed();

    // The first list also warms SQLite's page cache; report it and the best of two more.
    let start = Instant::now();
    let (all, revision) = store.list("Vm", &Selector::everything()).await?;
    let list = start.elapsed();
    let mut list_warm = std::time::Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        let listed = store.list("Vm", &Selector::everything()).await?;
        list_warm = list_warm.min(start.elapsed());
        assert_eq!(listed.0.len(), OBJECTS);
    }
    assert_eq!(all.len(), OBJECTS);
    assert_eq!(revision, OBJECTS as u64);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name));

    let start = Instant::now();
    let (gpus, _) = store.list("Vm", &"gpu,shard=0".parse()?).await?;
    let list_selected = start.elapsed();
    assert_eq!(gpus.len(), OBJECTS / 40);

    let start = Instant::now();
    let mut watch = store.watch(Some("Vm"), 0).await?;
    for _ in 0..OBJECTS {
        common::next(&mut watch).await;
    }
    let replay = start.elapsed();

    let concurrent = {
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..OBJECTS / 8 {
                        let obj = Object::new("Volume", format!("vol-{t}-{i}"), "u", "{}");
                        store.create(obj).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        start.elapsed()
    };

    let rate = |d: std::time::Duration| OBJECTS as f64 / d.as_secs_f64();
    eprintln!(
        "store scale ({OBJECTS} objects, file-backed, {} build):",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    eprintln!(
        "  create, one client:     {create:>10.2?}  ({:.0} creates/s)",
        rate(create)
    );
    eprintln!(
        "  create, 8 clients:      {concurrent:>10.2?}  ({:.0} creates/s)",
        rate(concurrent)
    );
    eprintln!("  list all, first:        {list:>10.2?}");
    eprintln!("  list all, warm (best):  {list_warm:>10.2?}");
    eprintln!(
        "  list `gpu,shard=0`:     {list_selected:>10.2?}  ({} matches)",
        gpus.len()
    );
    eprintln!(
        "  watch replay from 0:    {replay:>10.2?}  ({:.0} events/s)",
        rate(replay)
    );
    Ok(())
}
