//! Manifest-level tests: whole VMs in and out of JSON.

use serde_json::{Value, json};

use super::*;
use crate::{ByteSize, Resource};

fn parse(value: Value) -> Result<Vm, String> {
    match serde_json::from_value::<Resource>(value) {
        Ok(resource) => Ok(resource.into_vm().expect("a Vm")),
        Err(e) => Err(e.to_string()),
    }
}

fn manifest(spec: Value) -> Value {
    json!({"kind": "Vm", "metadata": {"name": "web-1"}, "spec": spec})
}

/// A minimal valid spec with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut spec = json!({"boot": {"kernel": {"kernel": "/k/vmlinuz"}}});
    spec[field] = value;
    manifest(spec)
}

#[track_caller]
fn assert_rejected(value: Value, prefix: &str) {
    match parse(value) {
        Ok(vm) => panic!("accepted: {vm:?}"),
        Err(e) => assert!(e.starts_with(prefix), "expected {prefix:?}…, got {e:?}"),
    }
}

#[test]
fn minimal_manifest_gets_defaults() {
    let vm = parse(manifest(
        json!({"boot": {"kernel": {"kernel": "/k/vmlinuz"}}}),
    ))
    .unwrap();
    assert_eq!(vm.metadata.name, "web-1");
    assert_eq!(vm.metadata.uid, "");
    let spec = &vm.spec;
    assert_eq!(spec.cpus, 1);
    assert_eq!(spec.memory, ByteSize::from_mib(512));
    assert_eq!(spec.arch, Arch::X86_64);
    assert_eq!(spec.machine, None);
    assert_eq!(spec.machine(), Machine::Q35);
    assert_eq!(spec.accel, Accel::Auto);
    assert_eq!(spec.boot, Boot::kernel("/k/vmlinuz"));
    assert_eq!(spec.power, Power::Running);
    assert!(!spec.introspection);
    assert_eq!(spec.restart_policy, RestartPolicy::Never);
    assert_eq!(vm.status, VmStatus::default());
    assert_eq!(
        spec,
        &VmSpec::builder(Boot::kernel("/k/vmlinuz")).build().unwrap()
    );
}

#[test]
fn the_documented_example_parses() {
    // kind: Vm
    // metadata: {name: web-1, labels: {tier: web}}
    // spec: {cpus: 2, memory: 1G, boot: {kernel: {kernel: /k/vmlinuz, initrd: /k/initrd.img,
    //        cmdline: "console=ttyS0"}}}
    let vm = parse(json!({
        "kind": "Vm",
        "metadata": {"name": "web-1", "labels": {"tier": "web"}},
        "spec": {"cpus": 2, "memory": "1G", "boot": {"kernel": {
            "kernel": "/k/vmlinuz", "initrd": "/k/initrd.img", "cmdline": "console=ttyS0"
        }}}
    }))
    .unwrap();
    assert_eq!(vm.metadata.labels["tier"], "web");
    assert_eq!(vm.spec.cpus, 2);
    assert_eq!(vm.spec.memory.as_u64(), 1 << 30);
    assert_eq!(
        vm.spec.boot,
        Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: Some("console=ttyS0".into()),
        }
    );
}

#[test]
fn every_field_can_be_set() {
    let vm = parse(manifest(json!({
        "cpus": 4, "memory": 1073741824, "arch": "aarch64", "machine": "virt", "accel": "tcg",
        "boot": {"disk": {"path": "/img/root.qcow2", "format": "qcow2"}},
        "power": "paused", "introspection": true, "restart_policy": "on-failure"
    })))
    .unwrap();
    let expected = VmSpec::builder(Boot::Disk {
        path: "/img/root.qcow2".into(),
        format: Some(DiskFormat::Qcow2),
    })
    .cpus(4)
    .memory(ByteSize::from_gib(1))
    .arch(Arch::Aarch64)
    .machine(Machine::Virt)
    .accel(Accel::Tcg)
    .power(Power::Paused)
    .introspection(true)
    .restart_policy(RestartPolicy::OnFailure)
    .build()
    .unwrap();
    assert_eq!(vm.spec, expected);
    assert_eq!(
        parse(with("arch", json!("aarch64")))
            .unwrap()
            .spec
            .machine(),
        Machine::Virt
    );
    assert!(parse(with("machine", json!("microvm"))).is_ok());
}

