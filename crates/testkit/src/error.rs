use std::time::Duration;

/// Why a test VM could not do what the test asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest kit is missing and could not be built.
    #[error("guest kit: {0}")]
    Kit(String),
    /// What a test waited for through the daemon did not happen.
    #[error("waiting for {0}")]
    Wait(String),
    /// A cargo build the harness asked for failed.
    #[error("build: {0}")]
    Build(String),
    /// The backend refused or failed.
    #[error(transparent)]
    Hypervisor(#[from] corral_hypervisor::Error),
    /// The guest did not print what was waited for.
    #[error(
        "no console line containing {needle:?} within {waited:?}; last console output:\n{tail}"
    )]
    Timeout {
        /// What was waited for.
        needle: String,
        /// How long.
        waited: Duration,
        /// The end of the console output, to see what the guest did instead.
        tail: String,
    },
    /// Host I/O around the test VM failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
