//! Terraform benchmark: the real Terraform CLI driving `terraform-provider-corral` against a
//! real corrald, with Terraform's own fixed cost measured in the same run as the baseline.
//!
//! `cargo run --release -p corral-bench --bin terraform-bench -- [--runs 5] [--vms 10]`
//!
//! Prints the medians of:
//! - `terraform apply` creating `--vms` VMs declared `power = "stopped"` (created and reported
//!   Stopped; no QEMU starts, so this is the provider and API path, not guest boot);
//! - `terraform plan` with nothing to do on those VMs (refresh reads each one);
//! - `terraform plan` of an empty configuration: Terraform's own start-up, the baseline;
//! - `terraform plan` of a configuration with the provider and no resources: start-up plus
//!   launching the provider (handshake, AutoMTLS, schema, connecting to corrald);
//!
//! and the ratio of the nothing-to-do plan to the empty-configuration plan. Terraform comes
//! from target/tools/bin (scripts/setup.sh installs v1.0.3) or `CORRAL_TERRAFORM`; the
//! provider and corrald are built in release mode first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::{flag, median, ms, ratio};
use corral_contract::Arch;
use corral_testkit::{Corrald, GuestKit, release_build, workspace_root};

fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 5);
    let vms: usize = flag("--vms", 10);
    let root = workspace_root();
    eprintln!("building corrald and terraform-provider-corral (release)…");
    let release = release_build(&["corral-daemon", "corral-terraform-provider"])?;
    let terraform = std::env::var_os("CORRAL_TERRAFORM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/tools/bin/terraform"));
    if !terraform.exists() {
        bail!(
            "Terraform is not at {}: run scripts/setup.sh, or set CORRAL_TERRAFORM",
            terraform.display()
        );
    }
    let kit = GuestKit::get(Arch::X86_64)?;
    let daemon = Corrald::start(release.join("corrald"))?;

    let vms_dir = Workdir::new(&terraform, &release)?;
    let mut body = provider_block(&daemon.socket());
    for i in 0..vms {
        body.push_str(&format!(
            "resource \"corral_vm\" \"vm{i}\" {{\n  name    = \"bench-{i}\"\n  kernel  = \"{}\"\n  \
             initrd  = \"{}\"\n  cmdline = \"console=ttyS0 quiet\"\n  memory  = \"256M\"\n  \
             power   = \"stopped\"\n}}\n\n",
            kit.kernel().display(),
            kit.initrd().display()
        ));
    }
    vms_dir.write(&body)?;
    let empty = Workdir::new(&terraform, &release)?;
    empty.write("terraform {}\n")?;
    let provider_only = Workdir::new(&terraform, &release)?;
    provider_only.write(&provider_block(&daemon.socket()))?;

    println!(
        "terraform benchmark: {runs} runs, {vms} VMs declared stopped, {}",
        vms_dir.version()?
    );
    let mut apply = Vec::new();
    let mut plan = Vec::new();
    let mut baseline = Vec::new();
    let mut provider = Vec::new();
    // Warm-up: page cache, first provider start.
    empty.run(&["plan", "-no-color"], 0)?;
    provider_only.run(&["plan", "-no-color"], 0)?;
    for run in 0..runs {
        apply.push(vms_dir.run(&["apply", "-auto-approve", "-no-color"], 0)?);
        // Alternate the order so that drift over the run hits all three alike.
        let mut order: Vec<usize> = vec![0, 1, 2];
        order.rotate_left(run % 3);
        for which in order {
            match which {
                0 => plan.push(vms_dir.run(&["plan", "-detailed-exitcode", "-no-color"], 0)?),
                1 => baseline.push(empty.run(&["plan", "-no-color"], 0)?),
                _ => provider.push(provider_only.run(&["plan", "-no-color"], 0)?),
            }
        }
        vms_dir.run(&["destroy", "-auto-approve", "-no-color"], 0)?;
        eprintln!(
            "  run {}: apply {} | plan {} | empty plan {} | provider-only plan {}",
            run + 1,
            ms(apply[run]),
            ms(plan[run]),
            ms(baseline[run]),
            ms(provider[run])
        );
    }
    println!();
    println!(
        "terraform apply, {vms} stopped VMs:       median {}",
        ms(median(&apply))
    );
    println!(
        "terraform plan, nothing to do ({vms} VMs): median {}",
        ms(median(&plan))
    );
    println!(
        "terraform plan, empty config (baseline): median {}",
        ms(median(&baseline))
    );
    println!(
        "terraform plan, provider, no resources:  median {}",
        ms(median(&provider))
    );
    println!(
        "ratio plan (nothing to do) / empty-config plan: {:.2}x",
        ratio(median(&plan), median(&baseline))
    );
    println!(
        "ratio plan (nothing to do) / provider-only plan: {:.2}x",
        ratio(median(&plan), median(&provider))
    );
    if !daemon.qemu_pids().is_empty() {
        eprintln!("warning: QEMU processes left: {:?}", daemon.qemu_pids());
    }
    Ok(())
}

fn provider_block(socket: &Path) -> String {
    format!(
        "terraform {{\n  required_providers {{\n    corral = {{ source = \"corral-vm/corral\" }}\n  }}\n}}\n\n\
         provider \"corral\" {{\n  endpoint = \"{}\"\n}}\n\n",
        socket.display()
    )
}

/// A Terraform working directory whose CLI configuration points at the built provider.
struct Workdir {
    dir: tempfile::TempDir,
    terraform: PathBuf,
}

impl Workdir {
    fn new(terraform: &Path, provider_dir: &Path) -> anyhow::Result<Workdir> {
        let dir = tempfile::Builder::new().prefix("corral-tfb").tempdir()?;
        let rc = format!(
            "provider_installation {{\n  dev_overrides {{\n    \"corral-vm/corral\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
            provider_dir.display()
        );
        std::fs::write(dir.path().join("terraform.rc"), rc)?;
        Ok(Workdir {
            dir,
            terraform: terraform.to_owned(),
        })
    }

    fn write(&self, main_tf: &str) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join("main.tf"), main_tf).context("writing main.tf")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.terraform);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraform.rc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1");
        cmd
    }

    fn version(&self) -> anyhow::Result<String> {
        let out = self.command(&["version"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or("Terraform ?").to_owned())
    }

    /// Runs terraform, checks its exit code, returns the wall time.
    fn run(&self, args: &[&str], code: i32) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let out = self.command(args).output()?;
        let took = start.elapsed();
        if out.status.code() != Some(code) {
            bail!(
                "terraform {args:?} exited {:?}, not {code}:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}
