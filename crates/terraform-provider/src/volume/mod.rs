//! `corral_volume`: a VM's disk, empty or cloned from an image. `size` grows in place
//! (online when a running VM uses it) and never shrinks; `image`, `kind` and `format`
//! replace the volume; labels change in place.

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{ByteSize, StoragePhase, Volume};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::resource::Outcome;
use crate::schema::{Attr, Schema};
use crate::stored::{self, Kind, Managed, Progress, Step, known, num, opt};
use crate::value::Value;

/// The `corral_volume` kind.
#[derive(Debug)]
pub struct VolumeKind;

/// The `corral_volume` resource.
pub type VolumeResource = Managed<VolumeKind>;

fn size_of(v: &Value) -> Option<ByteSize> {
    v.get("size").as_str()?.parse().ok()
}

#[async_trait]
impl Kind for VolumeKind {
    type Obj = Volume;
    const TYPE: &'static str = "corral_volume";
    const WHAT: &'static str = "volume";
    const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

    fn schema() -> Schema {
        let s = Value::string;
        let schema = stored::base_schema(
            "A block device for VMs: empty, or a thin qcow2 clone of an image. Growing `size` \
             resizes it in place (online when a running VM uses it); it never shrinks. \
             Changing `image`, `kind` or `format` replaces it.",
            "Unique name (lowercase letters, digits, '-'). Changing it replaces the volume.",
        )
        .attr(
            Attr::string_map("labels")
                .quiet()
                .describe("Key/value labels; changed in place."),
        )
        .attr(Attr::string("kind").default(s("disk")).replace().describe(
            "`disk` (default) or `weights` (a read-only full copy of an image). Changing it \
             replaces the volume.",
        ))
        .attr(
            Attr::string("format")
                .optional_computed()
                .replace()
                .describe(
                    "`qcow2` (default) or `raw`; a clone of an image is always qcow2. Changing it \
             replaces the volume.",
                ),
        )
        .attr(Attr::string("size").optional_computed().describe(
            "Size the guest sees, with a binary unit (`10G`). Required for an empty volume; \
             for a clone at least the image's size (default: the image's). Grows in place; \
             a smaller value is an error.",
        ))
        .attr(Attr::string("image").replace().describe(
            "Name of the image (a disk image) to clone. Changing it replaces the volume.",
        ))
        .attr(Attr::string("pool").replace().describe(
            "The storage pool to make it in (`corrald --storage-pool NAME=DIR[:shared]`); \
             default: the node's data directory, which keeps its VMs on that node. A volume \
             in a shared pool lets its VM run, move and restart on any node with the pool. \
             Changing it replaces the volume.",
        ));
        let schema = stored::identity(schema, "When corrald created the volume (RFC 3339).")
            .attr(
                Attr::string("phase")
                    .computed()
                    .describe("Pending, Ready or Failed."),
            )
            .attr(
                Attr::number("actual_size")
                    .computed()
                    .describe("Size the guest sees now, in bytes."),
            )
            .attr(
                Attr::string("path")
                    .computed()
                    .stable()
                    .describe("The volume's file on corrald's host."),
            )
            .attr(
                Attr::string("node")
                    .computed()
                    .describe("The node whose disk holds the volume (it moves with its VM)."),
            )
            .attr(
                Attr::bool("shared")
                    .computed()
                    .describe("Made in a shared pool: its VMs are not pinned to a node."),
            )
            .attr(
                Attr::string("image_digest")
                    .computed()
                    .stable()
                    .describe("For a clone: the digest of the image it was made from."),
            )
            .attr(
                Attr::string("message")
                    .computed()
                    .describe("Why the volume is where it is."),
            );
        stored::timeouts(
            schema,
            "For the volume to be Ready (default 5m).",
            Some("For a resize to be done (default 5m)."),
        )
    }

