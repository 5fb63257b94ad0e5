//! Leases and leader elections: the same tests against the in-process coordinator and
//! against etcd (a real member started per test), then what only a cluster can show: a
//! renewed lease outlives its TTL, and a leader cut off from etcd knows it lost its
//! lease before another candidate is elected.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use corral_store::{
    Elections, EtcdConfig, EtcdCoordinator, EtcdStore, Leases, LocalCoordinator, StoreError,
};
use corral_testkit::EtcdCluster;

const PATIENCE: Duration = Duration::from_secs(20);

trait Coordinator: Leases + Elections {}
impl<T: Leases + Elections> Coordinator for T {}

/// Two handles on one coordination backend (two processes, as far as the backend can
/// tell), and what keeps the backend running.
struct Backend {
    a: Arc<dyn Coordinator>,
    b: Arc<dyn Coordinator>,
    _etcd: Option<EtcdCluster>,
}

impl Backend {
    async fn local() -> Result<Backend> {
        let c = LocalCoordinator::new();
        Ok(Backend {
            a: Arc::new(c.clone()),
            b: Arc::new(c),
            _etcd: None,
        })
    }

    async fn etcd() -> Result<Backend> {
        let etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(1)).await??;
        let connect = || EtcdStore::connect(EtcdConfig::new(etcd.endpoints()));
        let (a, b) = (connect().await?, connect().await?);
        Ok(Backend {
            a: Arc::new(EtcdCoordinator::new(&a)),
            b: Arc::new(EtcdCoordinator::new(&b)),
            _etcd: Some(etcd),
        })
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(super::Backend::local().await?).await
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
    one_leader_at_a_time,
    live_records_last_as_long_as_their_lease,
    a_ttl_under_a_second_is_refused,
);

async fn one_leader_at_a_time(backend: Backend) -> Result<()> {
    let ttl = Duration::from_secs(5);
    let first = backend.a.campaign("scheduler", "server-a", ttl).await?;
    assert_eq!(first.candidate(), "server-a");
    assert_eq!(
        backend.b.leader("scheduler").await?.as_deref(),
        Some("server-a")
    );
    assert_eq!(backend.b.leader("other").await?, None);

    let b = Arc::clone(&backend.b);
    let mut second = tokio::spawn(async move { b.campaign("scheduler", "server-b", ttl).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "a second candidate is not elected while the first leads"
    );
    // Another election is independent.
    let other = backend.b.campaign("gc", "server-b", ttl).await?;
    assert_eq!(other.election(), "gc");

    // The leader resigns by dropping its leadership: the waiting candidate leads.
    drop(first);
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second candidate is elected once the first resigns")??;
    assert_eq!(second.candidate(), "server-b");
    assert!(!second.lease().is_lost());
    assert_eq!(
        backend.a.leader("scheduler").await?.as_deref(),
        Some("server-b")
    );
    Ok(())
}

async fn live_records_last_as_long_as_their_lease(backend: Backend) -> Result<()> {
    let n1 = backend.a.grant(Duration::from_secs(5)).await?;
    let n2 = backend.b.grant(Duration::from_secs(5)).await?;
    backend.a.put_alive(&n1, "nodes/n1", "10.0.0.1").await?;
    backend.b.put_alive(&n2, "nodes/n2", "10.0.0.2").await?;
    backend.b.put_alive(&n2, "nodesx/n2", "not a node").await?;
    let alive = backend.a.alive("nodes/").await?;
    assert_eq!(
        alive.into_iter().collect::<Vec<_>>(),
        [
            ("nodes/n1".to_owned(), "10.0.0.1".to_owned()),
            ("nodes/n2".to_owned(), "10.0.0.2".to_owned()),
        ]
    );
    // Dropping a lease revokes it: its records go.
    drop(n1);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let alive = backend.b.alive("nodes/").await?;
        if !alive.contains_key("nodes/n1") {
            assert!(alive.contains_key("nodes/n2"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1's record outlived its revoked lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn a_ttl_under_a_second_is_refused(backend: Backend) -> Result<()> {
    let err = backend
        .a
        .grant(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidConfig {
                field: "lease ttl",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 1s"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_etcd_lease_outlives_its_ttl() -> Result<()> {
    let backend = Backend::etcd().await?;
    let lease = backend.a.grant(Duration::from_secs(1)).await?;
    backend.a.put_alive(&lease, "nodes/n1", "up").await?;
    // Several TTLs pass; the background renewal keeps the lease and its record.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!lease.is_lost());
    assert!(backend.b.alive("nodes/").await?.contains_key("nodes/n1"));
    Ok(())
}

/// The fencing order: a leader whose etcd member dies learns that its lease is lost, and
/// only after that can another candidate be elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_knows_it_lost_before_another_is_elected() -> Result<()> {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
    // Each candidate talks to its own member only.
    let a = EtcdCoordinator::new(&EtcdStore::connect(EtcdConfig::new([etcd.endpoint(0)])).await?);
    let b = EtcdCoordinator::new(&EtcdStore::connect(EtcdConfig::new([etcd.endpoint(1)])).await?);
    // Long enough for b's renewals to ride out the raft election that killing a member
    // may cause.
    let ttl = Duration::from_secs(5);
    let leader = a.campaign("scheduler", "server-a", ttl).await?;
    let mut waiting = tokio::spawn(async move { b.campaign("scheduler", "server-b", ttl).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "server-b waits while server-a leads"
    );

    etcd.kill(0);
    let elected = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("server-b is elected once server-a's lease expires")??;
    assert_eq!(elected.candidate(), "server-b");
    assert!(
        leader.lease().is_lost(),
        "server-a knew it had lost its lease before server-b was elected"
    );
    tokio::time::timeout(Duration::from_millis(10), leader.lost())
        .await
        .expect("lost() resolves once the lease is lost");
    Ok(())
}
