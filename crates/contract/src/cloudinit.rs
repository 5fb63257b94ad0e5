//! `spec.cloud_init`: what a VM's NoCloud seed carries.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The documents of a cloud-init NoCloud seed. Corral writes them, as given, into an ISO 9660
/// image labelled `cidata` that the guest sees as a read-only disk. A `meta_data` left out
/// becomes `instance-id: <uid>` and `local-hostname: <name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    /// The `user-data` document: `#cloud-config` YAML, or a script starting with `#!`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 65536,
        pattern = "^(#cloud-config[ \t\r]*(\n[^\\x00]*)?|#![^\\x00]*|#include[ \t\r]*(\n[^\\x00]*)?|#cloud-boothook[^\\x00]*)$"
    )]
    pub user_data: Option<String>,
    /// The `meta-data` document (YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536, pattern = "^[^\\x00]*$")]
    pub meta_data: Option<String>,
    /// The `network-config` document (netplan v2 or v1 YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536, pattern = "^[^\\x00]*$")]
    pub network_config: Option<String>,
}

impl CloudInit {
    /// The largest document, in characters.
    pub const MAX_DOCUMENT: usize = 64 << 10;

    /// `#cloud-config` user-data that authorises `keys` for root and, when given, creates `user`
    /// with the same keys and password-less sudo; `hostname` sets the guest's name.
    ///
    /// Values are written as JSON strings, which YAML reads as double-quoted scalars, so no key
    /// comment or name can break out of its line.
    ///
    /// ```
    /// use corral_contract::CloudInit;
    ///
    /// let ci = CloudInit::ssh_user_data(Some("alice"), &["ssh-ed25519 AAAA me".into()], Some("web-1"));
    /// let text = ci.user_data.unwrap();
    /// assert!(text.starts_with("#cloud-config\n"));
    /// assert!(text.contains("- name: \"alice\"\n"));
    /// ```
    pub fn ssh_user_data(user: Option<&str>, keys: &[String], hostname: Option<&str>) -> Self {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut doc = String::from("#cloud-config\n");
        if let Some(hostname) = hostname {
            doc.push_str(&format!("hostname: {}\n", q(hostname)));
        }
        if !keys.is_empty() {
            doc.push_str("ssh_authorized_keys:\n");
            for key in keys {
                doc.push_str(&format!("- {}\n", q(key.trim())));
            }
        }
        if let Some(user) = user {
            doc.push_str("users:\n- default\n");
            doc.push_str(&format!("- name: {}\n", q(user)));
            doc.push_str("  shell: \"/bin/sh\"\n");
            doc.push_str("  sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n");
            if !keys.is_empty() {
                doc.push_str("  ssh_authorized_keys:\n");
                for key in keys {
                    doc.push_str(&format!("  - {}\n", q(key.trim())));
                }
            }
        }
        CloudInit {
            user_data: Some(doc),
            meta_data: None,
            network_config: None,
        }
    }

    /// Checks sizes and that user-data is something cloud-init reads.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let docs = [
            ("spec.cloud_init.user_data", &self.user_data),
            ("spec.cloud_init.meta_data", &self.meta_data),
            ("spec.cloud_init.network_config", &self.network_config),
        ];
        for (field, doc) in docs {
            let Some(doc) = doc else { continue };
            // Counted in characters, as JSON Schema's maxLength counts them.
            let chars = doc.chars().count();
            if chars > Self::MAX_DOCUMENT {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "is {chars} characters long: the limit is {}",
                        Self::MAX_DOCUMENT
                    ),
                ));
            }
            if doc.contains('\0') {
                return Err(ValidationError::new(field, "must not contain a NUL byte"));
            }
        }
        if let Some(user_data) = &self.user_data {
            let first = user_data.lines().next().unwrap_or("").trim_end();
            let known = first == "#cloud-config"
                || first.starts_with("#!")
                || first == "#include"
                || first.starts_with("#cloud-boothook");
            if !known {
                return Err(ValidationError::new(
                    "spec.cloud_init.user_data",
                    "must start with a line \"#cloud-config\" (YAML) or \"#!\" (a script)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_user_data_quotes_values() {
        let ci =
            CloudInit::ssh_user_data(Some("bob"), &["ssh-ed25519 AAAA x\"\ny: 1".into()], None);
        let doc = ci.user_data.as_deref().unwrap();
        assert!(
            doc.contains("- \"ssh-ed25519 AAAA x\\\"\\ny: 1\"\n"),
            "{doc}"
        );
        ci.validate().unwrap();
    }

    #[test]
    fn user_data_needs_a_known_header() {
        let ci = CloudInit {
            user_data: Some("hostname: x\n".into()),
            ..CloudInit::default()
        };
        let err = ci.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("spec.cloud_init.user_data: must start"),
            "{err}"
        );
    }
}
