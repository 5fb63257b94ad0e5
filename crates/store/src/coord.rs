//! Liveness and leadership for processes that share a store: [`Leases`] (a record that
//! lives while its holder keeps renewing it) and [`Elections`] (one leader at a time).
//!
//! [`EtcdCoordinator`](crate::EtcdCoordinator) implements both on etcd leases and etcd's
//! election API, for several hosts; [`LocalCoordinator`] implements them in one process,
//! for a single host and for tests.
//!
//! A holder learns that its lease is lost ([`Lease::lost`]) no later than the cluster
//! expires it: the holder counts the TTL from when it *sent* its last successful renewal,
//! the cluster from when it *received* it. So a holder that stops its work when its lease
//! is lost has stopped before anyone else can see the lease gone (given clocks that tick
//! at the same rate).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::StoreError;

/// Grants leases kept alive in the background, and records that live as long as a lease.
#[async_trait]
pub trait Leases: Send + Sync + Debug + 'static {
    /// Grants a lease of `ttl` (whole seconds, at least 1), renewed in the background
    /// until the [`Lease`] is dropped (which revokes it) or it is lost.
    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError>;

    /// Records `key = value` for as long as `lease` lives, such as `nodes/n1 = <address>`.
    /// Writing the key again replaces the value (and the lease it is bound to).
    async fn put_alive(&self, lease: &Lease, key: &str, value: &str) -> Result<(), StoreError>;

    /// The records of live leases whose key starts with `prefix`, by key.
    async fn alive(&self, prefix: &str) -> Result<BTreeMap<String, String>, StoreError>;
}

/// Leader elections: among the candidates of one election, one leads at a time.
#[async_trait]
pub trait Elections: Send + Sync + Debug + 'static {
    /// Waits until `candidate` leads `election`, then returns its [`Leadership`], which
    /// holds a lease of `ttl`. Candidates are served in the order they campaigned.
    async fn campaign(
        &self,
        election: &str,
        candidate: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError>;

    /// The current leader's candidate name, if there is one.
    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError>;
}

/// A granted lease. Dropping it revokes it: its records disappear and a leadership held
/// with it ends.
pub struct Lease {
    id: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    /// Stops the keep-alive and revokes the lease, on drop.
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("ttl", &self.ttl)
            .field("lost", &*self.lost.borrow())
            .finish()
    }
}

impl Lease {
    /// A lease with `id` whose loss `lost` reports (`true` once lost), released by
    /// `release` when dropped. For [`Leases`] implementations.
    pub fn new(
        id: i64,
        ttl: Duration,
        lost: watch::Receiver<bool>,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Lease {
            id,
            ttl,
            lost,
            release: Some(Box::new(release)),
        }
    }

    /// The lease's id in its backend.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The granted time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease is lost: it could not be renewed within its TTL, or it expired.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost (at once if it already is). A holder doing work
    /// that only one may do must stop when this resolves.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An Err means the keep-alive ended without saying lost: treat as lost.
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Leadership of one election, held with a lease. Dropping it resigns (the lease is
/// revoked, so the next candidate leads at once).
#[derive(Debug)]
pub struct Leadership {
    election: String,
    candidate: String,
    lease: Lease,
}

impl Leadership {
    /// Leadership of `election` by `candidate`, held with `lease`. For [`Elections`]
    /// implementations.
    pub fn new(election: impl Into<String>, candidate: impl Into<String>, lease: Lease) -> Self {
        Leadership {
            election: election.into(),
            candidate: candidate.into(),
            lease,
        }
    }

    /// The election led.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The leading candidate's name.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// The lease the leadership is held with.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Resolves once leadership is lost (the lease could not be renewed): the leader must
    /// stop acting as one.
    pub async fn lost(&self) {
        self.lease.lost().await;
    }
}

/// [`Leases`] and [`Elections`] within one process: for a single host, where the process
/// that holds a lease is the only one that could see it, and for tests. A lease lives
/// until it is dropped.
#[derive(Debug, Clone, Default)]
pub struct LocalCoordinator {
    state: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<LocalState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct LocalState {
    next_id: i64,
    /// Live leases and the senders that would report their loss.
    leases: HashMap<i64, watch::Sender<bool>>,
    /// key → (lease, value).
    records: BTreeMap<String, (i64, String)>,
    /// election → candidates in campaign order as (lease, name); the first leads.
    elections: HashMap<String, VecDeque<(i64, String)>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LocalCoordinator {
    /// A coordinator with no lease.
    pub fn new() -> Self {
        Self::default()
    }

    fn grant_now(&self, ttl: Duration) -> Lease {
        let (lost_tx, lost_rx) = watch::channel(false);
        let id = {
            let mut state = self.state.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.leases.insert(id, lost_tx);
            id
        };
        let shared = Arc::downgrade(&self.state);
        Lease::new(id, ttl, lost_rx, move || {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            {
                let mut state = shared.lock();
                if let Some(lost) = state.leases.remove(&id) {
                    let _ = lost.send(true);
                }
                state.records.retain(|_, (lease, _)| *lease != id);
                for queue in state.elections.values_mut() {
                    queue.retain(|(lease, _)| *lease != id);
                }
                state.elections.retain(|_, queue| !queue.is_empty());
            }
            shared.changed.notify_waiters();
        })
    }
}

fn check_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl < Duration::from_secs(1) {
        return Err(StoreError::InvalidConfig {
            field: "lease ttl",
            reason: format!("{ttl:?} is too short: give at least 1s"),
        });
    }
    Ok(())
}

#[async_trait]
impl Leases for LocalCoordinator {
    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        check_ttl(ttl)?;
        Ok(self.grant_now(ttl))
    }

    async fn put_alive(&self, lease: &Lease, key: &str, value: &str) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if !state.leases.contains_key(&lease.id()) {
            return Err(StoreError::backend(
                "record a live key",
                format!("lease {} is not live", lease.id()),
            ));
        }
        state
            .records
            .insert(key.to_owned(), (lease.id(), value.to_owned()));
        Ok(())
    }

    async fn alive(&self, prefix: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let state = self.state.lock();
        Ok(state
            .records
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (_, value))| (key.clone(), value.clone()))
            .collect())
    }
}

#[async_trait]
impl Elections for LocalCoordinator {
    async fn campaign(
        &self,
        election: &str,
        candidate: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        check_ttl(ttl)?;
        let lease = self.grant_now(ttl);
        self.state
            .lock()
            .elections
            .entry(election.to_owned())
            .or_default()
            .push_back((lease.id(), candidate.to_owned()));
        loop {
            // Register for the wake-up before checking, so no change is missed.
            let changed = self.state.changed.notified();
            let leads = self
                .state
                .lock()
                .elections
                .get(election)
                .and_then(|queue| queue.front())
                .is_some_and(|(id, _)| *id == lease.id());
            if leads {
                return Ok(Leadership::new(election, candidate, lease));
            }
            // Dropping this future (a cancelled campaign) drops the lease, which leaves
            // the queue.
            changed.await;
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .state
            .lock()
            .elections
            .get(election)
            .and_then(|queue| queue.front())
            .map(|(_, name)| name.clone()))
    }
}
