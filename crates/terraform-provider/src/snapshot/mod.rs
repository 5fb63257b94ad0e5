//! `corral_snapshot`: a point-in-time state of a VM's writable volumes (and optionally its
//! RAM). corrald's SnapshotService has no update, so every argument — labels included —
//! replaces the snapshot. Create waits until it is taken (Ready).

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{Snapshot, StoragePhase};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::stored::{self, Kind, Managed, Progress, known, opt};
use crate::value::Value;

/// The `corral_snapshot` kind.
#[derive(Debug)]
pub struct SnapshotKind;

/// The `corral_snapshot` resource.
pub type SnapshotResource = Managed<SnapshotKind>;

#[async_trait]
impl Kind for SnapshotKind {
    type Obj = Snapshot;
    const TYPE: &'static str = "corral_snapshot";
    const WHAT: &'static str = "snapshot";
    const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

    fn schema() -> Schema {
        let schema = stored::base_schema(
            "A point-in-time state of a VM's writable qcow2 volumes, and optionally its RAM \
             (qcow2 internal snapshots). Changing any argument replaces the snapshot. Restore \
             with `corral snapshot restore NAME`.",
            "Unique name (lowercase letters, digits, '-'). Changing it replaces the snapshot.",
        )
        .attr(
            Attr::string_map("labels")
                .replace()
                .describe("Key/value labels. Changing them replaces the snapshot."),
        )
        .attr(
            Attr::string("vm")
                .required()
                .replace()
                .describe("Name of the VM to snapshot. Changing it replaces the snapshot."),
        )
        .attr(
            Attr::bool("memory")
                .default(Value::Bool(false))
                .replace()
                .describe(
                    "Also save RAM and device state (the VM must be running or paused). Without it \
             (default) the snapshot is disk-only and the VM must be stopped.",
                ),
        );
        let schema = stored::identity(schema, "When corrald created the snapshot (RFC 3339).")
            .attr(
                Attr::string("phase")
                    .computed()
                    .describe("Pending, Ready or Failed."),
            )
            .attr(
                Attr::string("tag")
                    .computed()
                    .stable()
                    .describe("The internal snapshot's tag in each volume."),
            )
            .attr(
                Attr::string("taken_at")
                    .computed()
                    .stable()
                    .describe("When it was taken (RFC 3339)."),
            )
            .attr(
                Attr::string("message")
                    .computed()
                    .describe("Why the snapshot is where it is."),
            );
        stored::timeouts(schema, "For the snapshot to be taken (default 5m).", None)
    }

    fn attribute_for(field: &str) -> Option<&'static str> {
        Some(match field {
            "metadata.name" => "name",
            "metadata.labels" => "labels",
            "spec.vm" => "vm",
            "spec.memory" => "memory",
            _ => return None,
        })
    }

    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
        let mut spec = serde_json::Map::new();
        spec.insert(
            "vm".into(),
            known(config, "vm").unwrap_or(json!("unknown-until-apply")),
        );
        if let Some(memory) = known(config, "memory") {
            spec.insert("memory".into(), memory);
        }
        Ok(json!({ "metadata": stored::metadata(config), "spec": spec }))
    }

    fn to_state(snap: &Snapshot, _: &Value, state: &mut Value) {
        state.set("vm", Value::string(snap.spec.vm.as_str()));
        state.set("memory", Value::Bool(snap.spec.memory));
        let status = &snap.status;
        state.set("phase", Value::string(status.phase.as_str()));
        state.set("tag", opt(status.tag.as_deref()));
        state.set("taken_at", opt(status.taken_at.as_deref()));
        state.set("message", opt(status.message.as_deref()));
    }

    fn progress(snap: &Snapshot) -> Progress {
        match snap.status.phase {
            StoragePhase::Ready => Progress::Ready,
            StoragePhase::Pending => Progress::Pending,
            StoragePhase::Failed => Progress::failed(snap.status.message.as_deref()),
        }
    }

    stored::client_calls!(create_snapshot, get_snapshot, delete_snapshot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::stored::{object_from, validate};

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::object(&[
            ("name", Value::string("before-upgrade")),
            ("vm", Value::string("web-1")),
        ])
        .with(pairs)
    }

    #[test]
    fn maps_both_ways_and_every_change_replaces() {
        let snap = object_from::<SnapshotKind>(&config(&[("memory", Value::Bool(true))])).unwrap();
        assert!(snap.spec.memory);
        let state = stored::state_of::<SnapshotKind>(&snap, &Value::Null);
        assert_eq!(state.get("vm").as_str(), Some("web-1"));
        let r = SnapshotResource::default();
        let p = plan(&r, state.clone(), state, config(&[]));
        assert_eq!(p.requires_replace, ["memory"]);
    }

    #[test]
    fn errors_land_on_the_attribute() {
        let d = validate::<SnapshotKind>(&config(&[("vm", Value::string("Web_1"))]));
        assert_eq!(d[0].path, ["vm"], "{d:?}");
        let d = validate::<SnapshotKind>(&config(&[("name", Value::string("A"))]));
        assert_eq!(d[0].path, ["name"], "{d:?}");
    }
}
