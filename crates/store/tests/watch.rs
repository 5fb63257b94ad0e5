//! Watches: replay, live hand-over, filtering, resuming, compaction and slow readers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use common::{assert_quiet, next, next_item, vm};
use corral_store::{EventType, Object, SqliteConfig, SqliteStore, Store, StoreError};
use serde_json::json;

#[tokio::test]
async fn watch_from_zero_replays_then_goes_live() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let a = store.create(vm("a")).await?;
    store.update(a).await?;
    store
        .create(Object::new("Volume", "v", "u", json!({}).to_string()))
        .await?;
    store.delete("Vm", "a", None).await?;

    let mut watch = store.watch(None, 0).await?;
    let replayed: Vec<_> = [
        next(&mut watch).await,
        next(&mut watch).await,
        next(&mut watch).await,
        next(&mut watch).await,
    ]
    .into_iter()
    .map(|e| (e.revision, e.event, e.object.kind, e.object.name))
    .collect();
    assert_eq!(
        replayed,
        [
            (1, EventType::Added, "Vm".into(), "a".into()),
            (2, EventType::Modified, "Vm".into(), "a".into()),
            (3, EventType::Added, "Volume".into(), "v".into()),
            (4, EventType::Deleted, "Vm".into(), "a".into()),
        ]
    );
    assert_quiet(&mut watch).await;

    let b = store.create(vm("b")).await?;
    let live = next(&mut watch).await;
    assert_eq!((live.revision, live.event), (5, EventType::Added));
    assert_eq!(live.object, b);
    Ok(())
}

#[tokio::test]
async fn deleted_event_carries_last_state() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    let a = store.create(vm("a").with_label("tier", "web")).await?;
    let mut watch = store.watch(None, 1).await?;
    store.delete("Vm", "a", None).await?;
    let live = next(&mut watch).await;
    drop(watch);
    let mut replay = store.watch(None, 1).await?;
    let replayed = next(&mut replay).await;
    assert_eq!(live, replayed);
    assert_eq!((live.revision, live.event), (2, EventType::Deleted));
    assert_eq!(live.object, a);
    Ok(())
}

#[tokio::test]
async fn watch_from_a_middle_revision_gets_only_later_events() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    for i in 0..10 {
        store.create(vm(&format!("vm-{i}"))).await?;
    }
    let mut watch = store.watch(None, 6).await?;
    for revision in 7..=10 {
        assert_eq!(next(&mut watch).await.revision, revision);
    }
    assert_quiet(&mut watch).await;
    store.create(vm("late")).await?;
    assert_eq!(next(&mut watch).await.revision, 11);

    // A watch from the head, or beyond it, starts with live events only.
    let mut from_head = store.watch(None, 11).await?;
    let mut ahead = store.watch(None, 12).await?;
    store.create(vm("later")).await?;
    assert_eq!(next(&mut from_head).await.revision, 12);
    store.create(vm("latest")).await?;
    assert_eq!(next(&mut from_head).await.revision, 13);
    assert_eq!(next(&mut ahead).await.revision, 13);
    Ok(())
}

#[tokio::test]
async fn watch_filters_by_kind() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    store.create(vm("a")).await?;
    store
        .create(Object::new("Volume", "v1", "u", json!({}).to_string()))
        .await?;
    let mut volumes = store.watch(Some("Volume"), 0).await?;
    let mut vms = store.watch(Some("Vm"), 0).await?;
    store.create(vm("b")).await?;
    store
        .create(Object::new("Volume", "v2", "u", json!({}).to_string()))
        .await?;

    let v1 = next(&mut volumes).await;
    let v2 = next(&mut volumes).await;
    assert_eq!((v1.revision, v1.object.name.as_str()), (2, "v1"));
    assert_eq!((v2.revision, v2.object.name.as_str()), (4, "v2"));
    assert_quiet(&mut volumes).await;
    assert_eq!(next(&mut vms).await.revision, 1);
    assert_eq!(next(&mut vms).await.revision, 3);
    assert_quiet(&mut vms).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_that_reconnects_misses_nothing() -> Result<()> {
    const WRITES: u64 = 600;
    let store = SqliteStore::open_in_memory().await?;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..WRITES {
                store.create(vm(&format!("vm-{i}"))).await?;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<_, StoreError>(())
        })
    };
    let mut seen = Vec::new();
    let mut last = 0;
    while last < WRITES {
        // Read a few events, then "disconnect" while the writer goes on.
        let mut watch = store.watch(None, last).await?;
        for _ in 0..37 {
            if last == WRITES {
                break;
            }
            let event = next(&mut watch).await;
            last = event.revision;
            seen.push(event.revision);
        }
        drop(watch);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.await??;
    assert_eq!(seen, (1..=WRITES).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn compaction_refuses_older_watches() -> Result<()> {
    let store = SqliteStore::open_in_memory().await?;
    for i in 0..10 {
        store.create(vm(&format!("vm-{i}"))).await?;
    }
    store.compact(5).await?;
    let err = store.watch(None, 4).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 4,
                oldest: 5
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("list again"), "{err}");
    assert!(matches!(
        store.watch(Some("Vm"), 0).await,
        Err(StoreError::Compacted { .. })
    ));

    let mut watch = store.watch(None, 5).await?;
    assert_eq!(next(&mut watch).await.revision, 6);

    store.compact(3).await?; // Already compacted further: nothing to do.
    let err = store.compact(11).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FutureRevision {
                requested: 11,
                current: 10
            }
        ),
        "{err:?}"
    );
    store.compact(10).await?;
    assert!(matches!(
        store.watch(None, 9).await,
        Err(StoreError::Compacted { oldest: 10, .. })
    ));
    // Objects are untouched, and a list's revision is always watchable.
    let (objects, revision) = store.list("Vm", &Default::default()).await?;
    assert_eq!(objects.len(), 10);
    let mut watch = store.watch(None, revision).await?;
    store.create(vm("new")).await?;
    assert_eq!(next(&mut watch).await.revision, 11);
    Ok(())
}

