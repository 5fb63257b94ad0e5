//! Identities: who may call the API (admin only).

pub mod grpc;
pub mod rest;

use corral_contract::Identity;
use corral_service::ServiceError;

use crate::state::Daemon;

/// Deletes identity `name` and drops it from the registry at once, which ends its open
/// streams: from the answer on, its credential is refused.
pub(crate) async fn revoke(d: &Daemon, name: &str) -> Result<Identity, ServiceError> {
    let removed = d.identities.delete(name, None).await?;
    d.registry.revoke(name, removed.metadata.resource_version);
    Ok(removed)
}
