//! Daemon benchmark: corrald and the `corral` CLI against raw QEMU and libvirt, measured in
//! the same run, and corrald's API under 10,000 declared VMs.
//!
//! `cargo run --release -p corral-bench --bin daemon -- [--runs 7] [--objects 10000]
//! [--concurrency 32] [--skip-libvirt] [--grpc]`
//!
//! (a) `corral vm create --wait` (spawn of the CLI until it exits with the VM Running) against
//!     raw `qemu-system-x86_64` with the command line corrald would use, minus `-S` (spawn until
//!     the QMP greeting is read): medians and the median of the paired differences, the
//!     overhead (target <= 50 ms).
//! (b) libvirt on this machine, a transient domain with the same kernel, initrd, command line,
//!     memory, one vCPU and TCG: `virsh create` (it returns once the domain runs) and
//!     `virsh destroy`, against Corral's create above and `corral vm stop --force --wait`.
//!     Ratios Corral/libvirt, targets <= 0.5 and <= 0.2. The bench installs nothing; it starts
//!     libvirtd (and virtlogd) itself when they are installed but not running, and stops them
//!     at the end.
//! (c) A fresh corrald: `--objects` VMs with `power: stopped` created through gRPC with
//!     `--concurrency` requests in flight (target >= 2,000 creates/s), then `List` of all of
//!     them, median of 5 (target <= 100 ms), and corrald's RSS.
//!
//! This machine's PID 1 reaps orphaned processes only every couple of seconds, while libvirt
//! waits for its QEMU's pid to vanish before `virsh destroy` returns (QEMU is orphaned on
//! purpose: libvirt double-forks it). On a host with systemd as PID 1 that is immediate, so
//! the bench runs the libvirtd it starts under a subreaper (this program, re-executed with
//! `--reap-for`) that reaps at once.
//!
//! Each round runs raw QEMU, Corral and libvirt one after the other, in an order that
//! alternates between rounds, after one warm-up round that is not counted. If the `corral`
//! binary cannot be built, (a) and (b) measure Corral through the gRPC client instead (create,
//! then watch until Running) and say so. The figures are informational: the program exits 0
//! whether or not a target is met, and non-zero only if something broke. `--grpc` measures
//! Corral through the gRPC client even when the CLI is there.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::raw::{self, uuid_like};
use corral_bench::{flag, median, ms, ratio};
use corral_client::Endpoint;
use corral_contract::Arch;
use corral_contract::pb;
use corral_contract::pb::vm_service_client::VmServiceClient;
use corral_hypervisor::BootSource;
use corral_testkit::{Corrald, TestVm, release_build, workspace_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

type Client = VmServiceClient<corral_client::Transport>;

/// Guest RAM for every VM in (a) and (b), MiB.
const MEMORY_MIB: u64 = 256;
/// How long corrald gets to exit on SIGTERM before it is killed.
const DAEMON_GRACE: Duration = Duration::from_secs(10);
/// How long one VM operation may take before the bench gives up.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// What every VM of (a) and (b) boots: the guest kit's kernel and initramfs.
#[derive(Debug, Clone)]
struct Guest {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == REAP_FLAG) {
        reaper(&args[2..]);
    }
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 7);
    let objects: usize = flag("--objects", 10_000);
    let concurrency: usize = flag("--concurrency", 32);
    let skip_libvirt = std::env::args().any(|a| a == "--skip-libvirt");
    let force_grpc = std::env::args().any(|a| a == "--grpc");
    if runs == 0 {
        bail!("--runs must be at least 1");
    }

    let mut bins = Binaries::build()?;
    if force_grpc {
        bins.cli = None;
    }
    // The same launch description the boot benchmark uses: corrald gets the same kernel,
    // initrd, command line and memory through the API, raw QEMU gets corrald's command line.
    let builder = TestVm::builder(Arch::X86_64).memory_mib(MEMORY_MIB);
    let guest = {
        let scratch = tempfile::Builder::new().prefix("cbd").tempdir_in("/tmp")?;
        let config = builder.config(scratch.path(), &uuid_like())?;
        match config.boot {
            BootSource::Kernel {
                kernel,
                initrd,
                cmdline,
            } => Guest {
                kernel,
                initrd: initrd.context("the guest kit has no initrd")?,
                cmdline: cmdline.unwrap_or_default(),
            },
            BootSource::Firmware => bail!("the guest kit config is not a kernel boot"),
        }
    };

    println!(
        "corrald benchmark: {runs} runs (+1 warm-up), x86_64 q35, {MEMORY_MIB} MiB, 1 vCPU, \
         TCG where KVM is unusable; {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!(
        "corral driver: {}",
        match &bins.cli {
            Some(cli) => format!("CLI {}", cli.display()),
            None if force_grpc => "gRPC client (--grpc)".into(),
            None => "gRPC client (the `corral` CLI did not build)".into(),
        }
    );

    // ---- (a) and (b): one corrald for every run, one libvirt. ----
    let (mut daemon, client) = start_corrald(&bins.corrald).await?;
    let libvirt = if skip_libvirt {
        println!("libvirt: skipped (--skip-libvirt)");
        None
    } else {
        match Libvirt::setup(&guest) {
            Ok(Some(lv)) => Some(lv),
            Ok(None) => None,
            Err(e) => {
                println!("libvirt: could not be used: {e:#}");
                None
            }
        }
    };

    let result = lifecycle_rounds(
        runs,
        &builder,
        &bins,
        &daemon,
        &client,
        &guest,
        libvirt.as_ref(),
    )
    .await;
    if let Some(lv) = libvirt {
        lv.teardown();
    }
    let leftover = client
        .clone()
        .list(pb::ListVmsRequest::default())
        .await
        .map(|r| r.into_inner().items.len())
        .unwrap_or(0);
    daemon.stop(DAEMON_GRACE);
    if leftover > 0 {
        eprintln!("warning: {leftover} VMs were left in the (a)/(b) corrald");
    }
    let lifecycle = result?;

    // ---- (c): a fresh corrald, many stopped VMs. ----
    let scale = objects_bench(&bins.corrald, &guest, objects, concurrency).await?;

    summary(&lifecycle, &scale, objects);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Binaries

