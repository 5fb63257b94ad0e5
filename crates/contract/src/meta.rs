use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::de::field_paths;
use crate::{ResourceName, ValidationError};

const KEY_RULE: &str = "use an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' \
                        or '.', starting and ending with a letter or digit (e.g. example.com/tier)";
const VALUE_RULE: &str =
    "use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// What every resource carries besides its spec and status.
///
/// A user's manifest needs only `name`; the server sets `uid`, `resource_version`,
/// `generation`, `created_at` and `deleting`, which are accepted on input (so that the output of
/// a read can be written back) but not taken from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    /// Unique among resources of the same kind.
    #[serde(deserialize_with = "de_name")]
    pub name: ResourceName,
    /// The project the resource belongs to (VMs, images, volumes, snapshots and networks;
    /// identities and projects belong to none). Left out, the request's project; the server
    /// always fills it in. Names are unique per project.
    #[serde(
        default,
        deserialize_with = "de_project",
        skip_serializing_if = "Option::is_none"
    )]
    pub project: Option<ResourceName>,
    /// Assigned by the server on creation and never changed; empty until then.
    #[serde(default)]
    pub uid: String,
    /// Identifying key/value pairs, for selection (`tier=web`).
    #[serde(default, deserialize_with = "de_labels")]
    #[schema(schema_with = crate::schema::labels)]
    pub labels: BTreeMap<String, String>,
    /// Free-form key/value notes for tools; keys follow the label key rules.
    #[serde(default, deserialize_with = "de_annotations")]
    #[schema(schema_with = crate::schema::annotations)]
    pub annotations: BTreeMap<String, String>,
    /// Changes on every write; an update carrying an older one is refused.
    #[serde(default)]
    #[schema(schema_with = crate::schema::counter)]
    pub resource_version: u64,
    /// Incremented by the server on every change to the spec (compare with
    /// `status.observed_generation`).
    #[serde(default)]
    #[schema(schema_with = crate::schema::counter)]
    pub generation: u64,
    /// When the server created the resource, in RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Deletion was asked for; controllers are tearing the resource down.
    #[serde(default)]
    pub deleting: bool,
}

field_paths! { de_name => "metadata.name" }

fn de_project<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResourceName>, D::Error> {
    crate::de::at("metadata.project", d)
}

fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = crate::de::at("metadata.labels", d)?;
    validate_labels(&labels).map_err(D::Error::custom)?;
    Ok(labels)
}

fn de_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let annotations = crate::de::at("metadata.annotations", d)?;
    validate_annotations(&annotations).map_err(D::Error::custom)?;
    Ok(annotations)
}

impl ObjectMeta {
    /// Metadata with only a name, as a user writes it.
    pub fn new(name: ResourceName) -> Self {
        ObjectMeta {
            name,
            project: None,
            uid: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            resource_version: 0,
            generation: 0,
            created_at: None,
            deleting: false,
        }
    }

    /// Adds a label (chainable; checked by [`ObjectMeta::validate`]).
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The project it belongs to: `default` when it names none.
    pub fn project(&self) -> &str {
        self.project
            .as_ref()
            .map_or(crate::DEFAULT_PROJECT, ResourceName::as_str)
    }

    /// Puts it in `project` (builder style).
    #[must_use]
    pub fn in_project(mut self, project: ResourceName) -> Self {
        self.project = Some(project);
        self
    }

    /// Where the store keeps it: see [`object_key`].
    pub fn key(&self) -> String {
        object_key(self.project(), self.name.as_str())
    }

    /// The store key of the object of the same project named `name` (what a reference in its
    /// spec means, for kinds that are never shared).
    pub fn key_of(&self, name: &ResourceName) -> String {
        object_key(self.project(), name.as_str())
    }

    /// Checks the labels and annotation keys (the name is valid by construction).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_labels(&self.labels)?;
        validate_annotations(&self.annotations)
    }
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    check_labels("metadata.labels", labels)
}

/// Checks that `labels` (at `field`) have label keys and values, as `metadata.labels` must.
pub(crate) fn check_labels(
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    for (key, value) in labels {
        if !is_label_key(key) {
            let message = format!("label key {key:?} is not valid: {KEY_RULE}");
            return Err(ValidationError::new(field, message));
        }
        if !(value.is_empty() || is_label_name(value)) {
            let message = format!("value {value:?} of label {key:?} is not valid: {VALUE_RULE}");
            return Err(ValidationError::new(field, message));
        }
    }
    Ok(())
}

fn validate_annotations(annotations: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    match annotations.keys().find(|key| !is_label_key(key)) {
        Some(key) => Err(ValidationError::new(
            "metadata.annotations",
            format!("annotation key {key:?} is not valid: {KEY_RULE}"),
        )),
        None => Ok(()),
    }
}

