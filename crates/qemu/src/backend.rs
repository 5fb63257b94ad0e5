//! [`QemuBackend`]: the [`Hypervisor`] that runs each VM as a `qemu-system-*` process.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_contract::{Accel, Arch};
use corral_hypervisor::{
    Console, DiskExport, DiskMirror, DiskMirrorInfo, Error, Exit, FileOwner, GuestRamMap,
    Hypervisor, MigrationInfo, MigrationLimits, MigrationSetup, SnapshotOp, StopMode, VmConfig,
    VmEvent, VmInfo, VmState,
};
use corral_qmp::{Qmp, RunState};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::sync::{OnceCell, broadcast};

use crate::accel::{self, HostCaps};
use crate::cmdline::QemuCommand;
use crate::emulator::Emulator;
use crate::files;
use crate::layout::{VmPaths, check_uid};
use crate::process;
use crate::serial::{self, BoundedLog};
use crate::vm::{VmRuntime, Watch};

/// How a [`QemuBackend`] is set up.
#[derive(Debug, Clone)]
pub struct QemuBackendConfig {
    /// Holds `vms/<uid>/` with each VM's sockets, pid file and logs. Keep it short: unix socket
    /// paths must fit in 107 bytes.
    pub run_dir: PathBuf,
    /// Where to find `qemu-system-*`; `$PATH` when `None`.
    pub emulator_dir: Option<PathBuf>,
    /// Size at which the serial log rotates (at most twice this is kept).
    pub serial_log_limit: u64,
    /// Console output kept in memory for late subscribers.
    pub scrollback: usize,
    /// How long QEMU gets to bring its monitor up.
    pub start_timeout: Duration,
    /// The unprivileged user QEMU runs as, when it is not the backend's own (corrald as root
    /// runs QEMU as `corral-qemu`). `None`: QEMU runs as the backend's user.
    pub run_as: Option<FileOwner>,
}

impl QemuBackendConfig {
    /// Defaults for a run directory.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        QemuBackendConfig {
            run_dir: run_dir.into(),
            emulator_dir: None,
            serial_log_limit: 1 << 20,
            scrollback: 256 << 10,
            start_timeout: Duration::from_secs(30),
            run_as: None,
        }
    }
}

/// What is written beside a running VM, so that a later backend instance can check that the
/// process it finds is the one that was started.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LaunchRecord {
    argv: Vec<String>,
    accel: Accel,
    emulator_version: String,
    pub(crate) config: VmConfig,
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<VmRuntime>>>>;

/// Runs VMs as QEMU processes. Processes outlive the backend; a new backend on the same run
/// directory takes them over with [`Hypervisor::adopt`].
#[derive(Debug)]
pub struct QemuBackend {
    config: QemuBackendConfig,
    host: HostCaps,
    run_as: Option<process::RunAs>,
    emulators: [OnceCell<Emulator>; 2],
    // One async lock per uid: operations on one VM are serialised, different VMs run freely.
    slots: Mutex<HashMap<String, Slot>>,
    events: broadcast::Sender<VmEvent>,
}

impl QemuBackend {
    /// A backend on `config.run_dir`, created (mode 0700) when missing. With
    /// [`QemuBackendConfig::run_as`], the run directory and its `vms/` become 0710 with that
    /// user's group: QEMU passes through to its own pid file, and lists and writes nothing.
    pub fn new(config: QemuBackendConfig) -> Result<Self, Error> {
        let vms = config.run_dir.join("vms");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .map_err(|e| Error::io(format!("creating run directory {}", vms.display()), e))?;
        if config.run_as.is_some() {
            files::share_search(&config.run_dir, config.run_as)?;
        }
        files::share_search(&vms, config.run_as)?;
        let run_as = config
            .run_as
            .map(process::RunAs::lookup)
            .transpose()
            .map_err(|e| Error::io("looking up the groups of QEMU's user", e))?;
        Ok(QemuBackend {
            config,
            run_as,
            host: HostCaps::probe(),
            emulators: Default::default(),
            slots: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
        })
    }

    /// The runtime files of VM `uid`.
    pub fn paths(&self, uid: &str) -> VmPaths {
        VmPaths::new(&self.config.run_dir, uid)
    }

    /// The host capabilities accelerator choice is made from.
    pub fn host(&self) -> &HostCaps {
        &self.host
    }

    /// The emulator for `arch`, probed on first use.
    pub async fn emulator(&self, arch: Arch) -> Result<&Emulator, Error> {
        let cell = &self.emulators[match arch {
            Arch::X86_64 => 0,
            Arch::Aarch64 => 1,
        }];
        cell.get_or_try_init(|| Emulator::probe(arch, self.config.emulator_dir.as_deref()))
            .await
    }

