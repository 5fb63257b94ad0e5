//! `corral vm memory …` against a real corrald and a real QEMU guest (guest kit, TCG): the
//! guest keeps a random marker in a live process, and the CLI must find it, read it back, dump
//! RAM byte for byte, map it, stream it, refuse what it must, and audit every act.

use std::path::Path;
use std::process::Command;

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, kit_vm_args, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

fn random_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cm-{:x}-{:x}", nanos, std::process::id())
}

/// Creates and boots `name` (with introspection unless `plain`) and waits for the guest to
/// print `marker`; returns the VM's uid.
fn boot(cli: &Cli, name: &str, marker: &str, introspection: bool) -> String {
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    let cmdline = format!("console=ttyS0 quiet corral.marker={marker}");
    let mut args = kit_vm_args(&kit, name, &cmdline);
    args.push("--wait".into());
    if introspection {
        args.push("--introspection".into());
    }
    cli.ok(&args);
    cli.wait_console(name, &format!("CORRAL_MARKER {marker}"));
    let vm = cli.json(&["vm", "get", name, "-o", "json"]);
    vm["metadata"]["uid"].as_str().unwrap().to_owned()
}

fn audit_lines(d: &Corrald) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.data_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

/// Guest-physical addresses `find` prints with `-o json`.
fn find(cli: &Cli, name: &str, marker: &str) -> Vec<u64> {
    let found = cli.json(&[
        "vm",
        "memory",
        "find",
        name,
        "--pattern",
        marker,
        "-o",
        "json",
    ]);
    found["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect()
}

#[test]
fn find_read_dump_map_and_stream_a_live_guest_through_the_cli() {
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);
    let marker = random_marker();
    let uid = boot(&cli, "g", &marker, true);
    let got = cli.json(&["vm", "get", "g", "-o", "json"]);
    let ram_file = corral_testkit::guest_ram_path(&uid, got["status"]["node"].as_str());

    // find → read: some hit reads back the marker (the guest may move transient copies).
    let hits = find(&cli, "g", &marker);
    assert!(!hits.is_empty(), "marker {marker} not found");
    // The table lists the same kind of hits; their number may differ from the first find's,
    // as the running guest copies and frees the marker between the two.
    let table = cli.ok(&["vm", "memory", "find", "g", "--pattern", &marker]);
    assert!(table.lines().count() > 0, "{table}");
    assert!(table.lines().all(|l| l.starts_with("0x")), "{table}");
    let len = marker.len().to_string();
    let read_back = hits.iter().any(|hit| {
        let addr = format!("{hit:#x}");
        cli.ok_bytes(&[
            "vm", "memory", "read", "g", "--addr", &addr, "--len", &len, "-o", "raw",
        ]) == marker.as_bytes()
    });
    assert!(read_back, "no hit of {hits:?} reads back {marker}");
    let hex = cli.ok(&["vm", "memory", "read", "g", "--addr", "0", "--len", "32"]);
    assert!(hex.starts_with("0000000000000000  "), "{hex}");
    assert_eq!(hex.lines().count(), 2);

    // Every act is audited with who, VM, operation and range.
    let audit = audit_lines(&d);
    let read = audit
        .iter()
        .find(|l| l["verb"] == "memory.read" && l["outcome"] == "ok")
        .expect("an audited read");
    assert_eq!(read["name"], "g");
    assert_eq!(read["uid"], uid.as_str());
    assert!(
        read["identity"].as_str().unwrap().starts_with("unix:uid="),
        "{read}"
    );
    assert_eq!(read["len"], marker.len());
    assert!(audit.iter().any(|l| l["verb"] == "memory.find"));

    // Map: a PNG of the asked size.
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.png");
    cli.ok(&[
        "vm",
        "memory",
        "map",
        "g",
        "--out",
        map.to_str().unwrap(),
        "--side",
        "256",
    ]);
    assert_eq!(png_size(&std::fs::read(&map).unwrap()), (256, 256));
    cli.fails(
        &[
            "vm", "memory", "map", "g", "--out", "x.png", "--side", "100",
        ],
        1,
        "side:",
    );

    // WebSocket: a header, then frames of side² RGB pixels showing more than zeros.
    let frames = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(stream_frames(&d.socket(), "g", 64, 4));
    assert!(frames.iter().all(|f| f.len() == 64 * 64 * 3));
    assert!(frames.iter().any(|f| f.iter().any(|b| *b != 0)));

    // Atomic on a running guest: paused for the copy only, running again afterwards.
    let out = dir.path().join("running.bin");
    let report = cli.json(&[
        "vm",
        "memory",
        "dump",
        "g",
        "--out",
        out.to_str().unwrap(),
        "--mode",
        "atomic",
        "-o",
        "json",
    ]);
    assert!(report["pause_us"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 256 << 20);
    std::fs::remove_file(&out).unwrap();
    assert_eq!(
        cli.json(&["vm", "get", "g", "-o", "json"])["status"]["phase"],
        "Running"
    );

    // Paused: the dump is the RAM file's bytes, read here independently; nothing is torn.
    cli.ok(&["vm", "pause", "g", "--wait"]);
    for mode in ["consistent", "atomic"] {
        let out = dir.path().join(format!("{mode}.bin"));
        let report = cli.json(&[
            "vm",
            "memory",
            "dump",
            "g",
            "--out",
            out.to_str().unwrap(),
            "--mode",
            mode,
            "-o",
            "json",
        ]);
        assert_eq!(report["bytes"], 256u64 << 20, "{report}");
        assert_eq!(report["torn_pages"], serde_json::json!([]), "{report}");
        let dumped = std::fs::read(&out).unwrap();
        let file = std::fs::read(&ram_file).unwrap();
        assert!(
            dumped == file,
            "{mode} dump differs from {}",
            ram_file.display()
        );
        assert!(
            dumped.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the dump holds no marker"
        );
        std::fs::remove_file(&out).unwrap();
    }
    assert_eq!(
        cli.json(&["vm", "get", "g", "-o", "json"])["status"]["phase"],
        "Paused",
        "an atomic dump of a paused guest leaves it paused"
    );

    // Bad input and a VM without introspection: clear errors, exit 1; unknown VM: exit 3.
    cli.fails(
        &[
            "vm",
            "memory",
            "read",
            "g",
            "--addr",
            "0x10000000",
            "--len",
            "16",
        ],
        1,
        "outside guest RAM",
    );
    cli.fails(
        &["vm", "memory", "read", "g", "--addr", "zz", "--len", "1"],
        1,
        "hex (0x1000)",
    );
    cli.fails(
        &["vm", "memory", "read", "g", "--addr", "0", "--len", "0"],
        1,
        "64 MiB",
    );
    cli.fails(
        &["vm", "memory", "read", "nope", "--addr", "0", "--len", "1"],
        3,
        "not found",
    );
    let kernel = GuestKit::get(Arch::X86_64).expect("guest kit").kernel();
    let kernel = kernel.to_str().unwrap();
    cli.ok(&["vm", "create", "plain", "--kernel", kernel, "--no-start"]);
    cli.fails(
        &["vm", "memory", "find", "plain", "--pattern", "x"],
        1,
        "vm plain was not created with spec.introspection: true; guest memory cannot be read",
    );

    // Delete: the RAM file goes with the VM.
    assert!(ram_file.exists());
    cli.ok(&["vm", "delete", "g", "--wait"]);
    assert!(
        !ram_file.exists(),
        "{} left after delete",
        ram_file.display()
    );
    cli.fails(
        &["vm", "memory", "read", "g", "--addr", "0", "--len", "1"],
        3,
        "not found",
    );
}

/// Opens the frame stream over the unix socket and returns `n` frames.
async fn stream_frames(socket: &Path, name: &str, side: u32, n: usize) -> Vec<Vec<u8>> {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!("ws://localhost/v1/vms/{name}/memory/stream?side={side}&fps=60")
        .into_client_request()
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    use futures_util_shim::next;
    let header = next(&mut ws).await;
    let Message::Text(header) = header else {
        panic!("expected a text header, got {header:?}")
    };
    let header: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert_eq!(header["side"], side);
    assert_eq!(header["format"], "rgb8");
    let mut frames = Vec::new();
    while frames.len() < n {
        match next(&mut ws).await {
            Message::Binary(frame) => frames.push(frame.to_vec()),
            other => panic!("expected a frame, got {other:?}"),
        }
    }
    frames
}

/// `StreamExt::next` without a futures dependency, bounded in time.
mod futures_util_shim {
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::time::Duration;

    pub async fn next<S, T, E>(stream: &mut S) -> T
    where
        S: tokio_stream::Stream<Item = Result<T, E>> + Unpin,
        E: std::fmt::Debug,
    {
        let item = tokio::time::timeout(
            Duration::from_secs(60),
            poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)),
        )
        .await
        .expect("a message within 60 s");
        item.expect("the stream ended").expect("a WebSocket error")
    }
}

