//! `corral_vm`'s attributes, and the mapping between them and the API's `Vm`.
//!
//! The attributes mirror `VmSpec` with the boot source flattened (`kernel`/`initrd`/`cmdline`
//! or `disk`/`disk_format`). A configuration becomes a `Vm` through the contract's own strict
//! deserialiser ([`stored::object_from`]), and its errors — which name the API field
//! (`spec.cpus: …`) — are put on the attribute that set it.

use corral_client::contract::{Boot, ByteSize, Phase, Power, Vm, VmSpec};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::stored::{self, known, list_state, names, opt};
use crate::value::Value;

/// The resource's schema.
pub fn resource_schema() -> Schema {
    let s = |v: &str| Value::string(v);
    let schema = stored::base_schema(
        "A virtual machine run by corrald. Hardware changes (cpus, memory, boot, accel, \
         introspection) are made in place: a running VM is restarted in a new QEMU process with \
         the same uid. Only `name`, `arch` and `machine` replace it.",
        "Unique name: 1-63 lowercase letters, digits and '-', starting and ending with a \
         letter or digit. Changing it replaces the VM.",
    )
    .attr(
        Attr::string_map("labels")
            .quiet()
            .describe("Key/value labels, for selection (`corral vm list -l tier=web`)."),
    )
    .attr(
        Attr::number("cpus")
            .default(Value::Number(f64::from(VmSpec::DEFAULT_CPUS)))
            .describe("Number of vCPUs, 1-256 (default 1)."),
    )
    .attr(
        Attr::string("memory")
            .default(s(&VmSpec::DEFAULT_MEMORY.to_string()))
            .describe("Guest RAM with a binary unit: `512M`, `2G` (16M-1T, default 512M)."),
    )
    .attr(
        Attr::string("arch")
            .default(s("x86_64"))
            .replace()
            .describe(
                "Guest architecture: `x86_64` (default) or `aarch64`. Changing it replaces the VM.",
            ),
    )
    .attr(
        Attr::string("machine")
            .optional_computed()
            .replace()
            .describe(
                "Machine type: `q35` (x86_64 default), `microvm`, or `virt` (aarch64). Changing it \
         replaces the VM.",
            ),
    )
    .attr(Attr::string("accel").default(s("auto")).describe(
        "Accelerator: `auto` (default: KVM when usable, else TCG), `kvm`, `hvf` or `tcg`.",
    ))
    .attr(
        Attr::string("kernel")
            .describe("Absolute host path of a kernel to boot directly. Set `kernel` or `disk`."),
    )
    .attr(
        Attr::string("initrd")
            .describe("Absolute host path of an initial ramdisk (with `kernel`)."),
    )
    .attr(
        Attr::string("cmdline")
            .describe("Kernel command line (with `kernel`), one line, at most 4096 bytes."),
    )
    .attr(Attr::string("disk").describe(
        "Absolute host path of a disk image that firmware boots. Set `kernel` or `disk`.",
    ))
    .attr(Attr::string("disk_format").describe(
        "Format of `disk`: `qcow2` or `raw`; unset, it is read from the file before boot.",
    ))
    .attr(Attr::string("boot_volume").describe(
        "Name of a corrald Volume that firmware boots (it becomes the first disk). Set exactly \
         one of `kernel`, `disk` or `boot_volume`.",
    ))
    .attr(Attr::string_list("volumes").describe(
        "Names of corrald Volumes attached read-write after the boot disk, in order. Changed in \
         place: a running VM is stopped, changed and started again (same uid).",
    ))
    .attr(Attr::string("power").default(s("running")).describe(
        "Wanted power state: `running` (default), `stopped` or `paused`. A VM that stopped on \
         its own reads as `stopped`, so the next apply starts it again.",
    ))
    .attr(
        Attr::bool("introspection")
            .default(Value::Bool(false))
            .describe(
                "Back guest RAM with a shared file so the host can read it live (default false).",
            ),
    )
    .attr(Attr::string("restart_policy").default(s("never")).quiet().describe(
        "What to do when the guest stops on its own: `never` (default), `on-failure` or `always`.",
    ));
    let schema = stored::identity(schema, "When corrald created the VM (RFC 3339).")
        .attr(Attr::string("phase").computed().describe(
            "Where the VM is: Pending, Starting, Running, Paused, Stopping, Stopped or Failed.",
        ))
        .attr(
            Attr::number("pid")
                .computed()
                .describe("Host pid of the QEMU process, while there is one."),
        )
        .attr(
            Attr::string("accelerator")
                .computed()
                .describe("The accelerator in use (never `auto`)."),
        )
        .attr(
            Attr::string("qemu_version")
                .computed()
                .describe("Version of the QEMU running the VM."),
        )
        .attr(
            Attr::string("started_at")
                .computed()
                .describe("When the current QEMU process started (RFC 3339)."),
        )
        .attr(
            Attr::string("message")
                .computed()
                .describe("Why the VM is where it is, e.g. why it failed."),
        );
    stored::timeouts(
        schema,
        "For the VM to reach its power state after creation (default 5m).",
        Some("For the VM to reach its power state after a change (default 5m)."),
    )
}

