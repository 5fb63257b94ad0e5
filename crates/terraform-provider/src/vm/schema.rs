//! `corral_vm`'s attributes, and the mapping between them and the API's `Vm`.
//!
//! The attributes mirror `VmSpec` with the boot source flattened (`kernel`/`initrd`/`cmdline`
//! or `disk`/`disk_format`). A configuration becomes a `Vm` through the contract's own strict
//! deserialiser ([`stored::object_from`]), and its errors — which name the API field
//! (`spec.cpus: …`) — are put on the attribute that set it.

use corral_client::contract::{Boot, ByteSize, CloudInit, Phase, Power, Vm, VmSpec};
use serde_json::json;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::stored::{self, known, mentioned, opt};
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
            .initial(Value::Number(f64::from(VmSpec::DEFAULT_CPUS)))
            .describe("Number of vCPUs, 1-256 (default 1)."),
    )
    .attr(
        Attr::string("memory")
            .initial(s(&VmSpec::DEFAULT_MEMORY.to_string()))
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
    .attr(Attr::string("accel").initial(s("auto")).describe(
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
    .attr(Attr::string("power").default(s("running")).describe(
        "Wanted power state: `running` (default), `stopped` or `paused`. A VM that stopped on \
         its own reads as `stopped`, so the next apply starts it again.",
    ))
    .attr(
        Attr::bool("introspection")
            .initial(Value::Bool(false))
            .describe(
                "Back guest RAM with a shared file so the host can read it live (default false).",
            ),
    )
    .attr(Attr::string("restart_policy").initial(s("never")).quiet().describe(
        "What to do when the guest stops on its own: `never` (default), `on-failure` or `always`.",
    ))
    .list_block("volume", volume_block())
    .list_block("network", network_block())
    .block("cloud_init", cloud_init_block())
    .block("placement", placement_block());
    let mut schema = stored::identity(schema, "When corrald created the VM (RFC 3339).")
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
        .attr(Attr::string("node").computed().describe(
            "The node the VM is bound to (it changes when the VM is moved with `corral vm \
             migrate`).",
        ))
        .attr(Attr::string("migration_phase").computed().describe(
            "How the VM's last live migration ended or stands: Pending, Listening, Migrating, \
             Completed, Failed or Cancelled; null if it never moved.",
        ))
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
    // Version 1: `volumes = [names]` became `volume { name … }` blocks.
    schema.version = 1;
    stored::timeouts(
        schema,
        "For the VM to reach its power state after creation (default 5m).",
        Some("For the VM to reach its power state after a change (default 5m)."),
    )
}

fn volume_block() -> Schema {
    Schema::new(
        "A corrald Volume attached after the boot disk (`/dev/vdb`, … in the order written). \
         Changed in place: a running VM is stopped, changed and started again (same uid).",
    )
    .attr(
        Attr::string("name")
            .required()
            .describe("The Volume's name."),
    )
    .attr(
        Attr::bool("read_only")
            .default(Value::Bool(false))
            .describe("Attach it read-only (default false; weights volumes always are)."),
    )
    .attr(Attr::string("serial").describe(
        "Serial number the guest sees (`/dev/disk/by-id/virtio-<serial>`): 1-20 letters, \
         digits, '-', '_' or '.'.",
    ))
}

fn network_block() -> Schema {
    let forward =
        Schema::new("A host port forwarded to a guest port (user networks).")
            .attr(
                Attr::number("guest_port")
                    .required()
                    .describe("The guest's port, 1-65535."),
            )
            .attr(Attr::number("host_port").optional_computed().describe(
                "The host's port; unset, corrald picks a free one from its port range (read it \
             back from this attribute).",
            ))
            .attr(
                Attr::string("protocol")
                    .default(Value::string("tcp"))
                    .describe("`tcp` (default) or `udp`."),
            )
            .attr(Attr::string("host_address").describe(
                "The host address it listens on (default 127.0.0.1; others need an admin).",
            ));
    Schema::new("A network the VM joins: one NIC each, in the order written.")
        .attr(
            Attr::string("name")
                .required()
                .describe("The Network's name."),
        )
        .attr(Attr::string("mac").optional_computed().describe(
            "The NIC's MAC address; unset, corrald derives a stable one from the VM's uid.",
        ))
        .list_block("forward", forward)
}

fn cloud_init_block() -> Schema {
    Schema::new(
        "A cloud-init NoCloud seed attached to the VM. Set `user_data`, or let the provider \
         write it from `user`, `ssh_keys` and `hostname`.",
    )
    .attr(
        Attr::string("user_data").describe(
            "The `user-data` document: `#cloud-config` YAML or a script starting with `#!`.",
        ),
    )
    .attr(Attr::string("meta_data").describe("The `meta-data` document (YAML)."))
    .attr(
        Attr::string("network_config")
            .describe("The `network-config` document (netplan v2 or v1 YAML)."),
    )
    .attr(Attr::string("user").describe(
        "A user to create with `ssh_keys` and password-less sudo (root gets the keys too).",
    ))
    .attr(Attr::string_list("ssh_keys").describe("Public keys allowed to log in over ssh."))
    .attr(Attr::string("hostname").describe("The guest's hostname."))
}

fn placement_block() -> Schema {
    Schema::new(
        "Where the scheduler may put the VM when it places it (a running VM stays where it \
         is until it is placed again: drained, or its node lost).",
    )
    .attr(
        Attr::string_map("node_selector")
            .describe("Only nodes carrying every one of these labels (`{ zone = \"a\" }`)."),
    )
    .attr(Attr::string("anti_affinity").describe(
        "A group name: the scheduler prefers nodes holding no other VM of the same group.",
    ))
}

/// The cloud-init attributes the provider writes `user_data` from.
const CLOUD_INIT_SHORTHAND: [&str; 3] = ["user", "ssh_keys", "hostname"];

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
    ["cpus", "memory", "accel"].into_iter().chain(BOOT).chain([
        "volume",
        "network",
        "cloud_init",
        "introspection",
    ])
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
        f if f.starts_with("spec.volumes") => "volume",
        f if f.starts_with("spec.networks") => "network",
        f if f.starts_with("spec.cloud_init") => "cloud_init",
        f if f.starts_with("spec.placement") => "placement",
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
    spec.insert("volumes".into(), json!(volumes_of(config)));
    spec.insert("networks".into(), json!(networks_of(config)));
    let placement = config.get("placement");
    if let Value::Map(_) = placement {
        let mut p = serde_json::Map::new();
        if let Value::Map(selector) = placement.get("node_selector") {
            let selector: serde_json::Map<_, _> = selector
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), json!(v.as_str()?))))
                .collect();
            p.insert("node_selector".into(), json!(selector));
        }
        if let Some(group) = stored::known(placement, "anti_affinity") {
            p.insert("anti_affinity".into(), group);
        }
        spec.insert("placement".into(), json!(p));
    }
    match cloud_init_of(config) {
        Ok(Some(ci)) => {
            spec.insert("cloud_init".into(), ci);
        }
        Ok(None) => {}
        Err(d) => return Err(vec![d]),
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

/// The elements of list block `name` (none when it is unknown).
fn elements<'a>(config: &'a Value, name: &str) -> &'a [Value] {
    match config.get(name) {
        Value::List(items) => items,
        _ => &[],
    }
}

