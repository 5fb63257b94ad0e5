//! Storage resources to protobuf messages and back, with the same rules as `convert.rs`: into
//! protobuf is total, out of it validates and names fields by their manifest path.

use std::path::PathBuf;

use super::convert::{decode, decode_lenient, enum_or_unspecified, enum_value, required};
use crate::pb;
use crate::{
    ByteSize, Image, ImageBuild, ImageSource, ImageSpec, ImageStatus, ObjectMeta, ResourceName,
    Snapshot, SnapshotSpec, SnapshotStatus, TemplateSource, TemplateStatus, ValidationError,
    Volume, VolumeSpec, VolumeStatus,
};

fn meta(meta: Option<pb::ObjectMeta>) -> Result<ObjectMeta, ValidationError> {
    meta.ok_or_else(|| required("metadata"))?.try_into()
}

impl From<&Image> for pb::Image {
    fn from(image: &Image) -> Self {
        let source = match &image.spec.source {
            ImageSource::Path(p) => pb::image_spec::Source::Path(p.to_string_lossy().into()),
            ImageSource::Url(u) => pb::image_spec::Source::Url(u.clone()),
            ImageSource::Upload { filename } => pb::image_spec::Source::Upload(pb::UploadSource {
                filename: filename.clone(),
            }),
            ImageSource::Build(b) => pb::image_spec::Source::Build(pb::ImageBuildSource {
                distribution: b.distribution.as_str().into(),
                packages: b.packages.clone(),
                size_bytes: b.size.map(ByteSize::as_u64),
            }),
            ImageSource::Template(t) => pb::image_spec::Source::Template(pb::TemplateSource {
                vm: t.vm.to_string(),
            }),
        };
        let st = &image.status;
        pb::Image {
            metadata: Some((&image.metadata).into()),
            spec: Some(pb::ImageSpec {
                source: Some(source),
                format: enum_or_unspecified(image.spec.format),
                shared: image.spec.shared,
                checksum: image.spec.checksum.clone(),
            }),
            status: Some(pb::ImageStatus {
                phase: enum_value(st.phase),
                digest: st.digest.clone(),
                size: st.size,
                format: enum_or_unspecified(st.format),
                virtual_size: st.virtual_size,
                verified_at: st.verified_at.clone(),
                message: st.message.clone(),
                packages: st.packages.clone(),
                template: st.template.as_ref().map(|t| pb::TemplateStatus {
                    state_digest: t.state_digest.clone(),
                    state_size: t.state_size,
                    vm: t.vm.clone(),
                    spec: Some(t.spec.as_ref().into()),
                    paused_ms: t.paused_ms,
                }),
            }),
        }
    }
}

impl TryFrom<pb::Image> for Image {
    type Error = ValidationError;

    fn try_from(image: pb::Image) -> Result<Self, Self::Error> {
        let spec = image.spec.ok_or_else(|| required("spec"))?;
        let source = match spec.source {
            Some(pb::image_spec::Source::Path(p)) => ImageSource::Path(PathBuf::from(p)),
            Some(pb::image_spec::Source::Url(u)) => ImageSource::Url(u),
            Some(pb::image_spec::Source::Upload(u)) => ImageSource::Upload {
                filename: u.filename,
            },
            Some(pb::image_spec::Source::Build(b)) => ImageSource::Build(ImageBuild {
                distribution: b
                    .distribution
                    .parse()
                    .map_err(|e| ValidationError::new("spec.source.build.distribution", e))?,
                packages: b.packages,
                size: b.size_bytes.map(ByteSize::new),
            }),
            Some(pb::image_spec::Source::Template(t)) => ImageSource::Template(TemplateSource {
                vm: t
                    .vm
                    .parse()
                    .map_err(|e| ValidationError::new("spec.source.template.vm", e))?,
            }),
            None => {
                return Err(ValidationError::new(
                    "spec.source",
                    "required: set path, url, upload, build or template",
                ));
            }
        };
        let spec = ImageSpec {
            source,
            format: decode("spec.format", spec.format)?,
            shared: spec.shared,
            checksum: spec.checksum,
        };
        spec.validate()?;
        let status = image.status.unwrap_or_default();
        Ok(Image {
            metadata: meta(image.metadata)?,
            spec,
            status: ImageStatus {
                phase: decode_lenient(status.phase).unwrap_or_default(),
                digest: status.digest,
                size: status.size,
                format: decode_lenient(status.format),
                virtual_size: status.virtual_size,
                verified_at: status.verified_at,
                message: status.message,
                packages: status.packages,
                // Status is output: a template whose spec this server cannot read is shown
                // without it rather than refused.
                template: status.template.and_then(|t| {
                    Some(TemplateStatus {
                        spec: Box::new(t.spec?.try_into().ok()?),
                        state_digest: t.state_digest,
                        state_size: t.state_size,
                        vm: t.vm,
                        paused_ms: t.paused_ms,
                    })
                }),
            },
        })
    }
}