/// The attributes that say what the VM boots.
const BOOT: [&str; 6] = [
    "kernel",
    "initrd",
    "cmdline",
    "disk",
    "disk_format",
    "boot_volume",
];

/// Attributes that describe the VM's hardware: changing one on a running VM restarts it.
pub fn hardware() -> impl Iterator<Item = &'static str> {
    ["cpus", "memory", "accel"]
        .into_iter()
        .chain(BOOT)
        .chain(["volumes", "introspection"])
}

/// The attribute that sets an API field (`spec.cpus` → `cpus`).
pub fn attribute_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "metadata.name" => "name",
        "metadata.labels" => "labels",
        "spec.cpus" => "cpus",
        "spec.memory" => "memory",
        "spec.arch" => "arch",
        "spec.machine" => "machine",
        "spec.accel" => "accel",
        "spec.boot" | "spec.boot.kernel" | "spec.boot.kernel.kernel" => "kernel",
        "spec.boot.kernel.initrd" => "initrd",
        "spec.boot.kernel.cmdline" => "cmdline",
        "spec.boot.disk" | "spec.boot.disk.path" => "disk",
        "spec.boot.disk.format" => "disk_format",
        "spec.boot.volume" | "spec.boot.volume.volume" => "boot_volume",
        f if f.starts_with("spec.volumes") => "volumes",
        "spec.power" => "power",
        "spec.introspection" => "introspection",
        "spec.restart_policy" => "restart_policy",
        _ => return None,
    })
}

/// The API's JSON for the VM a configuration declares. Unknown values are left out (the
/// contract's defaults stand in), so a configuration can be checked before apply; errors on
/// attributes that are unknown are then dropped by the caller.
pub fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
    let known = |name: &str| known(config, name);
    let set = |name: &str| !config.get(name).is_null();
    let mut diags = Vec::new();
    let sources: Vec<&str> = ["kernel", "disk", "boot_volume"]
        .into_iter()
        .filter(|name| set(name))
        .collect();
    let boot = match (set("kernel"), set("disk")) {
        _ if sources.len() > 1 => {
            diags.push(Diagnostic::attr_error(
                &[sources[1]],
                "Two boot sources",
                format!(
                    "set one of kernel (direct kernel boot), disk or boot_volume (firmware boots \
                     it), not {}",
                    sources.join(" and ")
                ),
            ));
            json!(null)
        }
        _ if set("boot_volume") => {
            for name in ["initrd", "cmdline", "disk_format"] {
                if set(name) {
                    diags.push(Diagnostic::attr_error(
                        &[name],
                        format!("{name} with boot_volume"),
                        format!("{name} does not apply to a boot volume; remove it"),
                    ));
                }
            }
            let volume = known("boot_volume").unwrap_or(json!("unknown-until-apply"));
            json!({ "volume": { "volume": volume } })
        }
        (true, _) => {
            if set("disk_format") {
                diags.push(Diagnostic::attr_error(
                    &["disk_format"],
                    "disk_format without disk",
                    "disk_format is the format of disk; remove it when booting a kernel",
                ));
            }
            let mut kernel = serde_json::Map::new();
            kernel.insert(
                "kernel".into(),
                known("kernel").unwrap_or(json!("/unknown-until-apply")),
            );
            for name in ["initrd", "cmdline"] {
                if let Some(v) = known(name) {
                    kernel.insert(name.into(), v);
                }
            }
            json!({ "kernel": kernel })
        }
        (false, true) => {
            for name in ["initrd", "cmdline"] {
                if set(name) {
                    diags.push(Diagnostic::attr_error(
                        &[name],
                        format!("{name} without kernel"),
                        format!("{name} goes with kernel (direct kernel boot); a disk boots by its own bootloader"),
                    ));
                }
            }
            let mut disk = serde_json::Map::new();
            disk.insert(
                "path".into(),
                known("disk").unwrap_or(json!("/unknown-until-apply")),
            );
            if let Some(v) = known("disk_format") {
                disk.insert("format".into(), v);
            }
            json!({ "disk": disk })
        }
        (false, false) => {
            diags.push(Diagnostic::error(
                "No boot source",
                "set kernel (a kernel to boot directly, with initrd and cmdline), disk (a \
                 disk image that firmware boots) or boot_volume (a Volume that firmware boots)",
            ));
            json!(null)
        }
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut spec = serde_json::Map::new();
    spec.insert("boot".into(), boot);
    if let Some(volumes) = names(config, "volumes") {
        let attachments: Vec<_> = volumes.iter().map(|v| json!({ "volume": v })).collect();
        spec.insert("volumes".into(), json!(attachments));
    }
    for name in [
        "cpus",
        "memory",
        "arch",
        "machine",
        "accel",
        "power",
        "introspection",
        "restart_policy",
    ] {
        if let Some(v) = known(name) {
            spec.insert(name.into(), v);
        }
    }
    Ok(json!({ "metadata": stored::metadata(config), "spec": spec }))
}

