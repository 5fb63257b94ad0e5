use std::path::PathBuf;

use corral_contract::Arch;

/// Why a hypervisor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The emulator for the architecture is not installed.
    #[error(
        "{binary} not found in PATH: install the Debian package {package} (apt-get install {package})"
    )]
    EmulatorMissing {
        /// The executable looked for.
        binary: String,
        /// The distribution package that provides it.
        package: &'static str,
    },
    /// Firmware the machine needs is not installed.
    #[error(
        "firmware {file} for {arch} was not found in {searched}: install the Debian package {package}"
    )]
    FirmwareMissing {
        /// The firmware file name.
        file: String,
        /// The guest architecture.
        arch: Arch,
        /// Where it was looked for.
        searched: String,
        /// The distribution package that provides it.
        package: &'static str,
    },
    /// A unix socket path is longer than the kernel allows.
    #[error(
        "socket path {path:?} is {len} bytes, over the kernel's limit of {max}: use a shorter run directory (e.g. /run/corral)"
    )]
    SocketPathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The configuration asks for something the backend cannot do.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// The requested accelerator is not usable on this host.
    #[error("accelerator {accel} is not available on this host: {reason}")]
    AccelUnavailable {
        /// The accelerator asked for.
        accel: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// No VM with this uid is known to the backend.
    #[error("no VM with uid {0} is running on this host")]
    NotFound(String),
    /// A VM with this uid already runs; a second process is never started.
    #[error("VM {uid} is already running (pid {pid})")]
    AlreadyRunning {
        /// The VM's uid.
        uid: String,
        /// The pid of the process that runs it.
        pid: u32,
    },
    /// The VM is not in a state that allows the operation.
    #[error("VM {uid} cannot {op}: it is {state}")]
    InvalidState {
        /// The VM's uid.
        uid: String,
        /// The operation attempted.
        op: &'static str,
        /// The state it is in.
        state: String,
    },
    /// The emulator process exited while it was being started.
    #[error("QEMU exited during start-up ({exit}): {stderr}")]
    StartFailed {
        /// How it exited.
        exit: String,
        /// The last lines it printed.
        stderr: String,
    },
    /// A runtime directory does not describe a VM that can be trusted.
    #[error("cannot adopt VM {uid}: {reason}")]
    AdoptRejected {
        /// The VM's uid.
        uid: String,
        /// What did not match.
        reason: String,
    },
    /// Talking to the VM's monitor failed.
    #[error("monitor of VM {uid}: {message}")]
    Monitor {
        /// The VM's uid.
        uid: String,
        /// What went wrong.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{what} did not finish within {secs:.1} s")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        secs: f64,
    },
    /// A host I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
