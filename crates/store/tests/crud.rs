//! Create, read, update, delete, list and compare-and-swap against the SQLite store.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;
use common::vm;
use corral_store::{Object, Selector, SqliteStore, Store, StoreError};
use serde_json::{Value, json};

#[tokio::test]
async fn crud_round_trip() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    assert_eq!(store.revision().await?, 0);

    let created = store.create(vm("a").with_label("tier", "web")).await?;
    assert_eq!(created.resource_version, 1);
    assert_eq!(store.get("Vm", "a").await?, created);

    let mut changed = created.clone();
    let mut body: Value = serde_json::from_str(&changed.body)?;
    body["spec"]["power"] = json!("stopped");
    changed.body = body.to_string();
    changed.labels.insert("gpu".into(), "yes".into());
    changed.uid = "ignored".into();
    let updated = store.update(changed).await?;
    assert_eq!(updated.resource_version, 2);
    assert_eq!(updated.uid, "uid-a", "update keeps the stored uid");
    let body: Value = serde_json::from_str(&updated.body)?;
    assert_eq!(body["spec"]["power"], "stopped");
    assert_eq!(store.get("Vm", "a").await?, updated);

    let deleted = store.delete("Vm", "a", None).await?;
    assert_eq!(deleted, updated);
    assert_eq!(store.revision().await?, 3);
    assert!(matches!(
        store.get("Vm", "a").await,
        Err(StoreError::NotFound { .. })
    ));
    let (all, revision) = store.list("Vm", &Selector::everything()).await?;
    assert!(all.is_empty());
    assert_eq!(revision, 3);
    Ok(())
}

#[tokio::test]
async fn bodies_come_back_verbatim_from_every_read() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let mut watch = store.watch(None, 0).await?;
    // Key order, spacing, escapes and big numbers survive: the store never parses a body.
    let text = r#"{ "z": 1,
  "a": ["\u00e9", 1.50, 18446744073709551616] }"#;
    let created = store.create(Object::new("Vm", "a", "u", text)).await?;
    assert_eq!(created.body, text);
    assert_eq!(store.get("Vm", "a").await?.body, text);
    assert_eq!(
        store.list("Vm", &Selector::everything()).await?.0[0].body,
        text
    );
    let updated = store.update(created).await?;
    assert_eq!(updated.body, text);
    assert_eq!(store.delete("Vm", "a", None).await?.body, text);
    for _ in 0..3 {
        assert_eq!(common::next(&mut watch).await.object.body, text, "live");
    }
    let mut replay = store.watch(None, 0).await?;
    for _ in 0..3 {
        assert_eq!(
            common::next(&mut replay).await.object.body,
            text,
            "replayed"
        );
    }
    Ok(())
}

#[tokio::test]
async fn create_twice_is_already_exists() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    store.create(vm("a")).await?;
    let err = store.create(vm("a")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind, name } if kind == "Vm" && name == "a"),
        "{err:?}"
    );
    assert!(err.to_string().contains("Vm \"a\" already exists"), "{err}");
    // The failed create left no trace: same name in another kind is fine, revision is 2.
    let other = Object::new("Volume", "a", "uid-vol", json!({}).to_string());
    assert_eq!(store.create(other).await?.resource_version, 2);
    assert_eq!(store.revision().await?, 2);
    Ok(())
}

#[tokio::test]
async fn missing_objects_are_not_found() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let not_found = |r: Result<Object, StoreError>| matches!(r, Err(StoreError::NotFound { kind, name }) if kind == "Vm" && name == "ghost");
    assert!(not_found(store.get("Vm", "ghost").await));
    let mut ghost = vm("ghost");
    ghost.resource_version = 1;
    assert!(not_found(store.update(ghost).await));
    assert!(not_found(store.delete("Vm", "ghost", None).await));
    assert!(not_found(store.delete("Vm", "ghost", Some(1)).await));
    assert_eq!(store.revision().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_one_version_one_wins() -> Result<()> {
    let store = Arc::new(SqliteStore::open_in_memory().await?);
    let base = store.create(vm("a")).await?;
    let with_cpus = |cpus: u32| -> Result<Object> {
        let mut obj = base.clone();
        let mut body: Value = serde_json::from_str(&obj.body)?;
        body["spec"]["cpus"] = json!(cpus);
        obj.body = body.to_string();
        Ok(obj)
    };
    let (first, second) = (with_cpus(4)?, with_cpus(8)?);
    let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
    let (r1, r2) = tokio::join!(
        tokio::spawn(async move { s1.update(first).await }),
        tokio::spawn(async move { s2.update(second).await }),
    );
    let (winner, loser) = match (r1?, r2?) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one winner and one conflict, got {other:?}"),
    };
    match loser {
        StoreError::Conflict {
            kind,
            name,
            expected,
            actual,
        } => {
            assert_eq!((kind.as_str(), name.as_str()), ("Vm", "a"));
            assert_eq!(expected, base.resource_version);
            assert_eq!(actual, winner.resource_version);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("Vm", "a").await?, winner);
    Ok(())
}

#[tokio::test]
async fn delete_with_stale_version_conflicts() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let v1 = store.create(vm("a")).await?;
    let v2 = store.update(v1.clone()).await?;
    let err = store
        .delete("Vm", "a", Some(v1.resource_version))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.get("Vm", "a").await?, v2);
    assert_eq!(store.delete("Vm", "a", Some(2)).await?, v2);
    Ok(())
}

