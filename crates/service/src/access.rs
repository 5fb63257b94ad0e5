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

/// Refuses `spec.shared` unless the caller is an admin and the object is in project
/// `default`, the one pool every project may draw from.
pub fn check_share(
    meta: &corral_contract::ObjectMeta,
    shared: bool,
    access: HostAccess,
) -> Result<(), crate::ServiceError> {
    if !shared {
        return Ok(());
    }
    access.require_admin(
        "spec.shared lets every project use the object and is for admins only",
        "leave spec.shared out, or ask an admin to share it",
    )?;
    if meta.project() != corral_contract::DEFAULT_PROJECT {
        return Err(corral_contract::ValidationError::new(
            "spec.shared",
            format!(
                "only objects of project {:?} can be shared; this one is in {:?}",
                corral_contract::DEFAULT_PROJECT,
                meta.project()
            ),
        )
        .into());
    }
    Ok(())
}
