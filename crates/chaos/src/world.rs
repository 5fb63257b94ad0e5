//! The system under test and the hands that act on it: a real corrald (data directory on a
//! small tmpfs, so the disk fills), real QEMU, a `qemu-img` that can be told to fail, and the
//! steps of a plan carried out through the typed client and the `corral` CLI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use corral_client::{Client, Endpoint};
use corral_contract::{Arch, Image, Snapshot, Vm, Volume};
use corral_testkit::{Corrald, GuestKit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::plan::{Fault, Op, Step};
use crate::procs;

/// How long one API call may take before the step is recorded as timed out.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What one step did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    /// Its place in the plan.
    pub index: usize,
    /// The step.
    pub step: Step,
    /// `ok`, or the error corrald (or the fault) reported.
    pub outcome: String,
    /// Milliseconds since the run began.
    pub at_ms: u64,
}

/// Where corrald and its tools live for a run.
#[derive(Debug)]
pub struct World {
    /// The daemon.
    pub corrald: Corrald,
    client: Client,
    cli: PathBuf,
    kit: GuestKit,
    work: tempfile::TempDir,
    broken_for: u32,
    frozen: Vec<(u32, Instant)>,
    started: Instant,
    /// Every step carried out, with its outcome.
    pub trace: Vec<Record>,
    /// The most QEMU processes seen at once for one VM uid, sampled after every step.
    pub max_qemus_per_vm: usize,
}

