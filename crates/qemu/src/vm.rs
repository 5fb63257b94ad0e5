//! One live VM as the backend holds it: its monitor, console, and the tasks that watch it.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_hypervisor::{Console, Exit, VmEvent, VmEventKind, VmInfo};
use corral_qmp::{EventKind, Qmp};
use nix::sys::signal::Signal;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use crate::layout::VmPaths;
use crate::process;

/// A VM started or adopted by this backend instance.
#[derive(Debug)]
pub struct VmRuntime {
    pub info: VmInfo,
    pub qmp: Qmp,
    pub console: Console,
    /// `None` while the process lives; how it ended afterwards.
    pub exit: watch::Receiver<Option<Exit>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for VmRuntime {
    fn drop(&mut self) {
        // Dropping the runtime lets go of the VM (the daemon is shutting down or handing it
        // over); the QEMU process itself lives on.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How the process is watched for its end.
pub enum Watch {
    /// We spawned it: `wait()` gives the exact status.
    Child(tokio::process::Child),
    /// Adopted: only the monitor closing and the pid disappearing can be seen.
    Adopted,
}

impl VmRuntime {
    /// Wires up the event and exit watchers. `console_task` is the serial pump, already running.
    pub fn new(
        info: VmInfo,
        // The runtime directory, and the guest RAM file if there is one: both go when QEMU ends.
        files: (VmPaths, Option<PathBuf>),
        qmp: Qmp,
        console: Console,
        console_task: AbortHandle,
        watch: Watch,
        events: broadcast::Sender<VmEvent>,
    ) -> Self {
        let shutdown_reason = Arc::new(Mutex::new(None::<String>));
        let (exit_tx, exit) = watch::channel(None);
        let event_task = tokio::spawn(forward_events(
            info.uid.clone(),
            qmp.subscribe(),
            events.clone(),
            shutdown_reason.clone(),
        ));
        let exit_task = tokio::spawn(watch_exit(
            info.clone(),
            files,
            (qmp.clone(), qmp.subscribe()),
            watch,
            shutdown_reason,
            exit_tx,
            events,
        ));
        VmRuntime {
            info,
            qmp,
            console,
            exit,
            tasks: vec![
                console_task,
                event_task.abort_handle(),
                exit_task.abort_handle(),
            ],
        }
    }

    /// How the process ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Waits up to `timeout` for the process to end.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(exit)) => exit.clone(),
            _ => self.exited(),
        }
    }
}

async fn forward_events(
    uid: String,
    mut qmp_events: broadcast::Receiver<corral_qmp::Event>,
    events: broadcast::Sender<VmEvent>,
    shutdown_reason: Arc<Mutex<Option<String>>>,
) {
    loop {
        let event = match qmp_events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(%uid, missed = n, "QMP events dropped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let kind = match event.kind {
            EventKind::Shutdown { reason, .. } => {
                *shutdown_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                continue;
            }
            EventKind::Stop => VmEventKind::Paused,
            EventKind::Resume => VmEventKind::Resumed,
            EventKind::Reset { .. } => VmEventKind::Reset,
            EventKind::GuestPanicked { .. } => VmEventKind::GuestPanicked,
            _ => continue,
        };
        let _ = events.send(VmEvent {
            uid: uid.clone(),
            kind,
        });
    }
}

async fn watch_exit(
    info: VmInfo,
    (paths, memory_file): (VmPaths, Option<PathBuf>),
    // Its own subscription: the SHUTDOWN event is in it when the monitor closes, whether or
    // not `forward_events` has got to it yet.
    (qmp, mut qmp_events): (Qmp, broadcast::Receiver<corral_qmp::Event>),
    watch: Watch,
    shutdown_reason: Arc<Mutex<Option<String>>>,
    exit_tx: watch::Sender<Option<Exit>>,
    events: broadcast::Sender<VmEvent>,
) {
    let status = match watch {
        Watch::Child(mut child) => child.wait().await.ok(),
        Watch::Adopted => {
            qmp.closed().await;
            // The monitor closes a moment before the process is gone.
            while process::is_alive(info.pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        }
    };
    drop(qmp);
    let mut reason = shutdown_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    loop {
        match qmp_events.try_recv() {
            Ok(corral_qmp::Event {
                kind: EventKind::Shutdown { reason: r, .. },
                ..
            }) => reason = Some(r),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    let exit = describe_exit(status, reason);
    tracing::info!(uid = %info.uid, pid = info.pid, %exit, "QEMU ended");
    // Files go before the exit is announced, so a start that follows the announcement never
    // has its fresh sockets removed under it.
    paths.remove_runtime_files();
    // A stopped guest's RAM is of no use to anyone and holds host memory (tmpfs).
    crate::backend::remove_memory_file(memory_file.as_deref());
    let _ = exit_tx.send(Some(exit.clone()));
    let _ = events.send(VmEvent {
        uid: info.uid,
        kind: VmEventKind::Exited(exit),
    });
}

/// Names how a process ended from its wait status (when it was our child) and the last
/// SHUTDOWN reason QEMU announced.
pub fn describe_exit(
    status: Option<std::process::ExitStatus>,
    shutdown_reason: Option<String>,
) -> Exit {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (_, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                Exit {
                    code: None,
                    signal: Some(sig),
                    reason: format!("killed by {name}"),
                }
            }
            (code, None) => Exit {
                code,
                signal: None,
                reason: shutdown_reason.unwrap_or_else(|| "exited".into()),
            },
        },
        // Adopted: no wait status. QEMU announces every orderly end (guest power-off, host
        // quit, reset with -no-reboot) with a SHUTDOWN event before it exits 0; a process that
        // vanished without one was killed or crashed.
        None => match shutdown_reason {
            Some(reason) => Exit {
                code: Some(0),
                signal: None,
                reason,
            },
            None => Exit {
                code: None,
                signal: None,
                reason: "ended without a shutdown event: killed or crashed while adopted".into(),
            },
        },
    }
}