    /// The accelerator and exact command line `start` would use, without starting anything.
    pub async fn command_line(&self, config: &VmConfig) -> Result<(Accel, QemuCommand), Error> {
        check_uid(&config.uid)?;
        let paths = self.paths(&config.uid);
        paths.check_socket_lengths()?;
        let emulator = self.emulator(config.arch).await?;
        let accel = accel::resolve(config.accel, config.arch, &self.host)?;
        Ok((
            accel,
            crate::launch::command_line(config, accel, emulator, &paths)?,
        ))
    }

    /// The monitor of running VM `uid`, shared with the backend (QEMU accepts one QMP client
    /// per socket). For queries such as guest memory discovery; to stop the guest for a
    /// moment, use [`QemuBackend::while_paused`], which keeps the controller from resuming it
    /// midway.
    pub async fn qmp(&self, uid: &str) -> Result<Qmp, Error> {
        Ok(self.live_runtime(uid, "use the monitor").await?.qmp.clone())
    }

    /// Runs `f` with VM `uid`'s vCPUs stopped (QMP `stop`, `f`, `cont`) and returns its result
    /// with how long the guest was paused. Every other operation on the VM — a controller's
    /// state query or resume included — waits until the guest runs again, so nothing resumes
    /// it while `f` runs. A guest that was already paused stays paused.
    pub async fn while_paused<T>(
        &self,
        uid: &str,
        f: impl FnOnce() -> T,
    ) -> Result<(T, Duration), Error> {
        let (guard, rt) = self.hold_live(uid, "pause for a snapshot").await?;
        let status = rt
            .qmp
            .query_status()
            .await
            .map_err(|e| monitor_error(uid, e))?;
        let start = Instant::now();
        if status.running {
            rt.qmp.stop().await.map_err(|e| monitor_error(uid, e))?;
        }
        // The copy runs here, on this thread, while the guest waits: handing it elsewhere
        // would only lengthen the pause.
        let value = tokio::task::block_in_place(f);
        if status.running {
            rt.qmp.cont().await.map_err(|e| monitor_error(uid, e))?;
        }
        let paused = start.elapsed();
        drop(guard);
        Ok((value, paused))
    }

    /// Locks VM `uid`'s slot, so that every other operation on it waits until the guard is
    /// dropped, and returns it with the runtime; a VM whose QEMU has ended is refused for `op`.
    async fn hold_live(
        &self,
        uid: &str,
        op: &'static str,
    ) -> Result<
        (
            tokio::sync::OwnedMutexGuard<Option<Arc<VmRuntime>>>,
            Arc<VmRuntime>,
        ),
        Error,
    > {
        let guard = self.slot(uid).lock_owned().await;
        let rt = guard
            .clone()
            .ok_or_else(|| Error::NotFound(uid.to_owned()))?;
        if let Some(exit) = rt.exited() {
            return Err(Error::InvalidState {
                uid: uid.to_owned(),
                op,
                state: format!("stopped ({exit})"),
            });
        }
        Ok((guard, rt))
    }

    fn slot(&self, uid: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(uid.to_owned()).or_default().clone()
    }

    async fn runtime(&self, uid: &str) -> Result<Arc<VmRuntime>, Error> {
        self.slot(uid)
            .lock()
            .await
            .clone()
            .ok_or_else(|| Error::NotFound(uid.to_owned()))
    }

    pub(crate) async fn live_runtime(
        &self,
        uid: &str,
        op: &'static str,
    ) -> Result<Arc<VmRuntime>, Error> {
        let rt = self.runtime(uid).await?;
        match rt.exited() {
            Some(exit) => Err(Error::InvalidState {
                uid: uid.to_owned(),
                op,
                state: format!("stopped ({exit})"),
            }),
            None => Ok(rt),
        }
    }

    /// Refuses to touch a directory whose process still runs: the recorded one, or any live
    /// process at the recorded pid that names the directory (a launch record that no longer
    /// matches proves nothing dead, so its sockets and files stay).
    fn check_not_running(&self, paths: &VmPaths, uid: &str) -> Result<(), Error> {
        if let Ok(pid) = process::read_pid_file(&paths.pid) {
            if process::is_alive(pid)
                && (recorded_argv(paths).is_some_and(|argv| argv_matches(pid, &argv))
                    || process::mentions(pid, &paths.dir))
            {
                return Err(Error::AlreadyRunning {
                    uid: uid.to_owned(),
                    pid,
                });
            }
        }
        Ok(())
    }

