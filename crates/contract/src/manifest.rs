//! Manifests: YAML documents in exactly the API's schema, `{kind, metadata, spec}`, as
//! `corral apply` reads them from files and Git sources from a repository.
//!
//! Each document is one resource, or a list of them (so that `corral vm list -o json` output
//! applies as it is). Parsing goes through the contract's types, so a manifest is checked
//! exactly as the server checks a request; `status` is the server's and is dropped unread.

use std::collections::BTreeSet;

use crate::{Image, Kind, Resource, Snapshot, Vm, Volume};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// A manifest that cannot be used: `FILE:LINE: document N (kind/name): field: message`.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {location}: {message}")]
pub struct ManifestError {
    /// The file (or `-`).
    pub source_name: String,
    /// The line the document starts on (or where YAML stopped making sense), from 1.
    pub line: usize,
    /// Which document (and item, and resource) it is.
    pub location: String,
    /// What is wrong, starting with the field's JSON path where known.
    pub message: String,
}

/// Parses every document of `text`, read from `source_name` (a path, or `-` for standard
/// input). Fails on the first bad document, before anything is applied.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<Resource>, ManifestError> {
    let resources = parse_any(source_name, text)?;
    if resources.is_empty() {
        return Err(ManifestError {
            source_name: source_name.to_owned(),
            line: 1,
            location: "document 1".into(),
            message: "no resources: expected YAML documents with kind, metadata and spec".into(),
        });
    }
    Ok(resources)
}

/// Like [`parse`], but a text without resources (a file of a directory, emptied) is no error.
pub fn parse_any(source_name: &str, text: &str) -> Result<Vec<Resource>, ManifestError> {
    let error = |line: usize, location: String, message: String| ManifestError {
        source_name: source_name.to_owned(),
        line,
        location,
        message,
    };
    let starts = document_lines(text);
    let mut resources = Vec::new();
    let mut names = BTreeSet::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("document {}", index + 1);
        let line = starts.get(index).copied().unwrap_or(1);
        let value = Value::deserialize(document).map_err(|e| {
            let line = e.location().map_or(line, |l| l.line());
            error(line, at.clone(), e.to_string())
        })?;
        let items = match value {
            // An empty document: a trailing `---`, or only comments.
            Value::Null => continue,
            Value::Sequence(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| (format!("{at}, item {}", i + 1), item))
                .collect(),
            value => vec![(at, value)],
        };
        for (at, value) in items {
            let name = name_of(&value);
            // `network/lab`, `vm/web-1`: the same words the apply output uses.
            let kind = match value.get("kind").and_then(Value::as_str) {
                Some(kind) if kind.parse::<Kind>().is_ok() => kind.to_lowercase(),
                _ => "vm".to_owned(),
            };
            let located = match &name {
                Some(name) => format!("{at} ({kind}/{name})"),
                None => at,
            };
            let resource = parse_resource(value).map_err(|m| error(line, located.clone(), m))?;
            let key = (resource.kind(), resource.metadata().key());
            if !names.insert(key) {
                let message = "this resource appears earlier in the manifest: keep one".into();
                return Err(error(line, located, message));
            }
            resources.push(resource);
        }
    }
    Ok(resources)
}

/// The line each document starts on: after each `---` that separates two (a leading one only
/// moves the first).
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let separator = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if separator {
            if content {
                starts.push(i + 2);
            } else {
                starts[0] = i + 2;
            }
            content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            content = true;
        }
    }
    starts
}

