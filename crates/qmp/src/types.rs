//! Typed replies of the commands Corral uses.
//!
//! These types describe QEMU's *output*, so they accept fields they do not know:
//! QEMU adds optional members across releases (7.2's `query-status` has `singlestep`,
//! `query-memdev` has `reserve`), and rejecting them would break on every upgrade.

use std::fmt;

use serde::Deserialize;

/// The greeting QEMU sends when a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The QEMU version.
    pub version: QemuVersion,
    /// Capabilities QEMU offers (such as `oob`); this client enables none of them.
    pub capabilities: Vec<String>,
}

/// A QEMU version as reported in the greeting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// Major version, e.g. 7.
    pub major: u32,
    /// Minor version, e.g. 2.
    pub minor: u32,
    /// Micro version, e.g. 22.
    pub micro: u32,
    /// Distribution package string, possibly empty.
    pub package: String,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        if !self.package.is_empty() {
            write!(f, " ({})", self.package)?;
        }
        Ok(())
    }
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// QEMU's run state.
    pub status: RunState,
}

macro_rules! run_states {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// QEMU's `RunState`, with a fallback for states newer than this client.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
        #[serde(from = "String")]
        pub enum RunState {
            $($(#[$doc])* $variant,)*
            /// A state this client does not know, verbatim.
            Other(String),
        }

        impl RunState {
            /// The name QEMU uses for this state.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(name) => name,
                }
            }
        }

        impl From<String> for RunState {
            fn from(name: String) -> Self {
                match name.as_str() {
                    $($name => Self::$variant,)*
                    _ => Self::Other(name),
                }
            }
        }
    };
}

run_states! {
    /// `debug`: stopped by the gdb stub.
    Debug => "debug",
    /// `inmigrate`: waiting for an incoming migration.
    InMigrate => "inmigrate",
    /// `internal-error`: stopped by an emulation error.
    InternalError => "internal-error",
    /// `io-error`: stopped by a block I/O error.
    IoError => "io-error",
    /// `paused`: stopped by `stop` or the monitor.
    Paused => "paused",
    /// `postmigrate`: stopped after an outgoing migration finished.
    PostMigrate => "postmigrate",
    /// `prelaunch`: started with `-S` and never run yet.
    Prelaunch => "prelaunch",
    /// `finish-migrate`: stopped to finish an outgoing migration.
    FinishMigrate => "finish-migrate",
    /// `restore-vm`: loading a snapshot.
    RestoreVm => "restore-vm",
    /// `running`: vCPUs are running.
    Running => "running",
    /// `save-vm`: saving a snapshot.
    SaveVm => "save-vm",
    /// `shutdown`: the guest shut down and `-no-shutdown` kept QEMU alive.
    Shutdown => "shutdown",
    /// `suspended`: the guest is suspended (ACPI S3).
    Suspended => "suspended",
    /// `watchdog`: stopped by a watchdog action.
    Watchdog => "watchdog",
    /// `guest-panicked`: stopped after a guest panic.
    GuestPanicked => "guest-panicked",
    /// `colo`: COLO fault tolerance.
    Colo => "colo",
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One memory backend, as reported by `query-memdev`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Memdev {
    /// The backend's id (absent for anonymous backends).
    #[serde(default)]
    pub id: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Whether KSM merging is enabled.
    pub merge: bool,
    /// Whether the memory is included in core dumps.
    pub dump: bool,
    /// Whether the memory is preallocated.
    pub prealloc: bool,
    /// Whether the memory is shared (`MAP_SHARED`); mandatory since QEMU 6.1.
    #[serde(default)]
    pub share: Option<bool>,
    /// Whether swap space (or huge pages) is reserved; absent where unsupported.
    #[serde(default)]
    pub reserve: Option<bool>,
    /// Host NUMA nodes the memory is bound to.
    pub host_nodes: Vec<u16>,
    /// NUMA policy: `default`, `preferred`, `bind` or `interleave`.
    pub policy: String,
}

/// One property of a QOM object, as reported by `qom-list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectProperty {
    /// The property name.
    pub name: String,
    /// The property type, such as `string` or `child<memory-backend-ram>`.
    #[serde(rename = "type")]
    pub type_: String,
}