    async fn launch(&self, config: &VmConfig, paths: &VmPaths) -> Result<VmRuntime, Error> {
        let (accel, cmd) = self.command_line(config).await?;
        let emulator = self.emulator(config.arch).await?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.dir)
            .map_err(|e| Error::io(format!("creating {}", paths.dir.display()), e))?;
        // Private while its files are made (a directory left by an earlier run is 0710).
        files::make_private(&paths.dir)?;
        paths.remove_runtime_files();
        let record = LaunchRecord {
            argv: cmd
                .argv()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            accel,
            emulator_version: emulator.version.clone(),
            config: config.clone(),
        };
        write_atomically(
            &paths.launch,
            &serde_json::to_vec_pretty(&record).unwrap_or_default(),
        )?;
        let log = BoundedLog::open(paths.serial_log.clone(), self.config.serial_log_limit)
            .map_err(|e| Error::io(format!("opening {}", paths.serial_log.display()), e))?;
        tracing::debug!(uid = %config.uid, cmdline = %cmd.display(), "starting QEMU");

        let spawned = self.prepare_and_spawn(config, paths, &cmd);
        let mut child = spawned.inspect_err(|_| {
            paths.remove_runtime_files();
            remove_memory_file(config.memory_file.as_deref());
        })?;
        let pid = child.id().unwrap_or_default();
        let started = async {
            let qmp = self.connect_monitor(&mut child, paths).await?;
            let console = UnixStream::connect(&paths.console).await.map_err(|e| {
                Error::io(
                    format!("connecting to console {}", paths.console.display()),
                    e,
                )
            })?;
            Ok::<_, Error>((qmp, console))
        }
        .await;
        let (qmp, console_stream) = match started {
            Ok(parts) => parts,
            Err(e) => {
                let _ = process::signal(pid, Signal::SIGKILL);
                let _ = child.wait().await;
                paths.remove_runtime_files();
                remove_memory_file(config.memory_file.as_deref());
                return Err(e);
            }
        };
        let info = VmInfo {
            uid: config.uid.clone(),
            pid,
            accel,
            emulator_version: emulator.version.clone(),
            adopted: false,
        };
        let runtime = self.assemble(
            info,
            paths,
            config.memory_file.clone(),
            (qmp, console_stream, log),
            Watch::Child(child),
        );
        if !config.start_paused && !config.incoming {
            if let Err(e) = runtime.qmp.cont().await {
                let _ = process::signal(pid, Signal::SIGKILL);
                runtime.wait_exit(Duration::from_secs(5)).await;
                return Err(monitor_error(&config.uid, e));
            }
        }
        if config.restore.first().is_some() {
            if let Err(e) = self.restored(&runtime, &config.uid, paths).await {
                let _ = process::signal(pid, Signal::SIGKILL);
                runtime.wait_exit(Duration::from_secs(5)).await;
                paths.remove_runtime_files();
                remove_memory_file(config.memory_file.as_deref());
                return Err(e);
            }
        }
        Ok(runtime)
    }

    /// Waits until a VM started from saved state has read all of it. A `cont` sent before
    /// (QEMU keeps it for the end of the load) has it run at once; a state that does not fit
    /// the devices ends QEMU, reported with what it printed.
    async fn restored(&self, rt: &VmRuntime, uid: &str, paths: &VmPaths) -> Result<(), Error> {
        let limit = self.config.start_timeout.max(RESTORE_TIMEOUT);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(exit) = rt.exited() {
                return Err(Error::StartFailed {
                    exit: exit.to_string(),
                    stderr: log_tail(&paths.qemu_log),
                });
            }
            match rt.qmp.query_status().await {
                Ok(status) if status.status != RunState::InMigrate => return Ok(()),
                Ok(_) => {}
                // The monitor closes as QEMU exits on a state it cannot load.
                Err(_) if rt.wait_exit(Duration::from_secs(2)).await.is_some() => continue,
                Err(e) => return Err(monitor_error(uid, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("loading VM {uid}'s saved state"),
                    secs: limit.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Streams a stopped VM's state to `into` through QEMU's migration: QEMU connects to a
    /// socket only its user can reach, and only a connection from this VM's own QEMU process
    /// is read.
    async fn save_to(&self, rt: &VmRuntime, uid: &str, into: std::fs::File) -> Result<(), Error> {
        let socket = self.paths(uid).dir.join("save.sock");
        let listener = files::bind_socket(&socket)?;
        let saved = self.stream_state(rt, uid, &socket, listener, into).await;
        let _ = std::fs::remove_file(&socket);
        saved
    }

    async fn stream_state(
        &self,
        rt: &VmRuntime,
        uid: &str,
        socket: &Path,
        listener: std::os::unix::net::UnixListener,
        into: std::fs::File,
    ) -> Result<(), Error> {
        if let Some(owner) = self.config.run_as {
            nix::unistd::chown(
                socket,
                Some(nix::unistd::Uid::from_raw(owner.uid)),
                Some(nix::unistd::Gid::from_raw(owner.gid)),
            )
            .map_err(|e| Error::io(format!("giving {} to QEMU", socket.display()), e.into()))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("save socket", e))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io("save socket", e))?;
        let monitor = |e| monitor_error(uid, e);
        // The guest is stopped: nothing to converge, so no reason to throttle the copy. A live
        // migration's settings stay in QEMU after it: this stream is plain and precopy.
        rt.qmp
            .execute(
                "migrate-set-parameters",
                Some(serde_json::json!({
                    "max-bandwidth": UNTHROTTLED, "tls-creds": "", "tls-hostname": "",
                })),
            )
            .await
            .map_err(monitor)?;
        let off =
            |capability: &str| serde_json::json!({ "capability": capability, "state": false });
        rt.qmp
            .execute(
                "migrate-set-capabilities",
                Some(serde_json::json!({
                    "capabilities": [off("postcopy-ram"), off("auto-converge")],
                })),
            )
            .await
            .map_err(monitor)?;
        rt.qmp
            .execute(
                "migrate",
                Some(serde_json::json!({ "uri": format!("unix:{}", socket.display()) })),
            )
            .await
            .map_err(monitor)?;
        let copied = async {
            let (mut stream, _) = tokio::time::timeout(SAVE_CONNECT_TIMEOUT, listener.accept())
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("VM {uid}'s QEMU connecting to save its state"),
                    secs: SAVE_CONNECT_TIMEOUT.as_secs_f64(),
                })?
                .map_err(|e| Error::io("accepting QEMU's state stream", e))?;
            let peer = stream
                .peer_cred()
                .map_err(|e| Error::io("reading the state stream's sender", e))?;
            if peer.pid() != Some(rt.info.pid as i32) {
                return Err(Error::InvalidState {
                    uid: uid.to_owned(),
                    op: "save its state",
                    state: format!(
                        "the state stream came from pid {:?}, not its QEMU {}",
                        peer.pid(),
                        rt.info.pid
                    ),
                });
            }
            let mut file = tokio::fs::File::from_std(into);
            tokio::io::copy(&mut stream, &mut file)
                .await
                .map_err(|e| Error::io("writing the saved state", e))?;
            file.sync_all()
                .await
                .map_err(|e| Error::io("writing the saved state", e))
        }
        .await;
        let outcome = loop {
            let info = migration_info(&rt.qmp.query_migrate().await.map_err(monitor)?);
            match info.status.as_str() {
                "completed" => break Ok(()),
                "failed" | "cancelled" | "none" => {
                    break Err(Error::InvalidState {
                        uid: uid.to_owned(),
                        op: "save its state",
                        state: info
                            .error
                            .unwrap_or_else(|| format!("migration {}", info.status)),
                    });
                }
                _ if copied.is_err() => {
                    let _ = rt.qmp.migrate_cancel().await;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let _ = rt
            .qmp
            .execute(
                "migrate-set-parameters",
                Some(serde_json::json!({ "max-bandwidth": QEMU_DEFAULT_BANDWIDTH })),
            )
            .await;
        copied.and(outcome)
    }

    /// Makes the files QEMU opens itself (pid file, guest RAM file: 0600, its own), its
    /// sockets (0600, corrald's) and TAP attachments (both inherited), opens the VM directory
    /// to its group, and starts it. Our copies of the descriptors close once QEMU holds them.
    fn prepare_and_spawn(
        &self,
        config: &VmConfig,
        paths: &VmPaths,
        cmd: &QemuCommand,
    ) -> Result<tokio::process::Child, Error> {
        let owner = self.config.run_as;
        let qmp = files::bind_socket(&paths.qmp)?;
        let console = files::bind_socket(&paths.console)?;
        let agent = files::bind_socket(&paths.agent)?;
        files::create_private(&paths.pid, owner, "pid file")?;
        if let Some(path) = &config.memory_file {
            files::create_private(path, owner, "guest RAM file")?;
        }
        let taps = crate::net::taps(config)
            .map(files::open_tap)
            .collect::<Result<Vec<_>, _>>()?;
        let shares = config
            .shares
            .iter()
            .enumerate()
            .map(|(i, share)| {
                let socket = paths.dir.join(format!("fs{i}.sock"));
                crate::virtiofs::serve(share, &socket, &paths.dir.join(format!("virtiofsd{i}.log")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if owner.is_some() {
            files::share_search(&paths.dir, owner)?;
        }
        // In the order the command line names them: fd 3, 4, the TAPs from 5, the shares'
        // sockets, then the guest agent's.
        let inherit: Vec<_> = [qmp.as_fd(), console.as_fd()]
            .into_iter()
            .chain(taps.iter().map(AsFd::as_fd))
            .chain(shares.iter().map(AsFd::as_fd))
            .chain(std::iter::once(agent.as_fd()))
            .collect();
        process::spawn(cmd, &paths.qemu_log, self.run_as.as_ref(), &inherit)
            .map_err(|e| Error::io(format!("starting {}", cmd.binary().display()), e))
    }

    /// Polls for the QMP socket while watching the child: a QEMU that dies during start-up is
    /// reported with what it printed.
    async fn connect_monitor(
        &self,
        child: &mut tokio::process::Child,
        paths: &VmPaths,
    ) -> Result<Qmp, Error> {
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| Error::io("waiting for QEMU", e))?
            {
                return Err(Error::StartFailed {
                    exit: crate::vm::describe_exit(Some(status), None).to_string(),
                    stderr: log_tail(&paths.qemu_log),
                });
            }
            if paths.qmp.exists() {
                match Qmp::connect(&paths.qmp).await {
                    Ok(qmp) => return Ok(qmp),
                    Err(e) if Instant::now() >= deadline => {
                        return Err(monitor_error("starting VM", e));
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "QEMU's monitor socket".into(),
                    secs: self.config.start_timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn assemble(
        &self,
        info: VmInfo,
        paths: &VmPaths,
        memory_file: Option<PathBuf>,
        (qmp, console_stream, log): (Qmp, UnixStream, BoundedLog),
        watch: Watch,
    ) -> VmRuntime {
        let (console, input) = Console::new(self.config.scrollback);
        let pump = tokio::spawn(serial::pump(console_stream, console.clone(), input, log));
        VmRuntime::new(
            info,
            (paths.clone(), memory_file),
            qmp,
            console,
            pump.abort_handle(),
            watch,
            self.events.clone(),
        )
    }

    async fn adopt_locked(&self, uid: &str, paths: &VmPaths) -> Result<VmRuntime, Error> {
        let reject = |reason: String| Error::AdoptRejected {
            uid: uid.to_owned(),
            reason,
        };
        let record: LaunchRecord = std::fs::read(&paths.launch)
            .map_err(|e| {
                reject(format!(
                    "no launch record at {}: {e}",
                    paths.launch.display()
                ))
            })
            .and_then(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| reject(format!("launch record is unreadable: {e}")))
            })?;
        let pid = process::read_pid_file(&paths.pid).map_err(|e| reject(format!("no pid: {e}")))?;
        if !process::is_alive(pid) {
            return Err(reject(format!(
                "its QEMU process (pid {pid}) is no longer running"
            )));
        }
        if !argv_matches(pid, &record.argv) {
            return Err(reject(format!(
                "pid {pid} runs a different command line (pid reused?)"
            )));
        }
        let qmp = Qmp::connect(&paths.qmp)
            .await
            .map_err(|e| reject(format!("QMP: {e}")))?;
        qmp.query_status()
            .await
            .map_err(|e| reject(format!("QMP query-status: {e}")))?;
        let console = UnixStream::connect(&paths.console)
            .await
            .map_err(|e| reject(format!("console {}: {e}", paths.console.display())))?;
        let log = BoundedLog::open(paths.serial_log.clone(), self.config.serial_log_limit)
            .map_err(|e| Error::io(format!("opening {}", paths.serial_log.display()), e))?;
        let info = VmInfo {
            uid: uid.to_owned(),
            pid,
            accel: record.accel,
            emulator_version: record.emulator_version,
            adopted: true,
        };
        Ok(self.assemble(
            info,
            paths,
            record.config.memory_file,
            (qmp, console, log),
            Watch::Adopted,
        ))
    }
}

#[async_trait]
impl Hypervisor for QemuBackend {
    async fn start(&self, config: &VmConfig) -> Result<VmInfo, Error> {
        check_uid(&config.uid)?;
        let slot = self.slot(&config.uid);
        let mut guard = slot.lock().await;
        if let Some(rt) = guard.as_ref() {
            if rt.exited().is_none() {
                return Err(Error::AlreadyRunning {
                    uid: config.uid.clone(),
                    pid: rt.info.pid,
                });
            }
        }
        let paths = self.paths(&config.uid);
        self.check_not_running(&paths, &config.uid)?;
        let runtime = self.launch(config, &paths).await?;
        let info = runtime.info.clone();
        *guard = Some(Arc::new(runtime));
        Ok(info)
    }

    async fn adopt(&self, uid: &str) -> Result<VmInfo, Error> {
        check_uid(uid)?;
        let slot = self.slot(uid);
        let mut guard = slot.lock().await;
        if let Some(rt) = guard.as_ref().filter(|rt| rt.exited().is_none()) {
            return Ok(rt.info.clone());
        }
        let runtime = self.adopt_locked(uid, &self.paths(uid)).await?;
        let info = runtime.info.clone();
        *guard = Some(Arc::new(runtime));
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<String>, Error> {
        let dir = self.config.run_dir.join("vms");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let mut uids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| check_uid(name).is_ok())
            // Only VMs that were launched and not cleaned up since; a directory holding just
            // the logs of a VM that stopped or failed to start has nothing to adopt.
            .filter(|name| self.paths(name).launch.exists())
            .collect();
        uids.sort();
        Ok(uids)
    }

    async fn state(&self, uid: &str) -> Result<VmState, Error> {
        let rt = self.runtime(uid).await?;
        if let Some(exit) = rt.exited() {
            return Ok(VmState::Exited(exit));
        }
        match rt.qmp.query_status().await {
            Ok(status) => Ok(match status.status {
                RunState::Running => VmState::Running,
                RunState::Shutdown => VmState::ShuttingDown,
                other => VmState::Paused {
                    reason: other.as_str().to_owned(),
                },
            }),
            // The monitor went away: the process is ending, or has.
            Err(e) => match rt.wait_exit(Duration::from_secs(2)).await {
                Some(exit) => Ok(VmState::Exited(exit)),
                None => Err(monitor_error(uid, e)),
            },
        }
    }

    async fn prepare_migration(&self, uid: &str, setup: &MigrationSetup) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "set up a live migration").await?;
        let paths = VmPaths::new(&self.config.run_dir, uid);
        crate::migrate_setup::prepare(&rt.qmp, &paths.dir, self.config.run_as, setup)
            .await
            .map_err(|message| Error::Monitor {
                uid: uid.to_owned(),
                message,
            })
    }

    async fn migrate_incoming(&self, uid: &str, uri: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "receive a live migration").await?;
        rt.qmp
            .migrate_incoming(uri)
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn migrate(&self, uid: &str, uri: &str, limits: MigrationLimits) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "live-migrate").await?;
        rt.qmp
            .migrate(uri, limits.downtime_ms, limits.bandwidth)
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn migrate_start_postcopy(&self, uid: &str) -> Result<(), Error> {
        let rt = self
            .live_runtime(uid, "switch a live migration to post-copy")
            .await?;
        rt.qmp
            .migrate_start_postcopy()
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn migration(&self, uid: &str) -> Result<MigrationInfo, Error> {
        let rt = self.live_runtime(uid, "report a live migration").await?;
        let info = rt
            .qmp
            .query_migrate()
            .await
            .map_err(|e| monitor_error(uid, e))?;
        Ok(migration_info(&info))
    }

    async fn migrate_cancel(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "cancel a live migration").await?;
        rt.qmp
            .migrate_cancel()
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn export_disks(&self, uid: &str, export: &DiskExport) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "export its disks").await?;
        crate::disk_mirror::export(&rt.qmp, export)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn stop_disk_export(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "stop exporting its disks").await?;
        crate::disk_mirror::unexport(&rt.qmp)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn mirror_disks(&self, uid: &str, mirror: &DiskMirror) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "mirror its disks").await?;
        crate::disk_mirror::start(&rt.qmp, mirror)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn disk_mirrors(&self, uid: &str) -> Result<Vec<DiskMirrorInfo>, Error> {
        let rt = self.live_runtime(uid, "report its disk mirrors").await?;
        crate::disk_mirror::status(&rt.qmp)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn complete_disk_mirrors(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "complete its disk mirrors").await?;
        crate::disk_mirror::complete(&rt.qmp)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn abort_disk_mirrors(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "abort its disk mirrors").await?;
        crate::disk_mirror::abort(&rt.qmp)
            .await
            .map_err(|message| monitor_message(uid, message))
    }

    async fn pause(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "pause").await?;
        rt.qmp.stop().await.map_err(|e| monitor_error(uid, e))
    }

    async fn resume(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "resume").await?;
        rt.qmp.cont().await.map_err(|e| monitor_error(uid, e))
    }

    async fn reset(&self, uid: &str) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "reset").await?;
        rt.qmp
            .system_reset()
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn stop(&self, uid: &str, mode: StopMode) -> Result<Exit, Error> {
        let slot = self.slot(uid);
        let guard = slot.lock().await;
        let rt = guard
            .clone()
            .ok_or_else(|| Error::NotFound(uid.to_owned()))?;
        if let Some(exit) = rt.exited() {
            return Ok(exit);
        }
        if let StopMode::Graceful { timeout } = mode {
            // A paused guest cannot see the power button.
            if let Ok(status) = rt.qmp.query_status().await {
                if !status.running && status.status != RunState::Shutdown {
                    let _ = rt.qmp.cont().await;
                }
            }
            match rt.qmp.system_powerdown().await {
                Ok(()) => {
                    if let Some(exit) = rt.wait_exit(timeout).await {
                        return Ok(exit);
                    }
                    tracing::info!(%uid, "guest ignored the power button; quitting QEMU");
                }
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "system_powerdown failed; quitting QEMU")
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), rt.qmp.quit()).await;
        if let Some(exit) = rt.wait_exit(Duration::from_secs(5)).await {
            return Ok(exit);
        }
        tracing::warn!(%uid, pid = rt.info.pid, "QEMU did not quit; killing it");
        process::signal(rt.info.pid, Signal::SIGKILL)
            .map_err(|e| Error::io(format!("killing pid {}", rt.info.pid), e))?;
        rt.wait_exit(Duration::from_secs(10))
            .await
            .ok_or_else(|| Error::Timeout {
                what: format!("pid {} to exit after SIGKILL", rt.info.pid),
                secs: 10.0,
            })
    }

    async fn cleanup(&self, uid: &str) -> Result<(), Error> {
        check_uid(uid)?;
        let slot = self.slot(uid);
        let mut guard = slot.lock().await;
        if let Some(rt) = guard.as_ref() {
            if rt.exited().is_none() {
                return Err(Error::AlreadyRunning {
                    uid: uid.to_owned(),
                    pid: rt.info.pid,
                });
            }
        }
        let paths = self.paths(uid);
        self.check_not_running(&paths, uid)?;
        *guard = None;
        match std::fs::remove_dir_all(&paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("removing {}", paths.dir.display()), e)),
        }
        drop(guard);
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        Ok(())
    }

    fn console(&self, uid: &str) -> Result<Console, Error> {
        let slot = self.slot(uid);
        let guard = slot.try_lock().map_err(|_| Error::InvalidState {
            uid: uid.to_owned(),
            op: "attach a console",
            state: "busy starting or stopping".into(),
        })?;
        guard
            .as_ref()
            .map(|rt| rt.console.clone())
            .ok_or_else(|| Error::NotFound(uid.to_owned()))
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }

    fn file_owner(&self) -> Option<FileOwner> {
        self.config.run_as
    }

    async fn guest_ram(&self, uid: &str) -> Result<GuestRamMap, Error> {
        self.shared_ram(uid).await
    }

    async fn run_paused<'a>(
        &'a self,
        uid: &'a str,
        work: Box<dyn FnOnce() + Send + 'a>,
    ) -> Result<Duration, Error> {
        let ((), paused) = self.while_paused(uid, work).await?;
        Ok(paused)
    }

    async fn console_log(&self, uid: &str, max: u64) -> Result<Vec<u8>, Error> {
        self.serial_tail(uid, max).await
    }

    async fn set_guest_identity(
        &self,
        uid: &str,
        hostname: &str,
        within: Duration,
    ) -> Result<String, Error> {
        let rt = self.live_runtime(uid, "reach its guest agent").await?;
        let paths = self.paths(uid);
        let record: LaunchRecord = std::fs::read(&paths.launch)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| Error::InvalidState {
                uid: uid.to_owned(),
                op: "reach its guest agent",
                state: "no readable launch record".into(),
            })?;
        // What each NIC's device holds now (the saved MAC after a restore), in NIC order.
        let filters = rt
            .qmp
            .execute("query-rx-filter", None)
            .await
            .map_err(|e| monitor_error(uid, e))?;
        let current: Vec<String> = filters
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| Some(f["main-mac"].as_str()?.to_ascii_lowercase()))
            .collect();
        let mut agent = crate::guest_agent::Agent::connect(&paths.agent, within).await?;
        let interfaces = agent.interfaces().await?;
        let mut done = Vec::new();
        for (nic, old) in record.config.nics.iter().zip(&current) {
            let new = nic.mac.to_string().to_ascii_lowercase();
            if *old == new {
                continue;
            }
            let Some((name, _)) = interfaces.iter().find(|(_, mac)| mac == old) else {
                continue;
            };
            let (code, out) = agent
                .exec("/sbin/ip", &["link", "set", "dev", name, "address", &new])
                .await?;
            if code != 0 {
                return Err(Error::InvalidState {
                    uid: uid.to_owned(),
                    op: "set its MAC in the guest",
                    state: format!("ip link set dev {name} address {new}: exit {code}: {out}"),
                });
            }
            done.push(format!("{name} {new}"));
        }
        let (code, out) = agent
            .exec("/usr/bin/hostnamectl", &["set-hostname", hostname])
            .await?;
        if code != 0 {
            let (code, _) = agent.exec("/bin/hostname", &[hostname]).await?;
            if code != 0 {
                return Err(Error::InvalidState {
                    uid: uid.to_owned(),
                    op: "set its hostname in the guest",
                    state: format!("hostnamectl: exit {code}: {out}"),
                });
            }
        }
        done.insert(0, format!("hostname {hostname}"));
        Ok(done.join(", "))
    }

    async fn save_state<'a>(
        &'a self,
        uid: &'a str,
        into: std::fs::File,
        work: Box<dyn FnOnce() + Send + 'a>,
    ) -> Result<Duration, Error> {
        let (guard, rt) = self.hold_live(uid, "save its state").await?;
        let monitor = |e| monitor_error(uid, e);
        let status = rt.qmp.query_status().await.map_err(monitor)?;
        let start = Instant::now();
        if status.running {
            rt.qmp.stop().await.map_err(monitor)?;
        }
        let saved = self.save_to(&rt, uid, into).await;
        if saved.is_ok() {
            tokio::task::block_in_place(work);
        }
        // After a completed migration QEMU has let go of the disks; `cont` takes them back.
        // A guest that was paused is paused again, with its disks.
        let resumed = rt.qmp.cont().await.map_err(monitor);
        if resumed.is_ok() && !status.running {
            rt.qmp.stop().await.map_err(monitor)?;
        }
        let paused = start.elapsed();
        drop(guard);
        saved?;
        resumed?;
        Ok(paused)
    }

    async fn resize_disk(&self, uid: &str, disk: usize, bytes: u64) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "resize a disk").await?;
        rt.qmp
            .block_resize(&format!("disk{disk}"), bytes)
            .await
            .map_err(|e| monitor_error(uid, e))
    }

    async fn snapshot(
        &self,
        uid: &str,
        op: SnapshotOp,
        tag: &str,
        disks: &[usize],
    ) -> Result<(), Error> {
        let rt = self.live_runtime(uid, "snapshot").await?;
        let devices: Vec<String> = disks.iter().map(|i| format!("disk{i}")).collect();
        let vmstate = devices.first().cloned();
        let (job, verb) = match op {
            SnapshotOp::Save => (corral_qmp::SnapshotJob::Save, "save"),
            SnapshotOp::Load => (corral_qmp::SnapshotJob::Load, "load"),
            SnapshotOp::Delete => (corral_qmp::SnapshotJob::Delete, "delete"),
        };
        // Saving RAM under TCG runs at memory speed; minutes covers guests of many GiB.
        rt.qmp
            .snapshot_job(
                job,
                &format!("corral-snapshot-{verb}"),
                tag,
                vmstate.as_deref(),
                &devices,
                Duration::from_secs(600),
            )
            .await
            .map_err(|e| monitor_error(uid, e))
    }
}