#[test]
fn a_token_without_the_memory_scope_is_refused_and_audited() {
    let keys = tempfile::Builder::new()
        .prefix("crl")
        .tempdir_in("/tmp")
        .unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key, ca) = (
        keys.path().join("cert.pem"),
        keys.path().join("key.pem"),
        keys.path().join("ca.pem"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let hash = |token: &str, scope: &[&str]| {
        let mut child = Command::new(workspace_binary("corrald"))
            .arg("hash-token")
            .args(scope)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = hash("ops-token", &[]);
    let peek = hash("peek-token", &["--scope", "memory"]);
    assert!(!plain.contains("scopes="), "{plain}");
    assert!(peek.trim_end().ends_with(" scopes=vms,memory"), "{peek}");
    let tokens = keys.path().join("tokens");
    std::fs::write(&tokens, format!("{plain}{peek}")).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let d = Corrald::start_with(
        workspace_binary("corrald"),
        &[
            "--listen",
            &listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    )
    .expect("corrald with TLS");
    let local = Cli::new(CORRAL, &d);
    let marker = random_marker();
    boot(&local, "g", &marker, true);
    let url = format!("https://localhost:{port}");
    let ops = Cli::new(CORRAL, &d).tls(&url, &ca, "ops-token");
    let spy = Cli::new(CORRAL, &d).tls(&url, &ca, "peek-token");

    // The plain token manages VMs but reads no memory; the refusal is audited.
    assert!(ops.ok(&["vm", "list"]).contains("Running"));
    let before = audit_lines(&d).len();
    ops.fails(
        &[
            "vm", "memory", "read", "g", "--addr", "0", "--len", "16", "-o", "raw",
        ],
        1,
        "needs the `memory` grant",
    );
    ops.fails(
        &["vm", "memory", "find", "g", "--pattern", &marker],
        1,
        "memory",
    );
    let audit = audit_lines(&d);
    let denied: Vec<_> = audit[before..].iter().collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    let ops_id = denied[0]["identity"].as_str().unwrap().to_owned();
    assert!(
        ops_id.starts_with("token:") && ops_id.len() == "token:".len() + 8,
        "{ops_id}"
    );
    assert!(
        denied
            .iter()
            .all(|l| l["outcome"] == "denied" && l["name"] == "g")
    );
    assert!(
        denied.iter().all(|l| l.get("uid").is_none()),
        "nothing was opened"
    );

    // The memory token reads, and is audited under its own id.
    let hits = find(&spy, "g", &marker);
    assert!(!hits.is_empty());
    spy.ok_bytes(&[
        "vm", "memory", "read", "g", "--addr", "0x1000", "--len", "4096", "-o", "raw",
    ]);
    let audit = audit_lines(&d);
    let read = audit.last().unwrap();
    assert_eq!(read["verb"], "memory.read");
    assert_eq!(read["outcome"], "ok");
    assert_eq!(read["addr"], 0x1000);
    assert_eq!(read["len"], 4096);
    let spy_id = read["identity"].as_str().unwrap();
    assert!(spy_id.starts_with("token:") && spy_id != ops_id, "{spy_id}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.data_dir().join("audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
