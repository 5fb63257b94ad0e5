//! Storage through the `corral` CLI against a real corrald, real qemu-img and real QEMU guests:
//! images, volumes, snapshots and attestations. Guest state is read from the guest's own
//! console (`CORRAL_DISKCOUNT n` — boots counted on its root disk — and `CORRAL_HEARTBEAT n`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, kit_vm_args, tail, workspace_binary};

fn cli(d: &Corrald) -> Cli<'_> {
    Cli::new(env!("CARGO_BIN_EXE_corral"), d)
}

fn corrald() -> Corrald {
    Corrald::start(workspace_binary("corrald")).expect("corrald")
}

fn kit() -> GuestKit {
    GuestKit::get(Arch::X86_64).expect("guest kit")
}

/// The numbers after `marker ` on the console, in order.
fn numbers(log: &str, marker: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(marker)?.trim().parse().ok())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// A VM booting the kit's kernel with its root on its first volume.
fn create_disk_vm(cli: &Cli<'_>, name: &str, volumes: &[&str], extra_cmdline: &str, start: bool) {
    let cmdline = format!("console=ttyS0 corral.root=/dev/vda {extra_cmdline}");
    let mut args = kit_vm_args(&kit(), name, &cmdline);
    for v in volumes {
        args.extend(["--volume", v].map(String::from));
    }
    args.push(if start { "--wait" } else { "--no-start" }.into());
    cli.ok(&args);
}

