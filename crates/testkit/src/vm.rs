use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_contract::{Accel, Arch, Machine};
use corral_hypervisor::{BootSource, DiskConfig, DiskFormat, Hypervisor, VmConfig, VmInfo};
use corral_qemu::{QemuBackend, QemuBackendConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::task::AbortHandle;

use crate::{Error, GuestKit, Output};

/// The line the guest kit's init prints once it is up.
pub const BOOT_MARKER: &str = "CORRAL_BOOT_OK";
/// The prefix of the line the guest kit's init prints every second.
pub const HEARTBEAT: &str = "CORRAL_HEARTBEAT";

/// How long a TCG guest gets to boot on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Describes a test VM; [`TestVmBuilder::start`] boots it.
#[derive(Debug, Clone)]
pub struct TestVmBuilder {
    arch: Arch,
    machine: Option<Machine>,
    cpus: u32,
    memory_mib: u64,
    cmdline_extra: Vec<String>,
    root_disk: Option<DiskFormat>,
    firmware_boot: bool,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    start_paused: bool,
    introspection: bool,
}

impl TestVmBuilder {
    /// Machine type (default: the architecture's default).
    pub fn machine(mut self, machine: Machine) -> Self {
        self.machine = Some(machine);
        self
    }

    /// Number of vCPUs (default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Guest RAM in MiB (default 256).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Appends to the kernel command line.
    pub fn cmdline(mut self, extra: impl Into<String>) -> Self {
        self.cmdline_extra.push(extra.into());
        self
    }

    /// Boots with the root filesystem on a private copy of the kit's ext4 disk.
    pub fn root_disk(mut self, format: DiskFormat) -> Self {
        self.root_disk = Some(format);
        self
    }

    /// Boots through firmware from a private copy of the kit's bootable disk (x86_64).
    pub fn firmware_boot(mut self) -> Self {
        self.firmware_boot = true;
        self
    }

    /// Uses this kernel instead of the kit's.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Uses this initramfs instead of the kit's.
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Leaves the vCPUs paused after start.
    pub fn start_paused(mut self) -> Self {
        self.start_paused = true;
        self
    }

    /// Backs guest RAM with a shared file in /dev/shm.
    pub fn introspection(mut self) -> Self {
        self.introspection = true;
        self
    }

    /// The launch description this builder makes, with files placed in `dir`.
    pub fn config(&self, dir: &Path, uid: &str) -> Result<VmConfig, Error> {
        let kit = GuestKit::get(self.arch)?;
        let mut cmdline = format!("console={} quiet panic=-1", kit.console());
        let mut disks = Vec::new();
        if let Some(format) = self.root_disk {
            let source = match format {
                DiskFormat::Qcow2 => kit.rootfs_qcow2(),
                DiskFormat::Raw => kit.rootfs_raw(),
            };
            disks.push(private_copy(&source, dir)?.with_format(format));
            cmdline.push_str(" corral.root=/dev/vda");
        }
        if self.machine == Some(Machine::Microvm) {
            // microvm has no PIT or HPET to calibrate the TSC against; under TCG the kernel
            // then hangs in about a third of boots unless told the frequency.
            if let Some(khz) = host_tsc_khz() {
                cmdline.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        for extra in &self.cmdline_extra {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let boot = if self.firmware_boot {
            disks.insert(
                0,
                private_copy(&kit.boot_disk(), dir)?.with_format(DiskFormat::Qcow2),
            );
            BootSource::Firmware
        } else {
            BootSource::Kernel {
                kernel: self.kernel.clone().unwrap_or_else(|| kit.kernel()),
                initrd: Some(self.initrd.clone().unwrap_or_else(|| kit.initrd())),
                cmdline: Some(cmdline),
            }
        };
        Ok(VmConfig {
            uid: uid.to_owned(),
            name: format!("test-{}", &uid[..8]),
            arch: self.arch,
            machine: self.machine.unwrap_or(Machine::default_for(self.arch)),
            accel: Accel::Auto,
            cpus: self.cpus,
            memory_bytes: self.memory_mib << 20,
            boot,
            disks,
            memory_file: self
                .introspection
                .then(|| PathBuf::from(format!("/dev/shm/corral-{uid}"))),
            start_paused: self.start_paused,
            incoming: false,
            restore: Default::default(),
            nics: Vec::new(),
            files: Default::default(),
            shares: Vec::new(),
        })
    }

    /// Starts the VM through a fresh [`QemuBackend`] on a private run directory.
    pub async fn start(self) -> Result<TestVm, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix("corral-t")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating a run directory", e))?;
        let uid = uuid::Uuid::new_v4().to_string();
        let config = self.config(run_dir.path(), &uid)?;
        let backend = Arc::new(QemuBackend::new(QemuBackendConfig::new(run_dir.path()))?);
        let output = Arc::new(Output::default());
        let mut vm = TestVm {
            backend,
            config,
            info: None,
            output,
            pump: None,
            run_dir,
        };
        let info = vm.backend.start(&vm.config).await?;
        vm.info = Some(info);
        vm.attach_output()?;
        Ok(vm)
    }
}

trait WithFormat {
    fn with_format(self, format: DiskFormat) -> DiskConfig;
}

impl WithFormat for PathBuf {
    fn with_format(self, format: DiskFormat) -> DiskConfig {
        DiskConfig {
            path: self,
            format,
            readonly: false,
            serial: None,
        }
    }
}

/// The host CPU's clock in kHz, from /proc/cpuinfo.
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The virtual size of disk image `path`, from `qemu-img info`.
fn virtual_size(path: &Path) -> Result<u64, Error> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| Error::io("running qemu-img info", e))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::io(
            format!("reading qemu-img info of {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    info["virtual-size"].as_u64().ok_or_else(|| {
        Error::io(
            format!("qemu-img info of {}", path.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        )
    })
}

/// Makes an empty qcow2 image of `size` bytes at `path`.
fn empty_qcow2(path: &Path, size: u64) -> Result<(), Error> {
    let status = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string())
        .status()
        .map_err(|e| Error::io("running qemu-img create", e))?;
    if !status.success() {
        return Err(Error::io(
            format!("creating {}", path.display()),
            std::io::Error::other(format!("qemu-img create: {status}")),
        ));
    }
    Ok(())
}

fn private_copy(source: &Path, dir: &Path) -> Result<PathBuf, Error> {
    let name = source.file_name().unwrap_or_default();
    let target = dir.join(name);
    std::fs::copy(source, &target)
        .map_err(|e| Error::io(format!("copying {}", source.display()), e))?;
    Ok(target)
}

/// A guest-kit VM under test. Dropping it kills QEMU and removes every file it had.
#[derive(Debug)]
pub struct TestVm {
    backend: Arc<QemuBackend>,
    config: VmConfig,
    info: Option<VmInfo>,
    output: Arc<Output>,
    pump: Option<AbortHandle>,
    // Last, so it is removed after QEMU is killed.
    run_dir: TempDir,
}

impl TestVm {
    /// A second QEMU for this VM, on a fresh backend and run directory (another host, as far
    /// as the backend can tell), waiting to receive it by live migration.
    pub async fn start_incoming(&self) -> Result<TestVm, Error> {
        self.start_incoming_with(false).await
    }

    /// Like [`TestVm::start_incoming`], on empty qcow2 disks of the same virtual sizes made
    /// in the new run directory (another host's disks, for the source to mirror into).
    pub async fn start_incoming_on_empty_disks(&self) -> Result<TestVm, Error> {
        self.start_incoming_with(true).await
    }

    async fn start_incoming_with(&self, empty_disks: bool) -> Result<TestVm, Error> {
        let run_dir = tempfile::Builder::new()
            .prefix("corral-t")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io("creating a run directory", e))?;
        let mut config = VmConfig {
            incoming: true,
            ..self.config.clone()
        };
        if empty_disks {
            for (i, disk) in config.disks.iter_mut().enumerate() {
                let path = run_dir.path().join(format!("disk{i}.qcow2"));
                empty_qcow2(&path, virtual_size(&disk.path)?)?;
                disk.path = path;
                disk.format = DiskFormat::Qcow2;
            }
        }
        let backend = Arc::new(QemuBackend::new(QemuBackendConfig::new(run_dir.path()))?);
        let mut vm = TestVm {
            backend,
            config,
            info: None,
            output: Arc::new(Output::default()),
            pump: None,
            run_dir,
        };
        let info = vm.backend.start(&vm.config).await?;
        vm.info = Some(info);
        vm.attach_output()?;
        Ok(vm)
    }

    /// A builder for a VM of `arch` booting the guest kit.
    pub fn builder(arch: Arch) -> TestVmBuilder {
        TestVmBuilder {
            arch,
            machine: None,
            cpus: 1,
            memory_mib: 256,
            cmdline_extra: Vec::new(),
            root_disk: None,
            firmware_boot: false,
            kernel: None,
            initrd: None,
            start_paused: false,
            introspection: false,
        }
    }

    fn attach_output(&mut self) -> Result<(), Error> {
        let console = self.backend.console(&self.config.uid)?;
        let (scrollback, mut rx) = console.subscribe();
        let output = self.output.clone();
        output.push(&scrollback);
        let pump = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(bytes) => output.push(&bytes),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        self.pump = Some(pump.abort_handle());
        Ok(())
    }

    /// The backend that runs the VM.
    pub fn backend(&self) -> &QemuBackend {
        &self.backend
    }

    /// The VM's uid.
    pub fn uid(&self) -> &str {
        &self.config.uid
    }

    /// The launch description.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// What the backend reported at start (or adoption).
    pub fn info(&self) -> &VmInfo {
        self.info
            .as_ref()
            .expect("a TestVm always has info once started")
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.info().pid
    }

    /// The private run directory.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// Everything the guest printed.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Waits for the guest kit's boot marker and returns its line.
    pub async fn wait_for_boot(&self) -> Result<String, Error> {
        self.output
            .wait_for_line_since(0, BOOT_MARKER, BOOT_TIMEOUT)
            .await
    }

    /// Waits for a console line containing `needle`, anywhere in the output.
    pub async fn wait_for_line(&self, needle: &str) -> Result<String, Error> {
        self.output
            .wait_for_line_since(0, needle, LINE_TIMEOUT)
            .await
    }

    /// Waits for a console line containing `needle` printed after `mark`.
    pub async fn wait_for_line_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        self.output.wait_for_line_since(mark, needle, timeout).await
    }

    /// The highest heartbeat number printed so far.
    pub fn last_heartbeat(&self) -> Option<u64> {
        self.output
            .lines_since(0)
            .iter()
            .filter_map(|l| {
                l.split_once(HEARTBEAT)
                    .and_then(|(_, n)| n.trim().parse().ok())
            })
            .max()
    }

    /// Types a line on the guest's console.
    pub async fn send_line(&self, line: &str) -> Result<(), Error> {
        let console = self.backend.console(&self.config.uid)?;
        console.write(format!("{line}\n").as_bytes()).await?;
        Ok(())
    }

    /// Lets go of the VM as a dying daemon would (its monitor and console connections close),
    /// then takes it over from a fresh backend on the same run directory.
    pub async fn readopt(&mut self) -> Result<VmInfo, Error> {
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
        let fresh = Arc::new(QemuBackend::new(QemuBackendConfig::new(
            self.run_dir.path(),
        ))?);
        // Dropping the old backend closes its sockets; QEMU accepts one monitor client at a time.
        self.backend = fresh;
        tokio::task::yield_now().await;
        let info = self.backend.adopt(&self.config.uid).await?;
        self.info = Some(info.clone());
        self.attach_output()?;
        Ok(info)
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
        if let Some(info) = &self.info {
            if corral_qemu::is_alive(info.pid) {
                if let Ok(raw) = i32::try_from(info.pid) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
        }
        if let Some(path) = &self.config.memory_file {
            let _ = std::fs::remove_file(path);
        }
    }
}