fn tiny_buffers() -> SqliteConfig {
    SqliteConfig {
        broadcast_capacity: 4,
        stream_capacity: 2,
        replay_page: 3,
        ..SqliteConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_does_not_stall_writers_and_misses_nothing() -> Result<()> {
    let store = SqliteStore::open_with(":memory:", tiny_buffers()).await?;
    let mut watch = store.watch(None, 0).await?;
    let mut kind_watch = store.watch(Some("Volume"), 0).await?;
    // Far more writes than the buffers hold, with nobody reading: writers must not wait.
    for i in 0..200 {
        let obj = store.create(vm(&format!("vm-{i}"))).await?;
        store.update(obj).await?;
        if i % 10 == 0 {
            store
                .create(Object::new(
                    "Volume",
                    format!("vol-{i}"),
                    "u",
                    json!({}).to_string(),
                ))
                .await?;
        }
    }
    let head = store.revision().await?;
    assert_eq!(head, 420);
    let mut revisions = Vec::new();
    while revisions.len() < head as usize {
        revisions.push(next(&mut watch).await.revision);
        if revisions.len() % 50 == 0 {
            // Let writes overtake the reader again while it is mid-way.
            for i in 0..20 {
                store
                    .create(vm(&format!("more-{}-{i}", revisions.len())))
                    .await?;
            }
        }
    }
    let head = store.revision().await?;
    while revisions.len() < head as usize {
        revisions.push(next(&mut watch).await.revision);
    }
    assert_eq!(revisions, (1..=head).collect::<Vec<_>>());
    assert_quiet(&mut watch).await;

    let mut volumes = Vec::new();
    for _ in 0..20 {
        let event = next(&mut kind_watch).await;
        assert_eq!(event.object.kind, "Volume");
        volumes.push(event.object.name);
    }
    let expected: Vec<_> = (0..200).step_by(10).map(|i| format!("vol-{i}")).collect();
    assert_eq!(volumes, expected);
    assert_quiet(&mut kind_watch).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_overtaken_by_compaction_gets_compacted_then_ends() -> Result<()> {
    let store = SqliteStore::open_with(":memory:", tiny_buffers()).await?;
    let mut watch = store.watch(None, 0).await?;
    for i in 0..50 {
        store.create(vm(&format!("vm-{i}"))).await?;
    }
    store.compact(50).await?;
    let mut last = 0;
    let err = loop {
        match next_item(&mut watch).await {
            Some(Ok(event)) => {
                assert_eq!(event.revision, last + 1);
                last = event.revision;
            }
            Some(Err(e)) => break e,
            None => panic!("watch ended without an error"),
        }
    };
    assert!(
        last < 50,
        "the watcher lagged, so it cannot have seen everything"
    );
    assert!(
        matches!(err, StoreError::Compacted { requested, oldest: 50 } if requested == last),
        "{err:?}"
    );
    assert!(
        next_item(&mut watch).await.is_none(),
        "the stream ends after the error"
    );
    Ok(())
}

#[tokio::test]
async fn watch_ends_when_the_store_is_dropped() -> Result<()> {
    let store = Arc::new(SqliteStore::open_in_memory().await?);
    store.create(vm("a")).await?;
    let mut watch = store.watch(None, 0).await?;
    assert_eq!(next(&mut watch).await.revision, 1);
    drop(store);
    assert!(next_item(&mut watch).await.is_none());
    Ok(())
}