#[test]
fn a_cloned_volume_boots_and_a_disk_snapshot_brings_its_state_back_after_a_daemon_restart() {
    let mut d = corrald();
    let k = kit();
    {
        let cli = cli(&d);
        // Upload from the CLI (streamed over gRPC), then clone thin.
        let out = cli.ok(&["image", "import", "root", s(&k.rootfs_qcow2())]);
        assert!(out.contains("image/root imported: qcow2"), "{out}");
        cli.ok(&[
            "volume", "create", "root-1", "--image", "root", "--size", "96M", "--wait",
        ]);
        let vol = cli.json(&["volume", "get", "root-1", "-o", "json"]);
        assert_eq!(vol["status"]["phase"], "Ready");
        let path = vol["status"]["path"].as_str().unwrap().to_owned();
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", "-U", &path])
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let blob = d.data_dir().join("images/blake3").join(
            cli.json(&["image", "get", "root", "-o", "json"])["status"]["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("blake3:")
                .unwrap(),
        );
        assert_eq!(
            info["backing-filename"].as_str(),
            Some(s(&blob)),
            "a thin clone on the read-only image: {info}"
        );

        create_disk_vm(&cli, "db", &["root-1"], "corral.diskcount=1", true);
        let log = cli.wait_console_until("db", "first count", |l| {
            !numbers(l, "CORRAL_DISKCOUNT").is_empty()
        });
        assert_eq!(numbers(&log, "CORRAL_DISKCOUNT"), [0], "a fresh clone");
        assert!(log.contains("root=disk"), "booted from the volume");
        cli.ok(&["vm", "stop", "db", "--wait"]);
        // Attach and detach only while stopped: running refuses it (checked below).
        cli.ok(&["snapshot", "create", "first", "--vm", "db", "--wait"]);
        cli.ok(&["vm", "start", "db", "--wait"]);
        cli.wait_console_until("db", "second count", |l| {
            numbers(l, "CORRAL_DISKCOUNT").len() >= 2
        });
        let out = cli.run(&["snapshot", "create", "live", "--vm", "db"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "disk-only while running is refused"
        );
        cli.ok(&["vm", "stop", "db", "--wait"]);
    }

    // The snapshot survives a daemon crash and restart.
    d.restart().expect("corrald again");
    let cli = cli(&d);
    let snaps = cli.json(&["snapshot", "list", "--vm", "db", "-o", "json"]);
    assert_eq!(snaps[0]["metadata"]["name"], "first");
    assert_eq!(snaps[0]["status"]["phase"], "Ready");
    assert_eq!(snaps[0]["status"]["volumes"][0], "root-1");

    cli.ok(&["snapshot", "restore", "first", "--wait"]);
    cli.ok(&["vm", "start", "db", "--wait"]);
    let log = cli.wait_console_until("db", "third count", |l| {
        numbers(l, "CORRAL_DISKCOUNT").len() >= 3
    });
    assert_eq!(
        numbers(&log, "CORRAL_DISKCOUNT"),
        [0, 1, 1],
        "after the restore the disk holds the snapshot's count again"
    );

    // Deleting the snapshot leaves the volume and its image alone.
    cli.ok(&["vm", "stop", "db", "--wait"]);
    cli.ok(&["snapshot", "delete", "first", "--wait"]);
    assert_eq!(
        cli.json(&["volume", "get", "root-1", "-o", "json"])["status"]["phase"],
        "Ready"
    );
    assert!(cli.ok(&["image", "verify", "root"]).contains("ok"));
    cli.ok(&["vm", "start", "db", "--wait"]);
    let log = cli.wait_console_until("db", "fourth count", |l| {
        numbers(l, "CORRAL_DISKCOUNT").len() >= 4
    });
    assert_eq!(numbers(&log, "CORRAL_DISKCOUNT")[3], 2);
    cli.ok(&["vm", "delete", "db", "--wait"]);
    cli.ok(&["volume", "delete", "root-1", "--wait"]);
    assert!(files_in(&d.data_dir().join("volumes")).is_empty());
}

#[test]
fn firmware_boots_a_volume_cloned_from_an_imported_disk_image() {
    let d = corrald();
    let cli = cli(&d);
    let k = kit();
    cli.ok(&["image", "import", "bootdisk", "--path", s(&k.boot_disk())]);
    cli.ok(&[
        "volume", "create", "boot-1", "--image", "bootdisk", "--wait",
    ]);
    cli.ok(&[
        "vm",
        "create",
        "fw",
        "--boot-volume",
        "boot-1",
        "--memory",
        "256M",
        "--wait",
    ]);
    cli.wait_console_until("fw", "boot marker", |l| l.contains("CORRAL_BOOT_OK"));
    // Boot disks change only while the VM is stopped.
    let vm = cli.json(&["vm", "get", "fw", "-o", "json"]);
    let mut changed = vm.clone();
    cli.ok(&["volume", "create", "data", "--size", "16M", "--wait"]);
    changed["spec"]["volumes"] = serde_json::json!([{"volume": "data"}]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("fw.json");
    std::fs::write(&manifest, changed.to_string()).unwrap();
    cli.fails(
        &["apply", "-f", s(&manifest)],
        1,
        "volumes and boot are changed only while it is stopped",
    );
    cli.ok(&["vm", "stop", "fw", "--force", "--wait"]);
    let out = cli.ok(&["apply", "-f", s(&manifest)]);
    assert!(out.contains("vm/fw configured"), "{out}");
    cli.fails(&["volume", "delete", "data"], 1, "is used by VM \"fw\"");
}

#[test]
fn a_memory_snapshot_restore_resumes_the_guest_where_it_was() {
    let d = corrald();
    let cli = cli(&d);
    let k = kit();
    cli.ok(&["image", "import", "root", "--path", s(&k.rootfs_qcow2())]);
    cli.ok(&["volume", "create", "root-1", "--image", "root", "--wait"]);
    create_disk_vm(&cli, "mem", &["root-1"], "", true);
    let beats = |l: &str| numbers(l, "CORRAL_HEARTBEAT");
    let before = cli.wait_console_until("mem", "two heartbeats", |l| beats(l).len() >= 2);
    let low = *beats(&before).last().unwrap();
    cli.ok(&[
        "snapshot", "create", "warm", "--vm", "mem", "--memory", "--wait",
    ]);
    let at_snapshot = cli.console_log("mem");
    let high = *beats(&at_snapshot).last().unwrap();
    // Let the guest run well past the snapshot.
    let later = cli.wait_console_until("mem", "more heartbeats", |l| {
        beats(l).last().is_some_and(|n| *n >= high + 4)
    });
    let last_before_restore = *beats(&later).last().unwrap();
    cli.ok(&["snapshot", "restore", "warm", "--wait"]);
    let after = cli.wait_console_until("mem", "a heartbeat after the restore", |l| {
        beats(l).len() > beats(&later).len() + 1
    });
    let resumed = beats(&after)[beats(&later).len()..].to_vec();
    // The counter continues from the snapshot's value (between what was printed just before
    // the snapshot was asked for and just after it was taken), not from where it had got.
    assert!(
        resumed[0] > low && resumed[0] <= high + 1 && resumed[0] < last_before_restore,
        "heartbeats after restore {resumed:?}; at snapshot {low}..={high}; before restore {last_before_restore}"
    );
    assert_eq!(
        resumed[1],
        resumed[0] + 1,
        "and keeps counting: {resumed:?}"
    );
    assert_eq!(
        cli.json(&["vm", "get", "mem", "-o", "json"])["status"]["phase"],
        "Running"
    );

    // Growing the attached volume while the guest runs: the guest sees the new size.
    let size = cli.json(&["volume", "get", "root-1", "-o", "json"])["status"]["size"]
        .as_u64()
        .unwrap();
    let bigger = format!("{}M", (size >> 20) * 2);
    cli.ok(&["volume", "resize", "root-1", &bigger, "--wait"]);
    let log = cli.wait_console_until("mem", "the new disk size", |l| {
        l.contains("vda: detected capacity change")
    });
    let sectors = format!("to {}", (size * 2) / 512);
    assert!(log.contains(&sectors), "{}", tail(&log));
    let out = cli.run(&["volume", "resize", "root-1", "8M"]);
    assert_eq!(out.status.code(), Some(1), "volumes never shrink");
}

#[test]
fn a_corrupted_weights_volume_blocks_the_start_with_a_clear_error() {
    let d = corrald();
    let cli = cli(&d);
    let k = kit();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("model.bin");
    std::fs::write(
        &weights,
        (0..(4u32 << 20))
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    cli.ok(&["image", "import", "model", s(&weights), "--format", "raw"]);
    cli.ok(&[
        "volume", "create", "w", "--image", "model", "--kind", "weights", "--wait",
    ]);
    let vol = cli.json(&["volume", "get", "w", "-o", "json"]);
    assert_eq!(
        vol["status"]["digest"],
        cli.json(&["image", "get", "model", "-o", "json"])["status"]["digest"]
    );
    let path = PathBuf::from(vol["status"]["path"].as_str().unwrap());

    let (kernel, initrd) = (k.kernel(), k.initrd());
    cli.ok(&[
        "vm",
        "create",
        "infer",
        "--kernel",
        s(&kernel),
        "--initrd",
        s(&initrd),
        "--cmdline",
        "console=ttyS0",
        "--memory",
        "256M",
        "--volume",
        "w:serial=weights",
        "--wait",
    ]);
    let log = cli.wait_console_until("infer", "the weights disk", |l| {
        l.contains("CORRAL_BOOT_OK")
    });
    assert!(
        log.contains("vda"),
        "the guest sees the weights disk: {}",
        tail(&log)
    );
    cli.ok(&["vm", "stop", "infer", "--force", "--wait"]);

    // One flipped byte in the middle of the file.
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8; 1];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(2 << 20)).unwrap();
    f.read_exact(&mut byte).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(2 << 20)).unwrap();
    f.write_all(&[byte[0] ^ 0x40]).unwrap();
    drop(f);

    cli.fails(
        &["vm", "start", "infer", "--wait"],
        1,
        "weights volume \"w\" is corrupted",
    );
    let vm = cli.json(&["vm", "get", "infer", "-o", "json"]);
    assert_eq!(vm["status"]["phase"], "Failed");
    assert!(
        vm["status"]["message"]
            .as_str()
            .unwrap()
            .contains("is corrupted"),
        "{vm}"
    );
    assert!(d.qemu_pids().is_empty(), "no QEMU was started");
}

/// Serves `body` once per connection over plain HTTP on 127.0.0.1, until dropped.
fn http_server(body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/images/disk.qcow2",
        listener.local_addr().unwrap()
    );
    let handle = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let Ok(mut stream) = stream else { continue };
            let mut req = [0u8; 4096];
            let n = stream.read(&mut req).unwrap_or(0);
            let head = String::from_utf8_lossy(&req[..n]).into_owned();
            let reply = if head.starts_with("GET /images/disk.qcow2 ") {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&reply);
        }
    });
    (url, handle)
}

