//! Watches on etcd: one etcd watch per [`WatchStream`], re-established from the last
//! delivered revision when its connection breaks (another member answers then).
//!
//! etcd delivers a watch's events in revision order and replays history from
//! `start_revision`, so the task only converts events, remembers the last revision it
//! sent, and on a broken stream watches again from the revision after it: no gap, no
//! duplicate.

use std::time::Duration;

use etcd_client::{Client, EventType as EtcdEvent, GetOptions, WatchOptions, WatchStream as Feed};
use tokio::sync::{mpsc, watch as signal};
use tokio::time::Instant;

use super::{EtcdStore, decode, is_compacted, is_future, signed, unsigned};
use crate::{EventType, StoreError, WatchEvent, WatchStream};

/// Opens the watch, reports compaction up front, and starts the task that feeds the
/// stream.
pub(super) async fn start(
    store: &EtcdStore,
    prefix: String,
    after: u64,
) -> Result<WatchStream, StoreError> {
    let client = store.inner.client.clone();
    let mut feed = store
        .kv(|_| open(&client, &prefix, after))
        .await
        .map_err(|e| StoreError::backend("watch", e))?;
    // A watch from a compacted revision is created and then cancelled by etcd; a Range at
    // the first wanted revision tells whether that will happen without waiting for it.
    let probe = store
        .kv(|mut kv| {
            let prefix = prefix.clone();
            async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(signed(after + 1));
                kv.get(prefix, Some(options)).await
            }
        })
        .await;
    match probe {
        Ok(_) => {}
        Err(e) if is_future(&e) => {}
        Err(e) if is_compacted(&e) => {
            // The cancellation carrying the compaction revision is on its way.
            return Err(match feed.message().await {
                Ok(Some(response)) if response.compact_revision() > 0 => StoreError::Compacted {
                    requested: after,
                    oldest: unsigned(response.compact_revision()) - 1,
                },
                _ => StoreError::Compacted {
                    requested: after,
                    oldest: after + 1,
                },
            });
        }
        Err(e) => return Err(StoreError::backend("watch", e)),
    }
    let (tx, rx) = mpsc::channel(store.inner.config.stream_capacity.max(1));
    let task = Task {
        client,
        base: store.inner.config.prefix.clone(),
        prefix,
        last: after,
        tx,
        alive: store.inner.alive.subscribe(),
        retry_for: store.inner.config.watch_retry,
    };
    tokio::spawn(task.run(feed));
    Ok(WatchStream::new(rx))
}

/// Creates an etcd watch of `prefix` from the revision after `after`, with previous values
/// (a deletion carries the object's last state).
async fn open(client: &Client, prefix: &str, after: u64) -> Result<Feed, etcd_client::Error> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(signed(after + 1));
    let (_watcher, feed) = client
        .watch_client()
        .watch(prefix.as_bytes(), Some(options))
        .await?;
    // Dropping the watcher closes the request side only; etcd keeps the watch while the
    // response stream is read.
    Ok(feed)
}

struct Task {
    client: Client,
    /// The store's key prefix, which object keys start with.
    base: String,
    /// The watched prefix: the store's, or a kind's below it.
    prefix: String,
    /// Every event up to this revision has been sent.
    last: u64,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
    /// Closes when the store is dropped.
    alive: signal::Receiver<()>,
    retry_for: Duration,
}

/// Why a feed stopped.
enum Stop {
    /// The stream's reader or the store is gone: end quietly.
    Done,
    /// A final error to deliver.
    Fail(StoreError),
    /// The connection broke: watch again from `last`.
    Broken(String),
}

impl Task {
    async fn run(mut self, mut feed: Feed) {
        let mut broken_since: Option<Instant> = None;
        loop {
            let stop = self.follow(&mut feed).await;
            let reason = match stop {
                Stop::Done => return,
                Stop::Fail(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
                Stop::Broken(reason) => reason,
            };
            // Re-establish, backing off, until the retry budget is spent.
            let since = *broken_since.get_or_insert_with(Instant::now);
            let mut delay = Duration::from_millis(100);
            feed = loop {
                if since.elapsed() > self.retry_for {
                    let _ = self
                        .tx
                        .send(Err(StoreError::backend(
                            "watch",
                            format!(
                                "the etcd watch broke and could not be re-established: {reason}"
                            ),
                        )))
                        .await;
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = self.alive.changed() => return,
                    () = self.tx.closed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(2));
                match open(&self.client, &self.prefix, self.last).await {
                    Ok(feed) => break feed,
                    Err(e) => tracing::debug!(error = %e, "re-establishing an etcd watch"),
                }
            };
            tracing::debug!(last = self.last, %reason, "etcd watch re-established");
            broken_since = None;
        }
    }

    async fn follow(&mut self, feed: &mut Feed) -> Stop {
        loop {
            let message = tokio::select! {
                message = feed.message() => message,
                _ = self.alive.changed() => return Stop::Done,
                () = self.tx.closed() => return Stop::Done,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Stop::Broken("the stream ended".into()),
                Err(e) => return Stop::Broken(e.to_string()),
            };
            if response.compact_revision() > 0 {
                return Stop::Fail(StoreError::Compacted {
                    requested: self.last,
                    oldest: unsigned(response.compact_revision()) - 1,
                });
            }
            if response.canceled() {
                return Stop::Broken(format!(
                    "etcd cancelled the watch: {}",
                    response.cancel_reason()
                ));
            }
            // One transaction's events share its revision and come in one response (etcd
            // never splits a revision): what was sent is judged per response, so that every
            // event of a multi-key transaction is sent, and none twice after a re-watch.
            let sent = self.last;
            for event in response.events() {
                let converted = match self.convert(event) {
                    Ok(converted) => converted,
                    Err(e) => return Stop::Fail(e),
                };
                if converted.revision <= sent {
                    continue;
                }
                self.last = converted.revision;
                if self.tx.send(Ok(converted)).await.is_err() {
                    return Stop::Done;
                }
            }
        }
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        const OP: &str = "decode a watch event";
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::backend(OP, "an etcd event without a key"))?;
        let revision = unsigned(kv.mod_revision());
        let (event, object) = match event.event_type() {
            EtcdEvent::Put if kv.create_revision() == kv.mod_revision() => {
                (EventType::Added, decode(&self.base, kv)?)
            }
            EtcdEvent::Put => (EventType::Modified, decode(&self.base, kv)?),
            EtcdEvent::Delete => {
                let prev = event.prev_kv().ok_or_else(|| {
                    StoreError::backend(
                        OP,
                        format!(
                            "etcd sent the deletion at revision {revision} without the \
                             object's last state"
                        ),
                    )
                })?;
                (EventType::Deleted, decode(&self.base, prev)?)
            }
        };
        Ok(WatchEvent {
            revision,
            event,
            object,
        })
    }
}