    fn attribute_for(field: &str) -> Option<&'static str> {
        Some(match field {
            "metadata.name" => "name",
            "metadata.labels" => "labels",
            "spec.kind" => "kind",
            "spec.format" => "format",
            "spec.size" => "size",
            "spec.image" => "image",
            "spec.pool" => "pool",
            _ => return None,
        })
    }

    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
        let mut spec = serde_json::Map::new();
        for name in ["kind", "format", "size", "image", "pool"] {
            if let Some(v) = known(config, name) {
                spec.insert(name.into(), v);
            }
        }
        // Unknown now, known at apply: stand in so the rest can be checked.
        if config.get("image") == &Value::Unknown {
            spec.insert("image".into(), json!("unknown-until-apply"));
        }
        if config.get("size") == &Value::Unknown && !spec.contains_key("image") {
            spec.insert("size".into(), json!("1G"));
        }
        Ok(json!({ "metadata": stored::metadata(config), "spec": spec }))
    }

    fn to_state(volume: &Volume, hint: &Value, state: &mut Value) {
        let spec = &volume.spec;
        state.set("kind", Value::string(spec.kind.as_str()));
        state.set("format", Value::string(spec.format().as_str()));
        let size = spec
            .size
            .or(volume.status.size.map(ByteSize::new))
            .map(|size| match hint.get("size").as_str() {
                Some(text) if text.parse::<ByteSize>().ok() == Some(size) => text.to_owned(),
                _ => size.to_string(),
            });
        state.set("size", opt(size.as_deref()));
        state.set("image", opt(spec.image.as_ref().map(|i| i.as_str())));
        state.set("pool", opt(spec.pool.as_ref().map(|p| p.as_str())));
        let status = &volume.status;
        state.set("phase", Value::string(status.phase.as_str()));
        state.set("actual_size", num(status.size));
        state.set("path", opt(status.path.as_deref()));
        state.set("node", opt(status.node.as_deref()));
        state.set("shared", Value::Bool(status.shared));
        state.set("image_digest", opt(status.image_digest.as_deref()));
        state.set("message", opt(status.message.as_deref()));
    }

    fn progress(volume: &Volume) -> Progress {
        let observed = volume.status.observed_generation >= volume.metadata.generation;
        match volume.status.phase {
            StoragePhase::Ready if observed => Progress::Ready,
            StoragePhase::Failed if observed => Progress::failed(volume.status.message.as_deref()),
            _ => Progress::Pending,
        }
    }

    fn refine_plan(plan: &mut Plan) {
        if plan.creating() {
            return;
        }
        if let (Some(was), Some(now)) = (size_of(&plan.prior), size_of(&plan.planned)) {
            if now < was {
                plan.diags.push(Diagnostic::attr_error(
                    &["size"],
                    "Volumes only grow",
                    format!(
                        "size {now} is smaller than the volume's current {was}: a volume never \
                         shrinks; create another volume (a new name) to get a smaller one"
                    ),
                ));
            }
        }
    }

    stored::client_calls!(create_volume, get_volume, delete_volume);

    async fn update(step: &Step<'_, Self>, current: Volume, wanted: Volume) -> Outcome<Volume> {
        let mut next = current;
        next.metadata.labels =
            stored::merge_labels(&next.metadata.labels, step.prior(), &wanted.metadata.labels);
        if wanted.spec.size.is_some() {
            next.spec.size = wanted.spec.size;
        }
        step.client()
            .update_volume(&next)
            .await
            .map_err(|e| step.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::resource::Resource;
    use crate::stored::{object_from, validate};

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::object(&[("name", Value::string("root"))]).with(pairs)
    }

    #[test]
    fn a_clone_maps_both_ways() {
        let vol = object_from::<VolumeKind>(&config(&[
            ("image", Value::string("debian")),
            ("size", Value::string("2G")),
        ]))
        .unwrap();
        assert_eq!(vol.spec.size, Some(ByteSize::from_gib(2)));
        let state =
            stored::state_of::<VolumeKind>(&vol, &config(&[("size", Value::string("2048M"))]));
        assert_eq!(state.get("size").as_str(), Some("2048M"));
        assert_eq!(state.get("format").as_str(), Some("qcow2"));
        assert_eq!(state.get("kind").as_str(), Some("disk"));
    }

    #[test]
    fn errors_land_on_the_attribute() {
        let d = validate::<VolumeKind>(&config(&[]));
        assert_eq!(d[0].path, ["size"], "{d:?}");
        let d = validate::<VolumeKind>(&config(&[("size", Value::string("1GB"))]));
        assert_eq!(d[0].path, ["size"], "{d:?}");
        let d = validate::<VolumeKind>(&config(&[
            ("image", Value::string("x")),
            ("format", Value::string("raw")),
        ]));
        assert_eq!(d[0].path, ["format"], "{d:?}");
        let d = validate::<VolumeKind>(&config(&[("kind", Value::string("weights"))]));
        assert_eq!(d[0].path, ["image"], "{d:?}");
        let d = validate::<VolumeKind>(&config(&[("image", Value::Unknown)]));
        assert!(d.is_empty(), "{d:?}");
    }

    fn prior() -> Value {
        let vol = object_from::<VolumeKind>(&config(&[
            ("image", Value::string("debian")),
            ("size", Value::string("2G")),
        ]))
        .unwrap();
        let mut state = stored::state_of::<VolumeKind>(&vol, &Value::Null);
        state.set("uid", Value::string("u-1"));
        state
    }

    #[test]
    fn growing_updates_in_place_and_shrinking_is_an_error() {
        let r = VolumeResource::default();
        let grow = config(&[
            ("image", Value::string("debian")),
            ("size", Value::string("4G")),
        ]);
        let p = plan(&r, prior(), prior(), grow);
        assert!(p.requires_replace.is_empty(), "{:?}", p.requires_replace);
        assert!(p.diags.is_empty());
        assert_eq!(p.planned.get("uid").as_str(), Some("u-1"));
        let shrink = config(&[
            ("image", Value::string("debian")),
            ("size", Value::string("1G")),
        ]);
        let p = plan(&r, prior(), prior(), shrink);
        assert_eq!(p.diags[0].path, ["size"]);
        assert!(p.diags[0].error);
        let other = config(&[("image", Value::string("ubuntu"))]);
        let p = plan(&r, prior(), prior(), other);
        assert_eq!(p.requires_replace, ["image"]);
        let _ = r.schema();
    }
}
