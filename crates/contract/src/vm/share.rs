use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A host directory the guest mounts (virtiofs): `mount -t virtiofs TAG /mnt`.
///
/// The guest's root is the directory's owner: files the guest makes are the owner's on the
/// host, and the owner's files are root's in the guest. A host path is admin-only, or below
/// corrald's `--host-path-allow` directories for everyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The host directory (absolute).
    #[schema(schema_with = crate::schema::absolute_path)]
    pub host_path: PathBuf,
    /// The name the guest mounts it by: 1-36 letters, digits, '-', '_' or '.'.
    #[schema(min_length = 1, max_length = 36, pattern = "^[-A-Za-z0-9_.]{1,36}$")]
    pub tag: String,
    /// The guest may read but not change it (default false).
    #[serde(default)]
    pub read_only: bool,
}

impl Share {
    /// The longest tag virtiofs carries (`struct virtio_fs_config`'s 36 bytes).
    pub const MAX_TAG: usize = 36;
    /// The most shares a VM has.
    pub const MAX_SHARES: usize = 8;

    /// `host_path` shared read-write as `tag`.
    pub fn new(host_path: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        Share {
            host_path: host_path.into(),
            tag: tag.into(),
            read_only: false,
        }
    }
}

/// Paths absolute, tags well-formed and unique, at most [`Share::MAX_SHARES`].
pub(crate) fn validate_shares(shares: &[Share]) -> Result<(), ValidationError> {
    if shares.len() > Share::MAX_SHARES {
        return Err(ValidationError::new(
            "spec.shares",
            format!(
                "{} shares: a VM has at most {}",
                shares.len(),
                Share::MAX_SHARES
            ),
        ));
    }
    let mut tags = std::collections::BTreeSet::new();
    for (i, share) in shares.iter().enumerate() {
        super::spec::check_path(&format!("spec.shares[{i}].host_path"), &share.host_path)?;
        let tag = &share.tag;
        let ok = !tag.is_empty()
            && tag.len() <= Share::MAX_TAG
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(ValidationError::new(
                format!("spec.shares[{i}].tag"),
                format!(
                    "{tag:?}: use 1-{} letters, digits, '-', '_' or '.'",
                    Share::MAX_TAG
                ),
            ));
        }
        if !tags.insert(tag) {
            return Err(ValidationError::new(
                format!("spec.shares[{i}].tag"),
                format!("{tag:?} is used by another share: give each its own tag"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Resource;

    fn vm(shares: &str) -> Result<crate::Vm, String> {
        let json = format!(
            r#"{{"kind": "Vm", "metadata": {{"name": "a"}}, "spec": {{"boot": {{"kernel":
            {{"kernel": "/k"}}}}, "shares": {shares}}}}}"#
        );
        serde_json::from_str::<Resource>(&json)
            .map(|r| r.into_vm().unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn shares_are_read_strictly_and_named_in_errors() {
        let ok =
            vm(r#"[{"host_path": "/home/u/p", "tag": "project", "read_only": true}]"#).unwrap();
        assert_eq!(ok.spec.shares[0].tag, "project");
        assert!(ok.spec.shares[0].read_only);
        let err = vm(r#"[{"host_path": "p", "tag": "x"}]"#).unwrap_err();
        assert!(err.contains("spec.shares[0].host_path"), "{err}");
        let err = vm(r#"[{"host_path": "/p", "tag": "a,b"}]"#).unwrap_err();
        assert!(err.contains("spec.shares[0].tag"), "{err}");
        let err = vm(r#"[{"host_path": "/p", "tag": "a"}, {"host_path": "/q", "tag": "a"}]"#)
            .unwrap_err();
        assert!(
            err.contains("spec.shares[1].tag") && err.contains("another"),
            "{err}"
        );
        let err = vm(r#"[{"host_path": "/p", "tag": "a", "uid": 0}]"#).unwrap_err();
        assert!(err.contains("uid"), "{err}");
    }
}
