//! The protobuf form: round trips, the same validation as manifests, wire bytes, descriptors
//! and the generated stubs.

use prost::Message as _;
use serde_json::{Value, json};

use crate::pb;
use crate::{
    Accel, Arch, Boot, ByteSize, Condition, DiskFormat, ExitInfo, Machine, ObjectMeta, Phase,
    Power, Resource, RestartPolicy, ValidationError, Vm, VmSpec, VmStatus,
};

/// A VM with every field set: labels, annotations, server metadata, kernel boot with initrd
/// and command line, and a full status.
fn full_vm() -> Vm {
    let spec = VmSpec::builder(Boot::Kernel {
        kernel: "/k/vmlinuz".into(),
        initrd: Some("/k/initrd.img".into()),
        cmdline: Some("console=ttyS0 quiet".into()),
    })
    .cpus(4)
    .memory(ByteSize::from_gib(2))
    .arch(Arch::X86_64)
    .machine(Machine::Microvm)
    .accel(Accel::Tcg)
    .power(Power::Paused)
    .introspection(true)
    .restart_policy(RestartPolicy::OnFailure)
    .build()
    .unwrap();
    let mut vm = Vm::new("web-1".parse().unwrap(), spec);
    let meta = &mut vm.metadata;
    meta.labels.insert("tier".into(), "web".into());
    meta.labels
        .insert("app.kubernetes.io/name".into(), "".into());
    meta.annotations
        .insert("example.com/note".into(), "any text\n at all".into());
    meta.uid = "4f1c2a".into();
    meta.resource_version = 17;
    meta.generation = 3;
    meta.created_at = Some("2025-01-02T03:04:05Z".into());
    meta.deleting = true;
    vm.status = VmStatus {
        phase: Phase::Failed,
        observed_generation: 3,
        pid: Some(4242),
        accelerator: Some(Accel::Tcg),
        started_at: Some("2025-01-02T03:04:06Z".into()),
        boot_time_ms: Some(850),
        exit: Some(ExitInfo {
            code: None,
            signal: Some(9),
            reason: "killed".into(),
        }),
        qemu_version: Some("10.0.0".into()),
        restarted_for: Some("2025-01-02T03:00:00Z".into()),
        message: Some("QEMU was killed by signal 9".into()),
        expires_at: Some("2025-01-02T05:00:00Z".into()),
        ..VmStatus::default()
    };
    vm.status.set_condition(Condition {
        last_transition: Some("2025-01-02T03:04:07Z".into()),
        ..Condition::new("Ready", false, "QemuExited", "killed")
    });
    vm.status
        .set_condition(Condition::new("Paused", true, "", ""));
    vm
}

/// The message of a minimal VM: a name and a kernel; everything else unset.
fn minimal() -> pb::Vm {
    pb::Vm {
        metadata: Some(pb::ObjectMeta {
            name: "web-1".into(),
            ..pb::ObjectMeta::default()
        }),
        spec: Some(pb::VmSpec {
            boot: Some(pb::Boot {
                source: Some(pb::boot::Source::Kernel(pb::KernelBoot {
                    kernel: "/k/vmlinuz".into(),
                    ..pb::KernelBoot::default()
                })),
            }),
            ..pb::VmSpec::default()
        }),
        status: None,
    }
}

fn spec_mut(vm: &mut pb::Vm) -> &mut pb::VmSpec {
    vm.spec.as_mut().unwrap()
}

fn kernel_mut(vm: &mut pb::Vm) -> &mut pb::KernelBoot {
    match &mut spec_mut(vm).boot.as_mut().unwrap().source {
        Some(pb::boot::Source::Kernel(kernel)) => kernel,
        other => panic!("not a kernel boot: {other:?}"),
    }
}

#[track_caller]
fn round_trip(vm: &Vm) {
    let message = pb::Vm::from(vm);
    assert_eq!(&Vm::try_from(message.clone()).unwrap(), vm);
    let decoded = pb::Vm::decode(message.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, message);
    assert_eq!(&Vm::try_from(decoded).unwrap(), vm);
}

#[track_caller]
fn rejected(vm: pb::Vm) -> ValidationError {
    match Vm::try_from(vm) {
        Ok(vm) => panic!("accepted: {vm:?}"),
        Err(err) => err,
    }
}

/// The error the manifest path gives for the same VM, as a string.
fn manifest_error(metadata: Value, spec: Value) -> String {
    let manifest = json!({"kind": "Vm", "metadata": metadata, "spec": spec});
    serde_json::from_value::<Resource>(manifest)
        .unwrap_err()
        .to_string()
}