#[test]
fn invalid_names_name_the_field() {
    for name in ["x".repeat(64), "Web-1".into(), "-web".into()] {
        let value = json!({"kind": "Vm", "metadata": {"name": name},
                           "spec": {"boot": {"kernel": {"kernel": "/k"}}}});
        assert_rejected(
            value,
            &format!("metadata.name: {name:?} is not a valid name"),
        );
    }
}

#[test]
fn cpus_must_be_in_range() {
    assert_rejected(
        with("cpus", json!(0)),
        "spec.cpus: must be between 1 and 256 (got 0)",
    );
    assert_rejected(
        with("cpus", json!(257)),
        "spec.cpus: must be between 1 and 256 (got 257)",
    );
    assert_rejected(
        with("cpus", json!("two")),
        "spec.cpus: invalid type: string \"two\"",
    );
    assert_rejected(
        with("cpus", json!(-1)),
        "spec.cpus: invalid value: integer `-1`",
    );
    assert!(parse(with("cpus", json!(256))).is_ok());
}

#[test]
fn memory_must_be_a_size_in_range() {
    assert_rejected(
        with("memory", json!("lots")),
        "spec.memory: \"lots\" is not a size: use bytes or a number with K, M, G or T \
         (binary units), e.g. 512M or 2G",
    );
    assert_rejected(
        with("memory", json!("15M")),
        "spec.memory: must be between 16M and 1T (got 15M)",
    );
    assert_rejected(
        with("memory", json!("2T")),
        "spec.memory: must be between 16M and 1T (got 2T)",
    );
    assert_rejected(
        with("memory", json!("1MB")),
        "spec.memory: \"1MB\" uses the decimal unit MB: sizes are binary (1024-based), so write M or MiB",
    );
    assert_rejected(
        with("memory", json!("0.3K")),
        "spec.memory: \"0.3K\" is not a whole number",
    );
    assert!(parse(with("memory", json!("16M"))).is_ok());
    assert!(parse(with("memory", json!("1T"))).is_ok());
}

#[test]
fn unknown_fields_are_rejected_at_every_level() {
    assert_rejected(
        with("cpu", json!(2)),
        "unknown field `cpu`, expected one of `cpus`",
    );
    let value = json!({"kind": "Vm", "metadata": {"name": "a", "lables": {}},
                       "spec": {"boot": {"kernel": {"kernel": "/k"}}}});
    assert_rejected(value, "unknown field `lables`, expected one of `name`");
    let value = json!({"kind": "Vm", "metadata": {"name": "a"}, "extra": 1,
                       "spec": {"boot": {"kernel": {"kernel": "/k"}}}});
    assert_rejected(value, "unknown field `extra`");
    assert_rejected(
        with(
            "boot",
            json!({"kernel": {"kernel": "/k", "initramfs": "/i"}}),
        ),
        "spec.boot: unknown field `initramfs`",
    );
    assert_rejected(
        with("boot", json!({"pxe": {}})),
        "spec.boot: unknown variant `pxe`",
    );
    assert_rejected(manifest(json!({})), "missing field `boot`");
}

#[test]
fn enum_fields_list_what_is_allowed() {
    assert_rejected(
        with("arch", json!("arm64")),
        "spec.arch: \"arm64\" is not a valid architecture: use x86_64 or aarch64",
    );
    assert_rejected(
        with("restart_policy", json!("on_failure")),
        "spec.restart_policy: \"on_failure\" is not a valid restart policy: \
         use never, on-failure or always",
    );
    assert_rejected(
        with("boot", json!({"disk": {"path": "/d", "format": "vmdk"}})),
        "spec.boot: \"vmdk\" is not a valid disk format: use qcow2 or raw",
    );
}

