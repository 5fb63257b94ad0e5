//! `corral_image`: the resource and the data source. Images are immutable — corrald has no
//! update for them — so every input replaces the image.

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{Image, ImageSource, StoragePhase};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::stored::{self, Kind, Lookup, Managed, Progress, known, num, opt};
use crate::value::Value;

/// The `corral_image` kind.
#[derive(Debug)]
pub struct ImageKind;

/// The `corral_image` resource.
pub type ImageResource = Managed<ImageKind>;

/// The `corral_image` data source.
pub fn data_source() -> Lookup<ImageKind> {
    Lookup::new("An image that exists in corrald, read by name.")
}

#[async_trait]
impl Kind for ImageKind {
    type Obj = Image;
    const TYPE: &'static str = "corral_image";
    const WHAT: &'static str = "image";
    const CREATE_TIMEOUT: Duration = Duration::from_secs(600);

    fn schema() -> Schema {
        let schema = stored::base_schema(
            "Bytes corrald stores once, by their BLAKE3 digest: a disk image to clone volumes \
             from, or a kernel or initrd. Images are immutable: changing any argument replaces \
             the image.",
            "Unique name (lowercase letters, digits, '-'). Changing it replaces the image.",
        )
        .attr(
            Attr::string_map("labels")
                .replace()
                .describe("Key/value labels. Images are immutable: changing them replaces it."),
        )
        .attr(Attr::string("path").replace().describe(
            "Absolute path of the file on corrald's host to import. Set `path` or `url`.",
        ))
        .attr(
            Attr::string("url")
                .replace()
                .describe("An http:// or https:// URL corrald downloads. Set `path` or `url`."),
        )
        .attr(
            Attr::string("format")
                .optional_computed()
                .replace()
                .describe(
                    "`qcow2`, `raw`, `kernel` or `initrd`. Left out, corrald detects qcow2 or raw; \
             kernels and initrds must be declared.",
                ),
        )
        .attr(Attr::string("checksum").replace().describe(
            "What the bytes must hash to: `sha256:<hex>`, `sha512:<hex>` or `blake3:<hex>` (as \
             a publisher's SHA256SUMS gives it). An import whose bytes differ fails and stores \
             nothing.",
        ))
        .attr(
            Attr::bool("shared")
                .default(Value::Bool(false))
                .replace()
                .describe(
                    "Usable from every project (default false). Only an admin may share, and \
                     only an image of project `default`.",
                ),
        );
        let schema = stored::identity(schema, "When corrald created the image (RFC 3339).")
            .attr(
                Attr::string("digest")
                    .computed()
                    .stable()
                    .describe("`blake3:<hex>` of the stored bytes."),
            )
            .attr(
                Attr::number("size")
                    .computed()
                    .stable()
                    .describe("Bytes stored."),
            )
            .attr(
                Attr::number("virtual_size")
                    .computed()
                    .stable()
                    .describe("For disk images, the size the guest sees, in bytes."),
            )
            .attr(
                Attr::string("phase")
                    .computed()
                    .describe("Pending, Ready or Failed (bytes no longer match the digest)."),
            )
            .attr(
                Attr::string("message")
                    .computed()
                    .describe("Why the image is where it is."),
            );
        stored::timeouts(
            schema,
            "For corrald to store the bytes (default 10m).",
            None,
        )
    }

