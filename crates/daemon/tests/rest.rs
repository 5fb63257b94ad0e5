//! corrald's REST API against a real daemon, over its unix socket and over TCP with TLS and a
//! bearer token; and the committed OpenAPI document against both the router and the contract
//! types.
//!
//! The VMs here are declared `stopped`; where a test declares one running, its boot files are
//! empty, so the QEMU the controller starts exits at once. Booting real guests is `e2e.rs`'s
//! job. HTTP/1.1 is written by hand (one request per connection) so that what is checked is
//! the bytes on the wire, and every answer from a documented route is checked against
//! `openapi.json`: its status, content type and body schema.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use corral_contract::{
    Accel, Arch, Boot, ByteSize, Condition, DiskFormat, ExitInfo, Machine, ObjectMeta, Phase,
    Power, Resource, RestartPolicy, Vm, VmSpec, VmStatus,
};
use corral_testkit::Corrald;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// Every REST route `rest::router` serves, as (method, path template). Keep in step with
/// `crates/daemon/src/rest.rs`; the tests check it against the document both ways and
/// against the live router. (axum also answers HEAD wherever GET is routed.)
const ROUTES: &[(&str, &str)] = &[
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
    ("GET", "/v1/networks"),
    ("POST", "/v1/networks"),
    ("GET", "/v1/networks/{name}"),
    ("DELETE", "/v1/networks/{name}"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
];

/// The longest any one wait may take before a test gives up (polling, never a timing claim).
const PATIENCE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 by hand.

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    /// Asserts the status and a JSON body, and returns the body.
    #[track_caller]
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        self.json()
    }

    /// Asserts an API error: status, `error.code`, and returns `error.message`.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) -> String {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "{body}");
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only `error`: {body}");
        body["error"]["message"]
            .as_str()
            .expect("a message")
            .to_owned()
    }
}

/// Sends one request on `stream` (`Connection: close`) and reads the whole answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let answer = async {
        stream.write_all(&bytes).await.expect("sending the request");
        stream.flush().await.expect("sending the request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // A TLS peer that closes without close_notify: judge what arrived.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => panic!("reading the answer to {method} {path}: {e}"),
            };
            if n == 0 {
                return parse_reply(&buf, true).unwrap_or_else(|| {
                    panic!("truncated answer: {:?}", String::from_utf8_lossy(&buf))
                });
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(reply) = parse_reply(&buf, false) {
                return reply;
            }
        }
    };
    let reply = tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {path}"));
    conforms(method, path, &reply);
    reply
}

/// The committed OpenAPI document.
static DOC: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
});

/// The route template of `path` (without its query), if it is one of [`ROUTES`].
fn template_of(method: &str, path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES
        .iter()
        .filter(|(m, _)| *m == method)
        .map(|(_, template)| *template)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
        })
}

/// Checks an answer from a documented route against the document: its status is one the
/// operation lists, its content type one that response lists, and a JSON or text body
/// validates against the response's schema.
#[track_caller]
fn conforms(method: &str, path: &str, reply: &Reply) {
    let Some(template) = template_of(method, path) else {
        return;
    };
    let what = format!("{method} {path} → {}", reply.status);
    let operation = &DOC["paths"][template][method.to_ascii_lowercase()];
    let mut response = operation["responses"]
        .get(reply.status.to_string())
        .unwrap_or_else(|| panic!("{what}: status not documented for {template}"));
    if let Some(Value::String(r)) = response.get("$ref") {
        response = DOC.pointer(&r[1..]).expect("a response reference");
    }
    let essence = |t: &str| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let Some(content_type) = reply.header("content-type") else {
        assert!(
            reply.body.is_empty(),
            "{what}: a body without a content type"
        );
        return;
    };
    let content = response["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: the response documents no content"));
    let (media, documented) = content
        .iter()
        .find(|(media, _)| essence(media) == essence(content_type))
        .unwrap_or_else(|| {
            panic!(
                "{what}: content type {content_type} is not among {:?}",
                content.keys().collect::<Vec<_>>()
            )
        });
    let value = match essence(media).as_str() {
        "application/json" => reply.json(),
        m if m.starts_with("text/") || m.ends_with("-text") => Value::String(reply.text()),
        _ => return,
    };
    let errors = Validator { doc: &DOC }.errors(&documented["schema"], &value);
    assert!(
        errors.is_empty(),
        "{what}: the body does not match the document: {errors:#?}\n{value}"
    );
}

