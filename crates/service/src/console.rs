//! Serial consoles: attaching to a running VM's console — many readers, at most one writer per
//! VM — and reading what it printed, through the node's [`Hypervisor`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_contract::{Phase, Vm};
use corral_hypervisor::{Console, Hypervisor};
use tokio::sync::{broadcast, watch};

use crate::{NodeRoute, ServiceError, Stored, VmService};

/// The most a console-log request returns at once.
pub const MAX_CONSOLE_LOG: u64 = 4 << 20;

/// Who holds the write side of each VM's console (by VM uid), told to every session of it.
type Writers = Arc<Mutex<HashMap<String, watch::Sender<Option<String>>>>>;

/// Consoles of the VMs a node runs, and who holds each one's write side.
#[derive(Debug, Clone)]
pub struct ConsoleService {
    vms: VmService,
    hypervisor: Arc<dyn Hypervisor>,
    writers: Writers,
    /// VMs of other nodes are attached to on their node.
    route: Option<NodeRoute>,
}

/// An attached console; the write side, when granted, is released on drop.
#[derive(Debug)]
pub struct ConsoleSession {
    name: String,
    console: Console,
    // Before the guard: dropped first, so the guard sees whether anyone else still watches.
    holder: watch::Receiver<Option<String>>,
    writer: Option<WriterGuard>,
}

#[derive(Debug)]
struct WriterGuard {
    writers: Writers,
    uid: String,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = writers.get(&self.uid) {
            holder.send_replace(None);
            // Nobody watches this console any more: forget it.
            if holder.receiver_count() == 0 {
                writers.remove(&self.uid);
            }
        }
    }
}

impl ConsoleService {
    /// Consoles of the VMs `hypervisor` runs.
    pub fn new(vms: VmService, hypervisor: Arc<dyn Hypervisor>) -> Self {
        ConsoleService {
            vms,
            hypervisor,
            writers: Arc::default(),
            route: None,
        }
    }

    /// Reaches the consoles of VMs that other nodes run over `route` (a server's).
    #[must_use]
    pub fn with_route(mut self, route: NodeRoute) -> Self {
        self.route = Some(route);
        self
    }

    /// Attaches to VM `name`'s console, with its write side when `write` (refused while
    /// another session holds it). `who` names the caller to the console's other sessions
    /// while it holds the write side.
    pub async fn attach(
        &self,
        name: &str,
        write: bool,
        who: &str,
    ) -> Result<ConsoleSession, ServiceError> {
        let vm = self.vms.get(name).await?;
        let uid = vm.metadata.uid.clone();
        let not_running = || ServiceError::WrongState {
            kind: Vm::NOUN,
            name: name.to_owned(),
            state: format!("not running (phase {})", vm.status.phase),
            rule: format!(
                "start it, or read its past output with `corral vm console {name} --log`"
            ),
        };
        let running = matches!(
            vm.status.phase,
            Phase::Running | Phase::Paused | Phase::Starting
        );
        let remote = self
            .route
            .as_ref()
            .and_then(|r| r.elsewhere(&vm).map(|node| (r, node)));
        let console = match remote {
            Some(_) if !running => return Err(not_running()),
            // The node that runs it keeps to one writer across every server.
            Some((route, node)) => route.link().console(node, name, write, who).await?,
            None => match (running, self.hypervisor.console(&uid)) {
                (true, Ok(console)) => console,
                _ => return Err(not_running()),
            },
        };
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        // Consoles nobody is attached to any more (their last session was read-only).
        writers.retain(|_, h| h.receiver_count() > 0 || h.borrow().is_some());
        let holder = writers
            .entry(uid.clone())
            .or_insert_with(|| watch::channel(None).0);
        let writer = if write {
            if let Some(other) = holder.borrow().clone() {
                return Err(ServiceError::Busy {
                    kind: Vm::NOUN,
                    name: name.to_owned(),
                    what: format!("console already has a writer ({other})"),
                    remedy: "attach read-only, or wait until it detaches",
                });
            }
            holder.send_replace(Some(who.to_owned()));
            Some(WriterGuard {
                writers: self.writers.clone(),
                uid,
            })
        } else {
            None
        };
        let holder = holder.subscribe();
        Ok(ConsoleSession {
            name: name.to_owned(),
            console,
            writer,
            holder,
        })
    }

    /// The end of VM `name`'s serial output: `tail` bytes, or as much as is kept for 0 — at
    /// most [`MAX_CONSOLE_LOG`].
    pub async fn log(&self, name: &str, tail: u64) -> Result<Vec<u8>, ServiceError> {
        let vm = self.vms.get(name).await?;
        let max = if tail == 0 {
            MAX_CONSOLE_LOG
        } else {
            tail.min(MAX_CONSOLE_LOG)
        };
        if let Some((route, node)) = self
            .route
            .as_ref()
            .and_then(|r| r.elsewhere(&vm).map(|node| (r, node)))
        {
            return route.link().console_log(node, name, max).await;
        }
        self.hypervisor
            .console_log(&vm.metadata.uid, max)
            .await
            .map_err(|source| ServiceError::Hypervisor {
                kind: Vm::NOUN,
                name: name.to_owned(),
                source,
            })
    }
}

impl ConsoleSession {
    /// Whether this session holds the write side.
    pub fn can_write(&self) -> bool {
        self.writer.is_some()
    }

    /// Who holds the console's write side now (this session or another), updated as it
    /// changes hands.
    pub fn writer(&self) -> watch::Receiver<Option<String>> {
        self.holder.clone()
    }

    /// The scrollback so far and a receiver for everything printed after it.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Arc<[u8]>>) {
        self.console.subscribe()
    }

    /// Types `data` on the guest's console; refused on a read-only session.
    pub async fn write(&self, data: &[u8]) -> Result<(), ServiceError> {
        if !self.can_write() {
            return Err(ServiceError::WrongState {
                kind: Vm::NOUN,
                name: self.name.clone(),
                state: "attached read-only".into(),
                rule: "attach with write to type".into(),
            });
        }
        self.console
            .write(data)
            .await
            .map_err(|source| ServiceError::Interrupted {
                what: "console input",
                source: Box::new(source),
            })
    }
}
