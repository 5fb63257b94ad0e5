//! A Git source: where declared resources live ([`SourceSpec`]) and what the last reconcile
//! of them found ([`SourceStatus`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::choice::choice;
use crate::{Kind, Object, ObjectMeta, ResourceName, ValidationError};

/// A Git repository whose manifests corrald applies as the source's owner:
/// `{"kind": "Source", "metadata": {"name": "lab"}, "spec": {"git": "git://…", "ref": "main"}}`.
// Deserialize and the schema (with `kind`): `strict_object!` in resource.rs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Name, labels and server-managed fields.
    pub metadata: ObjectMeta,
    /// What the user wants.
    pub spec: SourceSpec,
    /// What the last reconcile found.
    #[serde(default)]
    pub status: SourceStatus,
}

impl Source {
    /// A source named `name` with `spec`, and an empty status.
    pub fn new(name: ResourceName, spec: SourceSpec) -> Self {
        Source {
            metadata: ObjectMeta::new(name),
            spec,
            status: SourceStatus::default(),
        }
    }
}

impl Object for Source {
    const KIND: Kind = Kind::Source;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate()?;
        if self.spec.depends_on.contains(&self.metadata.name) {
            return Err(ValidationError::new(
                "spec.depends_on",
                format!("{:?} cannot wait on itself", self.metadata.name.as_str()),
            ));
        }
        self.spec.validate()
    }
}

/// How often a source is fetched when nothing asks sooner.
pub const DEFAULT_SOURCE_INTERVAL_SECONDS: u64 = 30;

choice! {
    /// What a reconcile does with a resource changed out of band (not by a new commit).
    #[derive(Default)]
    pub enum DriftPolicy ("drift policy") {
        /// Put it back as declared, and list it in `status.drift`.
        #[default]
        Correct => "correct",
        /// Only list it in `status.drift`.
        Warn => "warn",
        /// Neither put back nor listed: only new commits are applied.
        Ignore => "ignore",
    }
}

/// Where a source's manifests are and how it applies them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The repository: `git://HOST[:PORT]/PATH` (`http(s)://` later).
    pub git: String,
    /// A branch, a tag, or a full commit id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The directory of the manifests in the repository (`""`: its root); `.yaml`, `.yml` and
    /// `.json` files below it, recursively.
    #[serde(default)]
    pub path: String,
    /// Delete resources of this source that a commit no longer declares.
    #[serde(default)]
    pub prune: bool,
    /// What to do with resources changed out of band.
    #[serde(default)]
    pub drift: DriftPolicy,
    /// Seconds between fetches (default 30, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// Sources that must have applied a commit without errors before this one applies (its
    /// status says which it waits for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ResourceName>,
    /// SSH public keys (`ssh-ed25519 AAAA… comment`, as in `authorized_keys`) allowed to sign
    /// commits: when set, a commit applies only if it carries an SSH signature (`git commit
    /// -S` with `gpg.format=ssh`) by one of them, in git's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = crate::schema::verify_keys)]
    pub verify_keys: Vec<String>,
}

/// The key types a source's `verify_keys` may hold.
pub const VERIFY_KEY_TYPES: [&str; 2] = ["ssh-ed25519", "ecdsa-sha2-nistp256"];

impl SourceSpec {
    /// Checks the URL's form (whether corrald may fetch from it is the service's to say),
    /// the ref and the path.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let Some(rest) = self.git.strip_prefix("git://") else {
            return Err(ValidationError::new(
                "spec.git",
                format!("{:?}: use a git:// URL", self.git),
            ));
        };
        if rest.split('/').next().is_none_or(str::is_empty)
            || self.git.contains(char::is_whitespace)
        {
            return Err(ValidationError::new(
                "spec.git",
                format!("{:?}: expected git://HOST[:PORT]/PATH", self.git),
            ));
        }
        let bad_ref = self.reference.is_empty()
            || self.reference.starts_with('-')
            || self.reference.contains("..")
            || self
                .reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if bad_ref {
            return Err(ValidationError::new(
                "spec.ref",
                format!("{:?} is not a branch, tag or commit id", self.reference),
            ));
        }
        if self.interval_seconds == Some(0) {
            return Err(ValidationError::new(
                "spec.interval_seconds",
                "must be at least 1",
            ));
        }
        if self.verify_keys.len() > 32 {
            return Err(ValidationError::new("spec.verify_keys", "at most 32 keys"));
        }
        for (i, key) in self.verify_keys.iter().enumerate() {
            let mut words = key.split([' ', '\t']).filter(|w| !w.is_empty());
            let (algorithm, data) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            // The key blob starts with its length (a big-endian u32 < 2^24): `AAAA` in base64.
            let base64 = data.len() >= 16
                && data.starts_with("AAAA")
                && data
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            if !VERIFY_KEY_TYPES.contains(&algorithm)
                || !key.starts_with(algorithm)
                || !base64
                || key.chars().count() > 1024
                || key.contains(['\n', '\r'])
            {
                return Err(ValidationError::new(
                    format!("spec.verify_keys[{i}]"),
                    format!(
                        "not an SSH public key line: expected `{} AAAA… [comment]` (a .pub \
                         file's line)",
                        VERIFY_KEY_TYPES.join("` or `")
                    ),
                ));
            }
        }
        if self.path.split('/').any(|p| p == "..") || self.path.starts_with('/') {
            return Err(ValidationError::new(
                "spec.path",
                format!(
                    "{:?}: a relative directory inside the repository",
                    self.path
                ),
            ));
        }
        Ok(())
    }
}

/// What the last reconcile of a source found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// The commit whose manifests are applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// How many resources of each kind that commit declares.
    #[serde(default)]
    pub applied: BTreeMap<String, u32>,
    /// Resources found changed out of band on the last reconcile, with the fields
    /// (`vm/web-1: spec.power`): put back under policy `correct`.
    #[serde(default)]
    pub drift: Vec<String>,
    /// Why the last reconcile changed nothing: per file with its line
    /// (`vms/web.yaml:7: document 2 (vm/web-1): spec.cpu: unknown field`), or the fetch's or
    /// apply's error.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The `metadata.generation` this status reflects.
    #[serde(default)]
    pub observed_generation: u64,
    /// Why the source did not apply this time: the sources it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The `corral.dev/prune-approved-at` value the last reconcile used (an approval counts
    /// once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_used: Option<String>,
    /// When the last reconcile ended, in RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(keys: &[&str]) -> SourceSpec {
        SourceSpec {
            git: "git://git.example.org/infra.git".into(),
            reference: "main".into(),
            path: String::new(),
            prune: false,
            drift: DriftPolicy::Correct,
            interval_seconds: None,
            depends_on: Vec::new(),
            verify_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn verify_keys_are_public_key_lines_of_the_types_checked() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1 release@ci";
        assert!(spec(&[good]).validate().is_ok());
        for bad in [
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
            "ssh-ed25519",
            "ssh-ed25519 not base64!",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
        ] {
            let err = spec(&[good, bad]).validate().unwrap_err();
            assert_eq!(err.field, "spec.verify_keys[1]", "{bad}");
            assert!(err.message.contains("ssh-ed25519"), "{err}");
        }
    }
}
