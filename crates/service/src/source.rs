//! Git sources as objects: the strategy of kind `Source` and its verbs (reconcile now,
//! approve a mass prune). The source controller fetches and applies them.

use corral_contract::names::annotations::{
    FETCH_ACCESS, FETCH_ACCESS_ADMIN, PRUNE_APPROVED_AT, RECONCILE_REQUESTED_AT,
};
use corral_contract::{Object as _, Source};

use crate::resources::now;
use crate::{HostAccess, Resources, ServiceError, Strategy};

/// The strategy of kind `Source`: the spec may change; who may fetch from where is decided
/// when the controller resolves the URL (see `corral_controller::SourceReconciler`).
#[derive(Debug, Default)]
pub struct SourceKind;

impl Strategy for SourceKind {
    type Object = Source;

    fn check_update(&self, _current: &Source, _desired: &Source) -> Result<(), ServiceError> {
        Ok(())
    }
}

/// Git sources.
pub type SourceService = Resources<SourceKind>;

/// Stamps who may fetch: only the server says a source is an admin's.
fn stamp(source: &mut Source, access: HostAccess) {
    let annotations = &mut source.metadata.annotations;
    annotations.remove(FETCH_ACCESS);
    if access == HostAccess::Admin {
        annotations.insert(FETCH_ACCESS.into(), FETCH_ACCESS_ADMIN.into());
    }
}

impl Resources<SourceKind> {
    /// Creates a source for a caller with `access`: an admin's may fetch from any address,
    /// anyone else's only from public ones (under the import rules).
    pub async fn create_as(
        &self,
        mut source: Source,
        access: HostAccess,
    ) -> Result<Source, ServiceError> {
        source.validate()?;
        stamp(&mut source, access);
        self.create(source).await
    }

    /// Replaces a source's spec, labels and annotations for a caller with `access` (which the
    /// source's fetches get from then on).
    pub async fn update_as(
        &self,
        mut source: Source,
        access: HostAccess,
    ) -> Result<Source, ServiceError> {
        source.validate()?;
        stamp(&mut source, access);
        self.update(source).await
    }

    /// Whether the source's fetches may reach any address.
    pub fn access_of(source: &Source) -> HostAccess {
        match source
            .metadata
            .annotations
            .get(FETCH_ACCESS)
            .map(String::as_str)
        {
            Some(FETCH_ACCESS_ADMIN) => HostAccess::Admin,
            _ => HostAccess::Confined,
        }
    }

    /// Asks for a reconcile now (`corral source reconcile`).
    pub async fn request_reconcile(&self, name: &str) -> Result<Source, ServiceError> {
        self.modify_live(name, |s| {
            s.metadata
                .annotations
                .insert(RECONCILE_REQUESTED_AT.into(), now());
            Ok(true)
        })
        .await
    }

    /// Lets the next reconcile prune past the mass-prune guard, and asks for it now
    /// (`corral source approve`).
    pub async fn approve_prune(&self, name: &str) -> Result<Source, ServiceError> {
        self.modify_live(name, |s| {
            let at = now();
            s.metadata
                .annotations
                .insert(PRUNE_APPROVED_AT.into(), at.clone());
            s.metadata
                .annotations
                .insert(RECONCILE_REQUESTED_AT.into(), at);
            Ok(true)
        })
        .await
    }
}