/// The name, if the document has a readable one, to say which document an error is in.
fn name_of(value: &Value) -> Option<String> {
    value
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

fn parse_resource(value: Value) -> Result<Resource, String> {
    // Through JSON: the API's schema is the JSON one (a boot source is `{kernel: {…}}`, which
    // serde_yaml_ng's own enum form, a YAML tag, is not), and YAML is only its spelling here.
    let value: serde_json::Value =
        serde_json::to_value(value).map_err(|e| format!("not representable as JSON: {e}"))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err("expected a resource: a mapping with kind, metadata and spec".into());
    };
    let kind = match map.remove("kind") {
        Some(serde_json::Value::String(kind)) => {
            kind.parse::<Kind>().map_err(|e| format!("kind: {e}"))?
        }
        Some(_) => return Err("kind: must be a word, e.g. Vm".into()),
        None => return Err("missing field `kind`: add `kind: Vm`".into()),
    };
    // Status is what the server observed; dropped so that a read's output applies unchanged.
    map.remove("status");
    match kind {
        Kind::Vm => deserialize::<Vm>(serde_json::Value::Object(map)).map(Resource::Vm),
        Kind::Image => deserialize::<Image>(serde_json::Value::Object(map)).map(Resource::Image),
        Kind::Volume => deserialize::<Volume>(serde_json::Value::Object(map)).map(Resource::Volume),
        Kind::Snapshot => {
            deserialize::<Snapshot>(serde_json::Value::Object(map)).map(Resource::Snapshot)
        }
        Kind::Network => {
            deserialize::<crate::Network>(serde_json::Value::Object(map)).map(Resource::Network)
        }
        Kind::Source => Err(
            "kind Source is not applied from manifests: manage sources with `corral source` (a \
             source applying sources would own them)"
                .into(),
        ),
        Kind::Node => Err(
            "kind Node is not applied from manifests: agents register nodes; cordon one with \
             `corral node cordon`"
                .into(),
        ),
        Kind::Project => Err(
            "kind Project is not applied from manifests: manage projects with `corral project`"
                .into(),
        ),
        Kind::Identity => Err(
            "kind Identity is not applied from manifests: manage identities with `corral auth`, \
             so that a token is shown once and never written to a file"
                .into(),
        ),
    }
}

/// Deserialises with the path of the failing field: the contract's errors name it
/// (`spec.cpus: …`), serde's own (`unknown field`) do not.
fn deserialize<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path == "." || message.starts_with(&path) {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ByteSize, Phase, Power};

    const TWO: &str = "\
# Two VMs.
kind: Vm
metadata:
  name: web-1
  labels: {tier: web}
spec:
  cpus: 2
  memory: 1G
  boot:
    kernel: {kernel: /k/vmlinuz, cmdline: console=ttyS0}
---
kind: Vm
metadata: {name: db-1}
spec:
  power: stopped
  boot: {disk: {path: /d/db.qcow2}}
