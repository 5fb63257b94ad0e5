//! Projects own VMs, images, volumes, snapshots and networks; a [`Project`] carries the
//! limits its objects must stay within, checked when an object is admitted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, Kind, Object, ObjectMeta, ResourceName, ValidationError};

/// A project and its limits: `{"kind": "Project", "metadata": {"name": "web"}, "spec":
/// {"limits": {"vms": 20, "memory": "32G"}}}`.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// The project's name.
    pub metadata: ObjectMeta,
    /// Its limits.
    pub spec: ProjectSpec,
    /// Nothing yet.
    #[serde(default)]
    pub status: ProjectStatus,
}

impl Project {
    /// A project named `name` with `spec`.
    pub fn new(name: ResourceName, spec: ProjectSpec) -> Self {
        Project {
            metadata: ObjectMeta::new(name),
            spec,
            status: ProjectStatus::default(),
        }
    }
}

impl Object for Project {
    const KIND: Kind = Kind::Project;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()
    }
}

/// What a project is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    /// The most its objects may use together; a limit left out is no limit.
    #[serde(default)]
    pub limits: ProjectLimits,
}

/// The most a project's objects may use together. Each is checked when an object is
/// created: a VM counts one `vms`, its `cpus` and `memory`; a volume its size in `disk`; an
/// image is refused once the project's images hold `images` bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimits {
    /// VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<u64>,
    /// vCPUs of all VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u64>,
    /// Guest memory of all VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub memory: Option<ByteSize>,
    /// Sizes of all volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub disk: Option<ByteSize>,
    /// Bytes of all images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub images: Option<ByteSize>,
}

/// What is true of a project now: nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectStatus {}

const LIMIT_KEYS: &str = "vms, cpus, memory, disk and images";

/// `vms=20,cpus=16,memory=32G,disk=200G,images=50G` (any of them, in any order).
impl FromStr for ProjectLimits {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut limits = ProjectLimits::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                ValidationError::new(
                    "spec.limits",
                    format!("{item:?} is not KEY=VALUE, e.g. vms=20 or memory=32G"),
                )
            })?;
            let field = format!("spec.limits.{key}");
            let count = || {
                value
                    .parse::<u64>()
                    .map_err(|_| ValidationError::new(&field, format!("{value:?} is not a count")))
            };
            let size = || {
                value
                    .parse::<ByteSize>()
                    .map_err(|e| ValidationError::new(&field, e))
            };
            match key {
                "vms" => limits.vms = Some(count()?),
                "cpus" => limits.cpus = Some(count()?),
                "memory" => limits.memory = Some(size()?),
                "disk" => limits.disk = Some(size()?),
                "images" => limits.images = Some(size()?),
                other => {
                    return Err(ValidationError::new(
                        "spec.limits",
                        format!("unknown limit {other:?}: the limits are {LIMIT_KEYS}"),
                    ));
                }
            }
        }
        Ok(limits)
    }
}

/// The form [`FromStr`] reads: `vms=20,memory=32G`.
impl fmt::Display for ProjectLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.vms {
            parts.push(format!("vms={n}"));
        }
        if let Some(n) = self.cpus {
            parts.push(format!("cpus={n}"));
        }
        for (key, size) in [
            ("memory", self.memory),
            ("disk", self.disk),
            ("images", self.images),
        ] {
            if let Some(size) = size {
                parts.push(format!("{key}={size}"));
            }
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_from_the_command_line_form_and_name_bad_keys() {
        let limits: ProjectLimits = "vms=20,cpus=16,memory=32G,disk=200G,images=50G"
            .parse()
            .unwrap();
        assert_eq!(limits.vms, Some(20));
        assert_eq!(limits.memory, Some(ByteSize::from_gib(32)));
        assert_eq!(
            limits.to_string(),
            "vms=20,cpus=16,memory=32G,disk=200G,images=50G"
        );
        let err = "gpus=1".parse::<ProjectLimits>().unwrap_err();
        assert!(err.to_string().contains("unknown limit \"gpus\""), "{err}");
        let err = "memory=lots".parse::<ProjectLimits>().unwrap_err();
        assert_eq!(err.field, "spec.limits.memory");
        let json = r#"{"kind": "Project", "metadata": {"name": "web"},
            "spec": {"limits": {"vms": 2, "memory": "1G"}}}"#;
        let crate::Resource::Project(p) = serde_json::from_str(json).unwrap() else {
            panic!("not a project")
        };
        assert_eq!(p.spec.limits.vms, Some(2));
        assert!(serde_json::from_str::<crate::Resource>(&json.replace("vms", "vm")).is_err());
    }
}