    fn attribute_for(field: &str) -> Option<&'static str> {
        Some(match field {
            "metadata.name" => "name",
            "metadata.labels" => "labels",
            "spec.source" | "spec.source.path" => "path",
            "spec.source.url" => "url",
            "spec.format" => "format",
            "spec.checksum" => "checksum",
            "spec.shared" => "shared",
            _ => return None,
        })
    }

    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
        let set = |name: &str| !config.get(name).is_null();
        let source = match (set("path"), set("url")) {
            (true, true) => {
                return Err(vec![Diagnostic::attr_error(
                    &["url"],
                    "Two image sources",
                    "set one of path (a file on corrald's host) or url, not both",
                )]);
            }
            (true, false) => {
                json!({ "path": known(config, "path").unwrap_or(json!("/unknown-until-apply")) })
            }
            (false, true) => json!({
                "url": known(config, "url").unwrap_or(json!("https://unknown-until-apply"))
            }),
            (false, false) => {
                return Err(vec![Diagnostic::error(
                    "No image source",
                    "set path (an absolute path on corrald's host) or url (http:// or https://)",
                )]);
            }
        };
        let mut spec = serde_json::Map::new();
        spec.insert("source".into(), source);
        for name in ["format", "checksum", "shared"] {
            if let Some(v) = known(config, name) {
                spec.insert(name.into(), v);
            }
        }
        Ok(json!({ "metadata": stored::metadata(config), "spec": spec }))
    }

    fn to_state(image: &Image, _: &Value, state: &mut Value) {
        let (path, url) = match &image.spec.source {
            ImageSource::Path(p) => (Value::string(p.display().to_string()), Value::Null),
            ImageSource::Url(u) => (Value::Null, Value::string(u)),
            ImageSource::Upload { .. } | ImageSource::Build(_) | ImageSource::Template(_) => {
                (Value::Null, Value::Null)
            }
        };
        state.set("path", path);
        state.set("url", url);
        let format = image.spec.format.or(image.status.format);
        state.set("format", opt(format.map(|f| f.as_str())));
        state.set("checksum", opt(image.spec.checksum.as_deref()));
        state.set("shared", Value::Bool(image.spec.shared));
        let status = &image.status;
        state.set("digest", opt(status.digest.as_deref()));
        state.set("size", num(status.size));
        state.set("virtual_size", num(status.virtual_size));
        state.set("phase", Value::string(status.phase.as_str()));
        state.set("message", opt(status.message.as_deref()));
    }

    fn progress(image: &Image) -> Progress {
        match image.status.phase {
            StoragePhase::Ready => Progress::Ready,
            StoragePhase::Pending => Progress::Pending,
            StoragePhase::Failed => Progress::failed(image.status.message.as_deref()),
        }
    }

    stored::client_calls!(create_image, get_image, delete_image);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::{object_from, validate};

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::object(&[("name", Value::string("debian"))]).with(pairs)
    }

    #[test]
    fn a_configuration_becomes_the_api_image_and_back() {
        let image = object_from::<ImageKind>(&config(&[
            ("path", Value::string("/srv/boot.qcow2")),
            ("format", Value::string("qcow2")),
        ]))
        .unwrap();
        assert_eq!(
            image.spec.source,
            ImageSource::Path("/srv/boot.qcow2".into())
        );
        let state = stored::state_of::<ImageKind>(&image, &Value::Null);
        assert_eq!(state.get("path").as_str(), Some("/srv/boot.qcow2"));
        assert_eq!(state.get("url"), &Value::Null);
        assert_eq!(state.get("format").as_str(), Some("qcow2"));
        assert_eq!(state.get("phase").as_str(), Some("Pending"));
    }

    #[test]
    fn errors_land_on_the_attribute() {
        let d = validate::<ImageKind>(&config(&[("path", Value::string("boot.qcow2"))]));
        assert_eq!(d[0].path, ["path"], "{d:?}");
        let d = validate::<ImageKind>(&config(&[("url", Value::string("ftp://x"))]));
        assert_eq!(d[0].path, ["url"], "{d:?}");
        let d = validate::<ImageKind>(&config(&[
            ("path", Value::string("/a")),
            ("format", Value::string("vmdk")),
        ]));
        assert_eq!(d[0].path, ["format"], "{d:?}");
        let d = validate::<ImageKind>(&config(&[]));
        assert_eq!(d[0].summary, "No image source");
        let d = validate::<ImageKind>(&config(&[
            ("path", Value::string("/a")),
            ("url", Value::string("https://x/a")),
        ]));
        assert_eq!(d[0].path, ["url"]);
        let d = validate::<ImageKind>(&config(&[("path", Value::Unknown)]));
        assert!(d.is_empty(), "{d:?}");
    }
}