impl From<&Volume> for pb::Volume {
    fn from(volume: &Volume) -> Self {
        let st = &volume.status;
        pb::Volume {
            metadata: Some((&volume.metadata).into()),
            spec: Some(pb::VolumeSpec {
                kind: enum_value(volume.spec.kind),
                format: enum_or_unspecified(volume.spec.format),
                size_bytes: volume.spec.size.map(ByteSize::as_u64),
                image: volume.spec.image.as_ref().map(ToString::to_string),
                pool: volume.spec.pool.as_ref().map(ToString::to_string),
            }),
            status: Some(pb::VolumeStatus {
                phase: enum_value(st.phase),
                path: st.path.clone(),
                format: enum_or_unspecified(st.format),
                size: st.size,
                image_digest: st.image_digest.clone(),
                digest: st.digest.clone(),
                observed_generation: st.observed_generation,
                message: st.message.clone(),
                node: st.node.clone(),
                shared: st.shared,
            }),
        }
    }
}

impl TryFrom<pb::Volume> for Volume {
    type Error = ValidationError;

    fn try_from(volume: pb::Volume) -> Result<Self, Self::Error> {
        let spec = volume.spec.ok_or_else(|| required("spec"))?;
        let spec = VolumeSpec {
            kind: decode("spec.kind", spec.kind)?.unwrap_or_default(),
            format: decode("spec.format", spec.format)?,
            size: spec.size_bytes.map(ByteSize::new),
            image: spec
                .image
                .map(|i| ResourceName::new(i).map_err(|e| ValidationError::new("spec.image", e)))
                .transpose()?,
            pool: spec
                .pool
                .filter(|p| !p.is_empty())
                .map(|p| ResourceName::new(p).map_err(|e| ValidationError::new("spec.pool", e)))
                .transpose()?,
        };
        spec.validate()?;
        let st = volume.status.unwrap_or_default();
        Ok(Volume {
            metadata: meta(volume.metadata)?,
            spec,
            status: VolumeStatus {
                phase: decode_lenient(st.phase).unwrap_or_default(),
                path: st.path,
                format: decode_lenient(st.format),
                size: st.size,
                image_digest: st.image_digest,
                digest: st.digest,
                observed_generation: st.observed_generation,
                message: st.message,
                node: st.node,
                shared: st.shared,
            },
        })
    }
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(snap: &Snapshot) -> Self {
        let st = &snap.status;
        pb::Snapshot {
            metadata: Some((&snap.metadata).into()),
            spec: Some(pb::SnapshotSpec {
                vm: snap.spec.vm.to_string(),
                memory: snap.spec.memory,
            }),
            status: Some(pb::SnapshotStatus {
                phase: enum_value(st.phase),
                tag: st.tag.clone(),
                volumes: st.volumes.clone(),
                taken_at: st.taken_at.clone(),
                restored_for: st.restored_for.clone(),
                message: st.message.clone(),
            }),
        }
    }
}

impl TryFrom<pb::Snapshot> for Snapshot {
    type Error = ValidationError;

    fn try_from(snap: pb::Snapshot) -> Result<Self, Self::Error> {
        let spec = snap.spec.ok_or_else(|| required("spec"))?;
        let spec = SnapshotSpec {
            vm: ResourceName::new(spec.vm).map_err(|e| ValidationError::new("spec.vm", e))?,
            memory: spec.memory,
        };
        let st = snap.status.unwrap_or_default();
        Ok(Snapshot {
            metadata: meta(snap.metadata)?,
            spec,
            status: SnapshotStatus {
                phase: decode_lenient(st.phase).unwrap_or_default(),
                tag: st.tag,
                volumes: st.volumes,
                taken_at: st.taken_at,
                restored_for: st.restored_for,
                message: st.message,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_resources_round_trip_and_validate() {
        let json = r#"{"kind": "Volume", "metadata": {"name": "root"},
                       "spec": {"image": "debian", "size": "2G"}}"#;
        let vol = match serde_json::from_str::<crate::Resource>(json).unwrap() {
            crate::Resource::Volume(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(Volume::try_from(pb::Volume::from(&vol)).unwrap(), vol);
        let mut bad = pb::Volume::from(&vol);
        bad.spec.as_mut().unwrap().image = None;
        bad.spec.as_mut().unwrap().size_bytes = None;
        let err = Volume::try_from(bad).unwrap_err().to_string();
        assert!(err.starts_with("spec.size: required"), "{err}");

        let image = Image::new(
            "debian".parse().unwrap(),
            ImageSpec {
                source: ImageSource::Url("https://example.com/d.qcow2".into()),
                format: None,
                shared: true,
                checksum: Some(format!("sha256:{}", "ab".repeat(32))),
            },
        );
        assert_eq!(Image::try_from(pb::Image::from(&image)).unwrap(), image);
        let mut bad = pb::Image::from(&image);
        bad.spec.as_mut().unwrap().source = Some(pb::image_spec::Source::Url("ftp://x".into()));
        let err = Image::try_from(bad).unwrap_err().to_string();
        assert!(err.starts_with("spec.source.url:"), "{err}");

        let snap = Snapshot::new(
            "s1".parse().unwrap(),
            SnapshotSpec {
                vm: "web".parse().unwrap(),
                memory: true,
            },
        );
        assert_eq!(Snapshot::try_from(pb::Snapshot::from(&snap)).unwrap(), snap);
    }
}
