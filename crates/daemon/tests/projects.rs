//! Projects against a live corrald on TLS: two tenant projects, `red` and `blue`, with an
//! operator and a viewer in each, and the admin on the unix socket. Names are unique per
//! project; lists and watches show only the caller's projects; every read, write and reference
//! across projects is refused (or never resolves) except through what an admin shared from
//! `default`; limits count per project; a project is deleted only once empty. Each refusal is
//! checked for its message and the audit log names the project.

use std::time::Duration;

use corral_client::{AuditFilter, Client, ClientError, Endpoint};
use corral_contract::{
    Boot, ByteSize, Credential, Identity, IdentitySpec, Image, ImageFormat, ImageSource, ImageSpec,
    NetworkAttachment, Phase, Power, Project, ProjectLimits, ProjectSpec, Role, Snapshot,
    SnapshotSpec, Vm, VmSpec, Volume, VolumeKind, VolumeSpec,
};
use corral_testkit::http::TlsSetup;
use corral_testkit::{BOOT_MARKER, kit_vm, wait_console, wait_phase};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

async fn tls_client(tls: &TlsSetup, port: u16, token: &str) -> Client {
    Client::connect(Endpoint::Https {
        url: format!("https://localhost:{port}"),
        token: Some(token.into()),
        ca_file: Some(tls.ca_file()),
    })
    .await
    .expect("a TLS client")
}

/// An identity of `role` working in `projects`, and its token.
async fn identity(admin: &Client, name: &str, role: Role, projects: &[&str]) -> String {
    let spec = IdentitySpec {
        role,
        memory: false,
        projects: projects.iter().map(|p| p.parse().unwrap()).collect(),
        credential: Credential::Token { blake3: None },
    };
    let (_, token) = admin
        .create_identity(&Identity::new(name.parse().unwrap(), spec))
        .await
        .expect("the admin makes identities");
    token.expect("a token, shown once")
}

/// A stopped VM that boots from volume `disk` and joins the shared `default` network.
fn vm(name: &str) -> Vm {
    let mut spec = VmSpec::builder(Boot::Volume {
        volume: "disk".parse().unwrap(),
    })
    .power(Power::Stopped)
    .build()
    .unwrap();
    spec.networks
        .push(NetworkAttachment::new("default".parse().unwrap()));
    Vm::new(name.parse().unwrap(), spec)
}

fn disk(name: &str, image: Option<&str>) -> Volume {
    Volume::new(
        name.parse().unwrap(),
        VolumeSpec {
            kind: VolumeKind::Disk,
            size: image.is_none().then(|| ByteSize::new(64 << 20)),
            format: None,
            image: image.map(|i| i.parse().unwrap()),
            pool: None,
        },
    )
}

#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, ClientError>, says: &str) {
    match result {
        Err(e) => {
            let message = e.to_string();
            println!("refused: {what}: {message}");
            assert!(
                message.contains(says),
                "{what}: the message {message:?} does not say {says:?}"
            );
        }
        Ok(got) => panic!("{what}: NOT refused: {got:?}"),
    }
}

