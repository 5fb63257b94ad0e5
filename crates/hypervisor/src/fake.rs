use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use corral_contract::Accel;
use tokio::sync::broadcast;

use crate::{
    Console, Error, Exit, Hypervisor, StopMode, VmConfig, VmEvent, VmEventKind, VmInfo, VmState,
};

/// An in-memory hypervisor for controller unit tests and scale simulation.
///
/// It keeps the same rules as a real backend (one process per uid, state transitions, events)
/// without starting anything. Tests can make a VM "crash" with [`FakeHypervisor::crash`].
#[derive(Debug)]
pub struct FakeHypervisor {
    vms: Mutex<BTreeMap<String, FakeVm>>,
    next_pid: AtomicU32,
    events: broadcast::Sender<VmEvent>,
    // VMs that "run" but that this backend instance has not adopted yet (see
    // [`FakeHypervisor::forget_all`]).
    detached: Mutex<BTreeSet<String>>,
}

#[derive(Debug, Clone)]
struct FakeVm {
    pid: u32,
    state: VmState,
    console: Console,
    config: VmConfig,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHypervisor {
    /// An empty fake.
    pub fn new() -> Self {
        FakeHypervisor {
            vms: Mutex::new(BTreeMap::new()),
            next_pid: AtomicU32::new(1000),
            events: broadcast::channel(1024).0,
            detached: Mutex::new(BTreeSet::new()),
        }
    }

    /// Behaves like a fresh backend after a daemon restart: every VM keeps "running", but
    /// [`Hypervisor::state`] answers `NotFound` for it until it is adopted.
    pub fn forget_all(&self) {
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        let mut detached = self.detached.lock().unwrap_or_else(|e| e.into_inner());
        detached.extend(vms.keys().cloned());
    }

    /// The launch description a VM was last started with (what a real backend would run).
    pub fn config(&self, uid: &str) -> Option<VmConfig> {
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        vms.get(uid).map(|vm| vm.config.clone())
    }

    /// Makes a running VM's "process" die as if killed by `signal`.
    pub fn crash(&self, uid: &str, signal: i32) -> Result<(), Error> {
        let exit = Exit {
            code: None,
            signal: Some(signal),
            reason: "killed".into(),
        };
        self.transition(uid, VmState::Exited(exit.clone()))?;
        self.emit(uid, VmEventKind::Exited(exit));
        Ok(())
    }

    /// Makes QEMU hold a running VM's vCPUs in run state `reason` (`guest-panicked`,
    /// `io-error`, `watchdog`, …), as it does on its own.
    pub fn hold(&self, uid: &str, reason: &str) -> Result<(), Error> {
        self.transition(
            uid,
            VmState::Paused {
                reason: reason.to_owned(),
            },
        )?;
        self.emit(uid, VmEventKind::Paused);
        Ok(())
    }

    fn emit(&self, uid: &str, kind: VmEventKind) {
        // Nobody listening is fine.
        let _ = self.events.send(VmEvent {
            uid: uid.to_owned(),
            kind,
        });
    }

    fn transition(&self, uid: &str, to: VmState) -> Result<(), Error> {
        let mut vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        let vm = vms
            .get_mut(uid)
            .ok_or_else(|| Error::NotFound(uid.to_owned()))?;
        vm.state = to;
        Ok(())
    }

    fn require_live(&self, uid: &str, op: &'static str) -> Result<VmState, Error> {
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        let vm = vms
            .get(uid)
            .ok_or_else(|| Error::NotFound(uid.to_owned()))?;
        if let VmState::Exited(_) = vm.state {
            return Err(Error::InvalidState {
                uid: uid.to_owned(),
                op,
                state: "exited".into(),
            });
        }
        Ok(vm.state.clone())
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn start(&self, config: &VmConfig) -> Result<VmInfo, Error> {
        let mut vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vm) = vms.get(&config.uid) {
            if !matches!(vm.state, VmState::Exited(_)) {
                return Err(Error::AlreadyRunning {
                    uid: config.uid.clone(),
                    pid: vm.pid,
                });
            }
        }
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        // As QEMU started with -S and never continued reports it.
        let state = if config.start_paused {
            VmState::Paused {
                reason: "prelaunch".into(),
            }
        } else {
            VmState::Running
        };
        let (console, _input) = Console::new(64 << 10);
        vms.insert(
            config.uid.clone(),
            FakeVm {
                pid,
                state,
                console,
                config: config.clone(),
            },
        );
        let accel = if config.accel == Accel::Auto {
            Accel::Tcg
        } else {
            config.accel
        };
        Ok(VmInfo {
            uid: config.uid.clone(),
            pid,
            accel,
            emulator_version: "fake".into(),
            adopted: false,
        })
    }

    async fn adopt(&self, uid: &str) -> Result<VmInfo, Error> {
        self.detached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        let vm = vms
            .get(uid)
            .ok_or_else(|| Error::NotFound(uid.to_owned()))?;
        Ok(VmInfo {
            uid: uid.to_owned(),
            pid: vm.pid,
            accel: Accel::Tcg,
            emulator_version: "fake".into(),
            adopted: true,
        })
    }

    async fn list(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }

    async fn state(&self, uid: &str) -> Result<VmState, Error> {
        if self
            .detached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uid)
        {
            return Err(Error::NotFound(uid.to_owned()));
        }
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        vms.get(uid)
            .map(|vm| vm.state.clone())
            .ok_or_else(|| Error::NotFound(uid.to_owned()))
    }

