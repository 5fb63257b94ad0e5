//! Development environments end to end: `corral image build` makes a real Debian image from
//! Debian packages on corrald's host, and `corral vm create --image` boots a copy of it under
//! TCG. Evidence comes from inside the guest, over ssh: the hostname cloud-init set, the
//! extra package asked for, Debian's kernel.
//!
//! The build (mmdebstrap; minutes) is cached in `$CORRAL_TEST_CACHE/image-builds` (default
//! /var/tmp/corral-test-cache, outside the clone), keyed by the build script and its inputs,
//! through corrald's `--build-cache`: a second run, even of a fresh clone, copies it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, kit_vm_args, tail, workspace_binary};

/// A port range nothing listens on now, 40 wide, different per test process.
fn port_range() -> String {
    let base = 30000 + (std::process::id() % 500) as u16 * 40;
    format!("{base}-{}", base + 39)
}

#[test]
fn a_built_debian_image_boots_with_its_cloud_init_identity_and_goes_with_its_vm() {
    // Outside the clone too (CORRAL_TEST_CACHE, else /var/tmp), so that a fresh clone's run
    // copies a build made before; the key is the build's inputs, so a stale one is never used.
    let cache = std::env::var_os("CORRAL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/corral-test-cache"))
        .join("image-builds");
    let range = port_range();
    let d = Corrald::start_with(
        workspace_binary("corrald"),
        &[
            "--port-range",
            &range,
            "--build-cache",
            cache.to_str().unwrap(),
        ],
    )
    .expect("corrald");
    let keys = tempfile::tempdir().unwrap();
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d).env("CORRAL_SSH_DIR", keys.path());

    // Bad input is refused before anything runs, naming the field.
    cli.fails(
        &[
            "image",
            "build",
            "debian-12",
            "--packages",
            "jq,--force-yes",
        ],
        1,
        "spec.source.build.packages[1]",
    );
    cli.fails(
        &["image", "build", "debian-12", "--size", "512M"],
        1,
        "spec.source.build.size",
    );
    cli.fails(&["image", "build", "debian-9"], 1, "use debian-12");

    let image = cli.json(&[
        "image",
        "build",
        "debian-12",
        "--packages",
        "jq",
        "-o",
        "json",
    ]);
    assert_eq!(image["status"]["phase"], "Ready", "{image}");
    assert_eq!(image["status"]["format"], "qcow2", "{image}");
    let packages: Vec<&str> = image["status"]["packages"]
        .as_array()
        .expect("status.packages")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for wanted in [
        "jq",
        "openssh-server",
        "cloud-init",
        "systemd",
        "qemu-guest-agent",
    ] {
        let found = packages
            .iter()
            .find(|p| p.split('=').next() == Some(wanted));
        let version = found.and_then(|p| p.split_once('=')).map(|(_, v)| v);
        assert!(
            version.is_some_and(|v| !v.is_empty()),
            "{wanted}=<version> in status.packages: {packages:?}"
        );
    }
    assert!(
        packages
            .iter()
            .any(|p| p.starts_with("linux-image-") && p.contains("cloud-amd64")),
        "a cloud kernel in {packages:?}"
    );
    // The same name again is refused, not rebuilt over the first.
    cli.fails(&["image", "build", "debian-12"], 1, "already exists");

    // One line: a VM booting a clone of the image, reachable by ssh.
    let out = cli.ok(&[
        "vm",
        "create",
        "dev1",
        "--image",
        "debian-12",
        "--disk-size",
        "5G",
        "--memory",
        "1G",
        "--ssh",
        "--wait-ssh",
        "--ssh-timeout",
        "900",
    ]);
    assert!(out.contains("vm/dev1 ssh ready"), "{out}");
    let vm = cli.get("vm", "dev1");
    let volume = cli.get("volume", "dev1");
    assert_eq!(
        volume["metadata"]["annotations"]["corral.dev/owner-vm"], vm["metadata"]["uid"],
        "{volume}"
    );
    assert_eq!(volume["spec"]["image"], "debian-12", "{volume}");

    // cloud-init took the VM's name as the hostname; the key corral manages let us in.
    let hostname = cli.ok(&["vm", "ssh", "dev1", "--", "hostname"]);
    assert_eq!(hostname.trim(), "dev1");
    // The package asked for is there, and Debian's own kernel runs.
    let jq = cli.ok(&[
        "vm",
        "ssh",
        "dev1",
        "--",
        "echo '{\"a\":[1,2]}' | jq -c '.a|add'",
    ]);
    assert_eq!(jq.trim(), "3");
    let kernel = cli.ok(&["vm", "ssh", "dev1", "--", "uname", "-r"]);
    assert!(kernel.trim().ends_with("-cloud-amd64"), "{kernel}");
    // The root file system grew to the volume's 5G at first boot (growpart + resize2fs).
    let size = cli.ok(&[
        "vm",
        "ssh",
        "dev1",
        "--",
        "df",
        "--output=size",
        "-B1M",
        "/",
    ]);
    let mib: u64 = size
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df: {size}"));
    assert!(mib > 4400, "root is {mib} MiB: {size}");

    // Saved as a template, dev1 gives a new VM that does not boot: it runs on from the save
    // (its uptime is older than itself, a file written before the save is there), and its
    // guest agent gave it its own hostname and MAC.
    cli.ok(&[
        "vm",
        "ssh",
        "dev1",
        "--",
        "echo before-the-save > /root/marker && sync",
    ]);
    let out = cli.ok(&["template", "create", "dev-tpl", "--from", "dev1"]);
    assert!(out.contains("template/dev-tpl saved from vm/dev1"), "{out}");
    let created = std::time::Instant::now();
    let out = cli.ok(&[
        "vm",
        "create",
        "dev2",
        "--template",
        "dev-tpl",
        "--wait-ssh",
        "--ssh-timeout",
        "300",
    ]);
    assert!(out.contains("vm/dev2 ssh ready"), "{out}");
    let uptime = cli.ok(&["vm", "ssh", "dev2", "--", "cat", "/proc/uptime"]);
    let uptime: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("/proc/uptime: {uptime}"));
    assert!(
        uptime > created.elapsed().as_secs_f64(),
        "dev2's guest has run {uptime} s, and dev2 exists for {:?}: it booted",
        created.elapsed()
    );
    assert_eq!(
        cli.ok(&["vm", "ssh", "dev2", "--", "cat", "/root/marker"]),
        "before-the-save\n"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let dev2 = loop {
        let dev2 = cli.get("vm", "dev2");
        let identity = dev2["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "GuestIdentity").cloned());
        if let Some(identity) = identity {
            assert_eq!(identity["status"], true, "{identity}");
            break dev2;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no GuestIdentity: {dev2}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    assert_eq!(
        cli.ok(&["vm", "ssh", "dev2", "--", "hostname"]).trim(),
        "dev2"
    );
    let mac = dev2["status"]["networks"][0]["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_mac = vm["status"]["networks"][0]["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(mac, old_mac);
    let macs = cli.ok(&["vm", "ssh", "dev2", "--", "cat /sys/class/net/*/address"]);
    assert!(
        macs.contains(&mac) && !macs.contains(&old_mac),
        "guest MACs {macs}; dev2's {mac}, dev1's {old_mac}"
    );
    cli.ok(&["vm", "delete", "dev2", "--force", "--wait"]);
    cli.wait_gone("volume", "dev2");
    cli.ok(&["template", "delete", "dev-tpl"]);

    // Deleting the VM deletes the volume it owns; the image stays.
    cli.ok(&["vm", "delete", "dev1", "--force", "--wait"]);
    cli.wait_gone("volume", "dev1");
    cli.get("image", "debian-12");
}

/// A one-thread HTTP/1.0 server on 127.0.0.1 serving `file` at every path; returns its port.
fn serve(file: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test's HTTP server");
    let port = listener.local_addr().unwrap().port();
    let body = std::fs::read(file).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let mut stream = stream;
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

fn sha256(file: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn image_pull_takes_a_catalogue_entry_and_stores_only_bytes_that_match_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("small.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let port = serve(&disk);
    let url = format!("http://127.0.0.1:{port}/small.qcow2");
    let good = sha256(&disk);
    let bad = "0".repeat(64);
    let catalogue = dir.path().join("catalogue.yaml");
    std::fs::write(
        &catalogue,
        format!(
            "images:\n  small:\n    url: {url}\n    checksum: sha256:{good}\n    format: qcow2\n  \
             tampered:\n    url: {url}\n    checksum: sha256:{bad}\n  \
             typo:\n    url: {url}\n    checksum: md5:{bad}\n"
        ),
    )
    .unwrap();
    // The test's server is on loopback, which URL imports refuse unless allowed.
    let d = Corrald::start_with(
        workspace_binary("corrald"),
        &["--import-allow-net", "127.0.0.0/8"],
    )
    .expect("corrald");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d).env("CORRAL_CATALOGUE", &catalogue);

    let image = cli.json(&["image", "pull", "small", "-o", "json"]);
    assert_eq!(image["status"]["phase"], "Ready", "{image}");
    assert_eq!(image["status"]["format"], "qcow2", "{image}");
    assert_eq!(
        image["spec"]["checksum"],
        format!("sha256:{good}"),
        "{image}"
    );
    // The same bytes under another name, from the catalogue named on the command line.
    let copy = cli.json(&[
        "image",
        "pull",
        "small",
        "--name",
        "small-2",
        "--catalogue",
        catalogue.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(copy["status"]["digest"], image["status"]["digest"]);

    // Bytes that do not match are not stored: the error names the field and both sums.
    let err = cli.fails(&["image", "pull", "tampered"], 1, "spec.checksum");
    assert!(err.contains(&good) && err.contains(&bad), "{err}");
    cli.fails(&["image", "get", "tampered"], 3, "not found");
    // A bad catalogue entry and an unknown name are named with the file.
    cli.fails(&["image", "pull", "typo"], 1, "images.typo.checksum");
    let err = cli.fails(&["image", "pull", "nope"], 1, "no image \"nope\"");
    assert!(
        err.contains("catalogue.yaml") && err.contains("small"),
        "{err}"
    );
}

#[test]
fn a_vm_with_a_ttl_is_deleted_when_it_runs_out_even_across_a_daemon_restart() {
    let mut d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    {
        let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d);
        cli.fails(
            &["vm", "create", "x", "--disk", "/d", "--ttl", "0s"],
            1,
            "time to live",
        );
        let mut create = kit_vm_args(&kit, "brief", "console=ttyS0 quiet");
        create.extend(["--ttl", "60s"].map(String::from));
        cli.ok(&create);
        let vm = cli.get("vm", "brief");
        let at = vm["metadata"]["annotations"]["corral.dev/expires-at"]
            .as_str()
            .unwrap_or_else(|| panic!("corral.dev/expires-at in {vm}"));
        assert!(at.ends_with('Z'), "{at}");
        // Alive before its time: the guest booted.
        cli.wait_console("brief", "CORRAL_BOOT_OK");
    }
    // A restart in between (kill -9: nothing is handed over but the store).
    d.restart().expect("corrald restarts");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d);
    cli.wait_gone("vm", "brief");
    assert!(d.qemu_pids().is_empty(), "its QEMU is gone too");
}

/// The image build cache shared by the tests here (see the module's doc).
fn build_cache() -> PathBuf {
    std::env::var_os("CORRAL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/corral-test-cache"))
        .join("image-builds")
}

#[test]
fn a_project_file_comes_up_provisioned_changes_in_place_and_goes_with_destroy_and_temp_vms_go_on_exit()
 {
    let range = port_range();
    let cache = build_cache();
    // corrald starts through a script that, once `offline` exists, runs it in a network
    // namespace with only loopback: no route to any mirror, registry or proxy.
    let root = tempfile::tempdir().unwrap();
    let offline = root.path().join("offline");
    let wrapper = root.path().join("corrald");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then\n  exec unshare --net -- sh -c 'ip link set lo up && \
             exec \"$0\" \"$@\"' '{}' \"$@\"\nfi\nexec '{}' \"$@\"\n",
            offline.display(),
            workspace_binary("corrald").display(),
            workspace_binary("corrald").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut d = Corrald::start_with(
        &wrapper,
        &[
            "--port-range",
            &range,
            "--build-cache",
            cache.to_str().unwrap(),
        ],
    )
    .expect("corrald");
    let keys = tempfile::tempdir().unwrap();
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d).env("CORRAL_SSH_DIR", keys.path());

    let project = root.path().join("Web_Shop");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("Cargo.toml"), "[package]\n").unwrap();
    // The project belongs to a user (uid 1000), as a checkout does; the guest's root is that
    // user in the shared folder.
    let hello = project.join("hello.txt");
    std::fs::write(&hello, "from the host\n").unwrap();
    std::fs::set_permissions(&hello, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    for path in [&project, &hello] {
        std::os::unix::fs::chown(path, Some(1000), Some(1000)).unwrap();
    }
    let data = root.path().join("ro-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("readme"), "read only\n").unwrap();
    let in_project = |args: &[&str]| {
        let out = cli
            .command()
            .args(args)
            .current_dir(&project)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("corral");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    // init picks the preset from Cargo.toml and writes a file that reads back.
    let (code, out, err) = in_project(&["init"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("preset rust"), "{out}");
    let written = std::fs::read_to_string(project.join("corral.yaml")).unwrap();
    assert!(written.contains("preset: rust"), "{written}");
    let (code, _, err) = in_project(&["init"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--force"), "{err}");

    // A typo is named with its file, line and field before anything is sent.
    let file = project.join("corral.yaml");
    std::fs::write(
        &file,
        "vms:\n  app:\n    image: debian-12\n    memroy: 1G\n",
    )
    .unwrap();
    let (code, _, err) = in_project(&["up"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("corral.yaml:4:") && err.contains("unknown field `memroy`"),
        "{err}"
    );

    // Services (no preset: no toolchain in the image here), a port, the environment, steps.
    // `up` builds the image debian-12-postgres-redis (cached like the build above).
    let declare = |steps: &[&str]| {
        let steps: String = steps.iter().map(|s| format!("      - {s}\n")).collect();
        std::fs::write(
            &file,
            format!(
                "vms:\n  app:\n    services: [postgres, redis]\n    memory: 1G\n    disk: 5G\n    \
                 ports: [8080]\n    env:\n      GREETING: hello there\n    folders:\n      \
                 - {{guest: /project}}\n      - {{host: ../ro-data, guest: /data, read_only: true}}\n    \
                 provision:\n{steps}"
            ),
        )
        .unwrap();
    };
    let one = r#"echo "one as $(id -un) says $GREETING" | tee /root/one"#;
    declare(&[one, "echo two >> /root/count"]);
    let (code, out, err) = in_project(&["up", "--timeout", "900"]);
    assert_eq!(code, Some(0), "{out}{err}{}", tail(&d.log()));
    // The steps' output streamed, from inside the guest, with the environment set.
    assert!(out.contains("volume/web-shop-app created"), "{out}");
    assert!(out.contains("vm/web-shop-app created"), "{out}");
    assert!(
        out.contains("web-shop-app | one as root says hello there"),
        "{out}"
    );
    assert!(out.contains("vm/web-shop-app provisioned"), "{out}");
    let vm = cli.get("vm", "web-shop-app");
    assert_eq!(
        vm["metadata"]["labels"]["corral.dev/owner"], "web-shop",
        "{vm}"
    );
    // The services answer from the host, through the forwards, at the URLs printed.
    let url = |service: &str| {
        let prefix = format!("vm/web-shop-app {service}: ");
        out.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in {out}"))
            .to_owned()
    };
    let redis = url("redis");
    let redis_port = redis.rsplit(':').next().unwrap();
    let pong = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", redis_port, "PING"])
        .output()
        .expect("redis-cli (scripts/setup.sh installs redis-tools)");
    assert_eq!(
        String::from_utf8_lossy(&pong.stdout).trim(),
        "PONG",
        "{pong:?}"
    );
    let psql = Command::new("psql")
        .args([url("postgres").as_str(), "-tAc", "SELECT 41 + 1"])
        .output()
        .expect("psql (scripts/setup.sh installs postgresql-client)");
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout).trim(),
        "42",
        "{psql:?}"
    );
    let ssh = |cmd: &str| cli.ok(&["ssh", "-f", file.to_str().unwrap(), "--", cmd]);
    assert_eq!(ssh("hostname").trim(), "web-shop-app");
    assert_eq!(ssh("cat /root/count").trim(), "two");
    assert_eq!(ssh("echo $GREETING").trim(), "hello there");

    // The project folder is mounted: the host user's file is root's in the guest, with its
    // mode; what the guest writes and chmods is the host user's, with the guest's modes.
    assert_eq!(
        ssh("stat -c '%u %a' /project/hello.txt; cat /project/hello.txt"),
        "0 640\nfrom the host\n"
    );
    ssh(
        "echo from the guest > /project/guest.txt; chmod 751 /project/guest.txt; \
         chmod 604 /project/hello.txt; mkdir -p /project/sub/dir",
    );
    let meta = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        use std::os::unix::fs::MetadataExt;
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(meta(&project.join("guest.txt")), (1000, 1000, 0o751));
    assert_eq!(meta(&hello), (1000, 1000, 0o604));
    assert_eq!(meta(&project.join("sub/dir")).0, 1000);
    assert_eq!(
        std::fs::read_to_string(project.join("guest.txt")).unwrap(),
        "from the guest\n"
    );
    // A file made on the host while the guest runs is there for it.
    std::fs::write(project.join("live.txt"), "made while it ran\n").unwrap();
    assert_eq!(ssh("cat /project/live.txt"), "made while it ran\n");
    // A read-only folder reads but refuses writes.
    let ro = ssh("cat /data/readme; touch /data/new 2>&1 || true");
    assert!(
        ro.starts_with("read only\n") && ro.contains("Read-only file system"),
        "{ro}"
    );
    assert!(!data.join("new").exists());

    // Again: nothing changes, nothing runs.
    let out = cli.ok(&["up", "-f", file.to_str().unwrap()]);
    assert!(out.contains("vm/web-shop-app unchanged"), "{out}");
    assert!(!out.contains("provisioning"), "{out}");

    // The second step changed: only it runs again.
    declare(&[one, "echo three >> /root/count"]);
    let out = cli.ok(&["up", "-f", file.to_str().unwrap()]);
    assert!(out.contains("provisioning: step 2"), "{out}");
    assert!(!out.contains("provisioning: step 1"), "{out}");
    assert_eq!(ssh("cat /root/count").trim(), "two\nthree");

    // A failing step fails `up` with its output; the steps before it stay done.
    declare(&[
        one,
        "echo three >> /root/count",
        "echo about to fail; exit 7",
    ]);
    let err = cli.fails(
        &["up", "-f", file.to_str().unwrap()],
        1,
        "provision step 3 failed with exit code 7",
    );
    assert!(err.contains("about to fail"), "{err}");
    let status = cli.ok(&["status", "-f", file.to_str().unwrap()]);
    assert!(
        status.contains("web-shop-app") && status.contains("Running") && status.contains("changed"),
        "{status}"
    );
    assert!(status.contains("->8080/tcp"), "{status}");

    // Another folder's file of the same project name is refused, not applied over this one.
    let other = root.path().join("elsewhere").join("web-shop");
    std::fs::create_dir_all(&other).unwrap();
    let other_file = other.join("corral.yaml");
    std::fs::write(&other_file, "vms:\n  app: {}\n").unwrap();
    for command in ["up", "destroy"] {
        cli.fails(
            &[command, "-f", other_file.to_str().unwrap()],
            1,
            "project web-shop is up from",
        );
    }

    // Down stops the VM and keeps its disk.
    cli.ok(&["down", "-f", file.to_str().unwrap()]);
    assert_eq!(cli.get("vm", "web-shop-app")["status"]["phase"], "Stopped");
    cli.get("volume", "web-shop-app");

    // Offline from here on: corrald restarts in a network namespace with only loopback, and
    // the CLI runs in it too (it reaches the guests' forwarded ports there). `up` boots the
    // built image's VM again, provisioned and with its services, with no network at all.
    drop(cli);
    std::fs::write(&offline, "").unwrap();
    d.restart().expect("corrald restarts offline");
    let cli_in_netns = root.path().join("corral");
    std::fs::write(
        &cli_in_netns,
        format!(
            "#!/bin/sh\nexec nsenter --net=/proc/{}/ns/net -- '{}' \"$@\"\n",
            d.pid().expect("corrald's pid"),
            env!("CARGO_BIN_EXE_corral")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &cli_in_netns,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cli = Cli::new(&cli_in_netns, &d).env("CORRAL_SSH_DIR", keys.path());
    let routes = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", d.pid().unwrap()))
        .args(["ip", "-o", "route", "show", "table", "all"])
        .output()
        .expect("ip");
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.lines().all(|l| l.contains(" lo ")),
        "only loopback in corrald's namespace: {routes}"
    );
    // The failing step taken out again: the steps done before stay done.
    declare(&[one, "echo three >> /root/count"]);
    let out = cli.ok(&["up", "-f", file.to_str().unwrap(), "--timeout", "900"]);
    assert!(out.contains("project web-shop is up"), "{out}");
    assert!(!out.contains("provisioning"), "{out}");
    assert!(out.contains("vm/web-shop-app redis: redis://"), "{out}");
    let ssh = |cmd: &str| cli.ok(&["ssh", "-f", file.to_str().unwrap(), "--", cmd]);
    assert_eq!(ssh("cat /project/guest.txt"), "from the guest\n");
    let out = ssh("timeout 30 getent hosts deb.debian.org || echo UNRESOLVED");
    assert!(
        out.contains("UNRESOLVED"),
        "the guest has no way out either: {out}"
    );

    // Destroy deletes the VM and its disk.
    let out = cli.ok(&["destroy", "-f", file.to_str().unwrap()]);
    assert!(out.contains("vm/web-shop-app pruned"), "{out}");
    cli.wait_gone("vm", "web-shop-app");
    cli.wait_gone("volume", "web-shop-app");
    cli.get("image", "debian-12-postgres-redis");

    // `corral temp`: a throwaway VM with a time to live that corrald shows and keeps; the
    // command runs in the guest, and the VM and its disk go when it ends.
    let temp = cli
        .command()
        .arg("temp")
        .arg(&project)
        .args([
            "--image",
            "debian-12-postgres-redis",
            "--ttl",
            "2h",
            "--",
            "hostname; cat guest.txt",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("corral temp");
    let vm = loop {
        let vms = cli.json(&["vm", "list", "-o", "json"]);
        let found = vms.as_array().and_then(|v| v.first()).cloned();
        if let Some(vm) = found.filter(|vm| vm["status"]["expires_at"].is_string()) {
            break vm;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let name = vm["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("temp-"), "{vm}");
    let annotation = vm["metadata"]["annotations"]["corral.dev/expires-at"].clone();
    assert_eq!(vm["status"]["expires_at"], annotation, "{vm}");
    let out = temp.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    // The guest answered with its own name, then the VM went.
    assert!(stdout.lines().any(|l| l.trim() == name), "{stdout}");
    assert!(
        stdout.contains("from the guest"),
        "FOLDER at /project: {stdout}"
    );
    assert!(stdout.contains(&format!("vm/{name} deleted")), "{stdout}");
    cli.wait_gone("vm", &name);
    cli.wait_gone("volume", &name);
}
