//! Whether a caller may touch the host directly: the one decision transports pass down to the
//! service calls that need it (bridge networks today). The daemon computes it from the caller's
//! identity; nothing else in the service knows about identities.

/// What a caller may do to the host itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAccess {
    /// An administrator: may create objects that reconfigure the host (bridge networks).
    Admin,
    /// Everyone else: confined to objects that leave the host as it is.
    Confined,
}

impl HostAccess {
    /// Refuses `what` unless the caller is an admin; `remedy` says what to do instead.
    pub fn require_admin(
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
