//! Storage resources: [`Image`] (content-addressed bytes), [`Volume`] (a VM's disk or a
//! read-only weights store) and [`Snapshot`] (a point-in-time state of a VM's volumes, and
//! optionally its memory).

mod image;
mod snapshot;
mod volume;

pub use image::{
    Distribution, Image, ImageBuild, ImageFormat, ImageSource, ImageSpec, ImageStatus,
    TemplateSource, TemplateStatus, parse_checksum,
};
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
    ($ty:ident, $spec:ident, $status:ident, $kind:ident $(, $shared:ident)?) => {
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

            $(fn shared(&self) -> bool {
                self.spec.$shared
            })?
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

#[cfg(test)]
mod tests {
    use crate::{Resource, VmSpec};

    fn parse(json: &str) -> Result<Resource, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn volume_specs_say_what_is_missing_or_contradictory() {
        let err = parse(r#"{"kind":"Volume","metadata":{"name":"v"},"spec":{"kind":"weights"}}"#)
            .map(|r| r.validate())
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.image: required for a weights volume")
        );
        let v = parse(
            r#"{"kind":"Volume","metadata":{"name":"v"},"spec":{"image":"i","format":"raw"}}"#,
        )
        .unwrap();
        let err = v.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("spec.format: a clone of an image is a qcow2"),
            "{err}"
        );
        let v =
            parse(r#"{"kind":"Volume","metadata":{"name":"v"},"spec":{"size":"1000"}}"#).unwrap();
        assert!(
            v.validate()
                .unwrap_err()
                .to_string()
                .contains("multiple of 512")
        );
        let err =
            parse(r#"{"kind":"Volume","metadata":{"name":"v"},"spec":{"sise":"1G"}}"#).unwrap_err();
        assert!(err.contains("unknown field `sise`"), "{err}");
        // A pool is a name the node declared, never a path.
        for pool in ["../etc", "/srv/pool", "Fast"] {
            let json = format!(
                r#"{{"kind":"Volume","metadata":{{"name":"v"}},"spec":{{"size":"1G","pool":"{pool}"}}}}"#
            );
            assert!(parse(&json).is_err(), "{pool}");
        }
        let pb = crate::pb::Volume {
            metadata: Some(crate::pb::ObjectMeta {
                name: "v".into(),
                ..Default::default()
            }),
            spec: Some(crate::pb::VolumeSpec {
                size_bytes: Some(1 << 30),
                pool: Some("../etc".into()),
                ..Default::default()
            }),
            status: None,
        };
        let err = crate::Volume::try_from(pb).unwrap_err().to_string();
        assert!(err.starts_with("spec.pool"), "{err}");
    }

    #[test]
    fn vm_volumes_are_unique_with_short_plain_serials() {
        let spec = |volumes: &str| {
            serde_json::from_str::<VmSpec>(&format!(
                r#"{{"boot":{{"volume":{{"volume":"root"}}}},"volumes":{volumes}}}"#
            ))
            .map_err(|e| e.to_string())
        };
        let ok = spec(r#"[{"volume":"data","readonly":true,"serial":"d-1"}]"#).unwrap();
        let names: Vec<&str> = ok.volume_names().map(|n| n.as_str()).collect();
        assert_eq!(names, ["root", "data"]);
        let err = spec(r#"[{"volume":"root"}]"#).unwrap_err();
        assert!(
            err.starts_with("spec.volumes[0].volume: volume root is attached twice"),
            "{err}"
        );
        let err = spec(r#"[{"volume":"data","serial":"a,b"}]"#).unwrap_err();
        assert!(err.starts_with("spec.volumes[0].serial:"), "{err}");
        let err = spec(r#"[{"volume":"data","serial":"123456789012345678901"}]"#).unwrap_err();
        assert!(err.contains("use 1-20 letters"), "{err}");
    }
}