struct Binaries {
    corrald: PathBuf,
    cli: Option<PathBuf>,
}

impl Binaries {
    /// Builds corrald and the CLI in release mode (a no-op when they are up to date).
    fn build() -> anyhow::Result<Binaries> {
        eprintln!("building corral-daemon (release)…");
        let corrald = match release_build(&["corral-daemon"]) {
            Ok(dir) => dir.join("corrald"),
            Err(e) => {
                let stale = release_dir().join("corrald");
                if !stale.exists() {
                    bail!("cannot build corrald: {e}");
                }
                eprintln!("warning: {e}; using the existing {}", stale.display());
                stale
            }
        };
        eprintln!("building corral-cli (release)…");
        let cli = release_build(&["corral-cli"])
            .ok()
            .map(|dir| dir.join("corral"))
            .filter(|cli| cli.exists());
        Ok(Binaries { corrald, cli })
    }
}

/// Where `cargo build --release` puts binaries.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release")
}

// ------------------------------------------------------------------------------------------
// corrald

/// corrald as users run it (release build, default log level) on fresh directories, and a
/// gRPC client once its API answers.
async fn start_corrald(bin: &Path) -> anyhow::Result<(Corrald, Client)> {
    let daemon = Corrald::builder(bin)
        .quiet()
        .start()
        .with_context(|| format!("starting {}", bin.display()))?;
    let client = corral_client::Client::connect(Endpoint::Unix(daemon.socket()))
        .await?
        .vm_service();
    client
        .clone()
        .list(pb::ListVmsRequest::default())
        .await
        .with_context(|| format!("corrald's first List; its log:\n{}", daemon.log()))?;
    Ok((daemon, client))
}

fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------------------------------------
// (a) and (b)

#[derive(Debug, Default)]
struct Lifecycle {
    raw_qmp: Vec<Duration>,
    corral_create: Vec<Duration>,
    corral_stop: Vec<Duration>,
    libvirt: Option<LibvirtSamples>,
    driver: &'static str,
}

