//! The provider covers the API: every field of every kind's spec, as the daemon's published
//! OpenAPI document (`crates/daemon/openapi.json`, regenerated from the contract's types and
//! checked against them in the daemon's tests) describes it, is either set by an attribute or
//! block of the resource's schema, or named here as left out on purpose, with the reason. A
//! field added to the contract fails this test until someone decides which.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::schema::Schema;
use crate::stored::Kind;
use crate::{image, network, snapshot, vm, volume};

const OPENAPI: &str = include_str!("../../daemon/openapi.json");

/// How each API field reaches Terraform: `Some(path)` of the attribute (`block.attribute`
/// inside blocks), or `None` with why it is left out.
type Coverage = &'static [(&'static str, Result<&'static str, &'static str>)];

const VM: Coverage = &[
    ("spec.accel", Ok("accel")),
    ("spec.arch", Ok("arch")),
    ("spec.boot.disk.format", Ok("disk_format")),
    ("spec.boot.disk.path", Ok("disk")),
    ("spec.boot.kernel.cmdline", Ok("cmdline")),
    ("spec.boot.kernel.initrd", Ok("initrd")),
    ("spec.boot.kernel.kernel", Ok("kernel")),
    ("spec.boot.volume.volume", Ok("boot_volume")),
    ("spec.cloud_init.meta_data", Ok("cloud_init.meta_data")),
    (
        "spec.cloud_init.network_config",
        Ok("cloud_init.network_config"),
    ),
    ("spec.cloud_init.user_data", Ok("cloud_init.user_data")),
    ("spec.cpus", Ok("cpus")),
    ("spec.introspection", Ok("introspection")),
    ("spec.machine", Ok("machine")),
    ("spec.memory", Ok("memory")),
    (
        "spec.networks.forwards.guest_port",
        Ok("network.forward.guest_port"),
    ),
    (
        "spec.networks.forwards.host_address",
        Ok("network.forward.host_address"),
    ),
    (
        "spec.networks.forwards.host_port",
        Ok("network.forward.host_port"),
    ),
    (
        "spec.networks.forwards.protocol",
        Ok("network.forward.protocol"),
    ),
    ("spec.networks.mac", Ok("network.mac")),
    ("spec.networks.network", Ok("network.name")),
    (
        "spec.placement.anti_affinity",
        Ok("placement.anti_affinity"),
    ),
    (
        "spec.placement.node_selector",
        Ok("placement.node_selector"),
    ),
    ("spec.power", Ok("power")),
    ("spec.restart_policy", Ok("restart_policy")),
    (
        "spec.shares.host_path",
        Err(
            "shared folders are for development VMs on the host you sit at (corral.yaml, corral temp); a Terraform-declared VM has volumes",
        ),
    ),
    ("spec.shares.read_only", Err("see spec.shares.host_path")),
    ("spec.shares.tag", Err("see spec.shares.host_path")),
    (
        "spec.template",
        Err(
            "a VM started from a template must have the template VM's hardware, which \
             `corral vm create --template` copies; a Terraform-declared VM declares its own",
        ),
    ),
    ("spec.volumes.readonly", Ok("volume.read_only")),
    ("spec.volumes.serial", Ok("volume.serial")),
    ("spec.volumes.volume", Ok("volume.name")),
];

const IMAGE: Coverage = &[
    ("spec.checksum", Ok("checksum")),
    ("spec.format", Ok("format")),
    ("spec.shared", Ok("shared")),
    (
        "spec.source.build.distribution",
        Err(
            "building an image from packages takes minutes and root on the host: \
             `corral image build` does it, and Terraform names the result by path or URL",
        ),
    ),
    (
        "spec.source.build.packages",
        Err("see spec.source.build.distribution"),
    ),
    (
        "spec.source.build.size",
        Err("see spec.source.build.distribution"),
    ),
    ("spec.source.path", Ok("path")),
    (
        "spec.source.template.vm",
        Err(
            "saving a template pauses a running VM at one instant: `corral template create` \
             does it, as an action rather than a declared state",
        ),
    ),
    (
        "spec.source.upload.filename",
        Err(
            "an upload streams bytes from the client (`corral image import`); Terraform \
             names a host path or URL instead",
        ),
    ),
    ("spec.source.url", Ok("url")),
];

const VOLUME: Coverage = &[
    ("spec.format", Ok("format")),
    ("spec.image", Ok("image")),
    ("spec.pool", Ok("pool")),
    ("spec.kind", Ok("kind")),
    ("spec.size", Ok("size")),
];