#[test]
fn full_vm_round_trips() {
    let vm = full_vm();
    round_trip(&vm);
    let message = pb::Vm::from(&vm);
    let spec = message.spec.as_ref().unwrap();
    assert_eq!(spec.cpus, Some(4));
    assert_eq!(spec.memory_bytes, Some(2 << 30));
    assert_eq!(spec.machine(), pb::Machine::Microvm);
    assert_eq!(spec.restart_policy(), pb::RestartPolicy::OnFailure);
    let meta = message.metadata.as_ref().unwrap();
    assert_eq!(meta.labels["tier"], "web");
    assert_eq!(meta.created_at, "2025-01-02T03:04:05Z");
    let status = message.status.as_ref().unwrap();
    assert_eq!(status.phase(), pb::Phase::Failed);
    assert_eq!(status.conditions[0].r#type, "Ready");
    assert_eq!(status.conditions[1].last_transition, "");
    assert_eq!(Vm::try_from(pb::Vm::from(vm.clone())).unwrap(), vm);
}

#[test]
fn every_enum_value_round_trips() {
    let base = full_vm();
    let mut specs = Vec::new();
    for arch in Arch::ALL {
        for machine in arch.machines() {
            specs.push(VmSpec {
                arch: *arch,
                machine: Some(*machine),
                ..base.spec.clone()
            });
        }
        specs.push(VmSpec {
            arch: *arch,
            machine: None,
            ..base.spec.clone()
        });
    }
    for accel in Accel::ALL {
        specs.push(VmSpec {
            accel: *accel,
            ..base.spec.clone()
        });
    }
    for power in Power::ALL {
        specs.push(VmSpec {
            power: *power,
            ..base.spec.clone()
        });
    }
    for restart_policy in RestartPolicy::ALL {
        specs.push(VmSpec {
            restart_policy: *restart_policy,
            ..base.spec.clone()
        });
    }
    let formats = DiskFormat::ALL.iter().copied().map(Some).chain([None]);
    for format in formats {
        specs.push(VmSpec {
            boot: Boot::Disk {
                path: "/img/disk.qcow2".into(),
                format,
            },
            ..base.spec.clone()
        });
    }
    for spec in specs {
        spec.validate().unwrap();
        round_trip(&Vm {
            spec,
            ..base.clone()
        });
    }
    let accelerators = Accel::ALL.iter().copied().map(Some).chain([None]);
    for (phase, accelerator) in Phase::ALL.iter().zip(accelerators.cycle()) {
        let status = VmStatus {
            phase: *phase,
            accelerator,
            ..base.status.clone()
        };
        round_trip(&Vm {
            status,
            ..base.clone()
        });
    }
    round_trip(&Vm {
        status: VmStatus::default(),
        ..base
    });
}

#[test]
fn unset_fields_get_the_manifest_defaults() {
    let vm = Vm::try_from(minimal()).unwrap();
    let expected = Vm::new(
        "web-1".parse().unwrap(),
        VmSpec::builder(Boot::kernel("/k/vmlinuz")).build().unwrap(),
    );
    assert_eq!(vm, expected);
    assert_eq!(vm.spec.machine(), Machine::Q35);
    let manifest = json!({
        "kind": "Vm",
        "metadata": {"name": "web-1"},
        "spec": {"boot": {"kernel": {"kernel": "/k/vmlinuz"}}},
    });
    let from_json = serde_json::from_value::<Resource>(manifest).unwrap();
    assert_eq!(from_json.into_vm().unwrap(), vm);

    // An aarch64 spec without a machine gets virt, as in a manifest.
    let mut message = minimal();
    spec_mut(&mut message).set_arch(pb::Arch::Aarch64);
    let vm = Vm::try_from(message).unwrap();
    assert_eq!(vm.spec.machine, None);
    assert_eq!(vm.spec.machine(), Machine::Virt);
}

#[test]
fn invalid_input_names_the_field_as_a_manifest_does() {
    let name = "web-1";
    let kernel = json!({"kernel": {"kernel": "/k/vmlinuz"}});

    let mut vm = minimal();
    vm.metadata.as_mut().unwrap().name = "Bad_Name".into();
    let err = rejected(vm);
    assert_eq!(err.field, "metadata.name");
    let json = manifest_error(json!({"name": "Bad_Name"}), json!({"boot": kernel}));
    assert_eq!(err.to_string(), json);

    let mut vm = minimal();
    spec_mut(&mut vm).cpus = Some(0);
    let err = rejected(vm);
    assert_eq!(err.field, "spec.cpus");
    assert_eq!(
        err.to_string(),
        "spec.cpus: must be between 1 and 256 (got 0)"
    );
    let json = manifest_error(json!({"name": name}), json!({"cpus": 0, "boot": kernel}));
    assert_eq!(err.to_string(), json);

    let mut vm = minimal();
    spec_mut(&mut vm).memory_bytes = Some(1);
    let err = rejected(vm);
    assert_eq!(err.field, "spec.memory");
    let json = manifest_error(json!({"name": name}), json!({"memory": 1, "boot": kernel}));
    assert_eq!(err.to_string(), json);

    let mut vm = minimal();
    spec_mut(&mut vm).set_arch(pb::Arch::X8664);
    spec_mut(&mut vm).set_machine(pb::Machine::Virt);
    let err = rejected(vm);
    assert_eq!(err.field, "spec.machine");
    assert_eq!(
        err.to_string(),
        "spec.machine: virt is not available on x86_64: use q35 or microvm"
    );
    let json = manifest_error(
        json!({"name": name}),
        json!({"arch": "x86_64", "machine": "virt", "boot": kernel}),
    );
    assert_eq!(err.to_string(), json);

    let mut vm = minimal();
    kernel_mut(&mut vm).kernel = "vmlinuz".into();
    let err = rejected(vm);
    assert_eq!(err.field, "spec.boot.kernel.kernel");
    let json = manifest_error(
        json!({"name": name}),
        json!({"boot": {"kernel": {"kernel": "vmlinuz"}}}),
    );
    assert_eq!(err.to_string(), json);

    let mut vm = minimal();
    kernel_mut(&mut vm).initrd = Some("".into());
    assert_eq!(rejected(vm).field, "spec.boot.kernel.initrd");

    let mut vm = minimal();
    kernel_mut(&mut vm).cmdline = Some("a\nb".into());
    assert_eq!(rejected(vm).field, "spec.boot.kernel.cmdline");

    let mut vm = minimal();
    spec_mut(&mut vm).boot = Some(pb::Boot {
        source: Some(pb::boot::Source::Disk(pb::DiskBoot {
            path: "disk.qcow2".into(),
            format: 0,
        })),
    });
    assert_eq!(rejected(vm).field, "spec.boot.disk.path");

    let mut vm = minimal();
    vm.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("my tier".into(), "web".into());
    assert_eq!(rejected(vm).field, "metadata.labels");

    let mut vm = minimal();
    vm.metadata
        .as_mut()
        .unwrap()
        .annotations
        .insert("a note".into(), "x".into());
    assert_eq!(rejected(vm).field, "metadata.annotations");
}

#[test]
fn missing_parts_are_required() {
    let mut vm = minimal();
    spec_mut(&mut vm).boot = None;
    let err = rejected(vm);
    assert_eq!(err.field, "spec.boot");
    assert_eq!(
        err.to_string(),
        "spec.boot: required: set kernel, disk or volume"
    );

    let mut vm = minimal();
    spec_mut(&mut vm).boot = Some(pb::Boot { source: None });
    assert_eq!(
        rejected(vm).to_string(),
        "spec.boot: required: set kernel, disk or volume"
    );

    let mut vm = minimal();
    vm.spec = None;
    assert_eq!(rejected(vm).to_string(), "spec: required");

    let mut vm = minimal();
    vm.metadata = None;
    assert_eq!(rejected(vm).to_string(), "metadata: required");

    let mut vm = minimal();
    vm.metadata.as_mut().unwrap().name.clear();
    assert_eq!(rejected(vm).field, "metadata.name");
}

#[test]
fn unknown_enum_numbers_are_refused_in_a_spec() {
    let mut vm = minimal();
    spec_mut(&mut vm).arch = 99;
    assert_eq!(
        rejected(vm).to_string(),
        "spec.arch: 99 is not a valid architecture: use ARCH_X86_64 or ARCH_AARCH64"
    );
    type Set = fn(&mut pb::VmSpec);
    let cases: [(&str, Set); 5] = [
        ("spec.machine", |s| s.machine = 7),
        ("spec.accel", |s| s.accel = -1),
        ("spec.power", |s| s.power = 4),
        ("spec.restart_policy", |s| s.restart_policy = 4),
        ("spec.boot.disk.format", |s| {
            s.boot = Some(pb::Boot {
                source: Some(pb::boot::Source::Disk(pb::DiskBoot {
                    path: "/img/d".into(),
                    format: 3,
                })),
            })
        }),
    ];
    for (field, set) in cases {
        let mut vm = minimal();
        set(spec_mut(&mut vm));
        assert_eq!(rejected(vm).field, field);
    }
}

#[test]
fn status_is_read_leniently() {
    let status = VmStatus::from(pb::VmStatus {
        phase: 42,
        accelerator: 42,
        ..pb::VmStatus::default()
    });
    assert_eq!(status.phase, Phase::Pending);
    assert_eq!(status.accelerator, None);
    assert_eq!(VmStatus::from(pb::VmStatus::default()), VmStatus::default());
    let mut vm = minimal();
    vm.status = Some(pb::VmStatus {
        phase: pb::Phase::Running as i32,
        ..pb::VmStatus::default()
    });
    assert_eq!(Vm::try_from(vm).unwrap().status.phase, Phase::Running);
}

#[test]
fn standalone_parts_validate_too() {
    let boot = pb::Boot {
        source: Some(pb::boot::Source::Kernel(pb::KernelBoot {
            kernel: "vmlinuz".into(),
            ..pb::KernelBoot::default()
        })),
    };
    assert_eq!(
        crate::Boot::try_from(boot).unwrap_err().field,
        "spec.boot.kernel.kernel"
    );
    let meta = pb::ObjectMeta {
        name: "db".into(),
        ..pb::ObjectMeta::default()
    };
    let meta = ObjectMeta::try_from(meta).unwrap();
    assert_eq!(meta, ObjectMeta::new("db".parse().unwrap()));
}

#[test]
fn bytes_decode_to_the_same_vm() {
    let vm = full_vm();
    let bytes = pb::Vm::from(&vm).encode_to_vec();
    let decoded = Vm::try_from(pb::Vm::decode(bytes.as_slice()).unwrap()).unwrap();
    assert_eq!(decoded, vm);
    // Sorted maps make the encoding deterministic.
    assert_eq!(pb::Vm::from(&decoded).encode_to_vec(), bytes);

    let request = pb::CreateVmRequest {
        vm: Some(pb::Vm::from(&vm)),
    };
    let decoded = pb::CreateVmRequest::decode(request.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, request);
    // An unset optional stays unset on the wire, so absent cpus still mean the default.
    let decoded = pb::Vm::decode(minimal().encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.spec.as_ref().unwrap().cpus, None);
    let mut zero = minimal();
    spec_mut(&mut zero).cpus = Some(0);
    let decoded = pb::Vm::decode(zero.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.spec.as_ref().unwrap().cpus, Some(0));
}

#[test]
fn file_descriptor_set_describes_the_services() {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let file = set
        .file
        .iter()
        .find(|f| f.name() == "corral/v1/corral.proto")
        .unwrap();
    assert_eq!(file.package(), "corral.v1");
    let services: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect();
    assert!(
        services.contains(&"corral.v1.VmService".to_owned()),
        "{services:?}"
    );
    assert!(services.contains(&"corral.v1.SystemService".to_owned()));
    let vm_service = file
        .service
        .iter()
        .find(|s| s.name() == "VmService")
        .unwrap();
    let methods: Vec<_> = vm_service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "Create",
            "Get",
            "List",
            "Update",
            "Delete",
            "Watch",
            "Start",
            "Stop",
            "Pause",
            "Resume",
            "Restart",
            "Migrate",
            "CancelMigration",
            "ConsoleLog"
        ]
    );
    let watch = &vm_service.method[5];
    assert!(watch.server_streaming());
    assert_eq!(watch.output_type(), ".corral.v1.VmEvent");
    // Comments travel with it, for reflection clients that show them.
    assert!(file.source_code_info.is_some());
}