#[test]
fn images_dedupe_import_from_urls_refuse_escapes_and_stay_while_in_use() {
    // The test's HTTP server is on loopback, which URL imports refuse unless allowed.
    let d = Corrald::builder(workspace_binary("corrald"))
        .import_allow_net("127.0.0.0/8")
        .start()
        .expect("corrald");
    let cli = cli(&d);
    let k = kit();
    let blobs = d.data_dir().join("images/blake3");

    // The same bytes three ways: upload, path on the daemon host, URL.
    cli.ok(&["image", "import", "a", s(&k.rootfs_qcow2())]);
    cli.ok(&["image", "import", "b", "--path", s(&k.rootfs_qcow2())]);
    let (url, server) = http_server(std::fs::read(k.rootfs_qcow2()).unwrap());
    cli.ok(&["image", "import", "c", "--url", &url]);
    let bad_url = url.replace("disk.qcow2", "missing.qcow2");
    cli.fails(&["image", "import", "gone", "--url", &bad_url], 1, "404");
    server.join().unwrap();
    let digests: Vec<serde_json::Value> = ["a", "b", "c"]
        .iter()
        .map(|n| cli.json(&["image", "get", n, "-o", "json"])["status"]["digest"].clone())
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let expected = format!(
        "blake3:{}",
        blake3::hash(&std::fs::read(k.rootfs_qcow2()).unwrap()).to_hex()
    );
    assert_eq!(digests[0], expected.as_str());
    assert_eq!(files_in(&blobs).len(), 1, "stored once");
    assert_eq!(
        cli.json(&["image", "get", "a", "-o", "json"])["status"]["format"],
        "qcow2"
    );

    // A qcow2 whose backing file is a host file outside the store: refused, nothing kept.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.raw");
    std::fs::write(&secret, vec![0x5a; 1 << 20]).unwrap();
    let evil = dir.path().join("evil.qcow2");
    let made = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            s(&secret),
            "-F",
            "raw",
            s(&evil),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    cli.fails(
        &["image", "import", "evil", s(&evil)],
        1,
        "as its backing file: outside the image store",
    );
    assert_eq!(files_in(&blobs).len(), 1);
    assert!(files_in(&d.data_dir().join("images/tmp")).is_empty());

    // In use by a volume: delete refused; the last image with the digest takes the bytes.
    cli.ok(&["volume", "create", "v", "--image", "a", "--wait"]);
    cli.fails(&["image", "delete", "a"], 1, "is used by volume \"v\"");
    cli.ok(&["image", "delete", "b"]);
    cli.ok(&["image", "delete", "c"]);
    assert_eq!(files_in(&blobs).len(), 1, "image a still needs the bytes");
    cli.ok(&["volume", "delete", "v", "--wait"]);
    cli.ok(&["image", "delete", "a"]);
    assert!(files_in(&blobs).is_empty());

    // Verify catches bytes changed on disk.
    cli.ok(&[
        "image",
        "import",
        "k",
        "--path",
        s(&k.kernel()),
        "--format",
        "kernel",
    ]);
    let digest = cli.json(&["image", "get", "k", "-o", "json"])["status"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = blobs.join(digest.strip_prefix("blake3:").unwrap());
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&blob)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    cli.fails(&["image", "verify", "k"], 1, "no longer match");
    assert_eq!(
        cli.json(&["image", "get", "k", "-o", "json"])["status"]["phase"],
        "Failed"
    );
}