const NETWORK: Coverage = &[
    ("spec.bridge", Ok("bridge")),
    ("spec.cidr", Ok("cidr")),
    ("spec.dns", Ok("dns")),
    ("spec.gateway", Ok("gateway")),
    ("spec.host_access", Ok("host_access")),
    ("spec.interface", Ok("interface")),
    ("spec.mode", Ok("mode")),
    ("spec.mtu", Ok("mtu")),
    ("spec.shared", Ok("shared")),
];

const SNAPSHOT: Coverage = &[("spec.memory", Ok("memory")), ("spec.vm", Ok("vm"))];

/// The leaf fields of the schema named `name`, as dotted paths under `prefix` (array items
/// add no segment; every alternative of a `oneOf` counts).
fn leaves(schemas: &BTreeMap<String, Json>, name: &str, prefix: &str) -> BTreeSet<String> {
    fn walk(schemas: &BTreeMap<String, Json>, node: &Json, path: &str, out: &mut BTreeSet<String>) {
        let mut node = node;
        while let Some(r) = node.get("$ref").and_then(Json::as_str) {
            node = &schemas[r.rsplit('/').next().unwrap()];
        }
        let mut props = serde_json::Map::new();
        let alternatives = ["oneOf", "anyOf", "allOf"]
            .iter()
            .filter_map(|k| node.get(*k).and_then(Json::as_array))
            .flatten();
        for alt in alternatives.chain([node]) {
            let mut alt = alt;
            while let Some(r) = alt.get("$ref").and_then(Json::as_str) {
                alt = &schemas[r.rsplit('/').next().unwrap()];
            }
            if let Some(items) = alt.get("items") {
                walk(schemas, items, path, out);
            }
            if alt.get("oneOf").is_some() && !std::ptr::eq(alt, node) {
                walk(schemas, alt, path, out);
            }
            if let Some(p) = alt.get("properties").and_then(Json::as_object) {
                props.extend(p.clone());
            }
        }
        if props.is_empty() {
            if node.get("items").is_none() {
                out.insert(path.to_owned());
            }
            return;
        }
        for (key, value) in props {
            walk(schemas, &value, &format!("{path}.{key}"), out);
        }
    }
    let mut out = BTreeSet::new();
    walk(schemas, &schemas[name], prefix, &mut out);
    // A union's leaves include the parents of other alternatives' fields; keep true leaves.
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q.starts_with(&format!("{p}."))));
    out
}

/// Whether `path` (`block.attribute`) is an attribute of `schema`.
fn has(schema: &Schema, path: &str) -> bool {
    match path.split_once('.') {
        None => schema.find(path).is_some(),
        Some((block, rest)) => schema
            .find_block(block)
            .is_some_and(|b| has(&b.schema, rest)),
    }
}

fn check<K: Kind>(spec: &str, coverage: Coverage) {
    let doc: Json = serde_json::from_str(OPENAPI).unwrap();
    let schemas: BTreeMap<String, Json> =
        serde_json::from_value(doc["components"]["schemas"].clone()).unwrap();
    let fields = leaves(&schemas, spec, "spec");
    let listed: BTreeSet<String> = coverage.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(
        fields,
        listed,
        "{}: the API's fields of {spec} (left) and those this test lists (right) differ: a \
         field was added or removed — expose it in the resource, or list it as left out, \
         with why",
        K::TYPE
    );
    let schema = K::schema();
    for (field, how) in coverage {
        let Ok(attribute) = how else { continue };
        assert!(
            has(&schema, attribute),
            "{}: {field} is said to be set by {attribute}, which the schema lacks",
            K::TYPE
        );
        // Errors on the field land on the attribute (or the block) that set it.
        let top = attribute.split('.').next().unwrap();
        assert_eq!(
            K::attribute_for(field),
            Some(top),
            "{}: an error on {field} must land on {top}",
            K::TYPE
        );
    }
    for field in ["metadata.name", "metadata.labels"] {
        assert!(K::attribute_for(field).is_some(), "{}: {field}", K::TYPE);
    }
}

#[test]
fn every_field_of_every_spec_is_an_attribute_or_left_out_with_a_reason() {
    check::<vm::VmKind>("VmSpec", VM);
    check::<image::ImageKind>("ImageSpec", IMAGE);
    check::<volume::VolumeKind>("VolumeSpec", VOLUME);
    check::<network::NetworkKind>("NetworkSpec", NETWORK);
    check::<snapshot::SnapshotKind>("SnapshotSpec", SNAPSHOT);
}
