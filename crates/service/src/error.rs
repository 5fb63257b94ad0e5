//! Why a service call failed, and the one place that classifies each reason for transports.

use corral_contract::ValidationError;
use corral_storage::{BadDigest, CasError, QemuImgError};
use corral_store::StoreError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The class of a [`ServiceError`], independent of transport. The daemon maps each code to
/// exactly one gRPC status code and one HTTP status; [`ServiceError::code`] is the only place
/// that decides which code an error has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request itself is wrong (a field, a reference, a selector); resending it fails.
    InvalidArgument,
    /// The object asked for does not exist.
    NotFound,
    /// The caller is known but may not do this.
    PermissionDenied,
    /// An object with that name exists.
    AlreadyExists,
    /// Someone else changed the object first; read it again and retry.
    Aborted,
    /// The request is fine but the objects it touches are not in a state that allows it.
    FailedPrecondition,
    /// The store or another dependency is not reachable now; retrying later may work.
    Unavailable,
    /// A fault of the server (a stored object that does not decode, a failed task).
    Internal,
    /// The request is larger than the daemon accepts (a body, an upload); the error names
    /// the limit.
    TooLarge,
}

/// Why a service call failed. Each variant's message names the object, what is wrong and
/// what to do; [`ServiceError::code`] classifies it for transports.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The caller may not do this (e.g. only admins may reconfigure the host).
    #[error("permission denied: {what}: {remedy}")]
    PermissionDenied {
        /// What was refused, e.g. `mode bridge (spec.mode) is for admins only`.
        what: String,
        /// What to do instead.
        remedy: &'static str,
    },
    /// No such object (`name` is its store key: `project/name` outside `default`).
    #[error("{}", not_found(kind, name))]
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
    /// Other writers changed the object on every compare-and-swap attempt.
    #[error("{kind} {name:?} changed {attempts} times while being updated; try again")]
    ChangedTooOften {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// How many writes were tried.
        attempts: usize,
    },
    /// A field that is fixed at creation was changed.
    #[error("{field}: cannot change after creation: create another {kind}")]
    Immutable {
        /// The kind.
        kind: &'static str,
        /// The field's JSON path, e.g. `spec.kind`.
        field: &'static str,
    },
    /// The object is marked for deletion and takes no new intent.
    #[error("{kind} {name:?} is being deleted")]
    Deleting {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The object is used by others and cannot be deleted.
    #[error("{kind} {name:?} is used by {by_kind} {}: {remedy}", quoted(by))]
    InUse {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The kind of the users.
        by_kind: &'static str,
        /// The names of the users.
        by: Vec<String>,
        /// What to do first.
        remedy: &'static str,
    },
    /// An object this request needs has not become ready.
    #[error("{kind} {name:?} is {phase}, not Ready{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotReady {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// Its phase now.
        phase: String,
        /// Why, as its status says.
        message: Option<String>,
    },
    /// A volume names a storage pool this node does not have.
    #[error(
        "this node has no storage pool {pool:?}: start corrald with --storage-pool {pool}=DIR[:shared], \
         or create the volume in another pool"
    )]
    NoPool {
        /// The pool named.
        pool: String,
    },
    /// The object's state does not allow the operation now.
    #[error("{kind} {name:?} is {state}: {rule}")]
    WrongState {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The state it is in (a phase, or what it lacks).
        state: String,
        /// The rule it breaks, and what to do.
        rule: String,
    },
    /// Something of the object that admits one user at a time has one.
    #[error("{kind} {name:?}'s {what}: {remedy}")]
    Busy {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// What is taken and by whom, e.g. `console already has a writer (identity:ci)`.
        what: String,
        /// What to do.
        remedy: &'static str,
    },
    /// Creating the object would take its project past a limit.
    #[error(
        "project {project:?}: limit {limit}={} would be exceeded: {} in use, and this {noun} \
         asks {} more (an admin raises it with `corral project update {project} --limit {limit}=…`)",
        amount(*max, *bytes), amount(*used, *bytes), amount(*asked, *bytes)
    )]
    OverLimit {
        /// The project.
        project: String,
        /// The limit's key: `vms`, `cpus`, `memory`, `disk`, `images`.
        limit: &'static str,
        /// The limit.
        max: u64,
        /// What the project's objects use now.
        used: u64,
        /// What the new object asks for.
        asked: u64,
        /// Whether the amounts are bytes (else counts).
        bytes: bool,
        /// The new object's kind.
        noun: &'static str,
    },
    /// Another owner (a source, `apply --owner`) declared the object; only it changes it.
    #[error(
        "{what} is owned by {owner:?} (label corral.dev/owner): change it there, or have that \
         owner stop declaring it first"
    )]
    OwnedByOther {
        /// The object, as `vm/web-1`.
        what: String,
        /// Its owner.
        owner: String,
    },
    /// A prune would remove more of an owner's resources than one apply may.
    #[error(
        "owner {owner:?}: pruning {} of its {total} resources ({}) is more than the {percent} % \
         (or all) one apply may remove: check the declaration, then apply with \
         --allow-mass-prune (a source: corral source approve)",
        prune.len(), prune.join(", ")
    )]
    MassPrune {
        /// The owner.
        owner: String,
        /// What would be pruned, as `vm/web-1`.
        prune: Vec<String>,
        /// How many live resources the owner has.
        total: usize,
        /// The share allowed.
        percent: u8,
    },
    /// One resource of an apply failed; the others before it were applied.
    #[error("{what}: {source}")]
    Applying {
        /// The resource, as `vm/web-1` (or `pruning vm/web-1`).
        what: String,
        /// Why.
        #[source]
        source: Box<ServiceError>,
    },
    /// Importing an image failed (reading, fetching, checking or storing its bytes).
    #[error("importing image {name:?}: {source}")]
    Import {
        /// The image.
        name: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The image store failed.
    #[error(transparent)]
    Cas(#[from] CasError),
    /// A digest recorded in a status is not one (the store was changed outside Corral).
    #[error(transparent)]
    BadDigest(#[from] BadDigest),
    /// `qemu-img` failed or is missing.
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored object or value does not read back (the store or a file was changed outside
    /// Corral).
    #[error("stored {kind} {name:?} is corrupt: {source}")]
    Corrupt {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// Why it does not decode.
        #[source]
        source: BoxError,
    },
    /// An object could not be encoded for the store.
    #[error("cannot encode {kind} {name:?}: {source}")]
    Encode {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A background task of the service ended abnormally.
    #[error("{what} failed: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A stream of bytes the client sends ended with an error.
    #[error("{what} broke off: {source}")]
    Interrupted {
        /// What was being received, e.g. `upload`.
        what: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The hypervisor refused or failed an operation on an object's VM.
    #[error("{kind} {name:?}: {source}")]
    Hypervisor {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
        /// What the hypervisor said.
        #[source]
        source: corral_hypervisor::Error,
    },
    /// The host's state could not be read (e.g. its network, to admit a bridge network).
    #[error("reading the host: {0}")]
    Host(#[source] BoxError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[source] StoreError),
    /// The node that runs the object answered with an error, or could not be reached.
    #[error("node {node:?}: {message}")]
    Node {
        /// The node.
        node: String,
        /// The class of its answer, as the node gave it.
        code: ErrorCode,
        /// What it said, or why it could not be reached.
        message: String,
    },
    /// A client sent more bytes than the daemon accepts for one request.
    #[error(
        "{what} is larger than {} ({limit} bytes), the most this daemon accepts: {remedy}",
        corral_contract::ByteSize::new(*limit)
    )]
    TooLarge {
        /// What was too large, e.g. `upload of image "big"`.
        what: String,
        /// The most bytes allowed.
        limit: u64,
        /// What to do.
        remedy: &'static str,
    },
}

/// A count, or bytes as sizes are written (`512M`).
fn amount(n: u64, bytes: bool) -> String {
    if bytes {
        corral_contract::ByteSize::new(n).to_string()
    } else {
        n.to_string()
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ServiceError {
    /// How transports classify this error: the one mapping from reason to code.
    pub fn code(&self) -> ErrorCode {
        use ServiceError as E;
        match self {
            E::Invalid(_) | E::Immutable { .. } => ErrorCode::InvalidArgument,
            E::NotFound { .. } => ErrorCode::NotFound,
            E::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            E::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            E::Conflict { .. } | E::ChangedTooOften { .. } => ErrorCode::Aborted,
            E::Applying { source, .. } => source.code(),
            E::Deleting { .. }
            | E::OwnedByOther { .. }
            | E::MassPrune { .. }
            | E::InUse { .. }
            | E::NotReady { .. }
            | E::NoPool { .. }
            | E::WrongState { .. }
            | E::Busy { .. }
            | E::OverLimit { .. }
            | E::Import { .. }
            | E::Cas(_)
            | E::QemuImg(_)
            | E::Interrupted { .. }
            | E::Hypervisor { .. } => ErrorCode::FailedPrecondition,
            E::Store(_) | E::Host(_) => ErrorCode::Unavailable,
            E::TooLarge { .. } => ErrorCode::TooLarge,
            E::Node { code, .. } => *code,
            E::Io { .. }
            | E::Corrupt { .. }
            | E::BadDigest(_)
            | E::Encode { .. }
            | E::Task { .. } => ErrorCode::Internal,
        }
    }

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

    pub(crate) fn import(name: &str, source: impl Into<BoxError>) -> Self {
        ServiceError::Import {
            name: name.to_owned(),
            source: source.into(),
        }
    }
}

/// "VM "web" not found", with the project when it is not `default`.
fn not_found(kind: &str, key: &str) -> String {
    match key.split_once('/') {
        Some((project, name)) => format!("{kind} {name:?} not found in project {project:?}"),
        None => format!("{kind} {key:?} not found"),
    }
}