#[test]
fn an_attestation_verifies_offline_and_any_changed_byte_fails() {
    let d = corrald();
    let cli = cli(&d);
    let k = kit();
    let key = d.data_dir().join("keys/node.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the node key is private");
    cli.ok(&["image", "import", "root", "--path", s(&k.rootfs_qcow2())]);
    cli.ok(&["volume", "create", "root-1", "--image", "root", "--wait"]);
    create_disk_vm(&cli, "att", &["root-1"], "", true);
    let dir = tempfile::tempdir().unwrap();
    let (file, public) = (dir.path().join("att.json"), dir.path().join("node.pub"));
    cli.ok(&[
        "attestation",
        "get",
        "att",
        "--out",
        s(&file),
        "--key-out",
        s(&public),
    ]);
    assert_eq!(
        std::fs::read(&public).unwrap(),
        std::fs::read(d.data_dir().join("keys/node.pub")).unwrap()
    );

    // Offline: no daemon socket at all.
    let verify = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .env("CORRAL_SOCKET", "/nonexistent/corral.sock")
            .args([
                "attestation",
                "verify",
                s(path),
                "--key",
                s(&public),
                "-o",
                "json",
            ])
            .output()
            .unwrap()
    };
    let out = verify(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statement: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicate"]["vm"], "att");
    assert_eq!(statement["predicate"]["accelerator"], "tcg");
    assert!(
        statement["predicate"]["qemuVersion"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );
    let image_digest = cli.json(&["image", "get", "root", "-o", "json"])["status"]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("blake3:")
        .unwrap()
        .to_owned();
    let subjects = statement["subject"].as_array().unwrap();
    assert!(
        subjects
            .iter()
            .any(|s| s["name"] == "image/root" && s["digest"]["blake3"] == image_digest.as_str()),
        "{subjects:?}"
    );
    assert!(subjects.iter().any(|s| s["name"] == "volume/root-1"));
    assert!(subjects.iter().any(|s| s["name"] == "kernel"));

    let bytes = std::fs::read(&file).unwrap();
    let tampered = dir.path().join("tampered.json");
    // Every 7th byte (and the last) changed in turn: each change must fail.
    for i in (0..bytes.len()).step_by(7).chain([bytes.len() - 2]) {
        let mut bad = bytes.clone();
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        std::fs::write(&tampered, &bad).unwrap();
        let out = verify(&tampered);
        assert_eq!(
            out.status.code(),
            Some(1),
            "byte {i} changed and it still verifies"
        );
    }
}

#[test]
fn missing_qemu_img_fails_clearly_and_creates_nothing() {
    let d = Corrald::start_with(
        workspace_binary("corrald"),
        &["--qemu-img", "/nonexistent/qemu-img"],
    )
    .expect("corrald");
    let cli = cli(&d);
    let k = kit();
    cli.fails(
        &["image", "import", "root", s(&k.rootfs_qcow2())],
        1,
        "qemu-img not found (/nonexistent/qemu-img): install the Debian package qemu-utils",
    );
    assert!(
        cli.json(&["image", "list", "-o", "json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(files_in(&d.data_dir().join("images/blake3")).is_empty());
    assert!(files_in(&d.data_dir().join("images/tmp")).is_empty());
    // A declared kernel needs no qemu-img.
    cli.ok(&[
        "image",
        "import",
        "k",
        "--path",
        s(&k.kernel()),
        "--format",
        "kernel",
    ]);
    // A volume the controller cannot make fails with the reason and leaves no file.
    cli.ok(&["volume", "create", "e", "--size", "16M"]);
    let out = cli.run(&["volume", "create", "e2", "--size", "16M", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qemu-img not found"));
    let vol = cli.json(&["volume", "get", "e", "-o", "json"]);
    assert_eq!(vol["status"]["phase"], "Failed", "{vol}");
    assert!(files_in(&d.data_dir().join("volumes")).is_empty());
}

/// A small tmpfs mounted over a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                s(at),
            ])
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_import_clearly_and_leaves_nothing() {
    let mut d = corrald();
    d.terminate().expect("stopping corrald");
    let images = d.data_dir().join("images");
    std::fs::remove_dir_all(&images).unwrap();
    let _full = Tmpfs::mount(&images, "8M");
    d.restart().expect("corrald on a small image store");
    let cli = cli(&d);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.raw");
    std::fs::write(&big, vec![0xa5; 16 << 20]).unwrap();
    cli.fails(
        &["image", "import", "big", s(&big)],
        1,
        "No space left on device",
    );
    cli.fails(
        &["image", "import", "big2", "--path", s(&big)],
        1,
        "No space left on device",
    );
    assert!(
        cli.json(&["image", "list", "-o", "json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(files_in(&images.join("blake3")).is_empty());
    assert!(
        files_in(&images.join("tmp")).is_empty(),
        "no partial file left"
    );
    // Space is back: a small image fits.
    let small = dir.path().join("small.raw");
    std::fs::write(&small, vec![1u8; 1 << 20]).unwrap();
    cli.ok(&["image", "import", "small", s(&small)]);
    d.kill_9();
}

#[test]
fn a_vm_from_a_template_runs_on_from_the_saved_instant_on_a_disk_of_its_own() {
    let d = corrald();
    let cli = cli(&d);
    let k = kit();
    cli.ok(&["image", "import", "root", "--path", s(&k.rootfs_qcow2())]);
    cli.ok(&["volume", "create", "root-1", "--image", "root", "--wait"]);
    create_disk_vm(&cli, "golden", &["root-1"], "corral.diskcount=1", true);
    let beats = |l: &str| numbers(l, "CORRAL_HEARTBEAT");
    let before = cli.wait_console_until("golden", "two heartbeats", |l| beats(l).len() >= 2);
    let low = *beats(&before).last().unwrap();

    // Refused with the reason, and nothing made: no such VM; a VM that is not running.
    let out = cli.run(&["template", "create", "nothing", "--from", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli.ok(&["template", "create", "tpl", "--from", "golden"]);
    assert!(out.contains("template/tpl saved from vm/golden"), "{out}");
    let high = *beats(&cli.console_log("golden")).last().unwrap();
    let tpl = cli.json(&["template", "get", "tpl", "-o", "json"]);
    assert_eq!(tpl["status"]["template"]["vm"], "golden");
    assert!(tpl["status"]["template"]["state_size"].as_u64().unwrap() > 1 << 20);
    let list = cli.ok(&["template", "list"]);
    assert!(list.contains("tpl") && list.contains("golden"), "{list}");
    assert!(
        !cli.ok(&["image", "list"]).is_empty(),
        "a template is an image too"
    );
    // The template's VM runs on.
    cli.wait_console_until("golden", "heartbeats after the save", |l| {
        beats(l).last().is_some_and(|n| *n > high + 1)
    });

    // Not waited for: the template asked right after waits until its VM runs.
    cli.ok(&["vm", "create", "copy", "--template", "tpl"]);
    let out = cli.ok(&["template", "create", "tpl2", "--from", "copy"]);
    assert!(out.contains("template/tpl2 saved from vm/copy"), "{out}");
    cli.ok(&["template", "delete", "tpl2"]);
    let after = cli.wait_console_until("copy", "two heartbeats", |l| beats(l).len() >= 2);
    // It did not boot: no kernel banner, no boot line; its counter goes on from the save.
    assert!(
        !after.contains("CORRAL_BOOT_OK") && !after.contains("Linux version"),
        "{}",
        tail(&after)
    );
    let resumed = beats(&after);
    assert!(
        resumed[0] > low && resumed[0] <= high + 1,
        "copy's heartbeats {resumed:?}; at the save {low}..={high}"
    );
    assert_eq!(
        resumed[1],
        resumed[0] + 1,
        "and keeps counting: {resumed:?}"
    );
    let copy = cli.json(&["vm", "get", "copy", "-o", "json"]);
    assert_eq!(copy["status"]["phase"], "Running");
    assert!(
        copy["status"]["restored_from"]
            .as_str()
            .is_some_and(|r| r.starts_with("tpl@blake3:")),
        "{copy}"
    );
    assert_eq!(copy["spec"]["cpus"], 1);
    // Its own disk: a volume named like it, cloned from the template.
    let vol = cli.json(&["volume", "get", "copy", "-o", "json"]);
    assert_eq!(vol["spec"]["image"], "tpl");

    // A hand-written VM whose hardware differs from the template's is refused at start,
    // naming the field.
    let mut args = kit_vm_args(&k, "odd", "console=ttyS0 corral.root=/dev/vda");
    args.extend(["--volume", "root-1", "--no-start", "--cpus", "2"].map(String::from));
    cli.ok(&args);
    // A VM not asked to run is not waited for.
    let out = cli.run(&["template", "create", "never", "--from", "odd"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not asked to run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let odd = cli.json(&["vm", "get", "odd", "-o", "json"]);
    let mut spec = odd["spec"].clone();
    spec["template"] = "tpl".into();
    spec["power"] = "running".into();
    let manifest = serde_json::json!({
        "kind": "Vm", "metadata": {"name": "odd"}, "spec": spec,
    });
    let file = d.data_dir().join("odd.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    cli.ok(&["apply", "-f", s(&file)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let failed = loop {
        let v = cli.json(&["vm", "get", "odd", "-o", "json"]);
        if v["status"]["phase"] == "Failed" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "odd never failed: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let message = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.cpus") && message.contains("template tpl"),
        "{message}"
    );
    cli.ok(&["vm", "delete", "odd", "--wait"]);

    // A later start boots from its own disk, which holds the template VM's boot count.
    let count = |l: &str| numbers(l, "CORRAL_DISKCOUNT");
    let golden_count = *count(&cli.console_log("golden")).last().unwrap();
    cli.ok(&["vm", "restart", "copy", "--wait"]);
    let rebooted = cli.wait_console_until("copy", "a boot from its disk", |l| !count(l).is_empty());
    assert_eq!(
        count(&rebooted),
        vec![golden_count + 1],
        "{}",
        tail(&rebooted)
    );

    // Deleting the VM deletes its disk; then the template may go, and its blobs with it.
    cli.ok(&["vm", "delete", "copy", "--wait"]);
    cli.wait_gone("volume", "copy");
    cli.ok(&["template", "delete", "tpl"]);
    let blobs = files_in(&d.data_dir().join("images/blake3"));
    assert_eq!(
        blobs.len(),
        1,
        "only the root image's bytes stay: {blobs:?}"
    );
}
