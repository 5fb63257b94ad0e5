//! The host as a node, end to end: a real corrald (role all) registers itself, the scheduler
//! binds VMs to it, and `corral node cordon|drain|uncordon` keep VMs off it and move them.
//! Evidence comes from the guests' consoles and from the QEMU processes on the host.

use std::time::{Duration, Instant};

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, PATIENCE, kit_vm_args, workspace_binary};
use serde_json::Value;

/// Polls `corral vm get NAME -o json` until `done` holds.
#[track_caller]
fn wait_vm(cli: &Cli, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let vm = cli.get("vm", name);
        if done(&vm) {
            return vm;
        }
        assert!(Instant::now() < deadline, "vm {name}: not {what}: {vm}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scheduled(vm: &Value) -> Option<(bool, String)> {
    vm["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Scheduled")
        .map(|c| {
            (
                c["status"] == true,
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
}

#[test]
fn the_host_is_a_node_and_cordon_drain_and_uncordon_move_its_vms() {
    let d = Corrald::start_with(workspace_binary("corrald"), &["--node-name", "host-a"])
        .expect("corrald");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d);
    let deadline = Instant::now() + PATIENCE;
    let node = loop {
        let nodes = cli.json(&["node", "list", "-o", "json"]);
        let ready = nodes.as_array().and_then(|n| {
            n.iter().find(|n| {
                n["metadata"]["name"] == "host-a"
                    && n["status"]["conditions"][0]["type"] == "Ready"
                    && n["status"]["conditions"][0]["status"] == true
            })
        });
        if let Some(node) = ready {
            break node.clone();
        }
        assert!(Instant::now() < deadline, "node host-a not Ready: {nodes}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(node["kind"], "Node");
    assert!(
        node["status"]["allocatable"]["cpus"].as_u64() >= Some(1),
        "{node}"
    );
    assert!(
        node["status"]["accelerators"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from("tcg"))),
        "{node}"
    );
    assert!(cli.ok(&["node", "list"]).contains("Ready"));

    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    cli.ok(&kit_vm_args(&kit, "placed", "console=ttyS0 quiet"));
    let vm = cli.wait_phase("vm", "placed", "Running");
    assert_eq!(vm["status"]["node"], "host-a", "{vm}");
    let first_pid = vm["status"]["pid"].clone();
    cli.wait_console_line("placed", "CORRAL_BOOT_OK", 0);

    // A VM no node can take waits, Pending, saying why per class of node; nothing starts.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("picky.json");
    let picky = serde_json::json!({
        "kind": "Vm", "metadata": {"name": "picky"},
        "spec": {"memory": "128M", "boot": {"kernel": {"kernel": kit.kernel(),
            "initrd": kit.initrd(), "cmdline": "console=ttyS0 quiet"}},
            "placement": {"node_selector": {"zone": "nowhere"}}}
    });
    std::fs::write(&manifest, picky.to_string()).unwrap();
    cli.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    let vm = wait_vm(&cli, "picky", "unschedulable", |vm| scheduled(vm).is_some());
    assert_eq!(
        scheduled(&vm),
        Some((
            false,
            "0/1 nodes: 1 not matching spec.placement.node_selector".into()
        ))
    );
    assert_eq!(vm["status"]["phase"], "Pending");
    assert_eq!(d.qemu_pids().len(), 1, "only placed runs");

    // Drain: the VM stops here, leaves the node, and waits — the node is cordoned.
    let out = cli.ok(&["node", "drain", "host-a"]);
    assert!(out.contains("node/host-a drained"), "{out}");
    let vm = wait_vm(&cli, "placed", "moved off", |vm| {
        vm["status"]["node"].is_null()
            && scheduled(vm).is_some_and(|(ok, m)| !ok && m == "0/1 nodes: 1 cordoned")
    });
    assert_eq!(vm["status"]["phase"], "Pending", "{vm}");
    assert!(d.qemu_pids().is_empty(), "the drained VM's QEMU is gone");
    assert_eq!(cli.get("node", "host-a")["spec"]["unschedulable"], true);

    // Uncordon: it is placed again and boots in a new QEMU (the drain removed the old one's
    // files, its console log among them).
    cli.ok(&["node", "uncordon", "host-a"]);
    let vm = wait_vm(&cli, "placed", "running again", |vm| {
        vm["status"]["phase"] == "Running" && vm["status"]["pid"] != first_pid
    });
    assert_eq!(vm["status"]["node"], "host-a");
    cli.wait_console_line("placed", "CORRAL_BOOT_OK", 0);
    assert_eq!(d.qemu_pids().len(), 1);
    cli.fails(&["node", "cordon", "nosuch"], 3, "\"nosuch\" not found");
}

/// `corral node join-token`: refused while the daemon has no cluster CA (saying how to make
/// one); with one, a single-use token pinning that CA, in JSON for scripts; a bad `--ttl` is
/// named.
#[test]
fn join_tokens_pin_the_cluster_ca_and_need_one() {
    let corrald = workspace_binary("corrald");
    let keys = tempfile::Builder::new()
        .prefix("crl-ca")
        .tempdir_in("/tmp")
        .expect("a directory");
    let init = std::process::Command::new(&corrald)
        .args(["cluster", "init", "--data-dir"])
        .arg(keys.path())
        .output()
        .expect("corrald cluster init");
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.status.success(), "{said}");
    let ca_dir = keys.path().join("cluster");

    let without = Corrald::start(&corrald).expect("corrald");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &without);
    let err = cli.fails(&["node", "join-token"], 1, "without a cluster CA");
    assert!(err.contains("corrald cluster init"), "{err}");

    let d = Corrald::start_with(&corrald, &["--cluster-dir", ca_dir.to_str().unwrap()])
        .expect("corrald");
    let cli = Cli::new(env!("CARGO_BIN_EXE_corral"), &d);
    let t = cli.json(&["node", "join-token", "--ttl", "5m", "-o", "json"]);
    let pin = t["ca_sha256"].as_str().expect("ca_sha256");
    assert!(
        said.contains(pin),
        "the token pins the CA init made: {said} / {t}"
    );
    let token = t["token"].as_str().expect("token");
    assert!(token.starts_with(&format!("crj.{pin}.")), "{token}");
    let plain = cli.ok(&["node", "join-token"]);
    assert!(
        plain.starts_with("crj.") && plain.contains("single use"),
        "{plain}"
    );
    cli.fails(&["node", "join-token", "--ttl", "9d"], 1, "ttl");
    let bound = cli.json(&["node", "join-token", "--node", "host-x", "-o", "json"]);
    assert!(
        bound["token"].as_str().is_some_and(|t| t != token),
        "{bound}"
    );
}
