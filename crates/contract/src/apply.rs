//! Applying a set of declared resources as one owner: what to do ([`ApplyRequest`]) and what
//! was (or, in a dry run, would be) done to each resource ([`ApplyReport`]).

use serde::{Deserialize, Serialize};

use crate::{Kind, Resource, ResourceName};

/// The share of an owner's resources one apply may prune unless
/// [`ApplyRequest::allow_mass_prune`] is set (pruning all of them always needs it).
pub const DEFAULT_MASS_PRUNE_PERCENT: u8 = 50;

/// Resources to create or bring to their declared spec, labels and annotations, in one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Who declares them: each gets the label `corral.dev/owner=<owner>`; a resource another
    /// owner declared is refused. Required for `prune`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ResourceName>,
    /// Delete the owner's resources that are not in `resources`.
    #[serde(default)]
    pub prune: bool,
    /// Prune even when that removes more than half, or all, of the owner's resources.
    #[serde(default)]
    pub allow_mass_prune: bool,
    /// Check and report only: admission runs, nothing is written.
    #[serde(default)]
    pub dry_run: bool,
    /// The declared resources (VMs, networks, images, volumes, snapshots).
    pub resources: Vec<Resource>,
}

/// What applying did to one resource, or would do in a dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    /// It did not exist.
    Create,
    /// Its spec, labels or annotations differed (see [`ApplyItem::changes`]).
    Change,
    /// It was as declared.
    Unchanged,
    /// The owner no longer declares it: deleted.
    Prune,
}

impl ApplyAction {
    /// `created`, `changed`, `unchanged`, `pruned` — or, in a dry run, what would happen.
    pub fn as_str(self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (ApplyAction::Create, false) => "created",
            (ApplyAction::Change, false) => "configured",
            (ApplyAction::Unchanged, _) => "unchanged",
            (ApplyAction::Prune, false) => "pruned",
            (ApplyAction::Create, true) => "would be created",
            (ApplyAction::Change, true) => "would change",
            (ApplyAction::Prune, true) => "would be pruned",
        }
    }
}

/// One field that differs: its JSON path and both values (absent: the field is not set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldChange {
    /// JSON path, e.g. `spec.memory`, `metadata.labels.tier`, `spec.networks[0].forwards`.
    pub path: String,
    /// The value now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::any_value)]
    pub before: Option<serde_json::Value>,
    /// The declared value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::any_value)]
    pub after: Option<serde_json::Value>,
}

/// What happened to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyItem {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// What was done.
    pub action: ApplyAction,
    /// For [`ApplyAction::Change`], each field that differs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
}

/// What an apply did, resource by resource: in dependency order, prunes last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyReport {
    /// Whether nothing was written.
    #[serde(default)]
    pub dry_run: bool,
    /// One entry per declared resource, then one per pruned one.
    pub items: Vec<ApplyItem>,
}

impl ApplyReport {
    /// Whether anything was (or would be) created, changed or pruned.
    pub fn changes_anything(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.action != ApplyAction::Unchanged)
    }
}

/// Every field where `before` and `after` differ, by JSON path: objects field by field, and
/// everything else (lists included) as a whole.
pub fn field_changes(
    path: &str,
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
    out: &mut Vec<FieldChange>,
) {
    use serde_json::Value;
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                field_changes(&sub, b.get(key), a.get(key), out);
            }
        }
        (b, a) if b == a => {}
        // `null` and absent are the same declaration.
        (None | Some(Value::Null), None | Some(Value::Null)) => {}
        (b, a) => out.push(FieldChange {
            path: path.to_owned(),
            before: b.filter(|v| !v.is_null()).cloned(),
            after: a.filter(|v| !v.is_null()).cloned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_named_by_path() {
        let before = json!({"spec": {"memory": "512M", "cpus": 1, "tags": [1]}, "metadata": {"labels": {"a": "1"}}});
        let after = json!({"spec": {"memory": "1G", "cpus": 1, "tags": [1, 2], "x": null}, "metadata": {"labels": {"b": "2"}}});
        let mut out = Vec::new();
        field_changes("", Some(&before), Some(&after), &mut out);
        let paths: Vec<&str> = out.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.labels.a",
                "metadata.labels.b",
                "spec.memory",
                "spec.tags"
            ]
        );
        assert_eq!(out[0].after, None);
        assert_eq!(out[2].before, Some(json!("512M")));
    }

    #[test]
    fn requests_are_strict() {
        let err =
            serde_json::from_str::<ApplyRequest>(r#"{"resources": [], "prun": true}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `prun`"), "{err}");
    }
}