    async fn pause(&self, uid: &str) -> Result<(), Error> {
        self.require_live(uid, "pause")?;
        self.transition(
            uid,
            VmState::Paused {
                reason: "paused".into(),
            },
        )?;
        self.emit(uid, VmEventKind::Paused);
        Ok(())
    }

    async fn resume(&self, uid: &str) -> Result<(), Error> {
        self.require_live(uid, "resume")?;
        self.transition(uid, VmState::Running)?;
        self.emit(uid, VmEventKind::Resumed);
        Ok(())
    }

    async fn reset(&self, uid: &str) -> Result<(), Error> {
        self.require_live(uid, "reset")?;
        self.emit(uid, VmEventKind::Reset);
        Ok(())
    }

    async fn stop(&self, uid: &str, mode: StopMode) -> Result<Exit, Error> {
        if let VmState::Exited(exit) = self.state(uid).await? {
            return Ok(exit);
        }
        let reason = match mode {
            StopMode::Graceful { .. } => "guest-shutdown",
            StopMode::Force => "host-qmp-quit",
        };
        let exit = Exit {
            code: Some(0),
            signal: None,
            reason: reason.into(),
        };
        self.transition(uid, VmState::Exited(exit.clone()))?;
        self.emit(uid, VmEventKind::Exited(exit.clone()));
        Ok(exit)
    }

    async fn cleanup(&self, uid: &str) -> Result<(), Error> {
        let mut vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(vm) = vms.get(uid) {
            if !matches!(vm.state, VmState::Exited(_)) {
                return Err(Error::AlreadyRunning {
                    uid: uid.to_owned(),
                    pid: vm.pid,
                });
            }
        }
        vms.remove(uid);
        Ok(())
    }

    fn console(&self, uid: &str) -> Result<Console, Error> {
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner());
        vms.get(uid)
            .map(|vm| vm.console.clone())
            .ok_or_else(|| Error::NotFound(uid.to_owned()))
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }

    // `guest_ram` stays unsupported: the fake has no guest whose RAM could be shared.

    async fn run_paused<'a>(
        &'a self,
        uid: &'a str,
        work: Box<dyn FnOnce() + Send + 'a>,
    ) -> Result<Duration, Error> {
        self.require_live(uid, "pause for a copy")?;
        let start = Instant::now();
        work();
        Ok(start.elapsed())
    }

    async fn console_log(&self, uid: &str, max: u64) -> Result<Vec<u8>, Error> {
        // What the fake keeps of a console is its scrollback.
        let (mut log, _) = self.console(uid)?.subscribe();
        let excess = log
            .len()
            .saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
        log.drain(..excess);
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootSource;
    use corral_contract::{Arch, Machine};

    fn config(uid: &str) -> VmConfig {
        VmConfig {
            uid: uid.into(),
            name: "t".into(),
            arch: Arch::X86_64,
            machine: Machine::Q35,
            accel: Accel::Auto,
            cpus: 1,
            memory_bytes: 256 << 20,
            boot: BootSource::Kernel {
                kernel: "/k".into(),
                initrd: None,
                cmdline: None,
            },
            disks: vec![],
            memory_file: None,
            start_paused: false,
            incoming: false,
            restore: Default::default(),
            nics: vec![],
            files: Default::default(),
            shares: Vec::new(),
        }
    }

    #[tokio::test]
    async fn never_starts_a_uid_twice() {
        let hv = FakeHypervisor::new();
        hv.start(&config("a")).await.unwrap();
        assert!(matches!(
            hv.start(&config("a")).await,
            Err(Error::AlreadyRunning { .. })
        ));
        hv.stop("a", StopMode::Force).await.unwrap();
        hv.start(&config("a")).await.unwrap();
    }

    #[tokio::test]
    async fn crash_is_reported_as_an_exit_event() {
        let hv = FakeHypervisor::new();
        let mut events = hv.subscribe();
        hv.start(&config("a")).await.unwrap();
        hv.crash("a", 9).unwrap();
        let event = events.recv().await.unwrap();
        assert!(matches!(event.kind, VmEventKind::Exited(ref e) if e.signal == Some(9)));
        assert!(matches!(hv.state("a").await.unwrap(), VmState::Exited(_)));
        assert!(hv.pause("a").await.is_err());
        hv.cleanup("a").await.unwrap();
        assert!(hv.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn node_local_access_is_served_or_refused_by_name() {
        let hv = FakeHypervisor::new();
        hv.start(&config("a")).await.unwrap();
        hv.console("a").unwrap().publish(b"boot ok\n");
        assert_eq!(hv.console_log("a", 3).await.unwrap(), b"ok\n");
        let mut ran = false;
        hv.run_paused("a", Box::new(|| ran = true)).await.unwrap();
        assert!(ran);
        let err = hv.guest_ram("a").await.unwrap_err().to_string();
        assert!(err.contains("without shared guest RAM"), "{err}");
    }
}
