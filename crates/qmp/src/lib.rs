//! An async client for the QEMU Machine Protocol (QMP).
//!
//! [`Qmp`] connects to QEMU's QMP unix socket, negotiates capabilities and then lets
//! any number of tasks issue commands concurrently: each command carries an `id`, and a
//! single reader task hands every reply to the caller that sent it and every event to
//! the subscribers of [`Qmp::subscribe`]. Input from QEMU is treated as untrusted:
//! lines are bounded by [`QmpConfig::max_line_bytes`], malformed lines are logged and
//! skipped, and nothing QEMU sends can make the client panic.
//!
//! ```no_run
//! use corral_qmp::{EventKind, Qmp, RunState};
//!
//! # async fn example() -> Result<(), corral_qmp::Error> {
//! // QEMU started with `-S -qmp unix:/run/vm.qmp,server=on,wait=off`.
//! let qmp = Qmp::connect("/run/vm.qmp").await?;
//! println!("QEMU {}", qmp.greeting().version);
//!
//! let mut events = qmp.subscribe();
//! if qmp.query_status().await?.status == RunState::Prelaunch {
//!     qmp.cont().await?;
//! }
//! while let Ok(event) = events.recv().await {
//!     if let EventKind::Shutdown { guest, reason } = event.kind {
//!         println!("shutdown (guest: {guest}): {reason}");
//!         break;
//!     }
//! }
//! qmp.quit().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod block;
mod client;
mod commands;
mod config;
mod error;
mod event;
mod line;
mod types;

pub use block::BlockJobInfo;
pub use client::Qmp;
pub use commands::{QEMU_MAX_BANDWIDTH, SnapshotJob};
pub use config::QmpConfig;
pub use error::{CloseReason, Error};
pub use event::{Event, EventKind, Timestamp};
pub use types::{Greeting, Memdev, ObjectProperty, QemuVersion, RunState, StatusInfo};
