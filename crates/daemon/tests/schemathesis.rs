//! Schemathesis (PyPI `schemathesis`, installed by `scripts/setup.sh` under
//! `target/tools/schemathesis-venv`) against a live corrald on TLS with a bearer token: every
//! operation of the served document, every check (server errors, status codes, content types,
//! response schemas, schema-violating requests accepted, schema-valid requests rejected …),
//! bounded and seeded. The settings are `tests/schemathesis.toml`, which lists the few rules
//! OpenAPI cannot state.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_testkit::{Corrald, workspace_root};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");
const TOKEN: &str = "schemathesis-t0ken";
/// The whole run's budget: Schemathesis takes under a minute on two idle cores, five and more
/// beside a guest booting under TCG. Below nextest's limit for this test (.config/nextest.toml),
/// so that a run past it fails with what Schemathesis printed so far.
const BUDGET: Duration = Duration::from_secs(570);

fn st() -> PathBuf {
    let st = workspace_root().join("target/tools/schemathesis-venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run scripts/setup.sh, which installs Schemathesis",
        st.display()
    );
    st
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The token file line for [`TOKEN`], with every scope so that memory routes get past auth.
fn token_line() -> String {
    let mut child = Command::new(CORRALD)
        .args(["hash-token", "--scope", "vms,memory"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{TOKEN}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn schemathesis_finds_nothing() {
    let st = st();
    let keys = tempfile::Builder::new()
        .prefix("crl")
        .tempdir_in("/tmp")
        .unwrap();
    let path = |name: &str| keys.path().join(name).to_str().unwrap().to_owned();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(path("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(path("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(path("tokens"), token_line()).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Corrald::start_with(
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the TLS listener never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let mut child = Command::new(st)
        .args(["--config-file", config, "--no-color", "run"])
        .arg(format!("https://localhost:{port}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--tls-verify", "false"])
        .args(["--checks", "all"])
        .args([
            "--max-examples",
            "20",
            "--seed",
            "20261204",
            "--workers",
            "1",
        ])
        .args(["--request-timeout", "20"])
        // Every request and answer, to read when a run fails (a rare TLS EOF seen under load).
        .args(["--report", "vcr", "--report-vcr-path"])
        .arg(concat!(
            env!("CARGO_TARGET_TMPDIR"),
            "/schemathesis-vcr.yaml"
        ))
        .current_dir(keys.path())
        // To files, not pipes: a pipe nobody reads while it runs fills up (64 KiB) and
        // blocks Schemathesis mid-run, which then looks like a hang.
        .stdout(std::fs::File::create(path("st.out")).unwrap())
        .stderr(std::fs::File::create(path("st.err")).unwrap())
        .spawn()
        .expect("Schemathesis runs");
    let started = Instant::now();
    let report = || {
        let read = |f: &str| std::fs::read_to_string(path(f)).unwrap_or_default();
        format!("{}{}", read("st.out"), read("st.err"))
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BUDGET {
            child.kill().unwrap();
            panic!(
                "Schemathesis ran past {BUDGET:?}; so far:\n{}\n--- corrald log ---\n{}",
                report(),
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let report = report();
    println!("{report}");
    assert!(
        status.success(),
        "Schemathesis found failures (exit {status}):\n{report}\n--- corrald log ---\n{}",
        daemon.log()
    );
    // Evidence that it tested every operation rather than stopping early.
    let tested = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    let selected = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|s| s.split('/').next()?.trim().parse::<usize>().ok());
    assert!(
        tested.is_some() && tested == selected,
        "not every operation was tested:\n{report}"
    );
    assert!(
        selected >= Some(30),
        "too few operations in the document:\n{report}"
    );
}
