//! The stream a watch delivers.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::{StoreError, WatchEvent};

/// The changes a [`Store::watch`](crate::Store::watch) delivers.
///
/// Read it with [`recv`](WatchStream::recv), or as a [`futures_core::Stream`] (for
/// `StreamExt` combinators). Items arrive in strictly increasing
/// [`revision`](WatchEvent::revision) order, with no gap and no duplicate.
///
/// The stream ends (`None`) only when the store is dropped. A watcher that reads slowly
/// never slows writers down: the store catches it up from its event log. Should compaction
/// overtake it meanwhile, or the backend fail, the stream yields one `Err` and then ends.
/// To resume, call `watch` again with the revision of the last event received; on
/// [`StoreError::Compacted`], list again and watch from the list's revision.
///
/// Dropping the stream stops the watch.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl WatchStream {
    /// Wraps the receiving end of a channel that a store implementation feeds.
    pub fn new(rx: mpsc::Receiver<Result<WatchEvent, StoreError>>) -> Self {
        WatchStream { rx }
    }

    /// The next change; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
