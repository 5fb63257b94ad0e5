//! The database file: persistence across reopen, permissions, schema versions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Result;
use common::{next, vm};
use corral_store::{EventType, SqliteConfig, SqliteStore, Store, StoreError};

#[tokio::test]
async fn reopening_keeps_objects_revision_and_history() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    let (a, b) = {
        let store = SqliteStore::open(&path).await?;
        let a = store.create(vm("a")).await?;
        let b = store.create(vm("b")).await?;
        let b = store.update(b).await?;
        store.delete("Vm", "a", None).await?;
        store.compact(1).await?;
        (a, b)
    };
    let store = SqliteStore::open(&path).await?;
    assert_eq!(store.revision().await?, 4);
    assert_eq!(store.get("Vm", "b").await?, b);
    assert!(matches!(
        store.get("Vm", "a").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.watch(None, 0).await,
        Err(StoreError::Compacted { oldest: 1, .. })
    ));
    let mut watch = store.watch(None, 1).await?;
    assert_eq!(next(&mut watch).await.event, EventType::Added);
    assert_eq!(next(&mut watch).await.event, EventType::Modified);
    let deleted = next(&mut watch).await;
    assert_eq!((deleted.revision, deleted.event), (4, EventType::Deleted));
    assert_eq!(deleted.object, a);
    // New writes continue the revision sequence.
    assert_eq!(store.create(vm("c")).await?.resource_version, 5);
    Ok(())
}

#[tokio::test]
async fn database_files_are_private() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).await?;
    store.create(vm("a")).await?;
    for file in ["state.db", "state.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
    assert!(
        !dir.path().join("state.db-shm").exists(),
        "exclusive mode needs no -shm"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_has_one_owner() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    let config = SqliteConfig {
        busy_timeout: Duration::from_millis(50),
        ..SqliteConfig::default()
    };
    let owner = SqliteStore::open_with(&path, config.clone()).await?;
    owner.create(vm("a")).await?;
    let err = SqliteStore::open_with(&path, config.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InUse { path: p } if *p == path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(owner);
    let next_owner = SqliteStore::open_with(&path, config).await?;
    assert_eq!(next_owner.revision().await?, 1);
    Ok(())
}

#[tokio::test]
async fn newer_schema_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).await?);
    let newer = SqliteStore::schema_version() + 1;
    rusqlite::Connection::open(&path)?.pragma_update(None, "user_version", newer)?;

    let err = SqliteStore::open(&path).await.unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!((*found, *supported), (newer, newer - 1));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("upgrade Corral"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_open_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![b'x'; 4096])?;
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("state.db"), "{err}");
    Ok(())
}
