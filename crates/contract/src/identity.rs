//! Who may call the API: an [`Identity`] names one credential (a bearer token stored only as
//! its BLAKE3 hash, a TLS client certificate's SHA-256 fingerprint, or a local user id) and
//! what its holder may do: a [`Role`], the separate `memory` grant, and the projects it works
//! in.

use serde::{Deserialize, Serialize};

use crate::choice::choice;
use crate::{Kind, Object, ObjectMeta, ResourceName, ValidationError};

choice! {
    /// What an identity may do.
    pub enum Role ("role") {
        /// Everything: host paths, bridge networks, projects, identities, the audit log.
        Admin => "admin",
        /// Create, change and delete objects in its projects.
        Operator => "operator",
        /// Read objects in its projects.
        Viewer => "viewer",
    }
}

/// A caller of the API and what it may do: `{"kind": "Identity", "metadata": {"name": "ci"},
/// "spec": {"role": "operator", "credential": {"type": "token"}}}`.
// Deserialize and the schema (with `kind`, as on the wire): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The identity's name, as audit lines and `corral auth list` show it.
    pub metadata: ObjectMeta,
    /// Its credential and rights.
    pub spec: IdentitySpec,
    /// Nothing yet: an identity is in force while it exists; revoking deletes it.
    #[serde(default)]
    pub status: IdentityStatus,
}

impl Identity {
    /// An identity named `name` with `spec`.
    pub fn new(name: ResourceName, spec: IdentitySpec) -> Self {
        Identity {
            metadata: ObjectMeta::new(name),
            spec,
            status: IdentityStatus::default(),
        }
    }
}

impl Object for Identity {
    const KIND: Kind = Kind::Identity;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()?;
        self.spec.validate()
    }
}

/// An identity's credential and rights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {
    /// What it may do.
    pub role: Role,
    /// Whether it may read guest memory (a grant of its own; admins have it anyway).
    #[serde(default)]
    pub memory: bool,
    /// The projects it works in; empty means `default`. Admins work in every project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<ResourceName>,
    /// How its holder proves who it is.
    pub credential: Credential,
}

/// The project of objects that name none, and of identities that name none.
pub const DEFAULT_PROJECT: &str = "default";

impl IdentitySpec {
    /// Checks the credential's form and that no project is listed twice.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.projects.iter().find(|p| !seen.insert(p.as_str())) {
            return Err(ValidationError::new(
                "spec.projects",
                format!("{dup:?} is listed twice"),
            ));
        }
        self.credential.validate()
    }

    /// The projects it works in (`default` when it names none).
    pub fn projects(&self) -> Vec<String> {
        if self.projects.is_empty() {
            return vec![DEFAULT_PROJECT.to_owned()];
        }
        self.projects.iter().map(|p| p.to_string()).collect()
    }
}

/// How a caller proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Credential {
    /// A bearer token on the TCP listener, kept only as its BLAKE3 hash.
    Token {
        /// 64 lowercase hex digits: the hash of the token. Left out on create, the server
        /// makes a token and returns it once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blake3: Option<String>,
    },
    /// A TLS client certificate (mTLS on the TCP listener).
    Cert {
        /// 64 lowercase hex digits: the SHA-256 of the certificate's DER bytes.
        sha256: String,
    },
    /// A local user on the unix socket (from the peer's credentials).
    Unix {
        /// The user id.
        uid: u32,
    },
}

impl Credential {
    /// Checks that the hashes are 64 lowercase hex digits.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let (field, hex) = match self {
            Credential::Token { blake3: Some(h) } => ("spec.credential.blake3", h),
            Credential::Cert { sha256 } => ("spec.credential.sha256", sha256),
            Credential::Token { blake3: None } | Credential::Unix { .. } => return Ok(()),
        };
        if is_hex_digest(hex) {
            return Ok(());
        }
        Err(ValidationError::new(
            field,
            format!("{hex:?} is not a digest: use 64 lowercase hex digits"),
        ))
    }

    /// `token`, `cert` or `unix`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Credential::Token { .. } => "token",
            Credential::Cert { .. } => "cert",
            Credential::Unix { .. } => "unix",
        }
    }
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What is true of an identity now: nothing yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityStatus {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resource;

    #[test]
    fn manifests_parse_strictly_and_name_bad_fields() {
        let json = r#"{"kind": "Identity", "metadata": {"name": "ci"},
            "spec": {"role": "operator", "projects": ["web"], "credential": {"type": "token"}}}"#;
        let Resource::Identity(id) = serde_json::from_str::<Resource>(json).unwrap() else {
            panic!("not an identity")
        };
        assert_eq!(id.spec.role, Role::Operator);
        assert_eq!(id.spec.projects(), ["web"]);
        assert!(!id.spec.memory);
        let bad = json.replace("operator", "root");
        let err = serde_json::from_str::<Resource>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"root\" is not a valid role"), "{err}");
        let bad = json.replace(r#""type": "token""#, r#""type": "cert", "sha256": "AB""#);
        let id: Identity = match serde_json::from_str::<Resource>(&bad).unwrap() {
            Resource::Identity(id) => id,
            _ => unreachable!(),
        };
        let err = id.validate().unwrap_err();
        assert_eq!(err.field, "spec.credential.sha256");
        let bad = json.replace(r#""type": "token""#, r#""type": "token", "plain": "x""#);
        assert!(serde_json::from_str::<Resource>(&bad).is_err());
    }
}
