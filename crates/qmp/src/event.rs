//! Asynchronous events QEMU sends.

use serde::Deserialize;
use serde_json::Value;

/// An event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event, parsed where this client knows it.
    pub kind: EventKind,
    /// The raw `data` member (`Value::Null` when QEMU sent none).
    pub data: Value,
    /// When QEMU emitted the event, if it sent a well-formed timestamp.
    pub timestamp: Option<Timestamp>,
}

/// The events Corral reacts to; any other event (or a known one with unexpected data)
/// is [`EventKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `SHUTDOWN`: the guest or the host asked QEMU to shut down.
    Shutdown {
        /// Whether the guest initiated it.
        guest: bool,
        /// QEMU's `ShutdownCause`, such as `guest-shutdown` or `host-qmp-quit`.
        reason: String,
    },
    /// `POWERDOWN`: an ACPI power-button press was delivered.
    Powerdown,
    /// `STOP`: the vCPUs stopped.
    Stop,
    /// `RESUME`: the vCPUs resumed.
    Resume,
    /// `RESET`: the machine was reset.
    Reset {
        /// Whether the guest initiated it.
        guest: bool,
        /// QEMU's `ShutdownCause`, such as `host-qmp-system-reset`.
        reason: String,
    },
    /// `GUEST_PANICKED`: the guest reported a panic.
    GuestPanicked {
        /// QEMU's `GuestPanicAction`, such as `pause` or `poweroff`.
        action: String,
    },
    /// Any other event, by its QMP name.
    Other(String),
}

impl EventKind {
    /// The event's QMP name, such as `SHUTDOWN`.
    pub fn name(&self) -> &str {
        match self {
            Self::Shutdown { .. } => "SHUTDOWN",
            Self::Powerdown => "POWERDOWN",
            Self::Stop => "STOP",
            Self::Resume => "RESUME",
            Self::Reset { .. } => "RESET",
            Self::GuestPanicked { .. } => "GUEST_PANICKED",
            Self::Other(name) => name,
        }
    }

    /// Parses a known event's data; a known event whose data does not match its
    /// schema falls back to `Other` so that nothing is lost.
    pub(crate) fn parse(name: &str, data: &Value) -> Self {
        #[derive(Deserialize)]
        struct Cause {
            guest: bool,
            reason: String,
        }
        #[derive(Deserialize)]
        struct Panic {
            action: String,
        }
        let parsed = match name {
            "SHUTDOWN" => Cause::deserialize(data).ok().map(|c| Self::Shutdown {
                guest: c.guest,
                reason: c.reason,
            }),
            "RESET" => Cause::deserialize(data).ok().map(|c| Self::Reset {
                guest: c.guest,
                reason: c.reason,
            }),
            "GUEST_PANICKED" => Panic::deserialize(data)
                .ok()
                .map(|p| Self::GuestPanicked { action: p.action }),
            "POWERDOWN" => Some(Self::Powerdown),
            "STOP" => Some(Self::Stop),
            "RESUME" => Some(Self::Resume),
            _ => return Self::Other(name.to_owned()),
        };
        parsed.unwrap_or_else(|| {
            tracing::warn!(event = name, %data, "QMP event data does not match its schema");
            Self::Other(name.to_owned())
        })
    }
}

/// The time QEMU emitted an event (host wall clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}