#[test]
fn validation_errors_are_invalid_argument() {
    let err = rejected({
        let mut vm = minimal();
        spec_mut(&mut vm).cpus = Some(0);
        vm
    });
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "spec.cpus: must be between 1 and 256 (got 0)"
    );
}

/// The generated server and client talk to each other in memory: the client drives the
/// server's tower service directly, through real gRPC framing.
#[tokio::test]
async fn generated_client_calls_generated_server() {
    use pb::system_service_client::SystemServiceClient;
    use pb::system_service_server::{SystemService, SystemServiceServer};

    struct Fixed;

    #[tonic::async_trait]
    impl SystemService for Fixed {
        async fn version(
            &self,
            _request: tonic::Request<pb::VersionRequest>,
        ) -> Result<tonic::Response<pb::VersionResponse>, tonic::Status> {
            Ok(tonic::Response::new(pb::VersionResponse {
                version: "0.1.0".into(),
                git_commit: None,
                store: "sqlite".into(),
                node: "node-1".into(),
            }))
        }
    }

    let mut client = SystemServiceClient::new(SystemServiceServer::new(Fixed));
    let reply = client
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.store, "sqlite");
    assert_eq!(reply.git_commit, None);
    assert_eq!(
        <SystemServiceServer<Fixed> as tonic::server::NamedService>::NAME,
        "corral.v1.SystemService"
    );
    assert_eq!(
        <pb::vm_service_server::VmServiceServer<()> as tonic::server::NamedService>::NAME,
        "corral.v1.VmService"
    );
}