/// A known string attribute, or a placeholder that passes validation until apply.
fn string_or(config: &Value, name: &str, placeholder: String) -> serde_json::Value {
    known(config, name).unwrap_or(json!(placeholder))
}

fn volumes_of(config: &Value) -> Vec<serde_json::Value> {
    elements(config, "volume")
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut a = serde_json::Map::new();
            a.insert(
                "volume".into(),
                string_or(v, "name", format!("unknown-until-apply-{i}")),
            );
            if let Some(ro) = known(v, "read_only") {
                a.insert("readonly".into(), ro);
            }
            if let Some(serial) = known(v, "serial") {
                a.insert("serial".into(), serial);
            }
            json!(a)
        })
        .collect()
}

fn networks_of(config: &Value) -> Vec<serde_json::Value> {
    elements(config, "network")
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut a = serde_json::Map::new();
            a.insert(
                "network".into(),
                string_or(n, "name", format!("unknown-until-apply-{i}")),
            );
            if let Some(mac) = known(n, "mac") {
                a.insert("mac".into(), mac);
            }
            let forwards: Vec<_> = elements(n, "forward")
                .iter()
                .map(|f| {
                    let mut fwd = serde_json::Map::new();
                    fwd.insert(
                        "guest_port".into(),
                        known(f, "guest_port").unwrap_or(json!(1)),
                    );
                    for (attr, field) in [
                        ("host_port", "host_port"),
                        ("protocol", "protocol"),
                        ("host_address", "host_address"),
                    ] {
                        if let Some(v) = known(f, attr) {
                            fwd.insert(field.into(), v);
                        }
                    }
                    json!(fwd)
                })
                .collect();
            if !forwards.is_empty() {
                a.insert("forwards".into(), json!(forwards));
            }
            json!(a)
        })
        .collect()
}

