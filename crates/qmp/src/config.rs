//! Client configuration.

use std::time::Duration;

/// Limits and timeouts of a QMP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpConfig {
    /// How long [`Qmp::execute`](crate::Qmp::execute) waits for a reply (default 10 s).
    pub command_timeout: Duration,
    /// How long connecting waits for QEMU's greeting (default 5 s).
    pub greeting_timeout: Duration,
    /// The longest line accepted from the peer, without its newline (default 8 MiB).
    /// A longer line closes the connection.
    pub max_line_bytes: usize,
    /// How many events each subscriber may fall behind before it misses some
    /// (default 256; 0 is treated as 1).
    pub event_capacity: usize,
}

impl Default for QmpConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(5),
            max_line_bytes: 8 * 1024 * 1024,
            event_capacity: 256,
        }
    }
}