#[tokio::test]
async fn list_filters_by_selector_and_sorts_by_name() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    for (name, tier, gpu) in [
        ("web-2", "web", false),
        ("db-1", "db", true),
        ("web-1", "web", true),
        ("cache", "cache", false),
    ] {
        let mut obj = vm(name).with_label("tier", tier);
        if gpu {
            obj = obj.with_label("gpu", "a100");
        }
        store.create(obj).await?;
    }
    store
        .create(
            Object::new("Volume", "web-vol", "u", json!({}).to_string()).with_label("tier", "web"),
        )
        .await?;

    let names = |selector: &'static str| {
        let store = store.clone();
        async move {
            let (objects, revision) = store.list("Vm", &selector.parse()?).await?;
            assert_eq!(revision, 5);
            anyhow::Ok(objects.into_iter().map(|o| o.name).collect::<Vec<_>>())
        }
    };
    assert_eq!(names("").await?, ["cache", "db-1", "web-1", "web-2"]);
    assert_eq!(names("tier=web").await?, ["web-1", "web-2"]);
    assert_eq!(names("tier!=web").await?, ["cache", "db-1"]);
    assert_eq!(names("gpu").await?, ["db-1", "web-1"]);
    assert_eq!(names("!gpu").await?, ["cache", "web-2"]);
    assert_eq!(names("tier=web,gpu").await?, ["web-1"]);
    assert_eq!(names("tier!=web,!gpu").await?, ["cache"]);
    assert_eq!(names("tier=web,gpu=h100").await?, Vec::<String>::new());
    let built = Selector::everything()
        .equals("tier", "web")
        .not_exists("gpu");
    let (objects, _) = store.list("Vm", &built).await?;
    assert_eq!(objects[0].name, "web-2");
    assert_eq!(objects.len(), 1);
    Ok(())
}

#[test]
fn selector_errors_name_the_problem() {
    let err = "tier=web,,gpu".parse::<Selector>().unwrap_err().to_string();
    assert!(
        err.contains("\"tier=web,,gpu\"") && err.contains("requirement 2 is empty"),
        "{err}"
    );
    let err = "tier=we b".parse::<Selector>().unwrap_err().to_string();
    assert!(err.contains("value \"we b\""), "{err}");
    let err = "=web".parse::<Selector>().unwrap_err().to_string();
    assert!(err.contains("\"=web\" has no key"), "{err}");
    let err = "ti*er".parse::<Selector>().unwrap_err().to_string();
    assert!(err.contains("key \"ti*er\""), "{err}");
}

#[tokio::test]
async fn revisions_strictly_increase_across_kinds() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let mut seen = Vec::new();
    for i in 0..5 {
        let kind = ["Vm", "Volume", "Image"][i % 3];
        let obj = store
            .create(Object::new(
                kind,
                format!("o{i}"),
                "u",
                json!(i).to_string(),
            ))
            .await?;
        seen.push(obj.resource_version);
        seen.push(store.update(obj).await?.resource_version);
    }
    seen.push(store.revision().await?);
    assert_eq!(seen[..10], (1..=10).collect::<Vec<_>>());
    assert_eq!(seen[10], 10);
    let vm = store.delete("Image", "o2", None).await?;
    assert_eq!(
        vm.resource_version, 6,
        "a deleted object carries its last write's version"
    );
    assert_eq!(store.revision().await?, 11);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_from_20_tasks_all_land() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("state.db")).await?);
    let tasks: Vec<_> = (0..20)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..25 {
                    versions.push(
                        store
                            .create(vm(&format!("t{t}-{i}")))
                            .await?
                            .resource_version,
                    );
                }
                Ok::<_, StoreError>(versions)
            })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for task in tasks {
        versions.extend(task.await??);
    }
    assert_eq!(
        versions,
        (1..=500).collect(),
        "every create got its own revision"
    );
    let (all, revision) = store.list("Vm", &Selector::everything()).await?;
    assert_eq!(all.len(), 500);
    assert_eq!(revision, 500);
    Ok(())
}