impl World {
    /// Starts corrald (`corrald` binary) with its data directory on a tmpfs of `disk` and a
    /// `qemu-img` wrapper; `corral` is the CLI used for manifests.
    pub async fn start(corrald: &Path, corral: &Path, disk: &str) -> anyhow::Result<World> {
        let kit = GuestKit::get(Arch::X86_64).context("the guest kit")?;
        let work = tempfile::Builder::new()
            .prefix("corral-chaos")
            .tempdir_in("/tmp")?;
        let wrapper = work.path().join("qemu-img");
        let real = which("qemu-img").context("qemu-img is not installed")?;
        // The wrapper fails while the flag file exists, as a broken or missing tool would.
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ -e '{flag}' ]; then echo 'qemu-img: injected failure' >&2; exit 1; fi\nexec '{real}' \"$@\"\n",
                flag = work.path().join("broken").display(),
                real = real.display()
            ),
        )?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let wrapper = wrapper.to_string_lossy().into_owned();
        let corrald = Corrald::builder(corrald)
            .args(&["--qemu-img", &wrapper])
            .small_disk(disk)
            .start()?;
        let client = Client::connect(Endpoint::Unix(corrald.socket())).await?;
        Ok(World {
            corrald,
            client,
            cli: corral.to_owned(),
            kit,
            work,
            broken_for: 0,
            frozen: Vec::new(),
            started: Instant::now(),
            trace: Vec::new(),
            max_qemus_per_vm: 0,
        })
    }

    /// The client of the current corrald.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Carries out step `index`.
    pub async fn step(&mut self, index: usize, step: &Step) {
        let outcome = match step {
            Step::Op(op) => self.op(op).await,
            Step::Fault(fault) => self.fault(fault).await,
        };
        self.trace.push(Record {
            index,
            step: step.clone(),
            outcome,
            at_ms: self.started.elapsed().as_millis() as u64,
        });
        self.tick().await;
    }

    /// Ends every fault still in force: thaws frozen QEMUs, mends `qemu-img`, and makes sure
    /// corrald runs.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for (pid, _) in self.frozen.drain(..) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
        }
        self.broken_for = 0;
        let _ = std::fs::remove_file(self.work.path().join("broken"));
        if self.corrald.pid().is_none() {
            self.restart_daemon(Duration::ZERO).await?;
        }
        Ok(())
    }

    // Per-step upkeep: thaw what is due, count down the broken qemu-img, sample processes.
    async fn tick(&mut self) {
        let now = Instant::now();
        self.frozen.retain(|&(pid, until)| {
            if until <= now {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                false
            } else {
                true
            }
        });
        if self.broken_for > 0 {
            self.broken_for -= 1;
            if self.broken_for == 0 {
                let _ = std::fs::remove_file(self.work.path().join("broken"));
            }
        }
        let most = procs::qemus(&self.corrald.run_dir())
            .values()
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        self.max_qemus_per_vm = self.max_qemus_per_vm.max(most);
    }

    async fn restart_daemon(&mut self, down: Duration) -> anyhow::Result<()> {
        self.corrald.kill_9();
        tokio::time::sleep(down).await;
        self.corrald.restart()?;
        self.client = Client::connect(Endpoint::Unix(self.corrald.socket())).await?;
        Ok(())
    }

    async fn fault(&mut self, fault: &Fault) -> String {
        match fault {
            Fault::KillDaemon { down_ms } => {
                match self.restart_daemon(Duration::from_millis(*down_ms)).await {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("corrald did not come back: {e:#}"),
                }
            }
            Fault::KillDaemonDuring { after_ms, op } => {
                let client = self.client.clone();
                let call = {
                    let op = op.clone();
                    let ctx = self.op_context();
                    tokio::spawn(async move { ctx.run(&client, &op).await })
                };
                tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                let restarted = self.restart_daemon(Duration::ZERO).await;
                let op_outcome = match call.await {
                    Ok(outcome) => outcome,
                    Err(e) => format!("task: {e}"),
                };
                match restarted {
                    Ok(()) => format!("op: {op_outcome}"),
                    Err(e) => format!("op: {op_outcome}; corrald did not come back: {e:#}"),
                }
            }
            Fault::KillQemu { vm } => self.signal_qemu(*vm, Signal::SIGKILL),
            Fault::FreezeQemu { vm, ms } => {
                let outcome = self.signal_qemu(*vm, Signal::SIGSTOP);
                if let Some(pid) = self.qemu_of(*vm) {
                    self.frozen
                        .push((pid, Instant::now() + Duration::from_millis(*ms)));
                }
                outcome
            }
            Fault::BreakQemuImg { ops } => {
                self.broken_for = *ops;
                match std::fs::write(self.work.path().join("broken"), b"") {
                    Ok(()) => "ok".into(),
                    Err(e) => e.to_string(),
                }
            }
        }
    }

    fn qemu_of(&self, vm: usize) -> Option<u32> {
        let name = vm_name(vm);
        // The VM's uid from the runtime directory its QEMU names: no API call, so this works
        // while corrald is down too.
        let uid = procs::uid_of_name(&self.corrald.run_dir(), &name)?;
        procs::qemus(&self.corrald.run_dir())
            .get(&uid)
            .and_then(|pids| pids.first().copied())
    }

    fn signal_qemu(&self, vm: usize, signal: Signal) -> String {
        match self.qemu_of(vm) {
            Some(pid) => match kill(Pid::from_raw(pid as i32), signal) {
                Ok(()) => format!("{signal} to pid {pid}"),
                Err(e) => format!("{signal} to pid {pid}: {e}"),
            },
            None => format!("{} has no QEMU", vm_name(vm)),
        }
    }

    fn op_context(&self) -> OpContext {
        OpContext {
            kit: self.kit.clone(),
            cli: self.cli.clone(),
            socket: self.corrald.socket(),
            manifests: self.work.path().to_owned(),
        }
    }

    async fn op(&mut self, op: &Op) -> String {
        let ctx = self.op_context();
        ctx.run(&self.client, op).await
    }
}

/// What an operation needs, owned, so it can run in a task of its own.
#[derive(Debug, Clone)]
struct OpContext {
    kit: GuestKit,
    cli: PathBuf,
    socket: PathBuf,
    manifests: PathBuf,
}

/// The name of VM `i`.
pub fn vm_name(i: usize) -> String {
    format!("vm-{i}")
}

fn kernel_boot(kit: &GuestKit) -> serde_json::Value {
    json!({"kernel": {
        "kernel": kit.kernel(),
        "initrd": kit.initrd(),
        "cmdline": format!("console={} quiet panic=-1", kit.console()),
    }})
}

