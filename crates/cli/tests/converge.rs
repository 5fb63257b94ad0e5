//! `corral apply -f --wait` converges whatever the order of the manifest's documents: a
//! snapshot listed before its VM, the VM before the volume it boots and the network it joins,
//! the volume before the image it clones. Evidence comes from inside the guest (its boot
//! marker, the NIC the network gave it).

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

#[test]
fn apply_wait_converges_a_vm_its_volume_and_image_in_any_order() {
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("stack.yaml");
    std::fs::write(
        &manifest,
        format!(
            "kind: Snapshot\nmetadata: {{name: warm}}\nspec: {{vm: app, memory: true}}\n---\n\
             kind: Vm\nmetadata: {{name: app}}\nspec:\n  memory: 256M\n  boot: {{volume: {{volume: root}}}}\n  networks: [{{network: lan}}]\n---\n\
             kind: Volume\nmetadata: {{name: root}}\nspec: {{image: disk}}\n---\n\
             kind: Network\nmetadata: {{name: lan}}\nspec: {{cidr: 10.77.0.0/24}}\n---\n\
             kind: Image\nmetadata: {{name: disk}}\nspec: {{source: {{path: {}}}}}\n",
            kit.boot_disk().display()
        ),
    )
    .unwrap();
    let out = cli.ok(&[
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--wait",
        "--timeout",
        "4m",
    ]);
    for line in [
        "image/disk: Ready",
        "volume/root: Ready",
        "network/lan: Ready",
        "vm/app: Running",
        "snapshot/warm: Ready",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    cli.wait_console("app", "CORRAL_BOOT_OK");
    // The guest has the NIC the network gave it: its MAC, read by the guest itself.
    let vm = cli.json(&["vm", "get", "app", "-o", "json"]);
    let mac = vm["spec"]["networks"][0]["mac"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut console = cli.attach("app");
    console.type_until(
        "cat /sys/class/net/eth0/address",
        &mac,
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(60),
    );
    drop(console);
    let snap = cli.json(&["snapshot", "get", "warm", "-o", "json"]);
    assert_eq!(snap["status"]["volumes"][0], "root", "{snap}");
    // Applying again changes nothing and is already there.
    let again = cli.ok(&["apply", "-f", manifest.to_str().unwrap(), "--wait"]);
    assert!(again.contains("vm/app unchanged"), "{again}");
}

#[test]
fn apply_wait_names_what_did_not_get_there() {
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("lonely.yaml");
    std::fs::write(
        &manifest,
        "kind: Vm\nmetadata: {name: lonely}\nspec:\n  memory: 256M\n  boot: {volume: {volume: nowhere}}\n",
    )
    .unwrap();
    cli.fails(
        &[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--wait",
            "--timeout",
            "3s",
        ],
        1,
        "vm/lonely did not get there within 3s: Pending (Waiting: volume/nowhere is missing)",
    );
    // It still waits, and would go on as soon as the volume came.
    let vm = cli.json(&["vm", "get", "lonely", "-o", "json"]);
    assert_eq!(vm["status"]["phase"], "Pending", "{vm}");
}