#[derive(Debug, Default)]
struct LibvirtSamples {
    create: Vec<Duration>,
    destroy: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Contender {
    Raw,
    Corral,
    Libvirt,
}

async fn lifecycle_rounds(
    runs: usize,
    builder: &corral_testkit::TestVmBuilder,
    bins: &Binaries,
    daemon: &Corrald,
    client: &Client,
    guest: &Guest,
    libvirt: Option<&Libvirt>,
) -> anyhow::Result<Lifecycle> {
    let mut out = Lifecycle {
        libvirt: libvirt.map(|_| LibvirtSamples::default()),
        driver: if bins.cli.is_some() {
            "corral CLI"
        } else {
            "gRPC"
        },
        ..Default::default()
    };
    println!();
    for round in 0..=runs {
        let warmup = round == 0;
        // Alternate the order so that drift over the run hits every contender alike.
        let order = if round % 2 == 0 {
            [Contender::Raw, Contender::Corral, Contender::Libvirt]
        } else {
            [Contender::Libvirt, Contender::Corral, Contender::Raw]
        };
        let mut line = if warmup {
            "  warm-up:".to_string()
        } else {
            format!("  run {round}:")
        };
        for who in order {
            match who {
                Contender::Raw => {
                    let qmp = raw::run(builder, false).await.context("raw QEMU")?.qmp;
                    line += &format!(" raw qmp {} |", ms(qmp));
                    if !warmup {
                        out.raw_qmp.push(qmp);
                    }
                }
                Contender::Corral => {
                    let name = format!("bench-{}-{round}", std::process::id());
                    let (create, stop) = run_corral(bins, daemon, client, guest, &name)
                        .await
                        .with_context(|| format!("Corral VM {name}"))?;
                    line += &format!(" corral create {} stop {} |", ms(create), ms(stop));
                    if !warmup {
                        out.corral_create.push(create);
                        out.corral_stop.push(stop);
                    }
                }
                Contender::Libvirt => {
                    let Some(lv) = libvirt else { continue };
                    let name = format!("corral-bench-{}-{round}", std::process::id());
                    let (create, destroy) = lv
                        .run(&name)
                        .with_context(|| format!("libvirt domain {name}"))?;
                    line += &format!(" libvirt create {} destroy {} |", ms(create), ms(destroy));
                    if !warmup && let Some(s) = out.libvirt.as_mut() {
                        s.create.push(create);
                        s.destroy.push(destroy);
                    }
                }
            }
        }
        eprintln!("{}", line.trim_end_matches(" |"));
    }
    Ok(out)
}

/// Corral: create and wait for Running (timed), force-stop and wait for Stopped (timed), then
/// delete and wait until the VM is gone (not timed).
async fn run_corral(
    bins: &Binaries,
    daemon: &Corrald,
    client: &Client,
    guest: &Guest,
    name: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let result = async {
        let (create, stop) = match &bins.cli {
            Some(cli) => {
                let corral = || {
                    let mut cmd = Command::new(cli);
                    cmd.arg("--socket").arg(daemon.socket());
                    cmd
                };
                let mut create = corral();
                create
                    .args(["vm", "create", name, "--kernel"])
                    .arg(&guest.kernel)
                    .arg("--initrd")
                    .arg(&guest.initrd)
                    .arg("--cmdline")
                    .arg(&guest.cmdline)
                    .args(["--memory", &format!("{MEMORY_MIB}M"), "--wait"]);
                let create = run_timed(create).await?;
                let mut stop = corral();
                stop.args(["vm", "stop", name, "--force", "--wait"]);
                let stop = run_timed(stop).await?;
                (create, stop)
            }
            None => {
                let create = grpc_create_running(client, guest, name).await?;
                let stop = grpc_stop_force(client, name).await?;
                (create, stop)
            }
        };
        Ok((create, stop))
    }
    .await;
    // Clean up whatever happened above.
    grpc_delete(client, name).await?;
    result
}

/// Runs a command to completion, timing spawn to exit; fails with its stderr if it fails.
async fn run_timed(mut cmd: Command) -> anyhow::Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    let t0 = Instant::now();
    let out = tokio::time::timeout(OP_TIMEOUT, cmd.output())
        .await
        .context("timed out")??;
    let took = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.as_std().get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

fn vm_spec(guest: &Guest, power: pb::Power) -> pb::VmSpec {
    pb::VmSpec {
        cpus: Some(1),
        memory_bytes: Some(MEMORY_MIB << 20),
        boot: Some(pb::Boot {
            source: Some(pb::boot::Source::Kernel(pb::KernelBoot {
                kernel: guest.kernel.display().to_string(),
                initrd: Some(guest.initrd.display().to_string()),
                cmdline: Some(guest.cmdline.clone()),
            })),
        }),
        power: power as i32,
        ..Default::default()
    }
}

fn new_vm(name: &str, spec: pb::VmSpec) -> pb::Vm {
    pb::Vm {
        metadata: Some(pb::ObjectMeta {
            name: name.to_owned(),
            ..Default::default()
        }),
        spec: Some(spec),
        status: None,
    }
}

/// The phase of `vm` if its status describes its current spec.
fn observed_phase(vm: &pb::Vm) -> Option<pb::Phase> {
    let generation = vm.metadata.as_ref()?.generation;
    let status = vm.status.as_ref()?;
    (status.observed_generation >= generation).then(|| status.phase())
}

/// Follows `stream` until the VM reaches `want` (for its current spec); fails on Failed.
async fn wait_phase(
    stream: &mut tonic::Streaming<pb::VmEvent>,
    want: pb::Phase,
) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout(OP_TIMEOUT, stream.message())
            .await
            .with_context(|| format!("waiting for {want:?}"))??
            .with_context(|| format!("the watch ended before {want:?}"))?;
        if event.r#type() == pb::EventType::Deleted {
            bail!("the VM was deleted while waiting for {want:?}");
        }
        let Some(vm) = event.vm else { continue };
        match observed_phase(&vm) {
            Some(p) if p == want => return Ok(()),
            Some(pb::Phase::Failed) => bail!(
                "the VM failed: {}",
                vm.status.and_then(|s| s.message).unwrap_or_default()
            ),
            _ => {}
        }
    }
}

