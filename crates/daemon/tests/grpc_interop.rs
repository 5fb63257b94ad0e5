//! corrald's gRPC API works with a client from another toolchain: python grpcio (grpc-core),
//! with its default `:authority` on the unix socket and with TLS and a bearer token on TCP.
//! The client is `tests/interop/grpc_client.py`; it needs the venv `scripts/setup.sh` makes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::{Corrald, workspace_root};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// The venv's python, once it is known to import every module the client uses.
fn grpc_python() -> PathBuf {
    let python = workspace_root().join("target/tools/grpc-venv/bin/python");
    let imports = Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_tools.protoc, grpc_reflection.v1alpha, grpc_health.v1",
        ])
        .output();
    match imports {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} lacks the python gRPC packages ({}); run scripts/setup.sh",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "no python gRPC venv at {} ({e}); run scripts/setup.sh",
            python.display()
        ),
    }
}

/// Runs the python client with `args` and returns what it printed, failing with its output.
fn run_client(python: &Path, args: &[&str]) -> String {
    let root = workspace_root();
    let out = Command::new(python)
        .arg(root.join("crates/daemon/tests/interop/grpc_client.py"))
        .arg("--proto-root")
        .arg(root.join("crates/contract/proto"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the python gRPC client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python gRPC client {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A self-signed certificate for `localhost`, a token file holding one token's hash, and the
/// empty kernel file a stopped VM may name.
struct Setup {
    dir: tempfile::TempDir,
    token: &'static str,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("crl-grpc")
            .tempdir_in("/tmp")
            .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"").unwrap();
        let token = "interop-t0ken";
        let hash = hash_token(token);
        std::fs::write(dir.path().join("tokens"), format!("{hash}\n")).unwrap();
        Setup { dir, token }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}

fn hash_token(token: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(CORRALD)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running corrald hash-token");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{token}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "corrald hash-token failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "corrald never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn python_grpcio_reflects_checks_health_and_manages_vms_over_unix_and_tls() {
    let python = grpc_python();
    let setup = Setup::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Corrald::start_with(
        CORRALD,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &setup.path("cert.pem"),
            "--tls-key",
            &setup.path("key.pem"),
            "--token-file",
            &setup.path("tokens"),
            // The token is not an admin: the kernel it names must be below an allowed dir.
            "--host-path-allow",
            setup.dir.path().to_str().unwrap(),
        ],
    )
    .expect("corrald starts with TLS");
    wait_for_port(port);
    let kernel = setup.path("vmlinuz");

    // grpc-core's default authority for this target is the percent-encoded socket path.
    let unix = format!("unix://{}", d.socket().display());
    let said = run_client(
        &python,
        &["--target", &unix, "--vm", "py-unix", "--kernel", &kernel],
    );
    assert!(said.contains("ok unix://"), "{said}");
    assert!(said.contains("'py-unix'"), "{said}");

    let tls = format!("localhost:{port}");
    let said = run_client(
        &python,
        &[
            "--target",
            &tls,
            "--ca",
            &setup.path("cert.pem"),
            "--token",
            setup.token,
            "--vm",
            "py-tls",
            "--kernel",
            &kernel,
        ],
    );
    // The VM made over the unix socket is listed over TLS: one daemon, two transports.
    assert!(said.contains("['py-tls', 'py-unix']"), "{said}");
}
