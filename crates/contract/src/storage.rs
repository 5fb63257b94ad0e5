//! Storage resources: [`Image`] (content-addressed bytes), [`Volume`] (a VM's disk or a
//! read-only weights store) and [`Snapshot`] (a point-in-time state of a VM's volumes, and
//! optionally its memory).

mod image;
mod snapshot;
mod volume;

pub use image::{Image, ImageFormat, ImageSource, ImageSpec, ImageStatus};
pub use snapshot::{Snapshot, SnapshotSpec, SnapshotStatus};
pub use volume::{Volume, VolumeKind, VolumeSpec, VolumeStatus};

use crate::choice::choice;

choice! {
    /// Where a storage resource is in its life.
    #[derive(Default)]
    pub enum StoragePhase ("phase") {
        /// Accepted; the controller has not made it yet (the default).
        #[default]
        Pending => "Pending",
        /// It exists and can be used.
        Ready => "Ready",
        /// It could not be made, or its bytes no longer match their digest; see `status.message`.
        Failed => "Failed",
    }
}

/// Implements [`crate::Object`] and a constructor for a storage resource.
macro_rules! storage_object {
    ($ty:ident, $spec:ident, $status:ident, $kind:ident) => {
        impl $ty {
            /// A resource named `name` with `spec` and an empty status.
            pub fn new(name: $crate::ResourceName, spec: $spec) -> Self {
                $ty {
                    metadata: $crate::ObjectMeta::new(name),
                    spec,
                    status: $status::default(),
                }
            }
        }

        impl $crate::Object for $ty {
            const KIND: $crate::Kind = $crate::Kind::$kind;

            fn metadata(&self) -> &$crate::ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut $crate::ObjectMeta {
                &mut self.metadata
            }

            fn validate(&self) -> Result<(), $crate::ValidationError> {
                self.metadata.validate()?;
                self.spec.validate()
            }
        }
    };
}
pub(crate) use storage_object;

/// Whether a digest string is `blake3:` and 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("blake3:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
