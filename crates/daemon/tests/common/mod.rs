//! What the REST test files share: the routes the router serves, the committed OpenAPI
//! document every answer is checked against, and stopped-VM manifests.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use corral_testkit::Corrald;
use corral_testkit::http::{Api, HTTP_PATIENCE as PATIENCE};
use corral_testkit::openapi::Document;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};

pub const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// Every REST route `rest::router` serves, as (method, path template). Keep in step with
/// `crates/daemon/src/rest.rs`; the tests check it against the document both ways and
/// against the live router. (axum also answers HEAD wherever GET is routed.)
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/identities"),
    ("POST", "/v1/identities"),
    ("DELETE", "/v1/identities/{name}"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/projects"),
    ("POST", "/v1/projects"),
    ("GET", "/v1/projects/{name}"),
    ("PUT", "/v1/projects/{name}"),
    ("DELETE", "/v1/projects/{name}"),
    ("GET", "/v1/vms"),
    ("POST", "/v1/vms"),
    ("GET", "/v1/vms/{name}"),
    ("PUT", "/v1/vms/{name}"),
    ("DELETE", "/v1/vms/{name}"),
    ("POST", "/v1/vms/{name}/start"),
    ("POST", "/v1/vms/{name}/stop"),
    ("POST", "/v1/vms/{name}/pause"),
    ("POST", "/v1/vms/{name}/resume"),
    ("POST", "/v1/vms/{name}/restart"),
    ("POST", "/v1/vms/{name}/migrate"),
    ("POST", "/v1/vms/{name}/migrate/cancel"),
    ("GET", "/v1/vms/{name}/metrics/history"),
    ("GET", "/v1/vms/{name}/console/log"),
    ("GET", "/v1/vms/{name}/memory"),
    ("GET", "/v1/vms/{name}/memory/find"),
    ("GET", "/v1/vms/{name}/memory/snapshot"),
    ("GET", "/v1/vms/{name}/memory/map"),
    ("GET", "/v1/vms/{name}/memory/stream"),
    ("GET", "/v1/vms/{name}/attestation"),
    ("GET", "/v1/images"),
    ("POST", "/v1/images"),
    ("GET", "/v1/images/{name}"),
    ("DELETE", "/v1/images/{name}"),
    ("POST", "/v1/images/{name}/verify"),
    ("PUT", "/v1/images/{name}/upload"),
    ("GET", "/v1/volumes"),
    ("POST", "/v1/volumes"),
    ("GET", "/v1/volumes/{name}"),
    ("PUT", "/v1/volumes/{name}"),
    ("DELETE", "/v1/volumes/{name}"),
    ("GET", "/v1/snapshots"),
    ("POST", "/v1/snapshots"),
    ("GET", "/v1/snapshots/{name}"),
    ("DELETE", "/v1/snapshots/{name}"),
    ("POST", "/v1/snapshots/{name}/restore"),
    ("GET", "/v1/vms/{name}/console/ws"),
    ("GET", "/v1/vms/{name}/tunnel/ws"),
    ("GET", "/v1/networks"),
    ("POST", "/v1/networks"),
    ("GET", "/v1/networks/{name}"),
    ("DELETE", "/v1/networks/{name}"),
    ("POST", "/v1/apply"),
    ("GET", "/v1/sources"),
    ("POST", "/v1/sources"),
    ("GET", "/v1/sources/{name}"),
    ("PUT", "/v1/sources/{name}"),
    ("DELETE", "/v1/sources/{name}"),
    ("POST", "/v1/sources/{name}/reconcile"),
    ("POST", "/v1/sources/{name}/approve"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/assets/{file}"),
    ("GET", "/ui/login"),
    ("POST", "/ui/session"),
    ("GET", "/ui/session"),
    ("DELETE", "/ui/session"),
    ("POST", "/v1/ui/links"),
    ("POST", "/v1/nodes/join-tokens"),
    ("POST", "/v1/nodes/join"),
    ("POST", "/v1/nodes/{name}/store"),
    ("GET", "/v1/nodes/{name}/store/watch"),
    ("GET", "/v1/nodes/{name}/blobs/{digest}"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{name}"),
    ("POST", "/v1/nodes/{name}/cordon"),
    ("POST", "/v1/nodes/{name}/uncordon"),
    ("POST", "/v1/nodes/{name}/drain"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
];

/// The committed OpenAPI document, with the routes above.
pub static DOC: LazyLock<Document> = LazyLock::new(|| {
    let doc =
        serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON");
    Document::new(doc, ROUTES)
});

/// A client of `d`'s unix socket whose every answer from a documented route is checked
/// against the document: its status, content type and body schema.
pub fn api(d: &Corrald) -> Api {
    checked(Api::of(d))
}

/// A TLS client of corrald on `port` trusting `ca`, with `token`, checked like [`api`].
pub fn tls_api(port: u16, ca: &CertificateDer<'static>, token: Option<&str>) -> Api {
    checked(Api::tls(port, ca).token(token))
}

fn checked(api: Api) -> Api {
    api.checked(Arc::new(|method, path, reply| {
        DOC.conforms(method, path, reply)
    }))
}

pub fn daemon() -> Corrald {
    Corrald::start(CORRALD).expect("corrald starts")
}

/// Boot files that exist (the daemon refuses missing ones) but that no QEMU can boot: an empty
/// kernel with an initrd makes QEMU exit at once should a test's VM ever be started. They lie
/// beside the daemon's data directory, not in it: no caller may name files of its own state.
pub fn boot_files(d: &Corrald) -> (String, String) {
    let dir = d.data_dir().with_file_name("boot");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    std::fs::write(&kernel, b"").unwrap();
    std::fs::write(&initrd, b"").unwrap();
    (
        kernel.to_str().unwrap().to_owned(),
        initrd.to_str().unwrap().to_owned(),
    )
}

/// A stopped VM manifest.
pub fn manifest(d: &Corrald, name: &str, labels: Value) -> Value {
    let (kernel, initrd) = boot_files(d);
    json!({
        "kind": "Vm",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "memory": "64M",
            "power": "stopped",
            "boot": {"kernel": {"kernel": kernel, "initrd": initrd, "cmdline": "console=ttyS0"}}
        }
    })
}

/// `value` with the field at `pointer` set (added if missing) to `field`.
pub fn set(value: &Value, pointer: &str, field: Value) -> Value {
    let mut value = value.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    value
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"))[key] = field;
    value
}

pub fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {v}"))
}

/// Runs `corrald` with `args` and stdin, waits for it to exit (bounded) and returns its status
/// and output.
pub fn run_corrald(args: &[&str], stdin: &[u8]) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = Command::new(CORRALD)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running corrald");
    // A corrald that refuses its arguments exits before it reads: the pipe may be closed.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("corrald {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
