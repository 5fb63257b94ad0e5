//! The committed OpenAPI document against the live router (every route documented, only
//! those) and against the contract types and the API's output.

use std::collections::BTreeSet;

use corral_contract::{
    Accel, Arch, Boot, ByteSize, Condition, DiskFormat, ExitInfo, Machine, ObjectMeta, Phase,
    Power, Resource, RestartPolicy, Vm, VmSpec, VmStatus,
};
use corral_testkit::http::{Api, Reply, eventually};
use corral_testkit::openapi::{
    ANNOTATIONS, ASSERTIONS, Validator, collect_refs, collect_schemas, keys,
};
use serde_json::{Value, json};

mod common;
use common::{DOC, ROUTES, api, boot_files, daemon, manifest, set, u64_at};

/// The committed document, as the daemon serves it.
async fn served_document(api: &Api) -> Value {
    let reply = api.get("/openapi.json").await;
    let doc = reply.expect(200);
    assert_eq!(doc, *DOC.doc(), "the daemon serves the committed document");
    doc
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Whether the answer came from a REST route rather than from the router's fallbacks: a
/// method the path does not have (405), no such path (axum: an empty 404), or the gRPC
/// router's `unimplemented` answer (`grpc-status: 12`), which catches unknown paths.
fn routed(reply: &Reply) -> bool {
    let no_endpoint = String::from_utf8_lossy(&reply.body).contains("no such endpoint");
    reply.status != 405
        && reply.header("grpc-status").is_none()
        && !(reply.status == 404 && (reply.body.is_empty() || no_endpoint))
}

#[tokio::test]
async fn the_document_describes_every_route_and_only_those() {
    let d = daemon();
    let api = api(&d);
    let doc = served_document(&api).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
    assert_eq!(
        listed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );

    // Every listed route is served, and answers with a status its operation documents.
    // Requests that change nothing: an unknown VM, or an invalid body.
    for (method, template) in ROUTES {
        let path = template.replace("{name}", "absent");
        let body = matches!(*method, "POST" | "PUT").then_some(&b"{}"[..]);
        let reply = api.send(method, &path, body).await;
        assert!(routed(&reply), "{method} {path} is not routed: {reply:?}");
        let operation = &doc["paths"][*template][method.to_ascii_lowercase()];
        assert!(
            operation["responses"]
                .get(reply.status.to_string())
                .is_some(),
            "{method} {template} answered {} which its operation does not document",
            reply.status
        );
        assert!(operation["operationId"].is_string(), "{method} {template}");
    }
    // And the check above can tell: near misses are not routed.
    for (method, path) in [
        ("GET", "/v1/vms/absent/reboot"),
        ("GET", "/v1/vm"),
        ("DELETE", "/v1/vms"),
        ("POST", "/v1/vms/absent"),
        ("GET", "/v1/vms/absent/start"),
        ("POST", "/healthz"),
    ] {
        let reply = api.send(method, path, None).await;
        assert!(!routed(&reply), "{method} {path} is routed: {reply:?}");
        // A mistyped REST path is a JSON error, never a gRPC answer.
        assert!(
            reply.header("grpc-status").is_none(),
            "{method} {path}: {reply:?}"
        );
    }

    // Every operation documents 401 (TCP), and every reference resolves — but the web
    // console's page, files and logout, which answer before anyone has logged in, and agents'
    // join, whose credential is the join token in its body.
    let console = [
        ("GET", "/ui"),
        ("GET", "/ui/"),
        ("GET", "/ui/assets/{file}"),
        ("DELETE", "/ui/session"),
        ("POST", "/v1/nodes/join"),
    ];
    for (method, path) in &documented {
        if console.contains(&(method.as_str(), path.as_str())) {
            continue;
        }
        let operation = &doc["paths"][path][method.to_ascii_lowercase()];
        assert!(
            operation["responses"].get("401").is_some(),
            "{method} {path}"
        );
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert!(
        scheme["description"].as_str().unwrap().contains("TCP"),
        "{scheme}"
    );
}

fn words<T: std::fmt::Display>(all: &[T]) -> Vec<String> {
    all.iter().map(ToString::to_string).collect()
}

/// A VM with every optional field of the contract set, as the API would write it out.
fn full_vm(boot: Boot) -> Vm {
    let spec = VmSpec::builder(boot)
        .cpus(2)
        .memory(ByteSize::from_gib(1))
        .machine(Machine::Microvm)
        .accel(Accel::Tcg)
        .power(Power::Paused)
        .introspection(true)
        .restart_policy(RestartPolicy::OnFailure)
        .volume(corral_contract::VolumeAttachment {
            volume: "data".parse().unwrap(),
            readonly: true,
            serial: Some("d1".into()),
        })
        .network(corral_contract::NetworkAttachment {
            network: "default".parse().unwrap(),
            mac: Some("02:c0:00:00:00:01".parse().unwrap()),
            forwards: vec![corral_contract::PortForward {
                guest_port: 22,
                host_port: Some(20022),
                protocol: corral_contract::Protocol::Tcp,
                host_address: Some("127.0.0.1".parse().unwrap()),
            }],
        })
        .cloud_init(corral_contract::CloudInit {
            user_data: Some("#cloud-config\n".into()),
            meta_data: Some("instance-id: x\n".into()),
            network_config: Some("version: 2\n".into()),
        })
        .placement(corral_contract::Placement {
            node_selector: [("zone".to_owned(), "a".to_owned())].into(),
            anti_affinity: Some("web".into()),
        })
        .template("golden".parse().unwrap())
        .build()
        .unwrap();
    let mut spec = spec;
    spec.shares.push(corral_contract::Share {
        host_path: "/srv/project".into(),
        tag: "project".into(),
        read_only: true,
    });
    let mut vm = Vm::new("full".parse().unwrap(), spec);
    vm.metadata = ObjectMeta::new("full".parse().unwrap())
        .with_label("tier", "web")
        .in_project("default".parse().unwrap());
    vm.metadata
        .annotations
        .insert("example.com/note".into(), "any text".into());
    vm.metadata.uid = "0b1c5bde-7b5e-4c36-9d4b-8b1f8f0c2d3e".into();
    vm.metadata.resource_version = 7;
    vm.metadata.generation = 3;
    vm.metadata.created_at = Some("2025-01-02T03:04:05.678Z".into());
    vm.metadata.deleting = true;
    let mut condition = Condition::new("Ready", false, "QemuExited", "killed");
    condition.last_transition = Some("2025-01-02T03:04:06Z".into());
    vm.status = VmStatus {
        phase: Phase::Failed,
        conditions: vec![condition],
        observed_generation: 3,
        pid: Some(4242),
        accelerator: Some(Accel::Tcg),
        started_at: Some("2025-01-02T03:04:05Z".into()),
        boot_time_ms: Some(850),
        exit: Some(ExitInfo {
            code: Some(1),
            signal: Some(9),
            reason: "killed".into(),
        }),
        qemu_version: Some("10.0.0".into()),
        restarted_for: Some("2025-01-02T03:04:00Z".into()),
        message: Some("QEMU was killed by signal 9".into()),
        networks: vec![corral_contract::NetworkAttachmentStatus {
            network: "default".into(),
            mode: Some(corral_contract::NetworkMode::User),
            mac: Some("02:c0:00:00:00:01".parse().unwrap()),
            forwards: vec![corral_contract::ForwardStatus {
                guest_port: 22,
                host_port: 20022,
                protocol: corral_contract::Protocol::Tcp,
                host_address: Some("127.0.0.1".parse().unwrap()),
            }],
        }],
        expires_at: Some("2025-01-02T05:04:05Z".into()),
        node: Some("host-a".into()),
        migration: Some(corral_contract::MigrationStatus {
            request: "host-a@2025-01-02T03:04:01Z".into(),
            source: "host-b".into(),
            target: "host-a".into(),
            phase: corral_contract::MigrationPhase::Completed,
            address: Some("tcp:10.0.0.2:49152".into()),
            transferred_bytes: 104_857_600,
            remaining_bytes: 0,
            total_bytes: 268_435_456,
            dirty_pages_rate: 120,
            expected_downtime_ms: Some(30),
            downtime_ms: Some(25),
            total_time_ms: Some(800),
            message: Some("moved".into()),
            tls: true,
            auto_converge: true,
            postcopy: false,
            bandwidth: Some(100 << 20),
            disk_address: Some("10.0.0.2:49153".into()),
            disk_copied_bytes: 33_554_432,
            disk_total_bytes: 33_554_432,
            disks_ready: true,
        }),
        restored_from: Some(
            "golden@blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
        ),
    };
    vm
}

#[tokio::test]
async fn the_schemas_match_the_contract_types_and_the_api_output() {
    let d = daemon();
    let api = api(&d);
    let doc = served_document(&api).await;
    let v = Validator { doc: &doc };

    // Every keyword of every schema is one the validator implements or an annotation, so
    // the checks here and in `conforms` miss nothing the document says.
    let mut schemas: Vec<&Value> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    collect_schemas(&doc["paths"], &mut schemas);
    collect_schemas(&doc["components"]["responses"], &mut schemas);
    collect_schemas(&doc["components"]["parameters"], &mut schemas);
    assert!(schemas.len() > 40, "{}", schemas.len());
    while let Some(schema) = schemas.pop() {
        let object = schema.as_object().expect("a schema object");
        for (keyword, inner) in object {
            assert!(
                ASSERTIONS.contains(&keyword.as_str()) || ANNOTATIONS.contains(&keyword.as_str()),
                "keyword {keyword} in {schema} is not understood by the validator"
            );
            match (keyword.as_str(), inner) {
                ("properties", Value::Object(properties)) => schemas.extend(properties.values()),
                ("oneOf", Value::Array(options)) => schemas.extend(options),
                ("items" | "additionalProperties" | "propertyNames", Value::Object(_)) => {
                    schemas.push(inner)
                }
                _ => {}
            }
        }
    }

    // Closed sets: the same words as the contract's.
    assert_eq!(v.enum_words("Arch"), words(Arch::ALL));
    assert_eq!(v.enum_words("Machine"), words(Machine::ALL));
    assert_eq!(v.enum_words("Accel"), words(Accel::ALL));
    assert_eq!(v.enum_words("Power"), words(Power::ALL));
    assert_eq!(v.enum_words("RestartPolicy"), words(RestartPolicy::ALL));
    assert_eq!(v.enum_words("DiskFormat"), words(DiskFormat::ALL));
    assert_eq!(v.enum_words("Phase"), words(Phase::ALL));
    assert_eq!(
        v.enum_words("NetworkMode"),
        words(corral_contract::NetworkMode::ALL)
    );
    assert_eq!(
        v.enum_words("NetworkPhase"),
        words(corral_contract::NetworkPhase::ALL)
    );
    assert_eq!(
        v.enum_words("Protocol"),
        words(corral_contract::Protocol::ALL)
    );
    let net: corral_contract::Network = serde_json::from_value(json!({
        "metadata": {"name": "lan"},
        "spec": {"mode": "bridge", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1", "dns": "10.9.0.1",
                 "mtu": 1400, "bridge": "crl-lan"},
    }))
    .unwrap();
    let net = serde_json::to_value(Resource::from(net)).unwrap();
    v.assert_valid("Network", &net);
    assert_eq!(keys(&net), v.properties("Network"));
    assert_eq!(keys(&net["spec"]), {
        let mut k = v.properties("NetworkSpec");
        k.remove("interface");
        k.remove("host_access"); // written only when true
        k.remove("shared"); // the same
        k
    });
    assert_eq!(keys(&net["status"]), {
        let mut k = v.properties("NetworkStatus");
        k.remove("message");
        k.remove("bridge"); // set by the server
        k
    });
    assert_eq!(
        v.enum_words("Phase"),
        [
            "Pending", "Starting", "Running", "Paused", "Stopping", "Stopped", "Failed"
        ]
    );
    let codes = v.enum_words("ErrorCode");
    for code in [
        "InvalidArgument",
        "Unauthenticated",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "FailedPrecondition",
        "Unavailable",
    ] {
        assert!(codes.iter().any(|c| c == code), "{code}");
    }

    // Field names: every field the contract types write out is declared, and nothing else.
    for boot in [
        Boot::Kernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd.img".into()),
            cmdline: Some("console=ttyS0".into()),
        },
        Boot::Disk {
            path: "/img/root.qcow2".into(),
            format: Some(DiskFormat::Qcow2),
        },
    ] {
        let full = serde_json::to_value(Resource::from(full_vm(boot))).unwrap();
        v.assert_valid("Vm", &full);
        assert_eq!(keys(&full), v.properties("Vm"));
        assert_eq!(keys(&full["metadata"]), v.properties("ObjectMeta"));
        assert_eq!(keys(&full["spec"]), v.properties("VmSpec"));
        assert_eq!(
            keys(&full["spec"]["volumes"][0]),
            v.properties("VolumeAttachment")
        );
        assert_eq!(keys(&full["status"]), v.properties("VmStatus"));
        assert_eq!(keys(&full["status"]["exit"]), v.properties("ExitInfo"));
        assert_eq!(
            keys(&full["spec"]["networks"][0]),
            v.properties("NetworkAttachment")
        );
        assert_eq!(
            keys(&full["spec"]["networks"][0]["forwards"][0]),
            v.properties("PortForward")
        );
        assert_eq!(keys(&full["spec"]["cloud_init"]), v.properties("CloudInit"));
        assert_eq!(
            keys(&full["status"]["networks"][0]),
            v.properties("NetworkAttachmentStatus")
        );
        assert_eq!(
            keys(&full["status"]["networks"][0]["forwards"][0]),
            v.properties("ForwardStatus")
        );
        assert_eq!(
            keys(&full["status"]["conditions"][0]),
            v.properties("Condition")
        );
        let boot = &full["spec"]["boot"];
        match boot.get("kernel") {
            Some(kernel) => assert_eq!(keys(kernel), v.properties("KernelBoot")),
            None => assert_eq!(keys(&boot["disk"]), v.properties("DiskBoot")),
        }
        // What the API writes, it reads back.
        let back: Resource = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), full);
    }
    // The status of a new VM: only the fields always written.
    let fresh = serde_json::to_value(VmStatus::default()).unwrap();
    v.assert_valid("VmStatus", &fresh);
    assert_eq!(
        keys(&fresh),
        v.schema("VmStatus")["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    );

    // The documented example is a manifest the API accepts.
    let (kernel, _) = boot_files(&d);
    let mut example = v.schema("Vm")["example"].clone();
    v.assert_valid("Vm", &example);
    example["spec"]["boot"]["kernel"]["kernel"] = json!(kernel);
    v.assert_valid("Vm", &example);
    api.post("/v1/vms", &example).await.expect(201);

    // What the API returns validates, with every field the document promises in responses.
    let mut rich = manifest(
        &d,
        "rich",
        json!({"tier": "web", "example.com/team": "ops"}),
    );
    rich["metadata"]["annotations"] = json!({"note": "hello"});
    rich["spec"]["machine"] = json!("microvm");
    rich["spec"]["restart_policy"] = json!("on-failure");
    rich["spec"]["memory"] = json!(100 << 20);
    rich["spec"]["networks"] = json!([{"network": "default", "forwards": [{"guest_port": 22}]}]);
    rich["spec"]["cloud_init"] = json!({"user_data": "#cloud-config\n"});
    rich["spec"]["placement"] = json!({"anti_affinity": "web"});
    // A template that is not there (yet): the VM waits for it.
    rich["spec"]["template"] = json!("golden");
    let shared = tempfile::tempdir().unwrap();
    rich["spec"]["shares"] =
        json!([{"host_path": shared.path(), "tag": "project", "read_only": true}]);
    v.assert_valid("Vm", &rich);
    let created = api.post("/v1/vms", &rich).await.expect(201);
    v.assert_valid("Vm", &created);
    assert_eq!(
        created["spec"]["memory"], "100M",
        "sizes come back as strings"
    );
    assert_eq!(keys(&created), v.properties("Vm"));
    assert_eq!(keys(&created["metadata"]), v.properties("ObjectMeta"));
    assert_eq!(keys(&created["spec"]), v.properties("VmSpec"));
    let read = api.get("/v1/vms/rich").await.expect(200);
    v.assert_valid("Vm", &read);
    let list = api.get("/v1/vms").await.expect(200);
    v.assert_valid("VmList", &list);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    // Once the controller has looked at it, the status validates too.
    let observed = eventually("the controller to observe rich", || async {
        let vm = api.get("/v1/vms/rich").await.expect(200);
        (u64_at(&vm, "/status/observed_generation") >= 1).then_some(vm)
    })
    .await;
    v.assert_valid("Vm", &observed);
    assert_eq!(observed["status"]["phase"], "Stopped", "{observed}");
    let deleting = api.delete("/v1/vms/rich").await.expect(202);
    v.assert_valid("Vm", &deleting);

    // Errors validate, with the codes the document lists.
    let not_found = api.get("/v1/vms/absent").await;
    v.assert_valid("Error", &not_found.expect(404));
    let invalid = api.post("/v1/vms", &json!({"kind": "Vm"})).await;
    v.assert_valid("Error", &invalid.expect(400));

    // The schema is as strict as the API: what the API refuses, the schema refuses.
    let minimal = json!({"kind": "Vm", "metadata": {"name": "a"},
                         "spec": {"boot": {"kernel": {"kernel": "/k"}}}});
    v.assert_valid("Vm", &minimal);
    let refused = |pointer: &str, value: Value| set(&minimal, pointer, value);
    for bad in [
        refused("/metadata/name", json!("Bad_Name")),
        refused("/metadata/name", json!("x".repeat(64))),
        refused("/metadata/lables", json!({})),
        refused("/metadata/labels", json!({"tier": "web tier"})),
        refused("/metadata/labels", json!({"my tier": "web"})),
        refused("/spec/cpu", json!(2)),
        refused("/spec/cpus", json!(0)),
        refused("/spec/cpus", json!(257)),
        refused("/spec/memory", json!("lots")),
        refused("/spec/memory", json!("1GB")),
        refused("/spec/memory", json!(-1)),
        refused("/spec/power", json!("off")),
        refused("/spec/arch", json!("arm")),
        refused("/spec/restart_policy", json!("on_failure")),
        refused("/spec/boot", json!({"pxe": {}})),
        refused(
            "/spec/boot",
            json!({"kernel": {"kernel": "/k"}, "disk": {"path": "/d"}}),
        ),
        refused("/spec/boot", json!({"kernel": {"kernel": "k"}})),
        refused(
            "/spec/boot",
            json!({"kernel": {"kernel": "/k", "initramfs": "/i"}}),
        ),
        refused(
            "/spec/boot",
            json!({"disk": {"path": "/d", "format": "vmdk"}}),
        ),
        refused("/kind", json!("Volume")),
        refused("/extra", json!(1)),
    ] {
        v.assert_invalid("Vm", &bad);
        let reply = api.post("/v1/vms", &bad).await;
        assert_eq!(reply.status, 400, "{bad} was accepted: {}", reply.text());
    }
    for size in ["512M", "1.5G", "1GiB", "16777216", "64 Mi", "1t"] {
        let m = refused("/spec/memory", json!(size));
        v.assert_valid("Vm", &m);
        assert!(size.parse::<ByteSize>().is_ok(), "{size}");
    }
}

// ---------------------------------------------------------------------------------------------
// TCP.