---
";

    #[test]
    fn multi_document_manifests_parse_into_contract_types() {
        let resources = parse("vms.yaml", TWO).unwrap();
        assert_eq!(resources.len(), 2);
        let web = resources[0].as_vm().unwrap();
        assert_eq!(web.metadata.name, "web-1");
        assert_eq!(web.metadata.labels["tier"], "web");
        assert_eq!(web.spec.cpus, 2);
        assert_eq!(web.spec.memory, ByteSize::from_gib(1));
        let db = resources[1].as_vm().unwrap();
        assert_eq!(db.spec.power, Power::Stopped);
    }

    #[test]
    fn networks_and_vms_that_join_them_share_a_manifest() {
        let text = "\
kind: Network
metadata: {name: lab}
spec: {mode: bridge, cidr: 10.5.0.0/24, mtu: 1400}
---
kind: Vm
metadata: {name: web-1}
spec:
  boot: {kernel: {kernel: /k/vmlinuz}}
  networks:
  - network: lab
  - network: default
    forwards: [{guest_port: 22}, {guest_port: 53, protocol: udp, host_port: 5353}]
  cloud_init: {user_data: \"#cloud-config\\nhostname: web-1\\n\"}
";
        let resources = parse("lab.yaml", text).unwrap();
        let Resource::Network(net) = &resources[0] else {
            panic!("not a network")
        };
        assert_eq!(net.spec.mtu, Some(1400));
        let vm = resources[1].as_vm().unwrap();
        assert_eq!(vm.spec.networks.len(), 2);
        assert_eq!(vm.spec.networks[1].forwards[1].host_port, Some(5353));
        assert!(vm.spec.cloud_init.is_some());
        let err = parse("lab.yaml", &text.replace("10.5.0.0/24", "10.5.0.1/24"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("document 1 (network/lab): spec.cidr: \"10.5.0.1/24\" has host bits set"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_name_the_document_and_the_field() {
        let text = TWO.replace("  cpus: 2", "  cpu: 2");
        let err = parse("vms.yaml", &text).unwrap_err().to_string();
        assert!(
            err.starts_with("vms.yaml:1: document 1 (vm/web-1): spec.cpu: unknown field `cpu`"),
            "{err}"
        );

        let text = TWO.replace(
            "metadata: {name: db-1}",
            "metadata: {name: db-1, label: {}}",
        );
        let err = parse("vms.yaml", &text).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "vms.yaml:12: document 2 (vm/db-1): metadata.label: unknown field `label`"
            ),
            "{err}"
        );

        let text = TWO.replace(
            "kind: Vm\nmetadata: {name",
            "kind: Vm\nextra: 1\nmetadata: {name",
        );
        let err = parse("vms.yaml", &text).unwrap_err().to_string();
        assert!(
            err.starts_with("vms.yaml:12: document 2 (vm/db-1): extra: unknown field `extra`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_are_named_once() {
        let err = parse("-", &TWO.replace("cpus: 2", "cpus: 0"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "-:1: document 1 (vm/web-1): spec.cpus: must be between 1 and 256 (got 0)"
        );
        let err = parse("-", &TWO.replace("memory: 1G", "memory: lots"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("-:1: document 1 (vm/web-1): spec.memory: \"lots\" is not a size"),
            "{err}"
        );
        let err = parse("-", &TWO.replace("name: web-1", "name: Web_1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata.name: \"Web_1\" is not a valid name"),
            "{err}"
        );
        let err = parse(
            "-",
            &TWO.replace("kind: Vm\nmetadata:\n", "kind: Volumes\nmetadata:\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "kind: \"Volumes\" is not a valid kind: use Vm, Image, Volume, Snapshot, Network, Identity, Project, Source or Node"
            ),
            "{err}"
        );
        let err = parse("-", "metadata: {name: a}\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `kind`"), "{err}");
    }

    #[test]
    fn status_is_ignored_and_output_applies_again() {
        let text = TWO.replacen(
            "spec:\n  cpus: 2",
            "status: {phase: Running, pid: 7, anything: [1]}\nspec:\n  cpus: 2",
            1,
        );
        let resources = parse("vms.yaml", &text).unwrap();
        let web = resources[0].as_vm().unwrap();
        assert_eq!(web.status.phase, Phase::Pending);
        assert_eq!(web.status.pid, None);

        // A JSON list, as `corral vm list -o json` prints it, is a manifest too.
        let json = serde_json::to_string(&resources).unwrap();
        assert_eq!(parse("list.json", &json).unwrap(), resources);
    }

    #[test]
    fn errors_name_the_line_a_document_starts_on_or_yaml_broke() {
        let text = "---\nkind: Vm\nmetadata: {name: a}\nspec: {boot: {kernel: {kernel: /k}}}\n---\n# b\nkind: Volume\nmetadata: {name: b}\nspec: {size: 1X}\n";
        let err = parse("repo/vms.yaml", text).unwrap_err();
        assert_eq!(
            (err.line, err.location.as_str()),
            (6, "document 2 (volume/b)")
        );
        let err = parse("x.yaml", "kind: Vm\nmetadata: {name: a\nspec: 1\n").unwrap_err();
        assert_eq!(err.source_name, "x.yaml");
        assert!(err.line > 1, "{err}");
    }

    #[test]
    fn empty_and_duplicate_manifests_are_refused() {
        let err = parse("e.yaml", "# nothing\n").unwrap_err().to_string();
        assert!(err.contains("no resources"), "{err}");
        let twice = format!("{TWO}{TWO}");
        let err = parse("d.yaml", &twice).unwrap_err().to_string();
        assert!(
            err.starts_with("d.yaml:18: document 3 (vm/web-1): this resource appears earlier"),
            "{err}"
        );
    }
}
