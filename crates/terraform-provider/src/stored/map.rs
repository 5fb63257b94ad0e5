//! Between attributes and API objects: the shared attributes, manifests built from
//! configurations whose values may be unknown, state written the way the user wrote it, and
//! errors put on the attribute that caused them.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_client::ClientError;
use corral_client::contract::Object;
use serde_json::json;

use super::Kind;
use crate::diag::Diagnostic;
use crate::resource::Outcome;
use crate::schema::{Attr, Schema};
use crate::value::Value;

/// A diagnostic from a message of the form `spec.size: must be …` (the contract's
/// `ValidationError`, locally or from corrald), on the attribute that set the field.
pub fn field_error<K: Kind>(message: &str) -> Diagnostic {
    if let Some((field, detail)) = message.split_once(": ") {
        if let Some(attr) = K::attribute_for(field) {
            return Diagnostic::attr_error(
                &[attr],
                format!("Invalid {attr}"),
                format!("{detail} ({field})"),
            );
        }
    }
    Diagnostic::error(format!("Invalid {}", K::WHAT), message)
}

/// A client error as diagnostics; invalid input lands on the attribute that set it.
pub(super) fn client_error<K: Kind>(summary: &str, err: ClientError) -> Vec<Diagnostic> {
    match err {
        ClientError::Invalid { message } => vec![field_error::<K>(&message)],
        other => vec![Diagnostic::error(summary, other.to_string())],
    }
}

/// The object a configuration or plan declares, checked by the contract's own deserialiser,
/// so that Terraform validates exactly what `corral apply` does.
pub fn object_from<K: Kind>(config: &Value) -> Result<K::Obj, Vec<Diagnostic>> {
    let manifest = K::manifest(config)?;
    let obj: K::Obj = serde_path_to_error::deserialize(manifest).map_err(|e| {
        // The contract's own errors name their field; serde's are named by the path.
        let inner = e.inner().to_string();
        let named = inner
            .split_once(": ")
            .is_some_and(|(field, _)| K::attribute_for(field).is_some());
        let message = if named {
            inner
        } else {
            format!("{}: {inner}", e.path())
        };
        vec![field_error::<K>(&message)]
    })?;
    obj.validate()
        .map_err(|e| vec![field_error::<K>(&e.to_string())])?;
    Ok(obj)
}

/// Checks a configuration whose values may be unknown: the contract's errors on known
/// values, and the timeouts.
pub fn validate<K: Kind>(config: &Value) -> Vec<Diagnostic> {
    let mut diags = match object_from::<K>(config) {
        Ok(_) => Vec::new(),
        Err(diags) => diags,
    };
    // An error about a value not known yet is a placeholder's error; apply checks it.
    diags.retain(|d| d.path.first().is_none_or(|a| !config.get(a).is_unknown()));
    if let Value::Map(timeouts) = config.get("timeouts") {
        for (name, value) in timeouts {
            if let Some(text) = value.as_str() {
                if let Err(e) = humantime::parse_duration(text) {
                    diags.push(Diagnostic::attr_error(
                        &["timeouts", name],
                        format!("Invalid {name} timeout"),
                        format!("{text:?} is not a duration ({e}): use e.g. 30s, 5m or 1h"),
                    ));
                }
            }
        }
    }
    diags
}

/// A known scalar attribute as JSON; `None` when null or unknown.
pub fn known(config: &Value, name: &str) -> Option<serde_json::Value> {
    match config.get(name) {
        Value::String(s) => Some(json!(s)),
        Value::Bool(b) => Some(json!(b)),
        Value::Number(n) if n.fract() == 0.0 => Some(json!(*n as i64)),
        Value::Number(n) => Some(json!(n)),
        _ => None,
    }
}

/// The names a list attribute holds, each unknown one a distinct placeholder; `None` when
/// the list is null or unknown.
pub fn names(config: &Value, name: &str) -> Option<Vec<String>> {
    let Value::List(items) = config.get(name) else {
        return None;
    };
    let names = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map_or_else(|| format!("unknown-until-apply-{i}"), str::to_owned)
        })
        .collect();
    Some(names)
}

/// `metadata` for a configuration: its name and labels.
pub fn metadata(config: &Value) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "name".into(),
        known(config, "name").unwrap_or(json!("unknown-until-apply")),
    );
    if let Value::Map(labels) = config.get("labels") {
        let labels: serde_json::Map<_, _> = labels
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), json!(v.as_str()?))))
            .collect();
        metadata.insert("labels".into(), json!(labels));
    }
    json!(metadata)
}

