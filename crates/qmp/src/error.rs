//! Errors returned by the QMP client.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a QMP command or connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to, or reading the greeting from, the QMP socket failed.
    #[error("QMP socket {}: {source}", display_path(.path))]
    Io {
        /// The socket path, when known.
        path: Option<PathBuf>,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The connection closed before the reply arrived, or was already closed.
    #[error("QMP connection closed")]
    Closed,
    /// No reply arrived within the command timeout.
    #[error("QMP command '{command}' got no reply within {after:?}")]
    Timeout {
        /// The command that timed out.
        command: String,
        /// How long the client waited.
        after: Duration,
    },
    /// QEMU answered the command with an error reply.
    #[error("QMP command '{command}' failed: {class}: {desc}")]
    Qmp {
        /// The command that failed.
        command: String,
        /// QEMU's error class, such as `GenericError` or `CommandNotFound`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },
    /// The peer did not speak QMP as expected: a missing or invalid greeting, failed
    /// capabilities negotiation, or a reply that does not match the command's schema.
    #[error("QMP protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The peer sent a line longer than [`QmpConfig::max_line_bytes`](crate::QmpConfig);
    /// the connection was closed because the stream can no longer be trusted.
    #[error("QMP peer sent a line longer than {limit} bytes; connection closed")]
    LineTooLong {
        /// The configured limit in bytes.
        limit: usize,
    },
}

fn display_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => "(unnamed)".to_owned(),
    }
}

/// Why a QMP connection is gone, as reported by [`Qmp::closed`](crate::Qmp::closed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloseReason {
    /// The peer closed the connection (possibly in the middle of a line).
    #[error("peer closed the connection")]
    Eof,
    /// Reading from or writing to the socket failed.
    #[error("socket I/O failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The peer sent a line longer than the configured limit.
    #[error("peer sent a line longer than {limit} bytes")]
    LineTooLong {
        /// The configured limit in bytes.
        limit: usize,
    },
}