impl OpContext {
    async fn run(&self, c: &Client, op: &Op) -> String {
        match tokio::time::timeout(CALL_TIMEOUT, self.call(c, op)).await {
            Ok(Ok(())) => "ok".into(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("timed out after {CALL_TIMEOUT:?}"),
        }
    }

    async fn call(&self, c: &Client, op: &Op) -> anyhow::Result<()> {
        match op {
            Op::CreateVm {
                vm,
                volume,
                policy,
                power,
                introspection,
            } => {
                let boot = match volume {
                    Some(v) => json!({"volume": {"volume": format!("vol-{v}")}}),
                    None => kernel_boot(&self.kit),
                };
                let vm: Vm = serde_json::from_value(json!({
                    "metadata": {"name": vm_name(*vm)},
                    "spec": {
                        "memory": "128M",
                        "boot": boot,
                        "restart_policy": policy,
                        "power": power,
                        "introspection": introspection,
                    },
                }))?;
                c.create_vm(&vm).await?;
            }
            Op::Start { vm } => drop(c.start_vm(&vm_name(*vm)).await?),
            Op::Stop { vm, force } => drop(c.stop_vm(&vm_name(*vm), *force).await?),
            Op::Pause { vm } => drop(c.pause_vm(&vm_name(*vm)).await?),
            Op::Resume { vm } => drop(c.resume_vm(&vm_name(*vm)).await?),
            Op::Restart { vm } => drop(c.restart_vm(&vm_name(*vm)).await?),
            Op::Resize { vm, mib } => {
                let mut current = c.get_vm(&vm_name(*vm)).await?;
                current.spec.memory = corral_contract::ByteSize::from_mib(*mib);
                c.update_vm(&current).await?;
            }
            Op::DeleteVm { vm } => drop(c.delete_vm(&vm_name(*vm)).await?),
            Op::ImportImage { image } => {
                let image: Image = serde_json::from_value(json!({
                    "metadata": {"name": format!("img-{image}")},
                    "spec": {"source": {"path": self.kit.boot_disk()}},
                }))?;
                c.create_image(&image).await?;
            }
            Op::DeleteImage { image } => drop(c.delete_image(&format!("img-{image}")).await?),
            Op::CreateVolume { volume, image } => {
                let spec = match image {
                    Some(i) => json!({"image": format!("img-{i}")}),
                    None => json!({"size": "64M"}),
                };
                let volume: Volume = serde_json::from_value(json!({
                    "metadata": {"name": format!("vol-{volume}")},
                    "spec": spec,
                }))?;
                c.create_volume(&volume).await?;
            }
            Op::GrowVolume { volume, mib } => {
                let size = corral_contract::ByteSize::from_mib(*mib);
                c.resize_volume(&format!("vol-{volume}"), size).await?;
            }
            Op::DeleteVolume { volume } => drop(c.delete_volume(&format!("vol-{volume}")).await?),
            Op::Snapshot {
                snapshot,
                vm,
                memory,
            } => {
                let snapshot: Snapshot = serde_json::from_value(json!({
                    "metadata": {"name": format!("snap-{snapshot}")},
                    "spec": {"vm": vm_name(*vm), "memory": memory},
                }))?;
                c.create_snapshot(&snapshot).await?;
            }
            Op::Restore { snapshot } => {
                drop(c.restore_snapshot(&format!("snap-{snapshot}")).await?)
            }
            Op::DeleteSnapshot { snapshot } => {
                drop(c.delete_snapshot(&format!("snap-{snapshot}")).await?)
            }
            Op::Apply { set } => self.apply(*set).await?,
        }
        Ok(())
    }

    /// `corral apply -f` of a VM, the volume it boots and the image the volume clones,
    /// written dependents first.
    async fn apply(&self, set: usize) -> anyhow::Result<()> {
        let manifest = format!(
            "kind: Vm\nmetadata: {{name: a-vm-{set}}}\nspec:\n  memory: 128M\n  restart_policy: always\n  boot: {{volume: {{volume: a-vol-{set}}}}}\n---\n\
             kind: Volume\nmetadata: {{name: a-vol-{set}}}\nspec: {{image: a-img-{set}}}\n---\n\
             kind: Image\nmetadata: {{name: a-img-{set}}}\nspec: {{source: {{path: {disk}}}}}\n",
            disk = self.kit.boot_disk().display()
        );
        let path = self.manifests.join(format!("set-{set}.yaml"));
        std::fs::write(&path, manifest)?;
        let out = tokio::process::Command::new(&self.cli)
            .arg("apply")
            .arg("-f")
            .arg(&path)
            .env("CORRAL_SOCKET", &self.socket)
            .env_remove("CORRAL_SERVER")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", self.cli.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "corral apply exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