/// The `cloud_init` block as the API's `CloudInit`; `user_data` written from the shorthand
/// attributes when they are set.
fn cloud_init_of(config: &Value) -> Result<Option<serde_json::Value>, Diagnostic> {
    let block = config.get("cloud_init");
    if block.is_null() || block.is_unknown() {
        return Ok(None);
    }
    let mut ci = serde_json::Map::new();
    for name in ["user_data", "meta_data", "network_config"] {
        if let Some(v) = known(block, name) {
            ci.insert(name.into(), v);
        }
    }
    let shorthand: Vec<&str> = CLOUD_INIT_SHORTHAND
        .into_iter()
        .filter(|n| !block.get(n).is_null())
        .collect();
    if !shorthand.is_empty() {
        if !block.get("user_data").is_null() {
            return Err(Diagnostic::attr_error(
                &["cloud_init"],
                "user_data with user, ssh_keys or hostname",
                format!(
                    "the provider writes user_data from {}; set either user_data or those",
                    shorthand.join(", ")
                ),
            ));
        }
        if let Some(user_data) = shorthand_user_data(block) {
            ci.insert("user_data".into(), json!(user_data));
        }
    }
    Ok(Some(json!(ci)))
}

/// The user-data the shorthand attributes of a `cloud_init` block stand for; `None` while one
/// of them is unknown.
fn shorthand_user_data(block: &Value) -> Option<String> {
    let user = block.get("user");
    let hostname = block.get("hostname");
    let keys = match block.get("ssh_keys") {
        Value::List(keys) => keys
            .iter()
            .map(|k| k.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?,
        Value::Null => Vec::new(),
        _ => return None,
    };
    if user.is_unknown() || hostname.is_unknown() {
        return None;
    }
    CloudInit::ssh_user_data(user.as_str(), &keys, hostname.as_str()).user_data
}

/// Plans what corrald picks for a network block — the MAC, a forward's host port — from the
/// prior block of the same network (and the forward of the same guest port and protocol),
/// not from the prior block at the same index: removing the first of two networks keeps the
/// second one's MAC. Unknown when there is none: corrald picks it on apply.
pub fn match_networks(plan: &mut crate::plan::Plan) {
    let prior = elements(&plan.prior, "network").to_vec();
    let config = elements(&plan.config, "network").to_vec();
    let Value::List(planned) = plan.planned.get("network").clone() else {
        return;
    };
    let planned = planned
        .into_iter()
        .zip(&config)
        .map(|(mut net, conf)| {
            let before = prior
                .iter()
                .find(|p| p.get("name") == conf.get("name") && !conf.get("name").is_unknown());
            let before = before.unwrap_or(&Value::Null);
            if conf.get("mac").is_null() {
                let mac = before.get("mac");
                net.set(
                    "mac",
                    if mac.is_null() {
                        Value::Unknown
                    } else {
                        mac.clone()
                    },
                );
            }
            let forwards: Vec<Value> = elements(&net, "forward")
                .iter()
                .zip(elements(conf, "forward"))
                .map(|(fwd, conf_fwd)| {
                    let mut fwd = fwd.clone();
                    if conf_fwd.get("host_port").is_null() {
                        let same = elements(before, "forward").iter().find(|b| {
                            b.get("guest_port") == fwd.get("guest_port")
                                && b.get("protocol") == fwd.get("protocol")
                        });
                        let port = same.map(|b| b.get("host_port").clone());
                        fwd.set(
                            "host_port",
                            port.filter(|p| !p.is_null()).unwrap_or(Value::Unknown),
                        );
                    }
                    fwd
                })
                .collect();
            net.set("forward", Value::List(forwards));
            net
        })
        .collect();
    plan.planned.set("network", Value::List(planned));
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

/// List block `name` as state: what the server has when `hint` mentions the block (or is an
/// import), else nothing — blocks a configuration leaves out are left to whoever set them.
fn shown(hint: &Value, name: &str, elements: impl Iterator<Item = Value>) -> Value {
    if mentioned(hint, name) {
        Value::List(elements.collect())
    } else {
        Value::List(Vec::new())
    }
}

/// A `cloud_init` block as state, in the form `hint` wrote it: the shorthand attributes when
/// they stand for exactly the user-data the VM has, else the documents.
fn cloud_init_state(ci: &CloudInit, hint: &Value) -> Value {
    let mut state = Value::object(&[
        ("user_data", opt(ci.user_data.as_deref())),
        ("meta_data", opt(ci.meta_data.as_deref())),
        ("network_config", opt(ci.network_config.as_deref())),
        ("user", Value::Null),
        ("ssh_keys", Value::Null),
        ("hostname", Value::Null),
    ]);
    let uses_shorthand = CLOUD_INIT_SHORTHAND.iter().any(|n| !hint.get(n).is_null());
    if uses_shorthand && shorthand_user_data(hint).as_deref() == ci.user_data.as_deref() {
        state.set("user_data", Value::Null);
        for name in CLOUD_INIT_SHORTHAND {
            state.set(name, hint.get(name).clone());
        }
    }
    state
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
    let volumes = spec.volumes.iter().map(|a| {
        Value::object(&[
            ("name", s(a.volume.as_str())),
            ("read_only", Value::Bool(a.readonly)),
            ("serial", opt(a.serial.as_deref())),
        ])
    });
    state.set("volume", shown(hint, "volume", volumes));
    let networks = spec.networks.iter().map(|n| {
        let forwards = n.forwards.iter().map(|f| {
            Value::object(&[
                ("guest_port", Value::Number(f64::from(f.guest_port))),
                (
                    "host_port",
                    f.host_port
                        .map_or(Value::Null, |p| Value::Number(f64::from(p))),
                ),
                ("protocol", s(f.protocol.as_str())),
                (
                    "host_address",
                    f.host_address.map_or(Value::Null, |a| s(&a.to_string())),
                ),
            ])
        });
        Value::object(&[
            ("name", s(n.network.as_str())),
            ("mac", n.mac.map_or(Value::Null, |m| s(&m.to_string()))),
            ("forward", Value::List(forwards.collect())),
        ])
    });
    state.set("network", shown(hint, "network", networks));
    let cloud_init = match &spec.cloud_init {
        Some(ci) if mentioned(hint, "cloud_init") => cloud_init_state(ci, hint.get("cloud_init")),
        _ => Value::Null,
    };
    state.set("cloud_init", cloud_init);
    let placement = &spec.placement;
    let shown = mentioned(hint, "placement") && !placement.is_empty();
    let placement = if shown {
        let selector = placement
            .node_selector
            .iter()
            .map(|(k, v)| (k.clone(), s(v)))
            .collect::<std::collections::BTreeMap<_, _>>();
        Value::object(&[
            (
                "node_selector",
                if selector.is_empty() {
                    Value::Null
                } else {
                    Value::Map(selector)
                },
            ),
            ("anti_affinity", opt(placement.anti_affinity.as_deref())),
        ])
    } else {
        Value::Null
    };
    state.set("placement", placement);
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
    state.set("node", opt(status.node.as_deref()));
    state.set(
        "migration_phase",
        opt(status.migration.as_ref().map(|m| m.phase.as_str())),
    );
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

    fn volume(name: &str, extra: &[(&str, Value)]) -> Value {
        Value::object(&[("name", Value::string(name))]).with(extra)
    }

    #[test]
    fn volume_blocks_are_attachments_in_order_with_their_options() {
        let vm = vm_from(&config(&[(
            "volume",
            Value::List(vec![
                volume("root", &[]),
                volume(
                    "data",
                    &[
                        ("read_only", Value::Bool(true)),
                        ("serial", Value::string("data-1")),
                    ],
                ),
            ]),
        )]))
        .unwrap();
        let attached: Vec<_> = vm
            .spec
            .volumes
            .iter()
            .map(|a| (a.volume.as_str(), a.readonly, a.serial.as_deref()))
            .collect();
        assert_eq!(
            attached,
            [("root", false, None), ("data", true, Some("data-1"))]
        );
        let state = state(&vm, &Value::Null);
        let Value::List(blocks) = state.get("volume") else {
            panic!("volume blocks in {state:?}")
        };
        assert_eq!(blocks[1].get("serial").as_str(), Some("data-1"));
        assert_eq!(blocks[1].get("read_only"), &Value::Bool(true));
        assert_eq!(vm_from(&state).unwrap().spec.volumes, vm.spec.volumes);

        let twice = Value::List(vec![volume("root", &[]), volume("root", &[])]);
        assert_eq!(
            validate::<VmKind>(&config(&[("volume", twice)]))[0].path,
            ["volume"]
        );
        let bad = Value::List(vec![volume("root", &[("serial", Value::string("a b"))])]);
        let diags = validate::<VmKind>(&config(&[("volume", bad)]));
        assert_eq!(diags[0].path, ["volume"], "{diags:?}");
        let unknown = Value::List(vec![Value::object(&[("name", Value::Unknown)])]);
        assert_eq!(validate::<VmKind>(&config(&[("volume", unknown)])), vec![]);
    }

    fn network(name: &str, forwards: &[(u16, Option<u16>)]) -> Value {
        let forwards = forwards
            .iter()
            .map(|(guest, host)| {
                Value::object(&[
                    ("guest_port", Value::Number(f64::from(*guest))),
                    (
                        "host_port",
                        host.map_or(Value::Null, |p| Value::Number(f64::from(p))),
                    ),
                    ("protocol", Value::string("tcp")),
                ])
            })
            .collect();
        Value::object(&[
            ("name", Value::string(name)),
            ("forward", Value::List(forwards)),
        ])
    }

    #[test]
    fn network_blocks_carry_forwards_and_read_back_what_corrald_picked() {
        let conf = config(&[(
            "network",
            Value::List(vec![network("default", &[(22, None), (80, Some(8080))])]),
        )]);
        let mut vm = vm_from(&conf).unwrap();
        let att = &vm.spec.networks[0];
        assert_eq!(att.network.as_str(), "default");
        assert_eq!(att.forwards[0].guest_port, 22);
        assert_eq!(att.forwards[0].host_port, None);
        assert_eq!(att.forwards[1].host_port, Some(8080));
        // corrald picks the MAC and the free port.
        vm.spec.networks[0].forwards[0].host_port = Some(30022);
        vm.spec.networks[0].mac = Some("52:54:00:12:34:56".parse().unwrap());
        let state = state(&vm, &conf);
        let net = &elements(&state, "network")[0];
        assert_eq!(net.get("mac").as_str(), Some("52:54:00:12:34:56"));
        assert_eq!(
            elements(net, "forward")[0].get("host_port"),
            &Value::Number(30022.0)
        );
        assert_eq!(vm_from(&state).unwrap().spec.networks, vm.spec.networks);

        let bad = config(&[(
            "network",
            Value::List(vec![network("default", &[(0, None)])]),
        )]);
        assert_eq!(validate::<VmKind>(&bad)[0].path, ["network"]);
    }

    #[test]
    fn blocks_the_configuration_leaves_out_are_not_drift() {
        let mut vm = vm_from(&config(&[])).unwrap();
        vm.spec.networks = vec![corral_client::contract::NetworkAttachment::new(
            "default".parse().unwrap(),
        )];
        vm.spec.cloud_init = Some(CloudInit {
            user_data: Some("#cloud-config\n".into()),
            ..CloudInit::default()
        });
        vm.metadata
            .labels
            .insert("set-by".into(), "someone-else".into());
        // What Terraform wrote: no network, no cloud-init, labels without that key.
        let prior = config(&[("labels", Value::object(&[("tier", Value::string("web"))]))]);
        vm.metadata.labels.insert("tier".into(), "web".into());
        let state = state(&vm, &prior);
        assert_eq!(state.get("network"), &Value::List(vec![]));
        assert_eq!(state.get("cloud_init"), &Value::Null);
        assert_eq!(
            state.get("labels"),
            &Value::object(&[("tier", Value::string("web"))])
        );
        // An import shows everything.
        let imported = state_of::<VmKind>(&vm, &Value::Null);
        assert_eq!(elements(&imported, "network").len(), 1);
        assert!(!imported.get("cloud_init").is_null());
        assert_eq!(imported.get("labels").as_map().map(|m| m.len()), Some(2));
    }

    #[test]
    fn placement_is_a_block_that_reads_back() {
        let block = Value::object(&[
            (
                "node_selector",
                Value::object(&[("zone", Value::string("a"))]),
            ),
            ("anti_affinity", Value::string("web")),
        ]);
        let conf = config(&[("placement", block.clone())]);
        let vm = vm_from(&conf).unwrap();
        assert_eq!(vm.spec.placement.node_selector["zone"], "a");
        assert_eq!(vm.spec.placement.anti_affinity.as_deref(), Some("web"));
        assert_eq!(state(&vm, &conf).get("placement"), &block);
        // Not in the configuration: whatever the VM has is no drift.
        assert_eq!(state(&vm, &config(&[])).get("placement"), &Value::Null);
        let bad = Value::object(&[("anti_affinity", Value::string("not a label!"))]);
        let diags = validate::<VmKind>(&config(&[("placement", bad)]));
        assert_eq!(diags[0].path, ["placement"], "{diags:?}");
    }

    #[test]
    fn cloud_init_shorthand_writes_user_data_and_reads_back_as_written() {
        let block = Value::object(&[
            ("user", Value::string("dev")),
            (
                "ssh_keys",
                Value::List(vec![Value::string("ssh-ed25519 AAAA me")]),
            ),
            ("hostname", Value::string("web-1")),
        ]);
        let conf = config(&[("cloud_init", block.clone())]);
        let vm = vm_from(&conf).unwrap();
        let user_data = vm
            .spec
            .cloud_init
            .as_ref()
            .unwrap()
            .user_data
            .clone()
            .unwrap();
        assert!(user_data.contains("ssh-ed25519 AAAA me"), "{user_data}");
        assert!(user_data.contains("\"dev\""), "{user_data}");
        let state = state(&vm, &conf);
        assert_eq!(state.get("cloud_init").get("user"), &Value::string("dev"));
        assert_eq!(state.get("cloud_init").get("user_data"), &Value::Null);
        // Changed out of band: the documents show, so the plan puts the shorthand back.
        let mut changed = vm.clone();
        changed.spec.cloud_init.as_mut().unwrap().user_data = Some("#!/bin/sh\n".into());
        let state = state_of::<VmKind>(&changed, &conf);
        assert_eq!(state.get("cloud_init").get("user"), &Value::Null);
        assert_eq!(
            state.get("cloud_init").get("user_data").as_str(),
            Some("#!/bin/sh\n")
        );
        let both = block.with(&[("user_data", Value::string("#cloud-config\n"))]);
        let diags = validate::<VmKind>(&config(&[("cloud_init", both)]));
        assert_eq!(diags[0].path, ["cloud_init"], "{diags:?}");
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
