//! The store conformance suite: the same test functions against every backend — the
//! embedded SQLite store, and a real etcd (one member started per test by
//! `corral_testkit::EtcdCluster`). A backend that passes behaves as the `Store` trait
//! documents, so the service layer and controllers may run on either.
//!
//! Revisions are compared relative to each other, never to absolute numbers: etcd's
//! revision starts at 1 and counts every write in the cluster.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use common::{assert_quiet, next, next_item, vm};
use corral_store::{
    EtcdConfig, EtcdStore, EventType, Object, Selector, SqliteStore, Store, StoreError,
};
use corral_testkit::EtcdCluster;
use serde_json::{Value, json};

/// A store under test, which can be stopped and opened again on the same data.
enum Backend {
    Sqlite {
        store: Option<Arc<dyn Store>>,
        path: PathBuf,
        _dir: tempfile::TempDir,
    },
    Etcd {
        store: Option<Arc<dyn Store>>,
        cluster: EtcdCluster,
    },
}

impl Backend {
    async fn sqlite() -> Result<Backend> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await?);
        Ok(Backend::Sqlite {
            store: Some(store),
            path,
            _dir: dir,
        })
    }

    async fn etcd() -> Result<Backend> {
        let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
        let store: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(EtcdConfig::new(cluster.endpoints())).await?);
        Ok(Backend::Etcd {
            store: Some(store),
            cluster,
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        let (Backend::Sqlite { store, .. } | Backend::Etcd { store, .. }) = self;
        Arc::clone(store.as_ref().expect("the store is open"))
    }

    /// Closes the store, restarts what holds its data (etcd is killed and started again),
    /// and opens it again.
    async fn restart(&mut self) -> Result<()> {
        match self {
            Backend::Sqlite { store, path, .. } => {
                store.take();
                // Watch tasks may still hold the connection for a moment.
                let mut tries = 0;
                let reopened = loop {
                    match SqliteStore::open(&*path).await {
                        Err(StoreError::InUse { .. }) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        other => break other?,
                    }
                };
                *store = Some(Arc::new(reopened));
            }
            Backend::Etcd { store, cluster } => {
                store.take();
                tokio::task::block_in_place(|| cluster.restart(0))?;
                *store = Some(Arc::new(
                    EtcdStore::connect(EtcdConfig::new(cluster.endpoints())).await?,
                ));
            }
        }
        Ok(())
    }
}

/// Runs each named test function against every backend.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(super::Backend::sqlite().await?).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(super::Backend::etcd().await?).await
                }
            )*
        }
    };
}

conformance!(
    crud_round_trip,
    bodies_come_back_verbatim,
    missing_and_duplicate_objects,
    update_is_compare_and_swap,
    updates_together_are_all_or_nothing,
    delete_with_expected_version,
    list_selects_by_label_and_sorts_by_name,
    names_with_slashes_stay_in_their_kind,
    watch_resumes_from_any_revision,
    watch_filters_by_kind_and_carries_last_state_on_delete,
    compaction_refuses_older_watches,
    revision_is_monotonic_across_restart,
);

fn with_power(obj: &Object, power: &str) -> Result<Object> {
    let mut changed = obj.clone();
    let mut body: Value = serde_json::from_str(&changed.body)?;
    body["spec"]["power"] = json!(power);
    changed.body = body.to_string();
    Ok(changed)
}

async fn crud_round_trip(backend: Backend) -> Result<()> {
    let store = backend.store();
    let start = store.revision().await?;

    let created = store.create(vm("a").with_label("tier", "web")).await?;
    assert!(created.resource_version > start);
    assert_eq!(store.revision().await?, created.resource_version);
    assert_eq!(store.get("Vm", "a").await?, created);

    let mut changed = with_power(&created, "stopped")?;
    changed.labels.insert("gpu".into(), "yes".into());
    changed.uid = "ignored".into();
    let updated = store.update(changed).await?;
    assert!(updated.resource_version > created.resource_version);
    assert_eq!(updated.uid, "uid-a", "update keeps the stored uid");
    assert_eq!(store.get("Vm", "a").await?, updated);

    let deleted = store.delete("Vm", "a", None).await?;
    assert_eq!(deleted, updated, "delete returns the last state");
    let after_delete = store.revision().await?;
    assert!(after_delete > updated.resource_version);
    assert!(matches!(
        store.get("Vm", "a").await,
        Err(StoreError::NotFound { .. })
    ));
    let (all, revision) = store.list("Vm", &Selector::everything()).await?;
    assert!(all.is_empty());
    assert_eq!(
        revision, after_delete,
        "list returns its snapshot's revision"
    );
    Ok(())
}