#[test]
fn machine_must_fit_the_arch() {
    assert_rejected(
        with("machine", json!("virt")),
        "spec.machine: virt is not available on x86_64: use q35 or microvm",
    );
    let mut value = with("machine", json!("q35"));
    value["spec"]["arch"] = json!("aarch64");
    assert_rejected(
        value,
        "spec.machine: q35 is not available on aarch64: use virt",
    );
}

#[test]
fn boot_paths_and_cmdline_are_checked() {
    let kernel = |k: Value| with("boot", json!({"kernel": k}));
    assert_rejected(
        kernel(json!({"kernel": "k/vmlinuz"})),
        "spec.boot.kernel.kernel: must be an absolute path (got \"k/vmlinuz\")",
    );
    assert_rejected(
        kernel(json!({"kernel": ""})),
        "spec.boot.kernel.kernel: must not be empty",
    );
    assert_rejected(
        kernel(json!({"kernel": "/k\u{0}x"})),
        "spec.boot.kernel.kernel: must not contain a NUL",
    );
    assert_rejected(
        kernel(json!({"kernel": "/k", "initrd": "initrd.img"})),
        "spec.boot.kernel.initrd: must be an absolute path",
    );
    assert_rejected(
        kernel(json!({"kernel": "/k", "cmdline": "console=ttyS0\ninit=/bin/sh"})),
        "spec.boot.kernel.cmdline: must be a single line",
    );
    assert_rejected(
        kernel(json!({"kernel": "/k", "cmdline": "x".repeat(4097)})),
        "spec.boot.kernel.cmdline: is 4097 bytes long: the limit is 4096",
    );
    assert!(parse(kernel(json!({"kernel": "/k", "cmdline": "x".repeat(4096)}))).is_ok());
    assert_rejected(
        with("boot", json!({"disk": {"path": "disk.img"}})),
        "spec.boot.disk.path: must be an absolute path",
    );
}

#[test]
fn serialises_with_kind_metadata_spec_and_status() {
    let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
        .cpus(2)
        .build()
        .unwrap();
    let vm = Vm::new("web-1".parse().unwrap(), spec);
    let json = serde_json::to_value(Resource::from(vm.clone())).unwrap();
    assert_eq!(json["kind"], "Vm");
    assert_eq!(json["metadata"]["name"], "web-1");
    assert_eq!(json["spec"]["cpus"], 2);
    assert_eq!(json["spec"]["memory"], "512M");
    assert_eq!(
        json["spec"]["boot"],
        json!({"kernel": {"kernel": "/k/vmlinuz"}})
    );
    assert_eq!(json["status"]["phase"], "Pending");
    assert!(
        json["spec"].get("machine").is_none(),
        "default machine is not written"
    );
    let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    // What a read prints can be written back.
    assert_eq!(
        serde_json::from_value::<Resource>(json).unwrap(),
        Resource::Vm(vm)
    );
}

#[test]
fn status_on_input_is_parsed() {
    let mut value = with("cpus", json!(1));
    value["status"] = json!({"phase": "Running", "pid": 7});
    let vm = parse(value).unwrap();
    assert_eq!((vm.status.phase, vm.status.pid), (Phase::Running, Some(7)));
}

#[test]
fn rust_built_values_are_validated() {
    let err = VmSpec::builder(Boot::kernel("/k"))
        .cpus(0)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.cpus: must be between 1 and 256 (got 0)"
    );
    let mut vm = Vm::new(
        "a".parse().unwrap(),
        VmSpec::builder(Boot::kernel("/k")).build().unwrap(),
    );
    assert!(vm.validate().is_ok());
    vm.spec.memory = ByteSize::from_mib(8);
    assert_eq!(vm.validate().unwrap_err().field, "spec.memory");
    let resource = Resource::from(vm);
    assert_eq!(resource.kind(), Kind::Vm);
    assert_eq!(resource.metadata().name, "a");
    assert!(resource.validate().is_err());
}