async fn watch(client: &Client, name: &str) -> anyhow::Result<tonic::Streaming<pb::VmEvent>> {
    Ok(client
        .clone()
        .watch(pb::WatchVmsRequest {
            after_revision: 0,
            name: name.to_owned(),
        })
        .await?
        .into_inner())
}

/// gRPC Create with power running, then watch until Running.
async fn grpc_create_running(
    client: &Client,
    guest: &Guest,
    name: &str,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut events = watch(client, name).await?;
    client
        .clone()
        .create(pb::CreateVmRequest {
            vm: Some(new_vm(name, vm_spec(guest, pb::Power::Running))),
        })
        .await?;
    wait_phase(&mut events, pb::Phase::Running).await?;
    Ok(t0.elapsed())
}

/// gRPC Stop with force, then watch until Stopped.
async fn grpc_stop_force(client: &Client, name: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut events = watch(client, name).await?;
    client
        .clone()
        .stop(pb::StopVmRequest {
            name: name.to_owned(),
            force: true,
        })
        .await?;
    wait_phase(&mut events, pb::Phase::Stopped).await?;
    Ok(t0.elapsed())
}

/// Deletes the VM (its QEMU, if any, goes first) and waits until it is gone.
async fn grpc_delete(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut c = client.clone();
    match c
        .delete(pb::DeleteVmRequest {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(s).context("deleting"),
    }
    let t0 = Instant::now();
    loop {
        match c
            .get(pb::GetVmRequest {
                name: name.to_owned(),
            })
            .await
        {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            _ if t0.elapsed() > OP_TIMEOUT => bail!("{name} was not deleted in time"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

// ------------------------------------------------------------------------------------------
// libvirt

const LIBVIRT_URI: &str = "qemu:///system";
const LIBVIRT_DIR: &str = "/tmp/corral-bench-libvirt";
const LIBVIRT_INSTALL: &str = "apt-get install --no-install-recommends libvirt-daemon-system \
                               libvirt-daemon-driver-qemu libvirt-clients";

struct Libvirt {
    virsh: PathBuf,
    dir: PathBuf,
    /// Daemons this bench started (libvirtd or virtqemud first, then virtlogd), to stop at
    /// the end.
    started: Vec<(String, Child)>,
}

impl Libvirt {
    /// Finds libvirt, starts its daemons if they are not running, and prepares the files
    /// the domains boot. `None` (with a line printed) when libvirt is not installed.
    fn setup(guest: &Guest) -> anyhow::Result<Option<Libvirt>> {
        let virsh = which("virsh");
        let daemon = which("libvirtd").or_else(|| which("virtqemud"));
        let (Some(virsh), Some(daemon)) = (virsh, daemon) else {
            println!("libvirt: not installed ({LIBVIRT_INSTALL})");
            return Ok(None);
        };
        let mut lv = Libvirt {
            virsh,
            dir: PathBuf::from(LIBVIRT_DIR),
            started: Vec::new(),
        };
        if lv.virsh_ok(&["version"]) {
            println!("libvirt: using the libvirt daemon already running");
        } else if let Err(e) = lv.start_daemons(&daemon) {
            lv.teardown();
            return Err(e);
        }
        let version = lv
            .virsh(&["version", "--daemon"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Running"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        println!("libvirt: {version}");
        // The domain's QEMU may run as an unprivileged user: world-readable copies.
        let _ = std::fs::remove_dir_all(&lv.dir);
        std::fs::create_dir_all(&lv.dir)?;
        std::fs::set_permissions(&lv.dir, std::fs::Permissions::from_mode(0o755))?;
        for (src, name) in [(&guest.kernel, "vmlinuz"), (&guest.initrd, "initrd.img")] {
            let dst = lv.dir.join(name);
            std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::write(lv.dir.join("cmdline"), &guest.cmdline)?;
        Ok(Some(lv))
    }

    fn start_daemons(&mut self, daemon: &Path) -> anyhow::Result<()> {
        // The QEMU driver sends QEMU's stdio to virtlogd (qemu.conf `stdio_handler`).
        if !Path::new("/run/libvirt/virtlogd-sock").exists()
            && let Some(virtlogd) = which("virtlogd")
        {
            let child = Command::new(&virtlogd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting virtlogd")?;
            self.started.push(("virtlogd".into(), child));
            wait_for_path(
                Path::new("/run/libvirt/virtlogd-sock"),
                Duration::from_secs(10),
            );
        }
        let log = std::fs::File::create("/tmp/corral-bench-libvirtd.log")?;
        let mut cmd;
        if let Some(reason) = kvm_unusable_for_qemu_user() {
            // libvirt probes QEMU's capabilities with CAP_DAC_OVERRIDE, sees KVM, then finds
            // /dev/kvm not accessible to the user it runs QEMU as, declares the cached
            // capabilities outdated and probes again, several times per `virsh create`
            // (about 4 s each, a minute per domain). A udev-managed host gives the kvm group
            // access; here the bench runs the daemon in a private mount namespace whose
            // qemu.conf runs QEMU as root, which makes the two checks agree. Nothing on the
            // host changes.
            let conf = "/etc/libvirt/qemu.conf";
            let mut text = std::fs::read_to_string(conf)
                .with_context(|| format!("reading {conf} (is libvirt-daemon-system installed?)"))?;
            text.push_str(
                "\n# corral-bench: /dev/kvm is root-only here\nuser = \"root\"\ngroup = \"root\"\n",
            );
            let over = Path::new("/tmp/corral-bench-qemu.conf");
            std::fs::write(over, text)?;
            println!(
                "libvirt: {reason}; running {} with QEMU as root (qemu.conf override in a \
                 private mount namespace) so that libvirt does not re-probe QEMU on every call",
                daemon.display()
            );
            cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(format!(
                    "mount --bind {} {conf} && exec {}",
                    over.display(),
                    daemon.display()
                ));
        } else {
            cmd = Command::new(daemon);
        }
        // Under a subreaper that reaps at once, as systemd does as PID 1 (see the top).
        let mut reaped = Command::new(std::env::current_exe()?);
        reaped
            .arg(REAP_FLAG)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        let child = reaped
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", daemon.display()))?;
        let name = daemon
            .file_name()
            .unwrap_or(OsStr::new("libvirtd"))
            .to_string_lossy()
            .into_owned();
        self.started.insert(0, (name.clone(), child));
        let t0 = Instant::now();
        while !self.virsh_ok(&["version"]) {
            if let Some((_, child)) = self.started.first_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "{name} exited ({status}); see /tmp/corral-bench-libvirtd.log and \
                     /var/log/libvirt/libvirtd.log"
                );
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name} did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "libvirt: started {name} for this run, under a reaper (pid {})",
            self.started[0].1.id()
        );
        Ok(())
    }

    fn domain_xml(&self, name: &str) -> anyhow::Result<String> {
        let cmdline = std::fs::read_to_string(self.dir.join("cmdline"))?;
        let dir = self.dir.display();
        let emulator = which("qemu-system-x86_64")
            .map(|p| format!("\n    <emulator>{}</emulator>", p.display()))
            .unwrap_or_default();
        Ok(format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{dir}/vmlinuz</kernel>
    <initrd>{dir}/initrd.img</initrd>
    <cmdline>{}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{emulator}
    <serial type='file'><source path='{dir}/{name}.serial'/></serial>
    <memballoon model='none'/>
  </devices>
  <seclabel type='none'/>
</domain>
",
            xml_escape(cmdline.trim())
        ))
    }

    /// `virsh create` (returns once the domain runs), check it is running (not timed),
    /// `virsh destroy`.
    fn run(&self, name: &str) -> anyhow::Result<(Duration, Duration)> {
        let xml = self.dir.join(format!("{name}.xml"));
        std::fs::write(&xml, self.domain_xml(name)?)?;
        let xml_arg = xml.display().to_string();
        let t0 = Instant::now();
        self.virsh(&["create", &xml_arg])?;
        let create = t0.elapsed();
        let state = self.virsh(&["domstate", name]);
        let t1 = Instant::now();
        let destroyed = self.virsh(&["destroy", name]);
        let destroy = t1.elapsed();
        let _ = std::fs::remove_file(&xml);
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.serial")));
        let state = state?;
        destroyed?;
        if state.trim() != "running" {
            bail!("domain state after create: {}", state.trim());
        }
        Ok((create, destroy))
    }

    fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.virsh)
            .arg("-c")
            .arg(LIBVIRT_URI)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running virsh")?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn virsh_ok(&self, args: &[&str]) -> bool {
        self.virsh(args).is_ok()
    }

    /// Stops the daemons this bench started and removes its files.
    fn teardown(mut self) {
        for (name, mut child) in self.started.drain(..) {
            stop_child(&mut child, Duration::from_secs(15));
            println!("libvirt: stopped {name}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file("/tmp/corral-bench-qemu.conf");
    }
}

/// The hidden first argument that turns this program into [`reaper`].
const REAP_FLAG: &str = "--reap-for";

/// Runs `cmd` as a child subreaper: every orphan among its descendants becomes this
/// process's child and is reaped as soon as it exits. SIGTERM and SIGINT are passed on to
/// `cmd`; the reaper exits with it.
fn reaper(cmd: &[std::ffi::OsString]) -> ! {
    use nix::sys::signal::SigSet;
    use nix::sys::wait::{WaitStatus, waitpid};
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("reaper: {what}: {e}");
        std::process::exit(1)
    };
    let Some((program, args)) = cmd.split_first() else {
        fail("usage", &"--reap-for PROGRAM [ARGS...]")
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        fail("becoming a subreaper", &e);
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // Blocked before the spawn (std resets the mask in the child) so that none is lost.
    if let Err(e) = signals.thread_block() {
        fail("blocking signals", &e);
    }
    let child = match Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(e) => fail(&format!("starting {}", program.to_string_lossy()), &e),
    };
    let main = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The signal thread inherits the blocked mask and takes the signals synchronously.
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            let _ = kill(main, sig);
        }
    });
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                std::process::exit(128 + sig as i32)
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => fail("waiting", &e),
        }
    }
}