async fn bodies_come_back_verbatim(backend: Backend) -> Result<()> {
    let store = backend.store();
    let from = store.revision().await?;
    let mut watch = store.watch(None, from).await?;
    let text = r#"{ "z": 1,
  "a": ["\u00e9", 1.50, 18446744073709551616, "quote \" and \\ backslash"] }"#;
    let created = store.create(Object::new("Vm", "a", "u", text)).await?;
    assert_eq!(created.body, text);
    assert_eq!(store.get("Vm", "a").await?.body, text);
    assert_eq!(
        store.list("Vm", &Selector::everything()).await?.0[0].body,
        text
    );
    assert_eq!(next(&mut watch).await.object.body, text);
    Ok(())
}

async fn missing_and_duplicate_objects(backend: Backend) -> Result<()> {
    let store = backend.store();
    store.create(vm("a")).await?;
    let err = store.create(vm("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind, name } if kind == "Vm" && name == "a"),
        "{err}"
    );
    assert!(matches!(
        store.get("Vm", "nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let mut ghost = vm("nope");
    ghost.resource_version = 1;
    assert!(matches!(
        store.update(ghost).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("Vm", "nope", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("Vm", "nope", Some(3)).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

async fn update_is_compare_and_swap(backend: Backend) -> Result<()> {
    let store = backend.store();
    let created = store.create(vm("a")).await?;
    let first = store.update(with_power(&created, "stopped")?).await?;
    let err = store
        .update(with_power(&created, "paused")?)
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(expected, created.resource_version);
            assert_eq!(actual, first.resource_version);
        }
        other => panic!("expected a conflict, got {other}"),
    }

    // Ten writers from one version: exactly one wins.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            let obj = with_power(&first, &format!("p{i}"));
            tokio::spawn(async move { store.update(obj?).await.map_err(anyhow::Error::from) })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => won += 1,
            Err(e) => assert!(
                matches!(
                    e.downcast_ref::<StoreError>(),
                    Some(StoreError::Conflict { .. })
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(won, 1, "exactly one compare-and-swap wins");
    Ok(())
}

async fn updates_together_are_all_or_nothing(backend: Backend) -> Result<()> {
    let store = backend.store();
    let mut created = Vec::new();
    for name in ["a", "b", "c"] {
        created.push(store.create(vm(name)).await?);
    }
    let from = store.revision().await?;
    let mut watch = store.watch(Some("Vm"), from).await?;

    // All three in one write; the uids stay the stored ones.
    let mut changed = Vec::new();
    for obj in &created {
        let mut obj = with_power(obj, "stopped")?;
        obj.uid = "ignored".into();
        changed.push(obj);
    }
    let written = store.update_all(changed).await?;
    assert_eq!(written.len(), 3);
    for (obj, before) in written.iter().zip(&created) {
        assert_eq!(obj.name, before.name, "in the order given");
        assert_eq!(obj.uid, before.uid, "update_all keeps the stored uid");
        assert!(obj.resource_version > from);
        assert_eq!(&store.get("Vm", &obj.name).await?, obj);
    }
    // Every event arrives, each once, even where etcd gives them one revision.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next(&mut watch).await;
        assert_eq!(event.event, EventType::Modified);
        seen.push(event.object.name);
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
    assert_quiet(&mut watch).await;

    // One of them written meanwhile: nothing is written, and the error names it.
    let b = store.update(with_power(&written[1], "paused")?).await?;
    let stale: Vec<Object> = written
        .iter()
        .map(|o| with_power(o, "running"))
        .collect::<Result<_>>()?;
    match store.update_all(stale).await.unwrap_err() {
        StoreError::Conflict {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "b");
            assert_eq!(expected, written[1].resource_version);
            assert_eq!(actual, b.resource_version);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.get("Vm", "a").await?, written[0], "a is untouched");
    assert_eq!(store.get("Vm", "c").await?, written[2], "c is untouched");
    assert_eq!(next(&mut watch).await.object, b);
    assert_quiet(&mut watch).await;

    // One that is gone: not found, nothing written.
    store.delete("Vm", "c", None).await?;
    let _ = next(&mut watch).await;
    let gone = vec![
        with_power(&written[0], "running")?,
        with_power(&written[2], "running")?,
    ];
    assert!(matches!(
        store.update_all(gone).await,
        Err(StoreError::NotFound { name, .. }) if name == "c"
    ));
    assert_eq!(store.get("Vm", "a").await?, written[0]);
    assert_quiet(&mut watch).await;
    assert!(store.update_all(Vec::new()).await?.is_empty());
    Ok(())
}

async fn delete_with_expected_version(backend: Backend) -> Result<()> {
    let store = backend.store();
    let created = store.create(vm("a")).await?;
    let updated = store.update(with_power(&created, "stopped")?).await?;
    let err = store
        .delete("Vm", "a", Some(created.resource_version))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected, actual, .. }
            if expected == created.resource_version && actual == updated.resource_version),
        "{err}"
    );
    assert_eq!(store.get("Vm", "a").await?, updated, "nothing was deleted");
    let deleted = store
        .delete("Vm", "a", Some(updated.resource_version))
        .await?;
    assert_eq!(deleted, updated);
    Ok(())
}

async fn list_selects_by_label_and_sorts_by_name(backend: Backend) -> Result<()> {
    let store = backend.store();
    for (name, tier, gpu) in [("c", "web", false), ("a", "web", true), ("b", "db", false)] {
        let mut obj = vm(name).with_label("tier", tier);
        if gpu {
            obj = obj.with_label("gpu", "yes");
        }
        store.create(obj).await?;
    }
    store.create(Object::new("Disk", "a", "d", "{}")).await?;
    let names = |objs: Vec<Object>| objs.into_iter().map(|o| o.name).collect::<Vec<_>>();

    let (all, _) = store.list("Vm", &Selector::everything()).await?;
    assert_eq!(names(all), ["a", "b", "c"]);
    let (web, _) = store.list("Vm", &"tier=web".parse()?).await?;
    assert_eq!(names(web), ["a", "c"]);
    let (not_web, _) = store.list("Vm", &"tier!=web".parse()?).await?;
    assert_eq!(names(not_web), ["b"]);
    let (gpu, _) = store.list("Vm", &"gpu".parse()?).await?;
    assert_eq!(names(gpu), ["a"]);
    let (web_no_gpu, _) = store.list("Vm", &"tier=web,!gpu".parse()?).await?;
    assert_eq!(names(web_no_gpu), ["c"]);
    let (disks, _) = store.list("Disk", &Selector::everything()).await?;
    assert_eq!(names(disks), ["a"]);
    Ok(())
}

async fn names_with_slashes_stay_in_their_kind(backend: Backend) -> Result<()> {
    let store = backend.store();
    let from = store.revision().await?;
    let mut vm_watch = store.watch(Some("Vm"), from).await?;
    for name in ["web", "team-a/web", "team-a/db", "team-b/x/y", "zz"] {
        store.create(vm(name)).await?;
    }
    // Kinds that share a prefix with another kind, or look like a project.
    store
        .create(Object::new("VmSnapshot", "web", "s", "{}"))
        .await?;
    store
        .create(Object::new("team-a", "web", "t", "{}"))
        .await?;

    let (vms, _) = store.list("Vm", &Selector::everything()).await?;
    let names: Vec<_> = vms.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        ["team-a/db", "team-a/web", "team-b/x/y", "web", "zz"],
        "one kind's objects, '/' names included, sorted by name"
    );
    assert!(vms.iter().all(|o| o.kind == "Vm"));
    assert_eq!(store.get("Vm", "team-a/web").await?.name, "team-a/web");
    assert!(matches!(
        store.get("Vm", "team-a").await,
        Err(StoreError::NotFound { .. })
    ));
    let (snapshots, _) = store.list("VmSnapshot", &Selector::everything()).await?;
    assert_eq!(snapshots.len(), 1);
    let (team, _) = store.list("team-a", &Selector::everything()).await?;
    assert_eq!(team.len(), 1);
    assert_eq!(team[0].name, "web");

    let mut seen = Vec::new();
    for _ in 0..5 {
        let event = next(&mut vm_watch).await;
        assert_eq!(event.object.kind, "Vm");
        seen.push(event.object.name);
    }
    assert_eq!(seen, ["web", "team-a/web", "team-a/db", "team-b/x/y", "zz"]);
    assert_quiet(&mut vm_watch).await;

    let deleted = store.delete("Vm", "team-a/web", None).await?;
    assert_eq!(deleted.name, "team-a/web");
    let event = next(&mut vm_watch).await;
    assert_eq!(
        (event.event, event.object.name.as_str()),
        (EventType::Deleted, "team-a/web")
    );
    Ok(())
}

async fn watch_resumes_from_any_revision(backend: Backend) -> Result<()> {
    let store = backend.store();
    let mut revisions = Vec::new();
    for name in ["a", "b", "c", "d"] {
        revisions.push(store.create(vm(name)).await?.resource_version);
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions strictly increase: {revisions:?}"
    );
    // From the second write: replays c and d, then goes live.
    let mut watch = store.watch(None, revisions[1]).await?;
    let c = next(&mut watch).await;
    assert_eq!((c.revision, c.object.name.as_str()), (revisions[2], "c"));
    let d = next(&mut watch).await;
    assert_eq!(d.object.name, "d");
    assert_quiet(&mut watch).await;
    let e = store.create(vm("e")).await?;
    let live = next(&mut watch).await;
    assert_eq!(
        (live.revision, live.event, live.object.name.as_str()),
        (e.resource_version, EventType::Added, "e")
    );

    // A watcher that drops its stream and resumes from the last revision it saw gets
    // every later change exactly once.
    drop(watch);
    let updated = store.update(with_power(&e, "stopped")?).await?;
    store.delete("Vm", "a", None).await?;
    let mut resumed = store.watch(None, live.revision).await?;
    let m = next(&mut resumed).await;
    assert_eq!(
        (m.revision, m.event),
        (updated.resource_version, EventType::Modified)
    );
    let del = next(&mut resumed).await;
    assert_eq!(
        (del.event, del.object.name.as_str()),
        (EventType::Deleted, "a")
    );
    assert!(del.revision > m.revision);
    assert_quiet(&mut resumed).await;

    // From the current revision: nothing until the next write.
    let head = store.revision().await?;
    let mut from_head = store.watch(None, head).await?;
    assert_quiet(&mut from_head).await;
    let f = store.create(vm("f")).await?;
    assert_eq!(next(&mut from_head).await.revision, f.resource_version);
    Ok(())
}

async fn watch_filters_by_kind_and_carries_last_state_on_delete(backend: Backend) -> Result<()> {
    let store = backend.store();
    let from = store.revision().await?;
    let mut vms = store.watch(Some("Vm"), from).await?;
    let mut everything = store.watch(None, from).await?;
    store.create(Object::new("Disk", "d", "u", "{}")).await?;
    let a = store.create(vm("a").with_label("tier", "web")).await?;
    let a2 = store.update(with_power(&a, "stopped")?).await?;
    store.delete("Vm", "a", Some(a2.resource_version)).await?;

    let types: Vec<_> = [
        next(&mut vms).await,
        next(&mut vms).await,
        next(&mut vms).await,
    ]
    .into_iter()
    .map(|e| {
        assert_eq!(e.object.kind, "Vm");
        (e.event, e)
    })
    .collect();
    assert_eq!(types[0].0, EventType::Added);
    assert_eq!(types[1].0, EventType::Modified);
    assert_eq!(types[2].0, EventType::Deleted);
    assert_eq!(
        types[2].1.object, a2,
        "a deletion carries the last stored state, at its last write's version"
    );
    assert!(types[2].1.revision > a2.resource_version);
    assert_quiet(&mut vms).await;

    let kinds: BTreeSet<String> = [
        next(&mut everything).await,
        next(&mut everything).await,
        next(&mut everything).await,
        next(&mut everything).await,
    ]
    .into_iter()
    .map(|e| e.object.kind)
    .collect();
    assert_eq!(kinds, BTreeSet::from(["Disk".to_owned(), "Vm".to_owned()]));
    Ok(())
}

async fn compaction_refuses_older_watches(backend: Backend) -> Result<()> {
    let store = backend.store();
    let a = store.create(vm("a")).await?;
    let b = store.create(vm("b")).await?;
    let c = store.create(vm("c")).await?;
    store.create(vm("d")).await?;

    store.compact(b.resource_version).await?;
    match store.watch(None, a.resource_version).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, a.resource_version);
            assert_eq!(oldest, b.resource_version);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // From the compaction point on, history is intact.
    let mut watch = store.watch(None, b.resource_version).await?;
    assert_eq!(next(&mut watch).await.revision, c.resource_version);
    // Compacting again at or below the point does nothing; objects are untouched.
    store.compact(a.resource_version).await?;
    store.compact(b.resource_version).await?;
    assert_eq!(store.list("Vm", &Selector::everything()).await?.0.len(), 4);
    // Past the head is refused.
    let head = store.revision().await?;
    match store.compact(head + 10).await {
        Err(StoreError::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (head + 10, head));
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    // A watcher that lists again after Compacted follows from the list's revision.
    let (_, listed) = store.list("Vm", &Selector::everything()).await?;
    let mut relisted = store.watch(Some("Vm"), listed).await?;
    let e = store.create(vm("e")).await?;
    let got = next_item(&mut relisted).await.expect("an event")?;
    assert_eq!(got.revision, e.resource_version);
    Ok(())
}

async fn revision_is_monotonic_across_restart(mut backend: Backend) -> Result<()> {
    let store = backend.store();
    let a = store.create(vm("a")).await?;
    let b = store.create(vm("b")).await?;
    let before = store.revision().await?;
    drop(store);
    backend.restart().await?;
    let store = backend.store();
    assert!(store.revision().await? >= before, "the revision survives");
    assert_eq!(store.get("Vm", "b").await?, b, "objects survive");
    let c = store.create(vm("c")).await?;
    assert!(c.resource_version > before, "no revision is reused");
    // History survives: a watch from before the restart replays what followed.
    let mut watch = store.watch(None, a.resource_version).await?;
    assert_eq!(next(&mut watch).await.revision, b.resource_version);
    assert_eq!(next(&mut watch).await.revision, c.resource_version);
    Ok(())
}

/// etcd lists read pages of one snapshot: with pages of 3, ten objects (some with '/'
/// in their names) come back whole, sorted, and at one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lists_in_pages_of_one_snapshot() -> Result<()> {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.list_page = 3;
    let store = EtcdStore::connect(config).await?;
    let mut names: Vec<String> = (0..7).map(|i| format!("vm-{i}")).collect();
    names.extend(["p/a".into(), "p/b/c".into(), "q/z".into()]);
    for (i, name) in names.iter().enumerate() {
        let mut obj = vm(name);
        if i % 2 == 0 {
            obj = obj.with_label("even", "yes");
        }
        store.create(obj).await?;
    }
    store.create(Object::new("Vma", "x", "u", "{}")).await?;
    let (all, revision) = store.list("Vm", &Selector::everything()).await?;
    names.sort();
    assert_eq!(
        all.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
        names
    );
    assert_eq!(revision, store.revision().await?);
    let (even, _) = store.list("Vm", &"even".parse()?).await?;
    assert_eq!(even.len(), 5);
    Ok(())
}

/// etcd over TLS with client certificates: the store works with the cluster's CA and a
/// client certificate, and is refused without the certificate or with another CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_needs_the_ca_and_a_client_certificate() -> Result<()> {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start_tls(1)).await??;
    let files = cluster.tls().expect("a TLS cluster").clone();
    let read = |path: &std::path::Path| std::fs::read_to_string(path);
    let tls = corral_store::EtcdTls {
        ca: read(&files.ca)?,
        identity: Some((read(&files.client_cert)?, read(&files.client_key)?)),
    };
    let with = |tls: Option<corral_store::EtcdTls>| {
        let mut config = EtcdConfig::new(cluster.endpoints());
        config.tls = tls;
        config.connect_timeout = std::time::Duration::from_secs(2);
        config
    };

    let store = EtcdStore::connect(with(Some(tls.clone()))).await?;
    let from = store.revision().await?;
    let mut watch = store.watch(None, from).await?;
    let created = store.create(vm("over-tls")).await?;
    assert_eq!(store.get("Vm", "over-tls").await?, created);
    assert_eq!(next(&mut watch).await.revision, created.resource_version);

    let anonymous = corral_store::EtcdTls {
        identity: None,
        ..tls.clone()
    };
    assert!(
        EtcdStore::connect(with(Some(anonymous))).await.is_err(),
        "a client without a certificate is refused"
    );
    let other_ca = corral_store::EtcdTls {
        ca: read(&files.client_cert)?,
        ..tls.clone()
    };
    assert!(
        EtcdStore::connect(with(Some(other_ca))).await.is_err(),
        "a server certificate the given CA did not sign is refused"
    );
    let err = EtcdStore::connect(with(None)).await.unwrap_err();
    assert!(err.to_string().contains("--etcd-ca-file"), "{err}");
    Ok(())
}
