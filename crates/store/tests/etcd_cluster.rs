//! The etcd store on a 3-member cluster: a member killed (`SIGKILL`), writes and
//! watches go on through the other two, and the watch misses nothing.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{next, vm};
use corral_store::{EtcdConfig, EtcdStore, EventType, Selector, Store, StoreError};
use corral_testkit::EtcdCluster;

/// Creates `name`, retrying while the cluster elects a new leader (etcd then answers
/// "request timed out, possibly due to previous leader failure": the write's outcome is
/// unknown). A retried create whose first attempt did land reports `AlreadyExists`; the
/// object is then there, which is what the caller wanted. Requests to a dead member are
/// retried by the store itself.
async fn create_through_failover(store: &EtcdStore, name: &str) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.create(vm(name)).await {
            Ok(obj) => return Ok(obj.resource_version),
            Err(StoreError::AlreadyExists { .. }) => {
                return Ok(store.get("Vm", name).await?.resource_version);
            }
            Err(e @ StoreError::Backend { .. }) if tokio::time::Instant::now() < deadline => {
                eprintln!("create {name} during failover: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_does_not_stop_writes_or_watches() -> Result<()> {
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
    let store = EtcdStore::connect(EtcdConfig::new(cluster.endpoints())).await?;
    let from = store.revision().await?;
    let mut watch = store.watch(Some("Vm"), from).await?;

    let mut written = Vec::new();
    for i in 0..5 {
        written.push(create_through_failover(&store, &format!("before-{i}")).await?);
    }
    // Kill every member in turn (one at a time, so two of three always form a quorum):
    // whichever one the client's connections and the watch were on goes down at some
    // point.
    for victim in 0..3 {
        cluster.kill(victim);
        for i in 0..5 {
            written.push(create_through_failover(&store, &format!("without-m{victim}-{i}")).await?);
        }
        tokio::task::block_in_place(|| cluster.restart(victim))?;
    }

    // The watch saw every write exactly once, in order.
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = next(&mut watch).await;
        assert_eq!(event.event, EventType::Added);
        seen.push(event.revision);
    }
    assert_eq!(seen, written);
    let (vms, _) = store.list("Vm", &Selector::everything()).await?;
    assert_eq!(vms.len(), 20);
    Ok(())
}
