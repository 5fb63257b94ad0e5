use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Where the scheduler may place a VM (`node_selector`) and which VMs it keeps apart
/// (`anti_affinity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Only nodes carrying every one of these labels (`{"zone": "a"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// A group name: the scheduler prefers nodes holding no other VM of the same group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<String>,
}

impl Placement {
    /// Whether nothing is asked (the field is then left out of output).
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.anti_affinity.is_none()
    }

    /// Selector keys and values follow label rules; a group is a label value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::meta::check_labels("spec.placement.node_selector", &self.node_selector)?;
        match &self.anti_affinity {
            Some(group) if group.is_empty() || !crate::meta::is_label_name(group) => {
                Err(ValidationError::new(
                    "spec.placement.anti_affinity",
                    format!(
                        "{group:?} is not a group name: up to 63 letters, digits, '-', '_' or \
                         '.', starting and ending with a letter or digit"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Resource;

    #[test]
    fn placement_is_read_strictly_and_named_in_errors() {
        let json = r#"{"kind": "Vm", "metadata": {"name": "a"}, "spec": {"boot": {"kernel":
            {"kernel": "/k"}}, "placement": {"node_selector": {"zone": "a"},
            "anti_affinity": "web"}}}"#;
        let vm = serde_json::from_str::<Resource>(json)
            .unwrap()
            .into_vm()
            .unwrap();
        assert_eq!(vm.spec.placement.node_selector["zone"], "a");
        assert_eq!(vm.spec.placement.anti_affinity.as_deref(), Some("web"));
        let err = serde_json::from_str::<Resource>(&json.replace("\"web\"", "\"web tier\""))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("spec.placement.anti_affinity:"), "{err}");
        let err = serde_json::from_str::<Resource>(&json.replace("\"zone\"", "\"zone!\""))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("spec.placement.node_selector:"), "{err}");
    }
}
