//! Watches: replay from the event log, then follow the live broadcast.
//!
//! Each watch is a task that feeds its [`WatchStream`]. It subscribes to the broadcast
//! *before* reading the log, reads the log up to the store's revision at that read (the
//! head), then forwards live events, skipping those at or below the last revision it
//! covered. Events are broadcast after commit while the connection is still locked, so
//! every event above the head reaches the subscription, in order: no gap, no duplicate.
//!
//! A watcher that falls more than the broadcast capacity behind (its reader is slow, so
//! the stream's channel is full) loses live events; it then subscribes afresh and
//! replays from the log again. Writers never wait for watchers.

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::{Arc, Weak};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use super::Inner;
use super::db::Page;
use crate::{StoreError, WatchEvent, WatchStream};

/// Checks `after` against compaction, reads the first page, and starts the watch task.
pub(super) async fn start(
    inner: &Arc<Inner>,
    kind: Option<&str>,
    after: u64,
) -> Result<WatchStream, StoreError> {
    let live = inner.events.subscribe();
    let kind = kind.map(str::to_owned);
    let page_size = inner.config.replay_page.max(1);
    let first = fetch(Arc::clone(inner), kind.clone(), after, page_size).await?;
    let (tx, rx) = mpsc::channel(inner.config.stream_capacity.max(1));
    let watcher = Watcher {
        store: Arc::downgrade(inner),
        kind,
        last: after,
        live,
        tx,
        page_size,
    };
    tokio::spawn(watcher.run(first));
    Ok(WatchStream::new(rx))
}

async fn fetch(
    inner: Arc<Inner>,
    kind: Option<String>,
    after: u64,
    limit: usize,
) -> Result<Page, StoreError> {
    tokio::task::spawn_blocking(move || inner.lock().events_after(kind.as_deref(), after, limit))
        .await
        .map_err(|e| StoreError::backend("read the event log", e))?
}

struct Watcher {
    /// Weak, so that a watch does not keep the store alive: the stream ends with it.
    store: Weak<Inner>,
    kind: Option<String>,
    /// Every event up to this revision has been sent or filtered out.
    last: u64,
    live: broadcast::Receiver<Arc<WatchEvent>>,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
    page_size: usize,
}

impl Watcher {
    async fn run(mut self, first: Page) {
        let mut pending = Some(first);
        while self.replay(pending.take()).await.is_continue() && self.follow().await.is_continue() {
            // Lagged: live events were lost. Subscribe before reading the log again.
            self.live = self.live.resubscribe();
        }
    }

    /// Sends the logged events after `last` up to the log's end.
    async fn replay(&mut self, mut pending: Option<Page>) -> ControlFlow<()> {
        loop {
            let page = match pending.take() {
                Some(page) => page,
                None => {
                    let Some(inner) = self.store.upgrade() else {
                        return Break(());
                    };
                    match fetch(inner, self.kind.clone(), self.last, self.page_size).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return Break(());
                        }
                    }
                }
            };
            let at_end = page.events.len() < self.page_size;
            for event in page.events {
                self.last = event.revision;
                if self.tx.send(Ok(event)).await.is_err() {
                    return Break(());
                }
            }
            if at_end {
                // The page held every matching event up to the head it was read at.
                self.last = self.last.max(page.head);
                return Continue(());
            }
        }
    }

    /// Forwards live events. Breaks when the store or the stream is gone; continues when
    /// this watcher lagged and must replay.
    async fn follow(&mut self) -> ControlFlow<()> {
        loop {
            let received = tokio::select! {
                received = self.live.recv() => received,
                () = self.tx.closed() => return Break(()),
            };
            match received {
                Ok(event) if event.revision <= self.last => {}
                Ok(event) => {
                    self.last = event.revision;
                    let wanted = match &self.kind {
                        Some(kind) => *kind == event.object.kind,
                        None => true,
                    };
                    if wanted && self.tx.send(Ok(WatchEvent::clone(&event))).await.is_err() {
                        return Break(());
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, last = self.last, "watcher lagged; replaying");
                    return Continue(());
                }
                Err(RecvError::Closed) => return Break(()),
            }
        }
    }
}
