//! Projects to protobuf and back (see `convert.rs` for the rules).

use super::convert::{non_empty, required};
use crate::pb;
use crate::{ByteSize, Project, ProjectLimits, ProjectSpec, ProjectStatus, ValidationError};

impl From<&Project> for pb::Project {
    fn from(p: &Project) -> Self {
        let l = &p.spec.limits;
        let size = |s: Option<ByteSize>| s.map(|s| s.to_string()).unwrap_or_default();
        pb::Project {
            metadata: Some((&p.metadata).into()),
            spec: Some(pb::ProjectSpec {
                limits: Some(pb::ProjectLimits {
                    vms: l.vms,
                    cpus: l.cpus,
                    memory: size(l.memory),
                    disk: size(l.disk),
                    images: size(l.images),
                }),
            }),
        }
    }
}

impl TryFrom<pb::Project> for Project {
    type Error = ValidationError;

    fn try_from(p: pb::Project) -> Result<Self, Self::Error> {
        let l = p.spec.and_then(|s| s.limits).unwrap_or_default();
        let size = |field: &str, v: String| {
            non_empty(v)
                .map(|v| {
                    v.parse::<ByteSize>()
                        .map_err(|e| ValidationError::new(format!("spec.limits.{field}"), e))
                })
                .transpose()
        };
        Ok(Project {
            metadata: p.metadata.ok_or_else(|| required("metadata"))?.try_into()?,
            spec: ProjectSpec {
                limits: ProjectLimits {
                    vms: l.vms,
                    cpus: l.cpus,
                    memory: size("memory", l.memory)?,
                    disk: size("disk", l.disk)?,
                    images: size("images", l.images)?,
                },
            },
            status: ProjectStatus::default(),
        })
    }
}