/// A complete response in `buf`, if it is there (`eof`: nothing more will come).
fn parse_reply(buf: &[u8], eof: bool) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("a content length");
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// The body of a complete chunked encoding, if complete.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A client of one daemon's unix socket.
struct Api {
    socket: PathBuf,
}

impl Api {
    fn of(daemon: &Corrald) -> Api {
        Api {
            socket: daemon.socket(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        exchange(stream, method, path, &[], body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send("POST", path, Some(body.to_string().as_bytes()))
            .await
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send("PUT", path, Some(body.to_string().as_bytes()))
            .await
    }

    async fn action(&self, name: &str, action: &str) -> Reply {
        self.send("POST", &format!("/v1/vms/{name}/{action}"), None)
            .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None).await
    }

    /// The names of the VMs listed with `selector` (percent-encoded by the caller).
    async fn names(&self, selector: &str) -> Vec<String> {
        let list = self
            .get(&format!("/v1/vms?labelSelector={selector}"))
            .await
            .expect(200);
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|vm| vm["metadata"]["name"].as_str().expect("a name").to_owned())
            .collect()
    }
}

/// Polls `check` every 50 ms until it gives a value; gives up after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn daemon() -> Corrald {
    Corrald::start(CORRALD).expect("corrald starts")
}

/// Boot files that exist (the daemon refuses missing ones) but that no QEMU can boot: an empty
/// kernel with an initrd makes QEMU exit at once should a test's VM ever be started.
fn boot_files(d: &Corrald) -> (String, String) {
    let dir = d.data_dir().join("boot");
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
fn manifest(d: &Corrald, name: &str, labels: Value) -> Value {
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
fn set(value: &Value, pointer: &str, field: Value) -> Value {
    let mut value = value.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    value
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"))[key] = field;
    value
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {v}"))
}

// ---------------------------------------------------------------------------------------------
// The VM API.

#[tokio::test]
async fn vm_lifecycle_create_read_list_update_power_delete() {
    let d = daemon();
    let api = Api::of(&d);

    let created = api
        .post("/v1/vms", &manifest(&d, "web-1", json!({"tier": "web"})))
        .await
        .expect(201);
    assert_eq!(created["kind"], "Vm");
    assert_eq!(created["metadata"]["name"], "web-1");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(u64_at(&created, "/metadata/generation"), 1);
    assert_eq!(created["metadata"]["deleting"], false);
    assert!(created["metadata"]["created_at"].is_string(), "{created}");
    assert_eq!(created["spec"]["memory"], "64M");
    assert_eq!(created["spec"]["cpus"], 1);
    assert_eq!(created["spec"]["power"], "stopped");
    assert!(created["status"]["phase"].is_string(), "{created}");
    api.post("/v1/vms", &manifest(&d, "db-1", json!({"tier": "db"})))
        .await
        .expect(201);
    let taken = api
        .post("/v1/vms", &manifest(&d, "web-1", json!({})))
        .await
        .expect_error(409, "AlreadyExists");
    assert!(taken.contains("web-1"), "{taken}");

    let read = api.get("/v1/vms/web-1").await.expect(200);
    assert_eq!(read["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(read["spec"], created["spec"]);

    assert_eq!(api.names("").await, ["db-1", "web-1"]);
    assert_eq!(api.names("tier%3Dweb").await, ["web-1"]);
    assert_eq!(api.names("tier!%3Dweb").await, ["db-1"]);
    assert_eq!(api.names("tier").await, ["db-1", "web-1"]);
    assert!(api.names("!tier").await.is_empty());
    assert!(api.names("tier%3Dweb,tier%3Ddb").await.is_empty());
    let list = api.get("/v1/vms").await.expect(200);
    assert!(list["revision"].as_u64().unwrap() > 0, "{list}");

    // Labels are not spec: the generation stays.
    let mut labelled = read.clone();
    labelled["metadata"]["labels"]["env"] = json!("prod");
    let labelled = api.put("/v1/vms/web-1", &labelled).await.expect(200);
    assert_eq!(labelled["metadata"]["labels"]["env"], "prod");
    assert_eq!(u64_at(&labelled, "/metadata/generation"), 1);
    assert!(
        u64_at(&labelled, "/metadata/resource_version")
            > u64_at(&read, "/metadata/resource_version")
    );
    assert_eq!(api.names("env%3Dprod").await, ["web-1"]);

    // A spec change bumps it.
    let mut bigger = labelled.clone();
    bigger["spec"]["cpus"] = json!(2);
    bigger["spec"]["memory"] = json!(128 << 20);
    let bigger = api.put("/v1/vms/web-1", &bigger).await.expect(200);
    assert_eq!(bigger["spec"]["cpus"], 2);
    assert_eq!(bigger["spec"]["memory"], "128M");
    assert_eq!(u64_at(&bigger, "/metadata/generation"), 2);

    // A write from an older read loses.
    let mut stale = labelled.clone();
    stale["spec"]["cpus"] = json!(3);
    let message = api
        .put("/v1/vms/web-1", &stale)
        .await
        .expect_error(409, "Conflict");
    assert!(message.contains("resource_version"), "{message}");
    assert_eq!(
        api.get("/v1/vms/web-1").await.expect(200)["spec"]["cpus"],
        2
    );
    // Version 0 writes whatever is stored.
    let mut unconditional = labelled.clone();
    unconditional["metadata"]["resource_version"] = json!(0);
    unconditional["spec"]["cpus"] = json!(4);
    let unconditional = api.put("/v1/vms/web-1", &unconditional).await.expect(200);
    assert_eq!(unconditional["spec"]["cpus"], 4);
    assert_eq!(u64_at(&unconditional, "/metadata/generation"), 3);

    // Power is spec: every action is a new generation. The VM ends stopped, and no guest can
    // run meanwhile: its boot files are empty, so a QEMU the controller starts exits at once.
    let started = api.action("web-1", "start").await.expect(200);
    assert_eq!(started["spec"]["power"], "running");
    assert_eq!(u64_at(&started, "/metadata/generation"), 4);
    let stopped = api.action("web-1", "stop?force=true").await.expect(200);
    assert_eq!(stopped["spec"]["power"], "stopped");
    assert_eq!(
        stopped["metadata"]["annotations"]["corral.dev/stop-mode"],
        "force"
    );
    assert_eq!(u64_at(&stopped, "/metadata/generation"), 5);
    let paused = api.action("web-1", "pause").await.expect(200);
    assert_eq!(paused["spec"]["power"], "paused");
    assert!(
        paused["metadata"]["annotations"]
            .get("corral.dev/stop-mode")
            .is_none(),
        "{paused}"
    );
    assert_eq!(u64_at(&paused, "/metadata/generation"), 6);
    let resumed = api.action("web-1", "resume").await.expect(200);
    assert_eq!(resumed["spec"]["power"], "running");
    assert_eq!(u64_at(&resumed, "/metadata/generation"), 7);
    let restarted = api.action("web-1", "restart").await.expect(200);
    assert_eq!(restarted["spec"]["power"], "running");
    assert!(
        restarted["metadata"]["annotations"]["corral.dev/restart-requested-at"].is_string(),
        "{restarted}"
    );
    assert_eq!(u64_at(&restarted, "/metadata/generation"), 8);
    let stopped = api.action("web-1", "stop").await.expect(200);
    assert_eq!(stopped["spec"]["power"], "stopped");
    assert!(
        stopped["metadata"]["annotations"]
            .get("corral.dev/stop-mode")
            .is_none(),
        "{stopped}"
    );
    assert_eq!(u64_at(&stopped, "/metadata/generation"), 9);
    let bad_query = api.action("web-1", "stop?force=maybe").await;
    assert_eq!(bad_query.status, 400, "{}", bad_query.text());

    // The console log of a VM: raw bytes, empty or not.
    let log = api.get("/v1/vms/web-1/console/log?tail=64").await;
    assert_eq!(log.status, 200, "{}", log.text());
    assert_eq!(log.header("content-type"), Some("application/octet-stream"));
    assert!(log.body.len() <= 64);

    // Deletion: a stale version is refused, then 202 and the VM goes.
    let current = api.get("/v1/vms/web-1").await.expect(200);
    let stale_version = u64_at(&current, "/metadata/resource_version") - 1;
    api.delete(&format!("/v1/vms/web-1?resourceVersion={stale_version}"))
        .await
        .expect_error(409, "Conflict");
    // The current version is accepted; the controller may write status between our read and
    // the delete, so a conflict means "read again", a bounded number of times.
    let mut current = current;
    let mut attempts = 0;
    let deleting = loop {
        let reply = api
            .delete(&format!(
                "/v1/vms/web-1?resourceVersion={}",
                u64_at(&current, "/metadata/resource_version")
            ))
            .await;
        attempts += 1;
        if reply.status == 409 && attempts < 5 {
            current = api.get("/v1/vms/web-1").await.expect(200);
            continue;
        }
        break reply.expect(202);
    };
    assert_eq!(deleting["metadata"]["deleting"], true);
    eventually("web-1 to be deleted", || async {
        let reply = api.get("/v1/vms/web-1").await;
        match reply.status {
            404 => Some(reply.expect_error(404, "NotFound")),
            200 => {
                // While it lasts, it is marked and refuses new intents.
                assert_eq!(reply.json()["metadata"]["deleting"], true);
                None
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    })
    .await;
    assert_eq!(api.names("").await, ["db-1"]);
    api.delete("/v1/vms/db-1").await.expect(202);
    eventually("db-1 to be deleted", || async {
        (api.get("/v1/vms/db-1").await.status == 404).then_some(())
    })
    .await;
    assert!(api.names("").await.is_empty());
    assert!(
        d.qemu_pids().is_empty(),
        "no QEMU left: {:?}",
        d.qemu_pids()
    );
}

#[tokio::test]
async fn invalid_input_is_refused_naming_the_field_and_creates_nothing() {
    let d = daemon();
    let api = Api::of(&d);
    api.post("/v1/vms", &manifest(&d, "keep", json!({})))
        .await
        .expect(201);
    let before = api.names("").await;

    let good = manifest(&d, "new-1", json!({}));
    let with = |pointer: &str, value: Value| set(&good, pointer, value);
    let mut unknown = good.clone();
    unknown["spec"]["cpu"] = json!(2);
    let mut unknown_top = good.clone();
    unknown_top["extra"] = json!(1);
    let cases: Vec<(Value, &str)> = vec![
        (
            with("/metadata/name", json!("Bad_Name")),
            "metadata.name: \"Bad_Name\" is not a valid name",
        ),
        (unknown, "unknown field `cpu`, expected one of `cpus`"),
        (unknown_top, "unknown field `extra`"),
        (
            with("/spec/memory", json!("lots")),
            "spec.memory: \"lots\" is not a size",
        ),
        (
            with("/spec/memory", json!("1GB")),
            "spec.memory: \"1GB\" uses the decimal unit GB",
        ),
        (
            with("/spec/cpus", json!(0)),
            "spec.cpus: must be between 1 and 256 (got 0)",
        ),
        (
            with("/spec/power", json!("off")),
            "spec.power: \"off\" is not a valid power state",
        ),
        (
            with("/spec/machine", json!("virt")),
            "spec.machine: virt is not available on x86_64",
        ),
        (
            with("/spec/boot", json!({"kernel": {"kernel": "vmlinuz"}})),
            "spec.boot.kernel.kernel: must be an absolute path",
        ),
        (
            with(
                "/spec/boot",
                json!({"kernel": {"kernel": "/nonexistent/vmlinuz"}}),
            ),
            "spec.boot.kernel.kernel: /nonexistent/vmlinuz",
        ),
        (
            with("/kind", json!("Volumes")),
            "unknown variant `Volumes`, expected one of `Vm`",
        ),
        (
            with("/metadata/labels", json!({"tier": "web tier"})),
            "metadata.labels: value \"web tier\"",
        ),
    ];
    for (body, needle) in &cases {
        let message = api
            .post("/v1/vms", body)
            .await
            .expect_error(400, "InvalidArgument");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    for raw in [&b"{not json"[..], b"", b"[]"] {
        let reply = api.send("POST", "/v1/vms", Some(raw)).await;
        reply.expect_error(400, "InvalidArgument");
    }
    assert_eq!(api.names("").await, before, "nothing was created");

    // Updates are checked the same way, and the path names the VM.
    let kept = api.get("/v1/vms/keep").await.expect(200);
    let mut zero = kept.clone();
    zero["spec"]["cpus"] = json!(0);
    let message = api
        .put("/v1/vms/keep", &zero)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.starts_with("spec.cpus:"), "{message}");
    let message = api
        .put("/v1/vms/other", &kept)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.starts_with("metadata.name:"), "{message}");
    let after = api.get("/v1/vms/keep").await.expect(200);
    assert_eq!(after["metadata"], kept["metadata"], "nothing was changed");

    // Query strings.
    let message = api
        .get("/v1/vms?labelSelector=%3Dweb")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.contains("label"), "{message}");
    // The framework's own rejections come in the API's JSON error shape too.
    let message = api
        .get("/v1/vms?selector=tier")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.contains("selector"),
        "names the parameter: {message}"
    );
    api.delete("/v1/vms/keep?resourceVersion=latest")
        .await
        .expect_error(400, "InvalidArgument");
    api.get("/v1/vms/keep/console/log?tail=-1")
        .await
        .expect_error(400, "InvalidArgument");
    let reply = api.send("PATCH", "/v1/vms", None).await;
    reply.expect_error(405, "MethodNotAllowed");
    assert!(reply.header("allow").is_some(), "{reply:?}");
    assert_eq!(api.names("").await, before);
}

#[tokio::test]
async fn a_missing_vm_is_not_found_everywhere() {
    let d = daemon();
    let api = Api::of(&d);
    let message = api.get("/v1/vms/nope").await.expect_error(404, "NotFound");
    assert!(message.contains("\"nope\" not found"), "{message}");
    for action in [
        "start",
        "stop",
        "stop?force=true",
        "pause",
        "resume",
        "restart",
    ] {
        api.action("nope", action)
            .await
            .expect_error(404, "NotFound");
    }
    api.get("/v1/vms/nope/console/log")
        .await
        .expect_error(404, "NotFound");
    api.delete("/v1/vms/nope")
        .await
        .expect_error(404, "NotFound");
    let mut body = manifest(&d, "nope", json!({}));
    body["spec"]["cpus"] = json!(2);
    api.put("/v1/vms/nope", &body)
        .await
        .expect_error(404, "NotFound");
    assert!(api.names("").await.is_empty());
}

#[tokio::test]
async fn metrics_health_and_a_private_socket() {
    let d = daemon();
    let api = Api::of(&d);
    let health = api.get("/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    api.post("/v1/vms", &manifest(&d, "m-1", json!({})))
        .await
        .expect(201);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{metrics:?}"
    );
    let text = metrics.text();
    assert!(text.contains("corral_vms"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("corral_vms{phase=")),
        "one VM is counted by phase: {text}"
    );

    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir = d.socket().parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} mode {mode:o}", dir.display());
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document.

/// The committed document, as the daemon serves it.
async fn served_document(api: &Api) -> Value {
    let reply = api.get("/openapi.json").await;
    let doc = reply.expect(200);
    assert_eq!(doc, *DOC, "the daemon serves the committed document");
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
    let api = Api::of(&d);
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

    // Every operation documents 401 (TCP), and every reference resolves.
    for (method, path) in &documented {
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

/// The `schema` objects of parameters and media types under `value`.
fn collect_schemas<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "schema" {
                    out.push(v);
                } else {
                    collect_schemas(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_schemas(v, out)),
        _ => {}
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A small JSON Schema (2020-12 subset) validator: enough for the keywords the document uses,
/// which [`the_schemas_match_the_contract_types_and_the_api_output`] checks.
struct Validator<'a> {
    doc: &'a Value,
}

/// Keywords that assert something, all implemented below.
const ASSERTIONS: &[&str] = &[
    "$ref",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "oneOf",
    "minimum",
    "maximum",
    "multipleOf",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
];
/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "default",
    "example",
    "examples",
    "readOnly",
    "format",
    "contentMediaType",
];

impl Validator<'_> {
    fn schema(&self, name: &str) -> &Value {
        let schema = &self.doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    /// Errors of `value` against `schema`, each with its JSON path.
    fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, value, "$", &mut errors);
        errors
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = schema.as_object().expect("a schema object");
        for keyword in schema.keys() {
            assert!(
                ASSERTIONS.contains(&keyword.as_str()) || ANNOTATIONS.contains(&keyword.as_str()),
                "keyword {keyword} at {at} is not understood by this validator"
            );
        }
        let fail = |errors: &mut Vec<String>, message: String| {
            errors.push(format!("{at}: {message}"));
        };
        if let Some(Value::String(r)) = schema.get("$ref") {
            let target = self
                .doc
                .pointer(r.strip_prefix('#').expect("a local reference"))
                .unwrap_or_else(|| panic!("{r} does not resolve"));
            self.check(target, value, at, errors);
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad type {other}"),
            };
            let ok = types.iter().any(|t| match *t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_u64() || value.is_i64(),
                "number" => value.is_number(),
                "null" => value.is_null(),
                other => panic!("unknown type {other}"),
            });
            if !ok {
                fail(errors, format!("{value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(c) = schema.get("const") {
            if value != c {
                fail(errors, format!("{value} is not {c}"));
            }
        }
        if let Some(Value::Array(allowed)) = schema.get("enum") {
            if !allowed.contains(value) {
                fail(errors, format!("{value} is not one of {allowed:?}"));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    fail(errors, format!("{n} < {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    fail(errors, format!("{n} > {max}"));
                }
            }
            if let Some(m) = schema.get("multipleOf").and_then(Value::as_u64) {
                if value.as_u64().is_none_or(|v| v % m != 0) {
                    fail(errors, format!("{value} is not a multiple of {m}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    fail(errors, format!("{s:?} is too short"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    fail(errors, format!("{s:?} is too long"));
                }
            }
            if let Some(Value::String(pattern)) = schema.get("pattern") {
                let re = regex::Regex::new(pattern).expect("a valid pattern");
                if !re.is_match(s) {
                    fail(errors, format!("{s:?} does not match {pattern}"));
                }
            }
        }
        if let Some(Value::Array(options)) = schema.get("oneOf") {
            let passing = options
                .iter()
                .filter(|o| self.errors(o, value).is_empty())
                .count();
            if passing != 1 {
                fail(
                    errors,
                    format!("{value} matches {passing} of the oneOf options, not 1"),
                );
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    fail(errors, format!("{} items, more than {max}", items.len()));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.check(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
        }
        let Some(object) = value.as_object() else {
            return;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: {name} is required"));
                }
            }
        }
        for (key, v) in object {
            let path = format!("{at}.{key}");
            if let Some(names) = schema.get("propertyNames") {
                self.check(
                    names,
                    &Value::String(key.clone()),
                    &format!("{path} (name)"),
                    errors,
                );
            }
            match properties.and_then(|p| p.get(key)) {
                Some(property) => self.check(property, v, &path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{path} is not allowed")),
                    Some(extra @ Value::Object(_)) => self.check(extra, v, &path, errors),
                    _ => {}
                },
            }
        }
    }

    #[track_caller]
    fn assert_valid(&self, name: &str, value: &Value) {
        let errors = self.errors(self.schema(name), value);
        assert!(
            errors.is_empty(),
            "{value}\nis not a valid {name}:\n{errors:#?}"
        );
    }

    #[track_caller]
    fn assert_invalid(&self, name: &str, value: &Value) {
        assert!(
            !self.errors(self.schema(name), value).is_empty(),
            "{value} is a valid {name}, but the API refuses it"
        );
    }

    /// The properties a schema declares.
    fn properties(&self, name: &str) -> BTreeSet<String> {
        self.schema(name)["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .cloned()
            .collect()
    }

    fn enum_words(&self, name: &str) -> Vec<String> {
        self.schema(name)["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
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
        .build()
        .unwrap();
    let mut vm = Vm::new("full".parse().unwrap(), spec);
    vm.metadata = ObjectMeta::new("full".parse().unwrap()).with_label("tier", "web");
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
    };
    vm
}

#[tokio::test]
async fn the_schemas_match_the_contract_types_and_the_api_output() {
    let d = daemon();
    let api = Api::of(&d);
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
        k
    });
    assert_eq!(keys(&net["status"]), {
        let mut k = v.properties("NetworkStatus");
        k.remove("message");
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `corrald` with `args` and stdin, waits for it to exit (bounded) and returns its status
/// and output.
fn run_corrald(args: &[&str], stdin: &[u8]) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = Command::new(CORRALD)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running corrald");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
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

#[test]
fn tcp_without_tls_and_a_token_is_refused_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("crl")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("d");
    let run = dir.path().join("r");
    let (status, _, stderr) = run_corrald(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
    );
    assert!(
        !status.success(),
        "corrald served TCP without TLS: {stderr}"
    );
    assert!(
        stderr.contains("TLS") && stderr.contains("token"),
        "the refusal says why: {stderr}"
    );
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("--token-file"),
        "{stderr}"
    );
    assert!(!run.join("corral.sock").exists(), "nothing was served");
}

/// A TLS client of `port` that trusts only `ca`.
/// A self-signed certificate for `localhost` in a private directory, for corrald's TLS listener.
struct TlsSetup {
    keys: tempfile::TempDir,
    ca: rustls_pki_types::CertificateDer<'static>,
}

impl TlsSetup {
    fn new() -> TlsSetup {
        let keys = tempfile::Builder::new()
            .prefix("crl")
            .tempdir_in("/tmp")
            .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(keys.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            keys.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        TlsSetup {
            ca: certified.cert.der().clone(),
            keys,
        }
    }

    /// Where the test writes its token hashes before [`TlsSetup::start`].
    fn token_file(&self) -> std::path::PathBuf {
        self.keys.path().join("tokens")
    }

    /// corrald on a free port with this certificate and token file.
    fn start(&self) -> (Corrald, u16) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let path = |name: &str| self.keys.path().join(name).to_str().unwrap().to_owned();
        let d = Corrald::start_with(
            CORRALD,
            &[
                "--listen",
                &listen,
                "--tls-cert",
                &path("cert.pem"),
                "--tls-key",
                &path("key.pem"),
                "--token-file",
                &path("tokens"),
            ],
        )
        .expect("corrald starts with TLS");
        (d, port)
    }
}

async fn tls_request(
    port: u16,
    ca: &rustls_pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("a CA certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await?;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    Ok(exchange(tls, method, path, &headers, None).await)
}

#[tokio::test]
async fn tcp_serves_with_tls_and_a_bearer_token_only() {
    let tls = TlsSetup::new();
    let ca = tls.ca.clone();

    let token = "s3cret-t0ken";
    let (status, line, stderr) = run_corrald(&["hash-token"], format!("{token}\n").as_bytes());
    assert!(status.success(), "{stderr}");
    assert!(line.starts_with("blake3:"), "{line}");
    assert!(!line.contains(token));
    let token_file = tls.token_file();
    std::fs::write(&token_file, format!("# test\n{line}")).unwrap();

    let (d, port) = tls.start();
    let ok = eventually("the TLS listener", || async {
        tls_request(port, &ca, "GET", "/v1/vms", Some(token))
            .await
            .ok()
    })
    .await;
    let list = ok.expect(200);
    assert_eq!(list["items"], json!([]));

    for (path, token) in [
        ("/v1/vms", None),
        ("/v1/vms", Some("wrong")),
        ("/v1/vms", Some("")),
        ("/healthz", None),
        ("/openapi.json", None),
        ("/metrics", None),
    ] {
        let reply = tls_request(port, &ca, "GET", path, token).await.unwrap();
        let message = reply.expect_error(401, "Unauthenticated");
        assert!(message.contains("bearer token"), "{message}");
    }
    let health = tls_request(port, &ca, "GET", "/healthz", Some(token))
        .await
        .unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    tls_request(port, &ca, "GET", "/v1/vms/absent", Some(token))
        .await
        .unwrap()
        .expect_error(404, "NotFound");

    // A client that does not trust the certificate gets no answer at all.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    assert!(
        tls_request(port, stranger.cert.der(), "GET", "/healthz", Some(token))
            .await
            .is_err()
    );

    // A client that connects and never starts its handshake does not hold up anyone else: a
    // real request is answered while the silent connection is still open (the server only
    // drops it after its handshake timeout, so it must not have seen EOF yet).
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let health = tls_request(port, &ca, "GET", "/healthz", Some(token))
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let mut byte = [0u8; 1];
    match silent.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the silent connection was closed before others were served: {other:?}"),
    }

    // The unix socket still needs no token.
    Api::of(&d).get("/v1/vms").await.expect(200);
}

#[tokio::test]
async fn memory_needs_the_memory_scope_and_refusals_are_audited() {
    let tls = TlsSetup::new();
    let ca = tls.ca.clone();
    let line = |token: &str, args: &[&str]| {
        let mut all = vec!["hash-token"];
        all.extend_from_slice(args);
        let (status, line, stderr) = run_corrald(&all, token.as_bytes());
        assert!(status.success(), "{stderr}");
        line
    };
    let (ops, peek) = (line("ops", &[]), line("peek", &["--scope", "memory"]));
    assert!(peek.trim_end().ends_with("scopes=vms,memory"), "{peek}");
    // A hand-written line: memory only, no VM operations.
    let only = format!("{} scopes=memory\n", line("only", &[]).trim_end());
    let token_file = tls.token_file();
    std::fs::write(&token_file, format!("{ops}{peek}{only}")).unwrap();
    let (status, _, stderr) = run_corrald(&["hash-token", "--scope", "disks"], b"x");
    assert!(!status.success() && stderr.contains("disks"), "{stderr}");

    let (d, port) = tls.start();
    eventually("the TLS listener", || async {
        tls_request(port, &ca, "GET", "/v1/vms", Some("ops"))
            .await
            .ok()
    })
    .await
    .expect(200);

    let read = "/v1/vms/absent/memory?addr=0x1000&len=16";
    let message = tls_request(port, &ca, "GET", read, Some("ops"))
        .await
        .unwrap()
        .expect_error(403, "PermissionDenied");
    assert!(message.contains("`memory` scope"), "{message}");
    // With the scope, the request gets as far as the VM lookup.
    for token in ["peek", "only"] {
        tls_request(port, &ca, "GET", read, Some(token))
            .await
            .unwrap()
            .expect_error(404, "NotFound");
    }
    let message = tls_request(port, &ca, "GET", "/v1/vms", Some("only"))
        .await
        .unwrap()
        .expect_error(403, "PermissionDenied");
    assert!(message.contains("`vms` scope"), "{message}");

    let audit = std::fs::read_to_string(d.data_dir().join("audit.log")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{audit}");
    assert_eq!(lines[0]["outcome"], "denied");
    assert_eq!(lines[0]["op"], "memory.read");
    assert_eq!(lines[0]["addr"], 0x1000);
    assert_eq!(lines[0]["len"], 16);
    let ops_hash = &ops.trim()["blake3:".len()..];
    assert_eq!(lines[0]["who"], format!("token:{}", &ops_hash[..8]));
    assert!(lines[1..].iter().all(|l| l["outcome"] == "error"));
}

#[tokio::test]
async fn storage_routes_import_images_make_volumes_and_answer_in_the_documented_schema() {
    let d = daemon();
    let api = Api::of(&d);
    let kernel = corral_testkit::GuestKit::get(corral_contract::Arch::X86_64)
        .expect("guest kit")
        .kernel();
    let image = json!({
        "kind": "Image",
        "metadata": {"name": "k"},
        "spec": {"source": {"path": kernel}, "format": "kernel"},
    });
    let created = api.post("/v1/images", &image).await.expect(201);
    let digest = created["status"]["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("blake3:"), "{created}");
    assert_eq!(
        api.get("/v1/images").await.expect(200)["items"][0]["status"]["digest"],
        digest.as_str()
    );
    api.post("/v1/images", &image)
        .await
        .expect_error(409, "AlreadyExists");
    let verified = api
        .post("/v1/images/k/verify", &json!({}))
        .await
        .expect(200);
    assert_eq!(verified["ok"], true);

    let volume = json!({"kind": "Volume", "metadata": {"name": "v"}, "spec": {"size": "16M"}});
    api.post("/v1/volumes", &volume).await.expect(201);
    let ready = eventually("the volume", || async {
        let v = api.get("/v1/volumes/v").await.expect(200);
        (v["status"]["phase"] == "Ready").then_some(v)
    })
    .await;
    assert_eq!(ready["status"]["size"], 16 << 20);
    let mut bigger = ready.clone();
    bigger["spec"]["size"] = json!("32M");
    api.put("/v1/volumes/v", &bigger).await.expect(200);
    eventually("the resize", || async {
        let v = api.get("/v1/volumes/v").await.expect(200);
        (v["status"]["size"] == 32 << 20).then_some(())
    })
    .await;
    let mut smaller = ready.clone();
    smaller["metadata"]["resource_version"] = json!(0);
    let message = api
        .put("/v1/volumes/v", &smaller)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.starts_with("spec.size: volumes only grow"),
        "{message}"
    );
    let bad = json!({"kind": "Volume", "metadata": {"name": "w"}, "spec": {}});
    let message = api
        .post("/v1/volumes", &bad)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.contains("spec.size: required for an empty volume"),
        "{message}"
    );

    let snap = json!({"kind": "Snapshot", "metadata": {"name": "s"}, "spec": {"vm": "absent"}});
    let message = api
        .post("/v1/snapshots", &snap)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.starts_with("spec.vm: VM \"absent\" not found"),
        "{message}"
    );
    assert_eq!(
        api.get("/v1/snapshots?vm=absent").await.expect(200)["items"],
        json!([])
    );
    api.get("/v1/vms/absent/attestation")
        .await
        .expect_error(404, "NotFound");

    api.delete("/v1/volumes/v").await.expect(202);
    api.delete("/v1/images/k").await.expect(200);
    api.get("/v1/images/k").await.expect_error(404, "NotFound");
}
