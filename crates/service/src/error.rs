use corral_contract::ValidationError;
use corral_store::StoreError;

/// Why a service call failed. Transports map each variant to their own status codes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The kind asked for.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// An object with that name exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// Someone else changed the object first.
    #[error(
        "{kind} {name:?} was changed by someone else (resource_version {actual}, not {expected}): get it again and retry"
    )]
    Conflict {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The version the caller had.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// The operation does not fit the object's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[source] StoreError),
}

impl ServiceError {
    pub(crate) fn from_store(kind: &'static str, err: StoreError) -> Self {
        match err {
            StoreError::NotFound { name, .. } => ServiceError::NotFound { kind, name },
            StoreError::AlreadyExists { name, .. } => ServiceError::AlreadyExists { kind, name },
            StoreError::Conflict {
                name,
                expected,
                actual,
                ..
            } => ServiceError::Conflict {
                kind,
                name,
                expected,
                actual,
            },
            other => ServiceError::Store(other),
        }
    }
}
