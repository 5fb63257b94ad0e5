//! Development environments end to end: `corral image build` makes a real Debian image from
//! Debian packages on corrald's host, and `corral vm create --image` boots a copy of it under
//! TCG. Evidence comes from inside the guest, over ssh: the hostname cloud-init set, the
//! extra package asked for, Debian's kernel.
//!
//! The build (mmdebstrap; minutes) is cached under `target/image-builds`, keyed by the build
//! script and its inputs, through corrald's `--build-cache`: a second run copies it.

use std::path::PathBuf;

use corral_testkit::{Cli, Corrald, workspace_binary};

/// The workspace's `target/`, where built images are cached between runs.
fn target_dir() -> PathBuf {
    workspace_binary("corrald")
        .parent()
        .and_then(|profile| profile.parent())
        .expect("target/<profile>/corrald")
        .to_path_buf()
}

/// A port range nothing listens on now, 40 wide, different per test process.
fn port_range() -> String {
    let base = 30000 + (std::process::id() % 500) as u16 * 40;
    format!("{base}-{}", base + 39)
}

#[test]
fn a_built_debian_image_boots_with_its_cloud_init_identity_and_goes_with_its_vm() {
    let cache = target_dir().join("image-builds");
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
    cli.fails(&["image", "build", "debian-9"], 2, "debian-12");

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

    // Deleting the VM deletes the volume it owns; the image stays.
    cli.ok(&["vm", "delete", "dev1", "--force", "--wait"]);
    cli.wait_gone("volume", "dev1");
    cli.get("image", "debian-12");
}
