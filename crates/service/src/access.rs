//! Whether a caller may touch the host directly: the one decision transports pass down to the
//! service calls that need it (host files, bridge networks). The daemon computes it from the
//! caller's identity; nothing else in the service knows about identities. The type lives with
//! the host-file rules in `corral_storage`; this adds the service's refusal.

pub use corral_storage::HostAccess;

/// Refusing what only an admin may do, as a service error.
pub trait RequireAdmin {
    /// Refuses `what` unless the caller is an admin; `remedy` says what to do instead.
    fn require_admin(
        self,
        what: impl Into<String>,
        remedy: &'static str,
    ) -> Result<(), crate::ServiceError>;
}

impl RequireAdmin for HostAccess {
    fn require_admin(
        self,
        what: impl Into<String>,
        remedy: &'static str,
    ) -> Result<(), crate::ServiceError> {
        match self {
            HostAccess::Admin => Ok(()),
            HostAccess::Confined => Err(crate::ServiceError::PermissionDenied {
                what: what.into(),
                remedy,
            }),
        }
    }
}
