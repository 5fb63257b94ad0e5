//! The `corral` CLI against a real corrald (and real QEMU guests where a VM runs): exit codes,
//! output shapes, manifests, and errors that name the field and leave nothing behind.
//!
//! corrald comes from the same target directory as `corral` (`cargo nextest run --workspace`
//! builds both).

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, kit_vm_args, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

fn corrald() -> Corrald {
    Corrald::start(workspace_binary("corrald")).expect("corrald")
}

fn kit() -> GuestKit {
    GuestKit::get(Arch::X86_64).expect("guest kit")
}

#[test]
fn create_wait_boots_a_guest_and_get_prints_the_api_schema() {
    let d = corrald();
    let cli = Cli::new(CORRAL, &d);
    let k = kit();
    let mut create = kit_vm_args(&k, "web-1", "console=ttyS0 quiet");
    create.extend(["--label", "tier=web", "--wait"].map(String::from));
    cli.ok(&create);
    let json = cli.json(&["vm", "get", "web-1", "-o", "json"]);
    assert_eq!(json["kind"], "Vm");
    assert_eq!(json["status"]["phase"], "Running");
    assert_eq!(json["metadata"]["labels"]["tier"], "web");
    assert_eq!(cli.vm_names(), ["web-1"]);
    assert!(
        cli.ok(&["vm", "list", "-l", "tier=db", "-o", "json"])
            .trim()
            == "[]"
    );
    // Evidence from inside the guest, through the CLI.
    cli.wait_console("web-1", "CORRAL_BOOT_OK");
    cli.ok(&["vm", "delete", "web-1", "--wait"]);
    assert!(cli.vm_names().is_empty());
    assert!(d.qemu_pids().is_empty());
}

#[test]
fn applying_the_same_manifest_twice_changes_and_restarts_nothing() {
    let d = corrald();
    let cli = Cli::new(CORRAL, &d);
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
    let get = || cli.json(&["vm", "get", "app", "-o", "json"]);
    let before = cli.wait_phase("vm", "app", "Running");
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
    let d = corrald();
    let cli = Cli::new(CORRAL, &d);
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
    assert!(cli.vm_names().is_empty(), "nothing was created");
    cli.fails(&["vm", "get", "nope"], 3, "not found");
}
