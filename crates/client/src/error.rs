use std::time::Duration;

use corral_contract::Phase;
use tonic::Code;

/// Why a call to corrald failed.
///
/// The variants follow the gRPC status codes corrald answers with; each carries the server's
/// message, which names the object and, for invalid input, the field (`spec.cpus: must be
/// between 1 and 256 (got 0)`).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The object does not exist (`NOT_FOUND`).
    #[error("{message}")]
    NotFound {
        /// The server's message.
        message: String,
    },
    /// The request is not allowed (`INVALID_ARGUMENT`); the message starts with the field.
    #[error("{message}")]
    Invalid {
        /// The server's message, e.g. `spec.cpus: must be between 1 and 256 (got 0)`.
        message: String,
    },
    /// An object with that name exists (`ALREADY_EXISTS`).
    #[error("{message}")]
    AlreadyExists {
        /// The server's message.
        message: String,
    },
    /// Someone else changed the object first (`ABORTED`): read it again and retry.
    #[error("{message}")]
    Conflict {
        /// The server's message.
        message: String,
    },
    /// The operation does not fit the object's state, e.g. it is being deleted
    /// (`FAILED_PRECONDITION`).
    #[error("{message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
    },
    /// The server does not know the caller (`UNAUTHENTICATED`).
    #[error("{message}: check --token or CORRAL_TOKEN")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The server knows the caller, whose role or grants do not allow this
    /// (`PERMISSION_DENIED`); the message says what would.
    #[error("{message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// corrald cannot be reached.
    #[error(
        "cannot reach corrald at {endpoint}: {message}; {}",
        hint(endpoint, message)
    )]
    Unavailable {
        /// The socket path or URL tried.
        endpoint: String,
        /// What went wrong, e.g. `the socket does not exist`.
        message: String,
    },
    /// A wait ended before the VM got where it was waited for.
    #[error("timed out after {} waiting for VM {name:?}{}", humanize(*after), phase_note(phase))]
    Timeout {
        /// The VM waited for.
        name: String,
        /// How long was waited.
        after: Duration,
        /// The VM's phase when the time ran out, if it existed.
        phase: Option<Phase>,
    },
    /// The client's settings are not usable (a bad server address, an unreadable CA file).
    #[error("{message}")]
    Config {
        /// What is wrong and what to do.
        message: String,
    },
    /// Anything else: an internal server error, a reply that does not decode.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
    },
}

fn hint(endpoint: &str, message: &str) -> &'static str {
    if message.contains("certificate") {
        "check that --ca-file or CORRAL_CA_FILE names the CA that signed corrald's certificate"
    } else if endpoint.starts_with("https://") {
        "is corrald running there and listening on TCP? check --server or CORRAL_SERVER"
    } else {
        "is corrald running? start it with `corrald` or set CORRAL_SOCKET"
    }
}

fn humanize(after: Duration) -> String {
    let secs = after.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs}s")
    } else {
        format!("{secs:.1}s")
    }
}

fn phase_note(phase: &Option<Phase>) -> String {
    match phase {
        Some(phase) => format!(" (phase {phase})"),
        None => String::new(),
    }
}

impl ClientError {
    /// The CLI's exit code for this error: 3 for not found, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NotFound { .. } => 3,
            _ => 1,
        }
    }

    /// Maps a gRPC status from the server reached at `endpoint`.
    pub(crate) fn from_status(status: tonic::Status, endpoint: &str) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => ClientError::NotFound { message },
            Code::InvalidArgument | Code::OutOfRange => ClientError::Invalid { message },
            Code::AlreadyExists => ClientError::AlreadyExists { message },
            Code::Aborted => ClientError::Conflict { message },
            Code::FailedPrecondition => ClientError::FailedPrecondition { message },
            Code::Unauthenticated => ClientError::Unauthenticated { message },
            Code::PermissionDenied => ClientError::PermissionDenied { message },
            Code::Unavailable => ClientError::Unavailable {
                endpoint: endpoint.to_owned(),
                message: unavailable_message(&status),
            },
            code => ClientError::Other {
                message: if message.is_empty() {
                    format!("corrald answered {code:?}")
                } else {
                    message
                },
            },
        }
    }
}

// tonic reports a broken connection as UNAVAILABLE "transport error"; the cause is in its
// source chain.
fn unavailable_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = err.source();
    }
    if message.is_empty() {
        "the server is unavailable".to_owned()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_and_exit_codes() {
        let err = ClientError::from_status(tonic::Status::not_found("VM \"a\" not found"), "/s");
        assert!(matches!(err, ClientError::NotFound { .. }));
        assert_eq!(err.exit_code(), 3);
        assert_eq!(err.to_string(), "VM \"a\" not found");

        let invalid = tonic::Status::invalid_argument("spec.cpus: must be between 1 and 256");
        let err = ClientError::from_status(invalid, "/s");
        assert!(matches!(err, ClientError::Invalid { .. }));
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().starts_with("spec.cpus: "));

        let err = ClientError::from_status(tonic::Status::aborted("changed"), "/s");
        assert!(matches!(err, ClientError::Conflict { .. }));
        let err = ClientError::from_status(tonic::Status::unauthenticated("no token"), "/s");
        assert!(err.to_string().contains("CORRAL_TOKEN"), "{err}");
    }

    #[test]
    fn unavailable_names_the_endpoint_and_what_to_do() {
        let err = ClientError::from_status(tonic::Status::unavailable("gone"), "/run/c.sock");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach corrald at /run/c.sock: gone;"),
            "{text}"
        );
        assert!(
            text.contains("start it with `corrald` or set CORRAL_SOCKET"),
            "{text}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn timeout_says_how_long_and_where_the_vm_was() {
        let err = ClientError::Timeout {
            name: "a".into(),
            after: Duration::from_secs(60),
            phase: Some(Phase::Starting),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 60s waiting for VM \"a\" (phase Starting)"
        );
    }
}
