//! [`Leases`] and [`Elections`] on etcd: etcd leases renewed by a background task, records
//! put with a lease, and etcd's election API (`Campaign` blocks until the candidate's key
//! is the oldest of the election).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{EtcdStore, is_unsent};
use crate::{Elections, Leadership, Lease, Leases, StoreError};

/// [`Leases`] and [`Elections`] on the etcd cluster of an [`EtcdStore`], under their own
/// key prefix beside the store's (`/corral/` → `/corral-coord/`), so that watches of the
/// store never see them.
#[derive(Clone)]
pub struct EtcdCoordinator {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for EtcdCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordinator")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn err(operation: &'static str) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| StoreError::backend(operation, e)
}

/// Whole seconds, at least 1, as etcd counts a lease's TTL.
fn ttl_secs(ttl: Duration) -> Result<i64, StoreError> {
    match i64::try_from(ttl.as_secs()) {
        Ok(secs) if secs >= 1 => Ok(secs),
        _ => Err(StoreError::InvalidConfig {
            field: "lease ttl",
            reason: format!("{ttl:?}: give whole seconds, at least 1s"),
        }),
    }
}

impl EtcdCoordinator {
    /// Leases and elections on `store`'s cluster.
    pub fn new(store: &EtcdStore) -> Self {
        let base = store.config().prefix.trim_end_matches('/');
        EtcdCoordinator {
            client: store.client().clone(),
            prefix: format!("{base}-coord/"),
        }
    }

    fn alive_key(&self, key: &str) -> String {
        format!("{}alive/{key}", self.prefix)
    }

    fn election_key(&self, election: &str) -> String {
        format!("{}elections/{election}", self.prefix)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let secs = ttl_secs(ttl)?;
        // The holder's clock starts before the request: it never believes in the lease
        // longer than etcd does.
        let sent = Instant::now();
        let mut attempts = 0;
        let granted = loop {
            match self.client.lease_client().grant(secs, None).await {
                Err(e) if is_unsent(&e) && attempts < 40 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.map_err(err("grant a lease"))?,
            }
        };
        let id = granted.id();
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1));
        let (lost_tx, lost_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let keeper = KeepAlive {
            client: self.client.clone(),
            id,
            ttl,
            lost: lost_tx,
            stop: stop_rx,
        };
        tokio::spawn(keeper.run(sent + ttl));
        Ok(Lease::new(id, ttl, lost_rx, move || {
            // The keep-alive task revokes the lease as it stops.
            let _ = stop_tx.send(());
        }))
    }
}

/// Renews one lease every third of its TTL until stopped (then revokes it) or lost.
struct KeepAlive {
    client: Client,
    id: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
    stop: oneshot::Receiver<()>,
}

enum Renewal {
    /// Renewed for this many seconds.
    Renewed(i64),
    /// etcd no longer knows the lease: it expired.
    Expired,
}

impl KeepAlive {
    async fn run(mut self, mut deadline: Instant) {
        let mut channel: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        loop {
            let sent = Instant::now();
            let renewed = tokio::select! {
                _ = &mut self.stop => return self.revoke().await,
                () = tokio::time::sleep_until(deadline) => return self.lose("not renewed within its TTL"),
                renewed = renew(&self.client, self.id, self.ttl, &mut channel) => renewed,
            };
            let pause = match renewed {
                Ok(Renewal::Renewed(secs)) => {
                    deadline = sent + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
                    self.ttl / 3
                }
                Ok(Renewal::Expired) => return self.lose("expired in etcd"),
                Err(e) => {
                    tracing::debug!(lease = self.id, error = %e, "renewing a lease failed; retrying");
                    channel = None;
                    Duration::from_millis(200)
                }
            };
            tokio::select! {
                _ = &mut self.stop => return self.revoke().await,
                () = tokio::time::sleep_until(deadline) => return self.lose("not renewed within its TTL"),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn lose(&self, why: &str) {
        tracing::warn!(lease = self.id, why, "lease lost");
        let _ = self.lost.send(true);
    }

    async fn revoke(&self) {
        let _ = self.lost.send(true);
        if let Err(e) = self.client.lease_client().revoke(self.id).await {
            // It expires by its TTL instead.
            tracing::debug!(lease = self.id, error = %e, "revoking a lease failed");
        }
    }
}

async fn renew(
    client: &Client,
    id: i64,
    ttl: Duration,
    channel: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Renewal, etcd_client::Error> {
    let Some((keeper, stream)) = channel.as_mut() else {
        // Opening the stream renews the lease once; it fails when etcd no longer has it.
        return match client.lease_client().keep_alive(id).await {
            Ok(opened) => {
                *channel = Some(opened);
                Ok(Renewal::Renewed(i64::try_from(ttl.as_secs()).unwrap_or(1)))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(Renewal::Expired),
            Err(e) => Err(e),
        };
    };
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(response) if response.ttl() > 0 => Ok(Renewal::Renewed(response.ttl())),
        Some(_) => Ok(Renewal::Expired),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "the keep-alive stream ended".into(),
        )),
    }
}

#[async_trait]
impl Leases for EtcdCoordinator {
    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.grant_lease(ttl).await
    }

    async fn put_alive(&self, lease: &Lease, key: &str, value: &str) -> Result<(), StoreError> {
        self.client
            .kv_client()
            .put(
                self.alive_key(key),
                value,
                Some(PutOptions::new().with_lease(lease.id())),
            )
            .await
            .map_err(err("record a live key"))?;
        Ok(())
    }

    async fn alive(&self, prefix: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let base = self.alive_key("");
        let mut response = self
            .client
            .kv_client()
            .get(
                self.alive_key(prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(err("list live keys"))?;
        let mut alive = BTreeMap::new();
        for kv in response.take_kvs() {
            let key = kv.key_str().map_err(err("list live keys"))?;
            let value = kv.value_str().map_err(err("list live keys"))?;
            if let Some(key) = key.strip_prefix(&base) {
                alive.insert(key.to_owned(), value.to_owned());
            }
        }
        Ok(alive)
    }
}

#[async_trait]
impl Elections for EtcdCoordinator {
    async fn campaign(
        &self,
        election: &str,
        candidate: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        // The lease is renewed while the campaign waits; if this future is dropped, the
        // lease is revoked and the candidate leaves the election. A candidate whose lease
        // is lost while it waits (its member was cut off for longer than the TTL) stands
        // again with a new lease.
        loop {
            let lease = self.grant_lease(ttl).await?;
            let mut elections = self.client.election_client();
            tokio::select! {
                elected = elections.campaign(self.election_key(election), candidate, lease.id()) => {
                    elected.map_err(err("campaign in an election"))?;
                    if !lease.is_lost() {
                        return Ok(Leadership::new(election, candidate, lease));
                    }
                }
                () = lease.lost() => {}
            }
            tracing::info!(
                election,
                candidate,
                "the campaign's lease was lost; standing again"
            );
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<String>, StoreError> {
        match self
            .client
            .election_client()
            .leader(self.election_key(election))
            .await
        {
            Ok(mut response) => match response.take_kv() {
                Some(kv) => Ok(Some(
                    kv.value_str()
                        .map_err(err("read an election's leader"))?
                        .to_owned(),
                )),
                None => Ok(None),
            },
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(StoreError::backend("read an election's leader", e)),
        }
    }
}
