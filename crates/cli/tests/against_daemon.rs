//! The `corral` CLI against a real corrald (and real QEMU guests where a VM runs): exit codes,
//! output shapes, manifests, and errors that name the field and leave nothing behind.
//!
//! corrald comes from the same target directory as `corral` (`cargo nextest run --workspace`
//! builds both).

use std::process::{Command, Output};

use corral_contract::Arch;
use corral_testkit::{Corrald, GuestKit};

mod common;
use common::corrald_binary;

struct Cli<'a> {
    daemon: &'a Corrald,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .env("CORRAL_SOCKET", self.daemon.socket())
            .env_remove("CORRAL_SERVER")
            .args(args)
            .output()
            .expect("running corral")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str], code: i32, stderr_has: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "corral {args:?}: {stderr}");
        assert!(
            stderr.contains(stderr_has),
            "corral {args:?}: expected {stderr_has:?} in: {stderr}"
        );
    }

    fn names(&self) -> Vec<String> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(&["vm", "list", "-o", "json"])).expect("json");
        json.as_array()
            .expect("an array")
            .iter()
            .map(|vm| {
                vm["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

fn kit() -> GuestKit {
    GuestKit::get(Arch::X86_64).expect("guest kit")
}

#[test]
fn create_wait_boots_a_guest_and_get_prints_the_api_schema() {
    let d = Corrald::start(corrald_binary()).expect("corrald");
    let cli = Cli { daemon: &d };
    let k = kit();
    let (kernel, initrd) = (k.kernel(), k.initrd());
    cli.ok(&[
        "vm",
        "create",
        "web-1",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 quiet",
        "--memory",
        "256M",
        "--label",
        "tier=web",
        "--wait",
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["vm", "get", "web-1", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Vm");
    assert_eq!(json["status"]["phase"], "Running");
    assert_eq!(json["metadata"]["labels"]["tier"], "web");
    assert_eq!(cli.names(), ["web-1"]);
    assert!(
        cli.ok(&["vm", "list", "-l", "tier=db", "-o", "json"])
            .trim()
            == "[]"
    );
    // Evidence from inside the guest, through the CLI.
    let mut booted = false;
    for _ in 0..240 {
        if cli
            .ok(&["vm", "console", "web-1", "--log"])
            .contains("CORRAL_BOOT_OK")
        {
            booted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(
        booted,
        "no boot marker: {}",
        cli.ok(&["vm", "console", "web-1", "--log"])
    );
    cli.ok(&["vm", "delete", "web-1", "--wait"]);
    assert!(cli.names().is_empty());
    assert!(d.qemu_pids().is_empty());
}

#[test]
fn applying_the_same_manifest_twice_changes_and_restarts_nothing() {
    let d = Corrald::start(corrald_binary()).expect("corrald");
    let cli = Cli { daemon: &d };
    let k = kit();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("vms.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Vm\nmetadata: {{name: app, labels: {{tier: web}}}}\nspec:\n  memory: 256M\n  boot: {{kernel: {{kernel: {k}, initrd: {i}, cmdline: 'console=ttyS0 quiet'}}}}\n---\nkind: Vm\nmetadata: {{name: spare}}\nspec:\n  power: stopped\n  boot: {{kernel: {{kernel: {k}}}}}\n",
            k = k.kernel().display(),
            i = k.initrd().display()
        ),
    )
    .unwrap();
    let first = cli.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        first.contains("vm/app created") && first.contains("vm/spare created"),
        "{first}"
    );
    let get = || -> serde_json::Value {
        serde_json::from_str(&cli.ok(&["vm", "get", "app", "-o", "json"])).unwrap()
    };
    let mut before = get();
    for _ in 0..400 {
        if before["status"]["phase"] == "Running" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        before = get();
    }
    assert_eq!(before["status"]["phase"], "Running");
    let second = cli.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        second.contains("vm/app unchanged") && second.contains("vm/spare unchanged"),
        "{second}"
    );
    let after = get();
    assert_eq!(
        before["metadata"]["generation"],
        after["metadata"]["generation"]
    );
    assert_eq!(
        before["status"]["pid"], after["status"]["pid"],
        "not restarted"
    );
    assert_eq!(before["metadata"]["uid"], after["metadata"]["uid"]);
    cli.ok(&["delete", "-f", manifest.to_str().unwrap()]);
}

#[test]
fn bad_input_exits_1_names_the_field_and_creates_nothing() {
    let d = Corrald::start(corrald_binary()).expect("corrald");
    let cli = Cli { daemon: &d };
    let kernel = kit().kernel();
    let kernel = kernel.to_str().unwrap();
    cli.fails(&["vm", "create", "Bad_Name", "--kernel", kernel], 1, "name");
    cli.fails(
        &["vm", "create", "ok", "--kernel", kernel, "--memory", "lots"],
        1,
        "lots",
    );
    cli.fails(
        &["vm", "create", "ok", "--kernel", kernel, "--cpus", "0"],
        1,
        "between 1 and 256",
    );
    cli.fails(
        &["vm", "create", "ok", "--kernel", "/nonexistent/vmlinuz"],
        1,
        "/nonexistent/vmlinuz",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("typo.yaml");
    std::fs::write(&manifest, format!("kind: Vm\nmetadata: {{name: typo}}\nspec: {{cpu: 2, boot: {{kernel: {{kernel: {kernel}}}}}}}\n")).unwrap();
    cli.fails(
        &["apply", "-f", manifest.to_str().unwrap()],
        1,
        "unknown field `cpu`",
    );
    assert!(cli.names().is_empty(), "nothing was created");
    cli.fails(&["vm", "get", "nope"], 3, "not found");
}