#[tokio::test]
async fn projects_keep_tenants_apart() {
    let files = tempfile::tempdir().unwrap();
    let qcow2 = files.path().join("base.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("32M")
        .status()
        .unwrap();
    assert!(made.success());
    let tls = TlsSetup::new();
    std::fs::write(tls.token_file(), "# identities live in the store\n").unwrap();
    let (d, port) = tls.start(CORRALD);
    let admin = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();

    for (p, vms) in [("red", 3), ("blue", 2)] {
        let spec = ProjectSpec {
            limits: ProjectLimits {
                vms: Some(vms),
                ..ProjectLimits::default()
            },
        };
        admin
            .create_project(&Project::new(p.parse().unwrap(), spec))
            .await
            .unwrap();
    }
    let red_op = identity(&admin, "red-op", Role::Operator, &["red"]).await;
    let blue_op = identity(&admin, "blue-op", Role::Operator, &["blue"]).await;
    let blue_view = identity(&admin, "blue-view", Role::Viewer, &["blue"]).await;
    let red = tls_client(&tls, port, &red_op).await;
    let blue = tls_client(&tls, port, &blue_op).await;
    let blue_viewer = tls_client(&tls, port, &blue_view).await;

    // An admin's image in `default`, not shared, and one shared.
    let image = |name: &str, shared: bool| {
        Image::new(
            name.parse().unwrap(),
            ImageSpec {
                source: ImageSource::Path(qcow2.clone()),
                format: Some(ImageFormat::Qcow2),
                shared,
                checksum: None,
            },
        )
    };
    admin.create_image(&image("private", false)).await.unwrap();
    admin.create_image(&image("common", true)).await.unwrap();
    refused(
        "an operator shares an image",
        red.create_image(&image("mine", true)).await,
        "spec.shared lets every project use the object and is for admins only",
    );

    // The same names in two projects: an operator with one project needs not name it.
    red.create_volume(&disk("disk", Some("common")))
        .await
        .unwrap();
    blue.create_volume(&disk("disk", None)).await.unwrap();
    let red_twin = red.create_vm(&vm("twin")).await.unwrap();
    let blue_twin = blue.create_vm(&vm("twin")).await.unwrap();
    assert_eq!(red_twin.metadata.project(), "red");
    assert_eq!(blue_twin.metadata.project(), "blue");
    assert_ne!(red_twin.metadata.uid, blue_twin.metadata.uid);
    let red_disk = red.get_volume("disk").await.unwrap();
    assert_eq!(red_disk.spec.image.as_ref().unwrap(), "common");

    // Lists and watches show the caller's projects only; an admin sees all on request.
    let names = |vms: Vec<Vm>| -> Vec<String> {
        vms.iter()
            .map(|v| format!("{}/{}", v.metadata.project(), v.metadata.name))
            .collect()
    };
    assert_eq!(names(red.list_vms("").await.unwrap()), ["red/twin"]);
    let red_all = red.clone().in_project(None, true).unwrap();
    assert_eq!(names(red_all.list_vms("").await.unwrap()), ["red/twin"]);
    let admin_all = admin.clone().in_project(None, true).unwrap();
    let mut everything = names(admin_all.list_vms("").await.unwrap());
    everything.sort();
    assert_eq!(everything, ["blue/twin", "red/twin"]);
    assert!(
        admin.list_vms("").await.unwrap().is_empty(),
        "default is empty"
    );
    assert_eq!(red.list_volumes("").await.unwrap().len(), 1);
    assert!(
        red.list_images("").await.unwrap().is_empty(),
        "default's images are not red's"
    );
    let mut watch = red_all.watch_vms(None, 0).await.unwrap();
    blue.update_vm(&{
        let mut v = blue.get_vm("twin").await.unwrap();
        v.metadata.labels.insert("touched".into(), "yes".into());
        v
    })
    .await
    .unwrap();
    red.update_vm(&{
        let mut v = red.get_vm("twin").await.unwrap();
        v.metadata.labels.insert("touched".into(), "yes".into());
        v
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        let vm = event.unwrap().vm;
        seen.push(format!("{}/{}", vm.metadata.project(), vm.metadata.name));
    }
    assert!(!seen.is_empty(), "red's watch saw its own change");
    assert!(
        seen.iter().all(|s| s == "red/twin"),
        "red's watch shows only red: {seen:?}"
    );

    // Every way across: naming the other project, or smuggling it in the object.
    let red_in_blue = red.clone().in_project(Some("blue"), false).unwrap();
    let outside = "works in project(s) red, not in \"blue\"";
    refused("read blue's VM", red_in_blue.get_vm("twin").await, outside);
    refused("list blue's VMs", red_in_blue.list_vms("").await, outside);
    refused(
        "stop blue's VM",
        red_in_blue.stop_vm("twin", true).await,
        outside,
    );
    refused(
        "delete blue's VM",
        red_in_blue.delete_vm("twin").await,
        outside,
    );
    refused(
        "create a VM in blue",
        red_in_blue.create_vm(&vm("intruder")).await,
        outside,
    );
    refused(
        "read blue's console",
        red_in_blue.console_log("twin", 100).await,
        outside,
    );
    refused(
        "delete blue's volume",
        red_in_blue.delete_volume("disk").await,
        outside,
    );
    let mut smuggled = vm("smuggled");
    smuggled.metadata.project = Some("blue".parse().unwrap());
    refused(
        "a VM naming project blue, sent to red",
        red.create_vm(&smuggled).await,
        "metadata.project: \"blue\" is not the request's project \"red\"",
    );
    refused(
        "a volume cloning default's image that is not shared",
        red.create_volume(&disk("stolen", Some("private"))).await,
        "image \"private\" belongs to project \"default\" and is not shared with project \"red\"",
    );
    refused(
        "a viewer writes in its own project",
        blue_viewer.delete_vm("twin").await,
        "",
    );
    // A name that exists only in blue does not exist for red: no reference reaches it.
    refused(
        "red reads a VM only blue has",
        red.get_vm("nosuch").await,
        "not found",
    );
    blue.create_vm(&vm("only-blue")).await.unwrap();
    refused(
        "red reads blue's only-blue",
        red.get_vm("only-blue").await,
        "not found",
    );
    let snap = red
        .create_snapshot(&Snapshot::new(
            "grab".parse().unwrap(),
            SnapshotSpec {
                vm: "only-blue".parse().unwrap(),
                memory: false,
            },
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snap = red.get_snapshot(snap.metadata.name.as_str()).await.unwrap();
    assert!(
        snap.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("vm/only-blue is missing")),
        "a snapshot of a name only blue has waits in red: {:?}",
        snap.status
    );
    red.delete_snapshot("grab").await.unwrap();

    // Limits count per project: blue is full at two VMs, red is not.
    refused(
        "a third VM in blue",
        blue.create_vm(&vm("third")).await,
        "vms",
    );
    red.create_vm(&vm("second")).await.unwrap();

    // A guest of the same name in `default` and in red: each runs, each project's console
    // shows its own (the admin boots from host files; red's operator reads red's console).
    let admin_in_red = admin.clone().in_project(Some("red"), false).unwrap();
    let guest = |name| kit_vm(name, |b| b);
    admin.create_vm(&guest("guest")).await.unwrap();
    admin_in_red.create_vm(&guest("guest")).await.unwrap();
    let in_default = wait_phase(&admin, &d, "guest", Phase::Running)
        .await
        .unwrap();
    let in_red = wait_phase(&red, &d, "guest", Phase::Running).await.unwrap();
    assert_ne!(in_default.status.pid, in_red.status.pid, "two QEMUs");
    wait_console(&red, &d, "guest", BOOT_MARKER, 0)
        .await
        .unwrap();
    wait_console(&admin, &d, "guest", BOOT_MARKER, 0)
        .await
        .unwrap();
    refused(
        "blue reads red's guest",
        blue.console_log("guest", 100).await,
        "not found in project \"blue\"",
    );

    // A project is deleted once empty.
    refused(
        "delete a project that holds objects",
        admin.delete_project("red").await,
        "not empty",
    );

    // The audit log names the project of each refusal.
    let records = admin
        .audit(&AuditFilter {
            identity: "identity:red-op".into(),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.outcome == "denied" && r.project == "blue"),
        "red-op's refusals in blue are audited under blue"
    );
}