/// The power state as Terraform should see it: the declared one, except that a VM declared
/// running or paused which is down (it shut itself down, or failed) reads as `stopped`, so
/// the plan shows that applying will start it.
pub fn effective_power(vm: &Vm) -> Power {
    let observed = vm.status.observed_generation >= vm.metadata.generation;
    match vm.spec.power {
        Power::Running | Power::Paused
            if observed && matches!(vm.status.phase, Phase::Stopped | Phase::Failed) =>
        {
            Power::Stopped
        }
        power => power,
    }
}

/// The VM's own attributes of `vm`, written the way `hint` (the planned or prior state) wrote
/// equal values: memory `1024M` stays `1024M` when corrald says `1G`.
pub fn to_state(vm: &Vm, hint: &Value, state: &mut Value) {
    let s = |v: &str| Value::string(v);
    let spec = &vm.spec;
    state.set("cpus", Value::Number(f64::from(spec.cpus)));
    let memory = match hint.get("memory").as_str() {
        Some(text) if text.parse::<ByteSize>().ok() == Some(spec.memory) => s(text),
        _ => s(&spec.memory.to_string()),
    };
    state.set("memory", memory);
    state.set("arch", s(spec.arch.as_str()));
    state.set("machine", s(spec.machine().as_str()));
    state.set("accel", s(spec.accel.as_str()));
    let path = |p: &std::path::Path| Value::string(p.display().to_string());
    for name in BOOT {
        state.set(name, Value::Null);
    }
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            state.set("kernel", path(kernel));
            state.set("initrd", initrd.as_deref().map_or(Value::Null, path));
            state.set("cmdline", opt(cmdline.as_deref()));
        }
        Boot::Disk { path: disk, format } => {
            state.set("disk", path(disk));
            state.set("disk_format", opt(format.map(|f| f.as_str())));
        }
        Boot::Volume { volume } => {
            state.set("boot_volume", s(volume.as_str()));
        }
    }
    let volumes = spec.volumes.iter().map(|a| a.volume.as_str());
    state.set("volumes", list_state(volumes, "volumes", hint));
    state.set("power", s(effective_power(vm).as_str()));
    state.set("introspection", Value::Bool(spec.introspection));
    state.set("restart_policy", s(spec.restart_policy.as_str()));
    let status = &vm.status;
    state.set("phase", s(status.phase.as_str()));
    state.set(
        "pid",
        status
            .pid
            .map_or(Value::Null, |p| Value::Number(f64::from(p))),
    );
    state.set("accelerator", opt(status.accelerator.map(|a| a.as_str())));
    state.set("qemu_version", opt(status.qemu_version.as_deref()));
    state.set("started_at", opt(status.started_at.as_deref()));
    state.set("message", opt(status.message.as_deref()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::{field_error, object_from, state_of, validate};
    use crate::vm::VmKind;

    fn vm_from(config: &Value) -> Result<Vm, Vec<Diagnostic>> {
        object_from::<VmKind>(config)
    }

    fn state(vm: &Vm, hint: &Value) -> Value {
        state_of::<VmKind>(vm, hint)
    }

    fn config(pairs: &[(&str, Value)]) -> Value {
        Value::object(&[
            ("name", Value::string("web-1")),
            ("kernel", Value::string("/k/vmlinuz")),
        ])
        .with(pairs)
    }

    #[test]
    fn a_configuration_becomes_the_api_vm() {
        let mut labels = Value::Null;
        labels.set("tier", Value::string("web"));
        let vm = vm_from(&config(&[
            ("cpus", Value::Number(2.0)),
            ("memory", Value::string("1G")),
            ("labels", labels),
            ("cmdline", Value::string("console=ttyS0")),
        ]))
        .unwrap();
        assert_eq!(vm.metadata.name.as_str(), "web-1");
        assert_eq!(vm.metadata.labels["tier"], "web");
        assert_eq!(vm.spec.cpus, 2);
        assert_eq!(vm.spec.memory, ByteSize::from_gib(1));
        let state = state(&vm, &config(&[("memory", Value::string("1024M"))]));
        assert_eq!(state.get("memory").as_str(), Some("1024M"));
        assert_eq!(state.get("machine").as_str(), Some("q35"));
        assert_eq!(state.get("cmdline").as_str(), Some("console=ttyS0"));
        assert_eq!(state.get("disk"), &Value::Null);
        let back = vm_from(&state).unwrap().spec;
        assert_eq!(
            (back.machine(), back.memory, &back.boot),
            (vm.spec.machine(), vm.spec.memory, &vm.spec.boot)
        );
    }

    #[test]
    fn contract_errors_land_on_the_attribute() {
        let diags = validate::<VmKind>(&config(&[("cpus", Value::Number(0.0))]));
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].path, ["cpus"]);
        assert_eq!(diags[0].summary, "Invalid cpus");
        assert!(
            diags[0]
                .detail
                .starts_with("must be between 1 and 256 (got 0)"),
            "{:?}",
            diags[0]
        );
        let diags = validate::<VmKind>(&config(&[("memory", Value::string("1GB"))]));
        assert_eq!(diags[0].path, ["memory"]);
        assert!(diags[0].detail.contains("decimal unit"), "{:?}", diags[0]);
        let diags = validate::<VmKind>(&config(&[("arch", Value::string("arm"))]));
        assert_eq!(diags[0].path, ["arch"]);
        assert!(
            diags[0].detail.contains("x86_64 or aarch64"),
            "{:?}",
            diags[0]
        );
        let diags = validate::<VmKind>(&config(&[("kernel", Value::string("vmlinuz"))]));
        assert_eq!(diags[0].path, ["kernel"]);
        let diags = validate::<VmKind>(&config(&[("name", Value::string("Web_1"))]));
        assert_eq!(diags[0].path, ["name"]);
    }

    #[test]
    fn boot_sources_are_exclusive() {
        let diags = validate::<VmKind>(&config(&[("disk", Value::string("/d.qcow2"))]));
        assert_eq!(diags[0].path, ["disk"]);
        let mut none = config(&[]);
        none.set("kernel", Value::Null);
        assert_eq!(validate::<VmKind>(&none)[0].summary, "No boot source");
        let diags = validate::<VmKind>(&config(&[("disk_format", Value::string("raw"))]));
        assert_eq!(diags[0].path, ["disk_format"]);
        let diags = validate::<VmKind>(&config(&[("boot_volume", Value::string("root"))]));
        assert_eq!(diags[0].path, ["boot_volume"], "{diags:?}");
        assert!(
            diags[0].detail.contains("kernel and boot_volume"),
            "{diags:?}"
        );
        let mut volume = config(&[("boot_volume", Value::string("root"))]);
        volume.set("kernel", Value::Null);
        volume.set("cmdline", Value::Null);
        volume.set("initrd", Value::Null);
        assert_eq!(validate::<VmKind>(&volume), vec![]);
    }

    #[test]
    fn unknown_values_are_checked_at_apply() {
        let diags = validate::<VmKind>(&config(&[
            ("kernel", Value::Unknown),
            ("cpus", Value::Unknown),
        ]));
        assert!(diags.is_empty(), "{diags:?}");
    }

    #[test]
    fn volumes_are_read_write_attachments_in_order() {
        let names = |v: &[Value]| Value::List(v.to_vec());
        let vm = vm_from(&config(&[(
            "volumes",
            names(&[Value::string("root"), Value::string("data")]),
        )]))
        .unwrap();
        let attached: Vec<_> = vm.spec.volumes.iter().map(|a| a.volume.as_str()).collect();
        assert_eq!(attached, ["root", "data"]);
        assert!(vm.spec.volumes.iter().all(|a| !a.readonly));
        let state = state(&vm, &Value::Null);
        assert_eq!(
            state.get("volumes"),
            &names(&[Value::string("root"), Value::string("data")])
        );
        let twice = names(&[Value::string("root"), Value::string("root")]);
        assert_eq!(
            validate::<VmKind>(&config(&[("volumes", twice)]))[0].path,
            ["volumes"]
        );
        let unknown = names(&[Value::Unknown, Value::Unknown]);
        assert_eq!(validate::<VmKind>(&config(&[("volumes", unknown)])), vec![]);
    }

    #[test]
    fn bad_timeouts_are_named() {
        let mut timeouts = Value::Null;
        timeouts.set("create", Value::string("5 parsecs"));
        let diags = validate::<VmKind>(&config(&[("timeouts", timeouts)]));
        assert_eq!(diags[0].path, ["timeouts", "create"]);
    }

    #[test]
    fn server_messages_map_to_attributes() {
        let d = field_error::<VmKind>("spec.boot.kernel.kernel: /nope: No such file or directory");
        assert_eq!(d.path, ["kernel"]);
        let d = field_error::<VmKind>("VM \"a\" is being deleted");
        assert!(d.path.is_empty());
    }
}