/// Why libvirt's QEMU user (Debian: `libvirt-qemu`) cannot open /dev/kvm although the
/// device exists, or `None` when it can, or there is no such device or user.
fn kvm_unusable_for_qemu_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/dev/kvm").ok()?;
    let user = nix::unistd::User::from_name("libvirt-qemu").ok()??;
    let mode = meta.mode();
    let groups =
        nix::unistd::getgrouplist(&std::ffi::CString::new(user.name.clone()).ok()?, user.gid)
            .unwrap_or_default();
    let rw = |bits: u32| mode & bits == bits;
    let ok = (meta.uid() == user.uid.as_raw() && rw(0o600))
        || (groups.iter().any(|g| g.as_raw() == meta.gid()) && rw(0o060))
        || rw(0o006);
    (!ok).then(|| {
        format!(
            "/dev/kvm is mode {:o} uid {} gid {}, not usable by libvirt-qemu",
            mode & 0o777,
            meta.uid(),
            meta.gid()
        )
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn wait_for_path(path: &Path, limit: Duration) {
    let t0 = Instant::now();
    while !path.exists() && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

// ------------------------------------------------------------------------------------------
// (c)

#[derive(Debug)]
struct Scale {
    created: usize,
    create_elapsed: Duration,
    settled: Option<Duration>,
    listed: usize,
    lists: Vec<Duration>,
    rss_idle_kib: Option<u64>,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
}

async fn objects_bench(
    corrald: &Path,
    guest: &Guest,
    objects: usize,
    concurrency: usize,
) -> anyhow::Result<Scale> {
    println!();
    println!(
        "(c) {objects} VMs with power stopped through gRPC, {concurrency} requests in flight, \
         fresh corrald"
    );
    let (mut daemon, client) = start_corrald(corrald).await?;
    let result = objects_inner(&daemon, &client, guest, objects, concurrency).await;
    daemon.stop(DAEMON_GRACE);
    result
}

async fn objects_inner(
    daemon: &Corrald,
    client: &Client,
    guest: &Guest,
    objects: usize,
    concurrency: usize,
) -> anyhow::Result<Scale> {
    let rss_idle_kib = proc_status_kib(daemon.pid().unwrap_or_default(), "VmRSS");
    let spec = vm_spec(guest, pb::Power::Stopped);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut client = client.clone();
        let next = next.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= objects {
                    return Ok::<_, anyhow::Error>(());
                }
                let name = format!("obj-{i:05}");
                client
                    .create(pb::CreateVmRequest {
                        vm: Some(new_vm(&name, spec.clone())),
                    })
                    .await
                    .with_context(|| format!("creating {name}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let create_elapsed = t0.elapsed();
    println!(
        "  created {objects} in {:.2} s: {:.0} creates/s",
        create_elapsed.as_secs_f64(),
        objects as f64 / create_elapsed.as_secs_f64()
    );

    // Let the controller record every VM as Stopped before listing, so that the lists
    // measure the API and not the API racing the controller's first pass.
    let mut settled = None;
    loop {
        let items = client
            .clone()
            .list(pb::ListVmsRequest::default())
            .await?
            .into_inner()
            .items;
        let stopped = items
            .iter()
            .filter(|vm| observed_phase(vm) == Some(pb::Phase::Stopped))
            .count();
        if stopped >= objects {
            settled = Some(t0.elapsed());
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            println!("  only {stopped} of {objects} reported Stopped after 300 s; listing anyway");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(s) = settled {
        println!(
            "  all {objects} reported Stopped {:.2} s after the first create",
            s.as_secs_f64()
        );
    }

    let mut lists = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let items = client
            .clone()
            .list(pb::ListVmsRequest::default())
            .await?
            .into_inner()
            .items;
        lists.push(t.elapsed());
        listed = items.len();
    }
    println!(
        "  list of {listed}: {}",
        lists.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );
    Ok(Scale {
        created: objects,
        create_elapsed,
        settled,
        listed,
        lists,
        rss_idle_kib,
        rss_kib: proc_status_kib(daemon.pid().unwrap_or_default(), "VmRSS"),
        hwm_kib: proc_status_kib(daemon.pid().unwrap_or_default(), "VmHWM"),
    })
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ------------------------------------------------------------------------------------------
// Summary

fn summary(life: &Lifecycle, scale: &Scale, objects: usize) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" }.to_string();
    let info = || "info".to_string();

    let raw = median(&life.raw_qmp);
    let c_create = median(&life.corral_create);
    let c_stop = median(&life.corral_stop);
    let diffs: Vec<f64> = life
        .corral_create
        .iter()
        .zip(&life.raw_qmp)
        .map(|(c, r)| (c.as_secs_f64() - r.as_secs_f64()) * 1e3)
        .collect();
    let overhead = median_f64(&diffs);
    let n = life.raw_qmp.len();
    let via = life.driver;
    rows.push([
        format!("(a) raw QEMU spawn -> QMP greeting, median of {n}"),
        ms(raw),
        "-".into(),
        info(),
    ]);
    rows.push([
        format!("(a) corral create --wait -> Running ({via}), median"),
        ms(c_create),
        "-".into(),
        info(),
    ]);
    rows.push([
        "(a) overhead, median of paired (corral - raw)".into(),
        format!("{overhead:.2} ms"),
        "<= 50 ms".into(),
        verdict(overhead <= 50.0),
    ]);
    rows.push([
        "(a) difference of the medians".into(),
        format!(
            "{:.2} ms",
            (c_create.as_secs_f64() - raw.as_secs_f64()) * 1e3
        ),
        "-".into(),
        info(),
    ]);
    match &life.libvirt {
        Some(lv) => {
            let (l_create, l_destroy) = (median(&lv.create), median(&lv.destroy));
            let (r_create, r_stop) = (ratio(c_create, l_create), ratio(c_stop, l_destroy));
            rows.push([
                "(b) libvirt virsh create -> running, median".into(),
                ms(l_create),
                "-".into(),
                info(),
            ]);
            rows.push([
                "(b) ratio create corral/libvirt".into(),
                format!("{r_create:.3}"),
                "<= 0.5".into(),
                verdict(r_create <= 0.5),
            ]);
            rows.push([
                "(b) libvirt virsh destroy, median".into(),
                ms(l_destroy),
                "-".into(),
                info(),
            ]);
            rows.push([
                format!("(b) corral stop --force --wait ({via}), median"),
                ms(c_stop),
                "-".into(),
                info(),
            ]);
            rows.push([
                "(b) ratio force-stop corral/libvirt".into(),
                format!("{r_stop:.3}"),
                "<= 0.2".into(),
                verdict(r_stop <= 0.2),
            ]);
        }
        None => {
            rows.push([
                format!("(b) corral stop --force --wait ({via}), median"),
                ms(c_stop),
                "-".into(),
                info(),
            ]);
            rows.push([
                "(b) libvirt".into(),
                "not measured".into(),
                "<= 0.5, <= 0.2".into(),
                "SKIP".into(),
            ]);
        }
    }
    let rate = scale.created as f64 / scale.create_elapsed.as_secs_f64();
    rows.push([
        format!("(c) creates/s, {objects} VMs power stopped"),
        format!("{rate:.0}/s"),
        ">= 2000/s".into(),
        verdict(rate >= 2000.0),
    ]);
    if let Some(s) = scale.settled {
        rows.push([
            "(c) all reported Stopped, from first create".into(),
            format!("{:.2} s", s.as_secs_f64()),
            "-".into(),
            info(),
        ]);
    }
    let list = median(&scale.lists);
    rows.push([
        format!("(c) list of all {}, median of 5", scale.listed),
        ms(list),
        "<= 100 ms".into(),
        verdict(list <= Duration::from_millis(100) && scale.listed == objects),
    ]);
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    rows.push([
        "(c) corrald RSS, idle before creating".into(),
        mib(scale.rss_idle_kib),
        "-".into(),
        info(),
    ]);
    rows.push([
        format!("(c) corrald RSS with {} VMs (peak)", scale.listed),
        format!("{} ({})", mib(scale.rss_kib), mib(scale.hwm_kib)),
        "-".into(),
        info(),
    ]);

    println!();
    println!("summary (load {})", loadavg());
    let header = ["figure", "value", "target", "result"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:<w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
}

fn median_f64(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    // Nearest rank, as `corral_bench::median`.
    s[s.len().div_ceil(2) - 1]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