/// The store key of the object `name` in `project`: the bare name in project `default` (so a
/// store from before projects reads the same), `project/name` in any other. Names cannot hold
/// a `/`, so keys never collide; Incus keeps its default project unprefixed the same way.
pub fn object_key(project: &str, name: &str) -> String {
    if project == crate::DEFAULT_PROJECT {
        name.to_owned()
    } else {
        format!("{project}/{name}")
    }
}

/// The project and name of a store key made by [`object_key`].
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((crate::DEFAULT_PROJECT, key))
}

/// `[prefix/]name`, where prefix is a DNS subdomain (≤ 253 characters).
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// 1–63 characters of `[A-Za-z0-9-_.]`, starting and ending with a letter or digit.
pub(crate) fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    match bytes {
        [first, .., last] | [first @ last] => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(inner)
        }
        [] => false,
    }
}

/// Dot-separated DNS labels of lowercase letters, digits and '-', at most 253 characters.
fn is_dns_subdomain(prefix: &str) -> bool {
    prefix.len() <= 253
        && prefix
            .split('.')
            .all(|label| ResourceName::new(label).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Result<ObjectMeta, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_name_is_enough() {
        let m = meta(r#"{"name": "web-1"}"#).unwrap();
        assert_eq!(m, ObjectMeta::new("web-1".parse().unwrap()));
        assert_eq!(m.uid, "");
        assert_eq!(m.created_at, None);
    }

    #[test]
    fn server_fields_round_trip() {
        let mut m = ObjectMeta::new("db".parse().unwrap()).with_label("tier", "db");
        m.uid = "0b1c".into();
        m.resource_version = 7;
        m.generation = 2;
        m.created_at = Some("2025-01-02T03:04:05Z".into());
        m.deleting = true;
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(meta(&json).unwrap(), m);
    }

    #[test]
    fn invalid_names_name_the_field() {
        let long = "a".repeat(64);
        for (name, needle) in [
            (
                "My_VM",
                "use 1-63 lowercase letters, digits and '-', starting and ending",
            ),
            ("-web", "use 1-63"),
            (&long, "it is 64 characters long; use 1-63"),
        ] {
            let err = meta(&format!(r#"{{"name": "{name}"}}"#)).unwrap_err();
            let expected = format!("metadata.name: {name:?} is not a valid name: {needle}");
            assert!(err.starts_with(&expected), "{err}");
        }
        let err = meta(r#"{"name": 3}"#).unwrap_err();
        assert!(
            err.starts_with("metadata.name: invalid type: integer `3`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = meta(r#"{"name": "a", "label": {}}"#).unwrap_err();
        assert!(err.contains("unknown field `label`"), "{err}");
        assert!(meta(r#"{}"#).unwrap_err().contains("missing field `name`"));
    }

    #[test]
    fn labels_follow_kubernetes_rules() {
        for key in [
            "tier",
            "app.kubernetes.io/name",
            "a",
            "A_b.c-D",
            &"k".repeat(63),
        ] {
            assert!(is_label_key(key), "{key:?}");
        }
        for key in [
            "",
            "/a",
            "a/",
            "-a",
            "a b",
            "Ex.com/a",
            "a/b/c",
            &"k".repeat(64),
        ] {
            assert!(!is_label_key(key), "{key:?}");
        }
        assert!(meta(r#"{"name": "a", "labels": {"tier": "", "x": "Web_1"}}"#).is_ok());
        let err = meta(r#"{"name": "a", "labels": {"tier": "web tier"}}"#).unwrap_err();
        assert!(
            err.starts_with(r#"metadata.labels: value "web tier" of label "tier""#),
            "{err}"
        );
        let err = meta(r#"{"name": "a", "labels": {"my tier": "web"}}"#).unwrap_err();
        assert!(
            err.starts_with(r#"metadata.labels: label key "my tier""#),
            "{err}"
        );
        let err = meta(r#"{"name": "a", "labels": {"tier": 1}}"#).unwrap_err();
        assert!(err.starts_with("metadata.labels: invalid type"), "{err}");
    }

    #[test]
    fn annotations_check_keys_only() {
        assert!(meta(r#"{"name": "a", "annotations": {"note": "any text at all\n"}}"#).is_ok());
        let err = meta(r#"{"name": "a", "annotations": {"a note": "x"}}"#).unwrap_err();
        assert!(
            err.starts_with("metadata.annotations: annotation key"),
            "{err}"
        );
    }

    #[test]
    fn validate_checks_rust_built_metadata() {
        let m = ObjectMeta::new("a".parse().unwrap()).with_label("bad key", "v");
        assert_eq!(m.validate().unwrap_err().field, "metadata.labels");
    }
}