fn monitor_message(uid: &str, message: String) -> Error {
    Error::Monitor {
        uid: uid.to_owned(),
        message,
    }
}

fn monitor_error(uid: &str, e: corral_qmp::Error) -> Error {
    Error::Monitor {
        uid: uid.to_owned(),
        message: e.to_string(),
    }
}

pub(crate) fn recorded_argv(paths: &VmPaths) -> Option<Vec<String>> {
    let bytes = std::fs::read(&paths.launch).ok()?;
    serde_json::from_slice::<LaunchRecord>(&bytes)
        .ok()
        .map(|r| r.argv)
}

/// Whether `pid` runs exactly the recorded command line, byte for byte and empty arguments
/// included (an argument that is not UTF-8 was recorded lossily and never matches).
pub(crate) fn argv_matches(pid: u32, recorded: &[String]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    process::cmdline(pid).is_ok_and(|argv| {
        argv.iter()
            .map(|a| a.as_bytes())
            .eq(recorded.iter().map(|s| s.as_bytes()))
    })
}

/// Removes a VM's guest RAM file (its memory is released once the last mapping goes).
pub(crate) fn remove_memory_file(path: Option<&Path>) {
    if let Some(path) = path {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "removing guest RAM file"),
        }
    }
}

/// Writes `path` (mode 0600) through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    files::create_private(&tmp, None, "temporary file")?
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// `query-migrate`'s reply as a [`MigrationInfo`]; fields QEMU leaves out (before the
/// migration started, or once it ended) are zero or `None`.
/// How long a VM started from saved state may take to read it, at least.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long QEMU may take to connect to the socket its state is saved through.
const SAVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// `max-bandwidth` for a stopped guest's save: no limit worth the name (1 TiB/s).
const UNTHROTTLED: u64 = 1 << 40;
/// QEMU's own default `max-bandwidth` (128 MiB/s), put back after a save.
const QEMU_DEFAULT_BANDWIDTH: u64 = 128 << 20;

fn migration_info(reply: &serde_json::Value) -> MigrationInfo {
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let ram = &reply["ram"];
    MigrationInfo {
        status: reply["status"].as_str().unwrap_or("none").to_owned(),
        transferred: num(&ram["transferred"]),
        remaining: num(&ram["remaining"]),
        total: num(&ram["total"]),
        dirty_pages_rate: num(&ram["dirty-pages-rate"]),
        dirty_sync_count: num(&ram["dirty-sync-count"]),
        total_time_ms: num(&reply["total-time"]),
        downtime_ms: reply["downtime"].as_u64(),
        expected_downtime_ms: reply["expected-downtime"].as_u64(),
        error: reply["error-desc"].as_str().map(str::to_owned),
    }
}