/// The state of `obj`: the attributes every kind has (`id`, `name`, `labels`, `uid`,
/// `created_at`, `timeouts`) and the kind's own, written the way `hint` (the planned or
/// prior state) wrote equal values.
pub fn state_of<K: Kind>(obj: &K::Obj, hint: &Value) -> Value {
    let meta = obj.metadata();
    let mut state = Value::Null;
    state.set("id", Value::string(meta.name.as_str()));
    state.set("name", Value::string(meta.name.as_str()));
    state.set("labels", labels_state(&meta.labels, hint));
    state.set("uid", Value::string(&meta.uid));
    state.set("created_at", opt(meta.created_at.as_deref()));
    state.set("timeouts", hint.get("timeouts").clone());
    K::to_state(obj, hint, &mut state);
    state
}

/// Labels as state: those whose keys `hint` (the planned or prior state) has — labels set out
/// of band that the configuration does not declare are no drift. With no hint (an import, a
/// data source) all of them; empty labels stay as `hint` wrote them (`{}` or null).
pub fn labels_state(labels: &BTreeMap<String, String>, hint: &Value) -> Value {
    let declared = match hint {
        Value::Null => None,
        hint => match hint.get("labels") {
            Value::Map(declared) => Some(declared),
            _ => return Value::Null,
        },
    };
    let shown: BTreeMap<String, Value> = labels
        .iter()
        .filter(|(k, _)| declared.is_none_or(|d| d.contains_key(*k)))
        .map(|(k, v)| (k.clone(), Value::string(v)))
        .collect();
    if shown.is_empty() && declared.is_none() {
        Value::Null
    } else {
        Value::Map(shown)
    }
}

/// The labels an update writes: `current`'s, less those `prior` (the prior state) declared and
/// `wanted` no longer does, plus `wanted`'s. Labels Terraform never declared are kept.
pub fn merge_labels(
    current: &BTreeMap<String, String>,
    prior: &Value,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = current.clone();
    if let Value::Map(declared) = prior.get("labels") {
        merged.retain(|k, _| !declared.contains_key(k) || wanted.contains_key(k));
    }
    merged.extend(wanted.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// Whether `hint` (a planned or prior state) declares attribute or block `name` — a non-empty
/// list, a set value — or is no hint at all (an import, a data source: everything shows).
pub fn mentioned(hint: &Value, name: &str) -> bool {
    match hint {
        Value::Null => true,
        hint => match hint.get(name) {
            Value::List(items) => !items.is_empty(),
            Value::Null => false,
            _ => true,
        },
    }
}

/// List attribute `name` as state: an empty list stays as `hint` wrote it (`[]` or null).
pub fn list_state<'a>(items: impl IntoIterator<Item = &'a str>, name: &str, hint: &Value) -> Value {
    let items: Vec<Value> = items.into_iter().map(Value::string).collect();
    if items.is_empty() && !matches!(hint.get(name), Value::List(_)) {
        Value::Null
    } else {
        Value::List(items)
    }
}

/// An optional string as a value.
pub fn opt(v: Option<&str>) -> Value {
    v.map_or(Value::Null, Value::string)
}

/// An optional count as a number.
pub fn num(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |n| Value::Number(n as f64))
}

/// The `id` and `name` attributes every kind starts with.
pub fn base_schema(description: &'static str, what: &'static str) -> Schema {
    Schema::new(description)
        .attr(
            Attr::string("id")
                .computed()
                .stable()
                .describe("The name (the import ID)."),
        )
        .attr(Attr::string("name").required().replace().describe(what))
}

/// `uid` and `created_at`.
pub fn identity(schema: Schema, what: &'static str) -> Schema {
    schema
        .attr(
            Attr::string("uid")
                .computed()
                .stable()
                .describe("Assigned by corrald on creation; never changes."),
        )
        .attr(
            Attr::string("created_at")
                .computed()
                .stable()
                .describe(what),
        )
}

/// The `timeouts` block: `create`, and `update` when the kind changes in place, and `delete`.
pub fn timeouts(schema: Schema, create: &'static str, update: Option<&'static str>) -> Schema {
    let mut block = Schema::new("How long to wait for corrald (Go durations: `30s`, `5m`).")
        .attr(Attr::string("create").describe(create));
    if let Some(update) = update {
        block = block.attr(Attr::string("update").describe(update));
    }
    block = block.attr(
        Attr::string("delete").describe("For corrald to delete it and its files (default 2m)."),
    );
    schema.block("timeouts", block)
}

/// The `timeouts` value `name` of a state, or `default`.
pub(super) fn timeout(state: &Value, name: &str, default: Duration) -> Duration {
    state
        .get("timeouts")
        .get(name)
        .as_str()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(default)
}

/// The `name` of a state or configuration.
pub(super) fn name_of<K: Kind>(state: &Value) -> Outcome<String> {
    state
        .get("name")
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            vec![Diagnostic::error(
                format!("{} without a name", K::WHAT),
                "the state has no name",
            )]
        })
}
