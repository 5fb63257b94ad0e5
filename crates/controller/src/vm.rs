use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use corral_contract::names::annotations;
use corral_contract::names::conditions::{self, reasons};
use corral_contract::{Condition, ExitInfo, Kind, Phase, Power, RestartPolicy, Vm, VmStatus};
use corral_hypervisor::{Error as HvError, Exit, Hypervisor, StopMode, VmConfig, VmInfo, VmState};
use corral_service::{EVICTING, ServiceError, StorageService, VmService};
use tokio::sync::watch;

use crate::deps::{self, DependencyIndex, Readiness};
use crate::restart::{self, Decision};
use crate::{ControllerError, WorkQueue};

/// How the VM controller behaves.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Reconciles running at once (different VMs; one VM is never reconciled twice at once).
    pub workers: usize,
    /// Every VM is reconciled at least this often, whatever the events say.
    pub resync: Duration,
    /// How long a guest gets to shut down on a graceful stop.
    pub stop_timeout: Duration,
    /// How long a guest gets to shut down when its VM is deleted (a guest that is still
    /// booting may not react to the power button at all).
    pub delete_timeout: Duration,
    /// First delay before a restart by policy; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest delay between restarts by policy.
    pub backoff_max: Duration,
    /// Where the RAM of introspectable VMs lives (`<dir>/corral-<uid>`).
    pub shm_dir: PathBuf,
    /// Where cloud-init seed images are built (`<dir>/<uid>.iso`).
    pub seed_dir: PathBuf,
    /// How long after a start the SSH probe keeps trying.
    pub ssh_probe_timeout: Duration,
    /// The rules for host files a spec names, applied again when a VM starts; `None` hands
    /// paths to the hypervisor as they are (for the fake hypervisor in tests).
    pub host_paths: Option<corral_storage::HostPaths>,
    /// The node this controller runs VMs for: only VMs whose `status.node` names it are
    /// started here, and a process here of a VM bound elsewhere is stopped. `None` runs
    /// every VM (controller tests without a scheduler).
    pub node: Option<String>,
    /// The address this node receives migrating VMs on (QEMU listens there).
    pub migration_address: std::net::IpAddr,
    /// Most bytes a second a migration from this node may send (`None`: QEMU's default).
    pub migration_bandwidth: Option<u64>,
    /// This node's certificate from the cluster CA, for TLS on migration streams. A node with
    /// one sends and receives VMs over TLS only; without, over plain TCP only (one host, or a
    /// cluster without a CA).
    pub migration_tls: Option<corral_hypervisor::MigrationTls>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            workers: 4,
            resync: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            delete_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            shm_dir: PathBuf::from("/dev/shm"),
            seed_dir: std::env::temp_dir().join("corral-seeds"),
            ssh_probe_timeout: Duration::from_secs(600),
            host_paths: None,
            node: None,
            migration_address: std::net::Ipv4Addr::LOCALHOST.into(),
            migration_bandwidth: None,
            migration_tls: None,
        }
    }
}

/// Told how long each reconcile took (for metrics).
pub trait ReconcileObserver: Send + Sync + std::fmt::Debug {
    /// One reconcile of one VM finished.
    fn reconciled(&self, elapsed: Duration, ok: bool);
}

/// Makes VMs match their spec.
#[derive(Debug)]
pub struct VmController {
    pub(crate) svc: VmService,
    pub(crate) hv: Arc<dyn Hypervisor>,
    pub(crate) config: ControllerConfig,
    queue: WorkQueue,
    // uid → name, so hypervisor events (keyed by uid) reach the right object.
    names: Mutex<HashMap<String, String>>,
    // name → (consecutive policy restarts, not before).
    backoff: Mutex<HashMap<String, (u32, Instant)>>,
    observer: Option<Arc<dyn ReconcileObserver>>,
    pub(crate) storage: Option<StorageService>,
    // uid → what adoption found, until the VM's status says so: a corrald killed between
    // spawning QEMU and writing its pid leaves a status without one.
    pub(crate) adopted: Mutex<HashMap<String, VmInfo>>,
    // How the last process of each VM QEMU held stopped for good (guest panic, emulation
    // error, watchdog) ended: ended by the controller, it counts as the failure it was.
    crashed: Mutex<HashMap<String, Exit>>,
    // uid → when a guest stopped on a failed write is next resumed to try again.
    io_retries: Mutex<HashMap<String, Instant>>,
    // Volume/Network → the VMs that need it, from the VMs this controller has seen.
    deps: DependencyIndex,
    // While the node is fenced (it cannot report to the cluster) nothing starts.
    fence: Arc<crate::FenceState>,
    // Guests started from a template being told their identity.
    telling: Arc<crate::template::Telling>,
}

/// What a reconcile asks for next.
type Requeue = Option<Duration>;

/// The VM's `corral.dev/expires-at` time, and how long until then (zero once past); `None`
/// without one. A value that is not an RFC 3339 time is ignored, with a warning.
fn expiry(vm: &Vm) -> Option<(SystemTime, Duration)> {
    let at = vm.metadata.annotations.get(annotations::EXPIRES_AT)?;
    match humantime::parse_rfc3339_weak(at) {
        Ok(at) => Some((
            at,
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )),
        Err(e) => {
            tracing::warn!(vm = %vm.metadata.name, value = %at, error = %e, "ignoring a bad expires-at");
            None
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn exit_info(exit: &Exit) -> ExitInfo {
    ExitInfo {
        code: exit.code,
        signal: exit.signal,
        reason: exit.reason.clone(),
    }
}

impl VmController {
    /// A controller over `svc`'s store and `hv`.
    pub fn new(svc: VmService, hv: Arc<dyn Hypervisor>, config: ControllerConfig) -> Self {
        VmController {
            svc,
            hv,
            config,
            queue: WorkQueue::new(),
            names: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            observer: None,
            storage: None,
            adopted: Mutex::new(HashMap::new()),
            crashed: Mutex::new(HashMap::new()),
            io_retries: Mutex::new(HashMap::new()),
            deps: DependencyIndex::default(),
            fence: Arc::default(),
            telling: Arc::default(),
        }
    }

    /// Starts no VM while `fence` is set (the node cannot report to the cluster, which may
    /// move its VMs elsewhere); restarts what the fence stopped once it is lifted.
    pub fn with_fence(mut self, fence: Arc<crate::FenceState>) -> Self {
        self.fence = fence;
        self
    }

    /// Resolves VMs' volumes through `storage` (without it, a VM with volumes fails to start).
    pub fn with_storage(mut self, storage: StorageService) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Reports reconcile durations to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn ReconcileObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The work queue (to nudge a VM from outside).
    pub fn queue(&self) -> &WorkQueue {
        &self.queue
    }

    /// Runs until `shutdown` turns true: adopts what runs, removes orphans, then reconciles
    /// on store changes, hypervisor events and a periodic resync. Returns once started work
    /// has stopped; VMs keep running.
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServiceError> {
        let (vms, revision) = self.svc.list("").await?;
        self.remove_orphans(&vms).await;
        for vm in &vms {
            self.remember(vm);
            self.queue.add(&vm.metadata.key());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.config.workers.max(1) {
            let this = self.clone();
            tasks.spawn(async move {
                while let Some(name) = this.queue.next().await {
                    this.reconcile_logged(&name).await;
                    this.queue.done(&name);
                }
            });
        }
        let this = self.clone();
        tasks.spawn(async move { this.follow_store(revision).await });
        let this = self.clone();
        tasks.spawn(async move { this.follow_hypervisor().await });
        let this = self.clone();
        tasks.spawn(async move { this.follow_dependencies(revision).await });
        let this = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(this.config.resync);
            loop {
                tick.tick().await;
                if let Ok((vms, _)) = this.svc.list("").await {
                    for vm in vms {
                        this.queue.add(&vm.metadata.key());
                    }
                }
            }
        });
        let _ = shutdown.wait_for(|stop| *stop).await;
        tasks.shutdown().await;
        Ok(())
    }

    async fn follow_store(&self, mut revision: u64) {
        loop {
            // From the revision before the last event seen: the events of one transaction
            // share its revision (the scheduler binds many VMs in one), and a stream that
            // broke among them must not lose the rest. Seeing an event twice only requeues.
            let mut watch = match self.svc.watch(None, revision.saturating_sub(1)).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch VMs; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(event) = watch.recv().await {
                match event {
                    Ok(event) => {
                        revision = event.revision;
                        self.remember(&event.object);
                        self.queue.add(&event.object.metadata.key());
                    }
                    Err(e) => {
                        // Compacted past us: list again and carry on from there.
                        tracing::warn!(error = %e, "VM watch broke; relisting");
                        if let Ok((vms, rev)) = self.svc.list("").await {
                            vms.iter().for_each(|vm| self.queue.add(&vm.metadata.key()));
                            revision = rev;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Requeues the VMs that need a volume or network when it changes (created, Ready,
    /// failed, deleted), found through the dependency index.
    async fn follow_dependencies(&self, mut revision: u64) {
        let store = self.svc.store().clone();
        loop {
            // As in `follow_store`: from the revision before, so no event of a transaction is
            // lost.
            let mut watch = match store.watch(None, revision.saturating_sub(1)).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch VM dependencies; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(Ok(event)) = watch.recv().await {
                revision = event.revision;
                let kind = match event.object.kind.as_str() {
                    "Volume" => Kind::Volume,
                    "Network" => Kind::Network,
                    _ => continue,
                };
                for vm in self.deps.dependents(kind, &event.object.name) {
                    self.queue.add(&vm);
                }
            }
            // Compacted past us or the store went away: every VM is looked at again.
            if let Ok((vms, rev)) = self.svc.list("").await {
                revision = rev;
                for vm in vms {
                    self.queue.add(&vm.metadata.key());
                }
            }
        }
    }

    async fn follow_hypervisor(&self) {
        let mut events = self.hv.subscribe();
        loop {
            match events.recv().await {
                Ok(event) => {
                    let name = self
                        .names
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&event.uid)
                        .cloned();
                    if let Some(name) = name {
                        self.queue.add(&name);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let names: Vec<String> = self
                        .names
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned()
                        .collect();
                    names.iter().for_each(|n| self.queue.add(n));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn remember(&self, vm: &Vm) {
        self.deps.set(&vm.metadata.key(), deps::vm_deps(vm));
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm.metadata.uid.clone(), vm.metadata.key());
    }

    /// Stops and removes every VM the hypervisor has that no object declares: a daemon never
    /// leaves an orphan behind.
    async fn remove_orphans(&self, vms: &[Vm]) {
        let Ok(uids) = self.hv.list().await else {
            return;
        };
        for uid in uids {
            if vms.iter().any(|vm| vm.metadata.uid == uid) {
                continue;
            }
            tracing::warn!(%uid, "no VM object for this QEMU; stopping it and removing its files");
            if self.hv.adopt(&uid).await.is_ok() {
                let _ = self.hv.stop(&uid, StopMode::Force).await;
            }
            if let Err(e) = self.hv.cleanup(&uid).await {
                tracing::warn!(%uid, error = %e, "cannot remove orphan");
            }
        }
    }

    async fn reconcile_logged(&self, name: &str) {
        let t0 = Instant::now();
        let result = self.reconcile(name).await;
        if let Some(observer) = &self.observer {
            observer.reconciled(t0.elapsed(), result.is_ok());
        }
        match result {
            Ok(Some(delay)) => self.queue.add_after(name, delay),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(vm = name, error = %e, "reconcile failed; retrying");
                self.queue.add_after(name, Duration::from_secs(1));
            }
        }
    }

    /// Makes one VM match its spec. Idempotent.
    pub async fn reconcile(&self, name: &str) -> Result<Requeue, ControllerError> {
        let vm = match self.svc.get(name).await {
            Ok(vm) => vm,
            Err(ServiceError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.remember(&vm);
        let uid = vm.metadata.uid.clone();
        let actual = self.actual_state(&uid).await;
        let actual = self.end_if_crashed(name, &uid, actual).await?;

        if let Some(me) = &self.config.node {
            match vm.status.node.as_deref() {
                Some(node) if node == me => {}
                other => {
                    if let Some(after) = self.migrate_in(&vm, me, actual.as_ref()).await? {
                        return Ok(Some(after));
                    }
                    return self.not_mine(&vm, other, actual).await;
                }
            }
            if vm.status.condition(EVICTING).is_some_and(|c| c.status) {
                return self.evict(&vm, actual).await;
            }
            if !vm.metadata.deleting {
                if let Some(after) = self.migrate_out(&vm, me, actual.as_ref()).await? {
                    return Ok(Some(after));
                }
            }
        }
        if vm.metadata.deleting {
            return self.finish_delete(&vm, actual).await;
        }
        let expiry = expiry(&vm);
        let expires_at = expiry.map(|(at, _)| humantime::format_rfc3339_seconds(at).to_string());
        if vm.status.expires_at != expires_at {
            self.svc
                .update_status(name, |_, st| {
                    let changed = st.expires_at != expires_at;
                    st.expires_at = expires_at.clone();
                    changed
                })
                .await?;
        }
        let expires_in = expiry.map(|(_, left)| left);
        if expires_in == Some(Duration::ZERO) {
            tracing::info!(vm = name, "its time to live ran out: deleting it");
            match self.svc.delete(name, None).await {
                Ok(_) | Err(ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Some(Duration::ZERO));
        }
        let requeue = self.converge(vm, name, uid, actual).await?;
        // Back at the expiry time at the latest; after a restart every VM is reconciled, so
        // nothing but the annotation needs remembering.
        Ok(match (requeue, expires_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Acts on the difference between a live VM's spec and its process.
    async fn converge(
        &self,
        vm: Vm,
        name: &str,
        uid: String,
        actual: Option<VmState>,
    ) -> Result<Requeue, ControllerError> {
        let restart = vm
            .metadata
            .annotations
            .get(annotations::RESTART_REQUESTED_AT)
            .cloned();
        let restart_pending = restart.is_some() && restart != vm.status.restarted_for;
        // A VM the fence stopped did not end by its own choice: it starts again.
        let new_intent =
            vm.status.observed_generation < vm.metadata.generation || self.fence.was_stopped(&uid);
        let live = matches!(
            actual,
            Some(VmState::Running | VmState::Paused { .. } | VmState::ShuttingDown)
        );

        if vm.spec.power == Power::Stopped && live {
            self.write_phase(name, Phase::Stopping, None).await?;
            let exit = self.stop(&vm, self.config.stop_timeout).await?;
            return self.record_stopped(name, &vm, Some(exit), false).await;
        }

        // Running or Paused is declared.
        if live && restart_pending {
            self.write_phase(name, Phase::Stopping, Some("restarting"))
                .await?;
            self.hv
                .stop(
                    &uid,
                    StopMode::Graceful {
                        timeout: self.config.stop_timeout,
                    },
                )
                .await?;
            return self.start(&vm, restart).await;
        }
        match actual {
            None | Some(VmState::Exited(_)) => {
                let exit = match &actual {
                    Some(VmState::Exited(exit)) => Some(exit.clone()),
                    _ => None,
                };
                let (attempts, hold) = self.backoff_state(name);
                let decision = restart::decide(&restart::Situation {
                    power: vm.spec.power,
                    phase: vm.status.phase,
                    policy: vm.spec.restart_policy,
                    ended: restart::Ended::of(exit.as_ref()),
                    new_intent,
                    restart_pending,
                    attempts,
                    hold,
                    backoff_base: self.config.backoff_base,
                    backoff_max: self.config.backoff_max,
                });
                match decision {
                    Decision::Start => {
                        self.backoff
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(name);
                        self.start(&vm, restart).await
                    }
                    Decision::Restart { after, .. } if !after.is_zero() => Ok(Some(after)),
                    Decision::Restart { next_hold, .. } => {
                        self.backoff
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.to_owned(), (attempts + 1, Instant::now() + next_hold));
                        tracing::info!(vm = name, policy = %vm.spec.restart_policy, "restarting by policy");
                        self.start(&vm, restart).await
                    }
                    Decision::StayStopped => self.record_stopped(name, &vm, exit, false).await,
                    Decision::MarkFailed => self.record_stopped(name, &vm, exit, true).await,
                }
            }
            Some(VmState::ShuttingDown) => Ok(Some(Duration::from_millis(250))),
            Some(VmState::Running) if vm.spec.power == Power::Paused => {
                self.hv.pause(&uid).await?;
                self.record_live(name, &vm, Phase::Paused, None).await
            }
            Some(VmState::Paused { reason }) => match (Held::of(&reason), vm.spec.power) {
                (Held::Resumable, Power::Running) => {
                    self.hv.resume(&uid).await?;
                    self.record_live(name, &vm, Phase::Running, None).await
                }
                (Held::Resumable, _) => self.record_live(name, &vm, Phase::Paused, None).await,
                // QEMU is in the middle of something (a snapshot, a migration): look again soon.
                (Held::Busy, _) => Ok(Some(Duration::from_millis(500))),
                // A write failed (ENOSPC, a lost device): QEMU retries it on `cont`. Try now
                // and then, as the space may come back; until then it says why.
                (Held::IoError, Power::Running) => {
                    let now = Instant::now();
                    let due = {
                        let mut retries = self.io_retries.lock().unwrap_or_else(|e| e.into_inner());
                        let at = *retries.entry(uid.clone()).or_insert(now + IO_ERROR_RETRY);
                        if at <= now {
                            retries.insert(uid.clone(), now + IO_ERROR_RETRY);
                        }
                        at
                    };
                    if due <= now {
                        tracing::info!(vm = name, "resuming a guest stopped on a failed write");
                        let _ = self.hv.resume(&uid).await;
                        return Ok(Some(Duration::from_secs(1)));
                    }
                    let why = format!(
                        "QEMU paused the guest: {reason} (a disk write failed; resuming it is tried every {}s)",
                        IO_ERROR_RETRY.as_secs()
                    );
                    self.record_live(name, &vm, Phase::Paused, Some(why))
                        .await?;
                    Ok(Some(due - now))
                }
                (Held::IoError | Held::Report | Held::Crashed, _) => {
                    let why = format!("QEMU paused the guest: {reason}");
                    self.record_live(name, &vm, Phase::Paused, Some(why)).await
                }
            },
            Some(VmState::Running) => {
                self.io_retries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
                if let Some(pid) = vm
                    .status
                    .pid
                    .filter(|_| crate::template::identity_untold(&vm))
                {
                    crate::template::tell_identity(
                        self.hv.clone(),
                        self.svc.clone(),
                        self.telling.clone(),
                        &vm,
                        pid,
                    );
                }
                self.record_live(name, &vm, Phase::Running, None).await
            }
        }
    }

    /// Ends a process QEMU holds stopped for good (see [`Held::Crashed`]) and reports it as
    /// the failed exit it is, then and on every later look until the VM starts again.
    async fn end_if_crashed(
        &self,
        name: &str,
        uid: &str,
        actual: Option<VmState>,
    ) -> Result<Option<VmState>, ControllerError> {
        match actual {
            Some(VmState::Paused { reason }) if Held::of(&reason) == Held::Crashed => {
                tracing::warn!(vm = name, %reason, "QEMU stopped the guest for good; ending it");
                self.hv.stop(uid, StopMode::Force).await?;
                let exit = Exit {
                    code: None,
                    signal: None,
                    reason: format!("QEMU stopped the guest: {reason}"),
                };
                self.crashed_mut().insert(uid.to_owned(), exit.clone());
                Ok(Some(VmState::Exited(exit)))
            }
            Some(VmState::Exited(exit)) => Ok(Some(VmState::Exited(
                self.crashed_mut().get(uid).cloned().unwrap_or(exit),
            ))),
            other => Ok(other),
        }
    }

    fn crashed_mut(&self) -> std::sync::MutexGuard<'_, HashMap<String, Exit>> {
        self.crashed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's state as the hypervisor sees it, re-adopting a VM a previous daemon started.
    /// `None`: no process.
    async fn actual_state(&self, uid: &str) -> Option<VmState> {
        match self.hv.state(uid).await {
            Ok(state) => return Some(state),
            Err(HvError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(%uid, error = %e, "cannot read VM state");
                return None;
            }
        }
        let known = self
            .hv
            .list()
            .await
            .map(|uids| uids.iter().any(|u| u == uid))
            .unwrap_or(false);
        if !known {
            return None;
        }
        match self.hv.adopt(uid).await {
            Ok(info) => {
                tracing::info!(%uid, pid = info.pid, "adopted running VM");
                self.adopted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid.to_owned(), info);
                self.hv.state(uid).await.ok()
            }
            Err(e) => {
                tracing::info!(%uid, reason = %e, "VM ended while the daemon was away");
                let _ = self.hv.cleanup(uid).await;
                Some(VmState::Exited(Exit {
                    code: None,
                    signal: None,
                    reason: "QEMU ended while corrald was not running".into(),
                }))
            }
        }
    }

    /// A VM not bound to this node: unbound, it waits for the scheduler (a process of it
    /// here — adopted from before nodes — is left alone until it is bound); bound elsewhere,
    /// a process of it here is stopped at once, so that it never runs twice.
    async fn not_mine(
        &self,
        vm: &Vm,
        node: Option<&str>,
        actual: Option<VmState>,
    ) -> Result<Requeue, ControllerError> {
        let uid = &vm.metadata.uid;
        match (node, actual) {
            (None, Some(_)) => Ok(Some(Duration::from_secs(1))),
            (None, None) => Ok(None),
            (Some(node), Some(_)) => {
                tracing::warn!(vm = %vm.metadata.key(), %node, "bound to another node: stopping its process here");
                self.hv.stop(uid, StopMode::Force).await?;
                self.hv.cleanup(uid).await?;
                Ok(None)
            }
            (Some(_), None) => Ok(None),
        }
    }

    /// The VM's node is drained: stop it here, then hand it back to the scheduler
    /// (`status.node` cleared only once no process of it runs here).
    async fn evict(&self, vm: &Vm, actual: Option<VmState>) -> Result<Requeue, ControllerError> {
        let uid = &vm.metadata.uid;
        if actual.is_some() {
            tracing::info!(vm = %vm.metadata.key(), "node drained: stopping the VM to move it");
            self.stop(vm, self.config.stop_timeout).await?;
            self.hv.cleanup(uid).await?;
        }
        let me = self.config.node.clone();
        self.svc
            .update_status(&vm.metadata.key(), |vm, s| {
                if vm.status.node != me {
                    return false;
                }
                s.node = None;
                s.pid = None;
                s.conditions.retain(|c| c.type_ != EVICTING);
                s.phase = Phase::Pending;
                s.message = Some("moved off a drained node; waiting for the scheduler".into());
                true
            })
            .await?;
        Ok(None)
    }

    async fn stop(&self, vm: &Vm, grace: Duration) -> Result<Exit, ControllerError> {
        let force = vm
            .metadata
            .annotations
            .get(annotations::STOP_MODE)
            .is_some_and(|m| m == annotations::STOP_MODE_FORCE);
        let mode = if force {
            StopMode::Force
        } else {
            StopMode::Graceful { timeout: grace }
        };
        Ok(self.hv.stop(&vm.metadata.uid, mode).await?)
    }

    async fn start(&self, vm: &Vm, restart: Option<String>) -> Result<Requeue, ControllerError> {
        if self.fence.is_fenced() {
            tracing::warn!(vm = %vm.metadata.key(), "node fenced: not starting");
            return Ok(Some(Duration::from_secs(1)));
        }
        self.fence.started(&vm.metadata.uid);
        let key = vm.metadata.key();
        let name = key.as_str();
        self.forget_adopted(&vm.metadata.uid);
        self.crashed_mut().remove(vm.metadata.uid.as_str());
        let readiness = deps::check(&**self.svc.store(), &deps::vm_deps(vm)).await?;
        if readiness != Readiness::Ready {
            return self.record_waiting(vm, &readiness).await;
        }
        self.write_phase(name, Phase::Starting, None).await?;
        let generation = vm.metadata.generation;
        let (mut config, networks) = match self.launch_config(vm).await {
            Ok(launch) => launch,
            Err(message) => return self.start_failed(vm, message, restart).await,
        };
        let restored_from =
            match crate::template::restore(self.storage.as_ref(), vm, &mut config).await {
                Ok(restored) => restored,
                Err(message) => return self.start_failed(vm, message, restart).await,
            };
        let t0 = Instant::now();
        match self.hv.start(&config).await {
            Ok(info) => {
                self.time_first_output(name, &info, t0);
                if let Some(addr) = crate::ssh::ssh_endpoint(&networks) {
                    crate::ssh::probe_ssh(
                        self.svc.clone(),
                        name.to_owned(),
                        info.pid,
                        addr,
                        self.config.ssh_probe_timeout,
                    );
                }
                let phase = if config.start_paused {
                    Phase::Paused
                } else {
                    Phase::Running
                };
                self.svc
                    .update_status(name, |_, st| {
                        started(st, &info, phase, generation);
                        st.restarted_for = restart.clone();
                        st.networks = networks.clone();
                        if restored_from.is_some() {
                            st.restored_from = restored_from.clone();
                        }
                        if st.networks.iter().any(|n| !n.forwards.is_empty()) {
                            st.set_condition(Condition::new(
                                conditions::SSH_READY,
                                false,
                                reasons::WAITING,
                                "",
                            ));
                        }
                        true
                    })
                    .await?;
                if restored_from.is_some() {
                    crate::template::tell_identity(
                        self.hv.clone(),
                        self.svc.clone(),
                        self.telling.clone(),
                        vm,
                        info.pid,
                    );
                }
                Ok(None)
            }
            Err(e) => self.start_failed(vm, e.to_string(), restart).await,
        }
    }

    /// What QEMU is launched with for `vm` on this node: host files opened and checked,
    /// volumes resolved, NICs and the cloud-init seed prepared; and the networks it gets.
    /// `Err`: why it cannot start, for people.
    pub(crate) async fn launch_config(
        &self,
        vm: &Vm,
    ) -> Result<(VmConfig, Vec<corral_contract::NetworkAttachmentStatus>), String> {
        let key = vm.metadata.key();
        let mut config = VmConfig::from_spec(&vm.metadata.uid, &key, &vm.spec);
        if vm.spec.introspection {
            config.memory_file = Some(self.config.shm_dir.join(corral_hypervisor::guest_ram_name(
                &vm.metadata.uid,
                self.config.node.as_deref(),
            )));
        }
        if let Some(rules) = &self.config.host_paths {
            crate::host_files::open(rules, &vm.spec, &mut config).map_err(|e| e.to_string())?;
        }
        let rules = self.config.host_paths.clone().unwrap_or_default();
        crate::host_files::open_shares(&rules, &vm.spec, &mut config).map_err(|e| e.to_string())?;
        if !crate::disks::attached_volumes(&vm.spec).is_empty() {
            match &self.storage {
                Some(storage) => crate::disks::resolve(storage, vm, &mut config)
                    .await
                    .map_err(|e| e.to_string())?,
                None => return Err(ControllerError::NoStorage.to_string()),
            }
        }
        let prepared =
            crate::prepare::prepare(&self.svc, &self.config.seed_dir, self.hv.file_owner(), vm)
                .await
                .map_err(|e| e.to_string())?;
        config.nics = prepared.nics;
        if let Some(seed) = prepared.seed {
            config.disks.push(corral_hypervisor::DiskConfig {
                path: seed,
                format: corral_contract::DiskFormat::Raw,
                readonly: true,
                serial: Some("cidata".into()),
            });
        }
        Ok((config, prepared.networks))
    }

    async fn start_failed(
        &self,
        vm: &Vm,
        message: String,
        restart: Option<String>,
    ) -> Result<Requeue, ControllerError> {
        let key = vm.metadata.key();
        let name = key.as_str();
        let generation = vm.metadata.generation;
        tracing::warn!(vm = name, error = %message, "start failed");
        self.svc
            .update_status(name, |_, st| {
                st.phase = Phase::Failed;
                st.pid = None;
                st.message = Some(message.clone());
                st.observed_generation = generation;
                st.restarted_for = restart.clone();
                st.set_condition(Condition::new(
                    conditions::READY,
                    false,
                    reasons::START_FAILED,
                    &message,
                ));
                true
            })
            .await?;
        Ok(match vm.spec.restart_policy {
            RestartPolicy::Never => None,
            _ => self.backoff_wait(name).or(Some(self.config.backoff_base)),
        })
    }

    /// Records in `status.boot_time_ms` how long after the start request the guest printed its
    /// first byte on the serial console: its first sign of life.
    fn time_first_output(&self, name: &str, info: &VmInfo, t0: Instant) {
        let Ok(console) = self.hv.console(&info.uid) else {
            return;
        };
        let (svc, name, pid) = (self.svc.clone(), name.to_owned(), info.pid);
        tokio::spawn(async move {
            let (scrollback, mut rx) = console.subscribe();
            if scrollback.is_empty() {
                let first = tokio::time::timeout(Duration::from_secs(300), rx.recv()).await;
                if !matches!(first, Ok(Ok(_))) {
                    return;
                }
            }
            let ms = t0.elapsed().as_millis() as u64;
            // Only for the same process: a restart meanwhile has its own measurement.
            let _ = svc
                .update_status(&name, |_, st| {
                    let same = st.pid == Some(pid) && st.boot_time_ms.is_none();
                    if same {
                        st.boot_time_ms = Some(ms);
                    }
                    same
                })
                .await;
        });
    }

    /// Policy restarts of `name` in a row so far, and how long until the next is allowed.
    fn backoff_state(&self, name: &str) -> (u32, Duration) {
        let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        backoff
            .get(name)
            .map_or((0, Duration::ZERO), |(count, not_before)| {
                (*count, not_before.saturating_duration_since(Instant::now()))
            })
    }

    /// How long until a policy restart is allowed; `None` when it is allowed now (and the next
    /// one is pushed further out).
    fn backoff_wait(&self, name: &str) -> Option<Duration> {
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (count, not_before) = backoff.entry(name.to_owned()).or_insert((0, now));
        if *not_before > now {
            return Some(*not_before - now);
        }
        let delay = restart::backoff(self.config.backoff_base, self.config.backoff_max, *count);
        *count += 1;
        *not_before = now + delay;
        None
    }

    /// A VM whose volumes or networks are missing or not Ready waits in Pending, saying which
    /// (it is requeued when one of them changes); it never fails for "not yet".
    async fn record_waiting(
        &self,
        vm: &Vm,
        readiness: &Readiness,
    ) -> Result<Requeue, ControllerError> {
        let generation = vm.metadata.generation;
        let (reason, message) = (readiness.reason(), readiness.message().to_owned());
        self.svc
            .update_status(&vm.metadata.key(), |_, st| {
                let before = st.clone();
                st.phase = Phase::Pending;
                st.pid = None;
                st.message = Some(message.clone());
                st.observed_generation = generation;
                st.set_condition(Condition::new(conditions::READY, false, reason, &message));
                *st != before
            })
            .await?;
        Ok(None)
    }

    fn forget_adopted(&self, uid: &str) {
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    async fn record_live(
        &self,
        name: &str,
        vm: &Vm,
        phase: Phase,
        why: Option<String>,
    ) -> Result<Requeue, ControllerError> {
        let generation = vm.metadata.generation;
        let adopted = self
            .adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vm.metadata.uid);
        self.svc
            .update_status(name, |_, st| {
                let before = st.clone();
                if let Some(info) = &adopted {
                    if st.pid != Some(info.pid) {
                        started(st, info, phase, generation);
                    }
                }
                st.phase = phase;
                st.observed_generation = generation;
                st.message = why.clone();
                let (ready, reason) = match phase {
                    Phase::Running => (true, reasons::RUNNING),
                    _ => (false, reasons::PAUSED),
                };
                st.set_condition(Condition::new(
                    conditions::READY,
                    ready,
                    reason,
                    why.as_deref().unwrap_or(""),
                ));
                *st != before
            })
            .await?;
        Ok(None)
    }

    async fn record_stopped(
        &self,
        name: &str,
        vm: &Vm,
        exit: Option<Exit>,
        failed: bool,
    ) -> Result<Requeue, ControllerError> {
        let generation = vm.metadata.generation;
        self.forget_adopted(&vm.metadata.uid);
        let restart = vm
            .metadata
            .annotations
            .get(annotations::RESTART_REQUESTED_AT)
            .cloned();
        if !vm.status.networks.is_empty() {
            crate::prepare::release(vm).await;
        }
        self.svc
            .update_status(name, |_, st| {
                // A start this generation refused (a corrupted weights volume …) keeps its
                // reason; the exit of an earlier process must not replace it.
                let start_failed = st.phase == Phase::Failed
                    && st.observed_generation == generation
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.reason == reasons::START_FAILED);
                if start_failed {
                    return false;
                }
                let before = st.clone();
                st.phase = if failed {
                    Phase::Failed
                } else {
                    Phase::Stopped
                };
                st.pid = None;
                st.networks.clear();
                if let Some(c) = st
                    .conditions
                    .iter_mut()
                    .find(|c| c.type_ == conditions::SSH_READY)
                {
                    c.status = false;
                    c.reason = reasons::STOPPED.into();
                    c.message.clear();
                }
                st.observed_generation = generation;
                if let Some(exit) = &exit {
                    st.exit = Some(exit_info(exit));
                    st.message = Some(format!("QEMU {exit}"));
                }
                if vm.spec.power == Power::Stopped {
                    st.restarted_for = restart.clone();
                }
                let reason = if failed {
                    reasons::FAILED
                } else {
                    reasons::STOPPED
                };
                st.set_condition(Condition::new(
                    conditions::READY,
                    false,
                    reason,
                    st.message.as_deref().unwrap_or(""),
                ));
                *st != before
            })
            .await?;
        Ok(None)
    }

    async fn write_phase(
        &self,
        name: &str,
        phase: Phase,
        message: Option<&str>,
    ) -> Result<(), ServiceError> {
        self.svc
            .update_status(name, |_, st| {
                let changed = st.phase != phase;
                st.phase = phase;
                if let Some(m) = message {
                    st.message = Some(m.to_owned());
                }
                changed
            })
            .await
            .map(drop)
    }

    async fn finish_delete(
        &self,
        vm: &Vm,
        actual: Option<VmState>,
    ) -> Result<Requeue, ControllerError> {
        let uid = &vm.metadata.uid;
        let key = vm.metadata.key();
        let name = key.as_str();
        if matches!(
            actual,
            Some(VmState::Running | VmState::Paused { .. } | VmState::ShuttingDown)
        ) {
            self.write_phase(name, Phase::Stopping, Some("deleting"))
                .await?;
            // `delete --grace/--force` says how long the guest gets; 0 skips the graceful
            // stop, so a guest that ignores the power button holds nothing up.
            let grace = vm
                .metadata
                .annotations
                .get(annotations::DELETE_GRACE_SECONDS)
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(self.config.delete_timeout, Duration::from_secs);
            if grace.is_zero() {
                self.hv.stop(uid, StopMode::Force).await?;
            } else {
                self.stop(vm, grace).await?;
            }
        }
        match self.hv.cleanup(uid).await {
            Ok(()) | Err(HvError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_file(self.config.shm_dir.join(format!("corral-{uid}")));
        let _ = std::fs::remove_file(crate::prepare::seed_path(&self.config.seed_dir, uid));
        crate::prepare::release(vm).await;
        let current = self.svc.get(name).await?;
        match self
            .svc
            .finalize_delete(name, current.metadata.resource_version)
            .await
        {
            Ok(()) | Err(ServiceError::NotFound { .. }) => {}
            Err(ServiceError::Conflict { .. }) => return Ok(Some(Duration::ZERO)),
            Err(e) => return Err(e.into()),
        }
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.deps.forget(name);
        tracing::info!(vm = name, %uid, "deleted");
        self.delete_owned_volumes(uid).await;
        Ok(None)
    }

    /// Deletes the volumes made for the VM `uid` (`vm create --image`). A failure is logged:
    /// the VM is gone either way, and the storage controller's sweep retries.
    async fn delete_owned_volumes(&self, uid: &str) {
        let Some(storage) = &self.storage else { return };
        let volumes = match storage.volumes.list("").await {
            Ok((v, _)) => v,
            Err(e) => {
                tracing::warn!(%uid, error = %e, "listing the VM's volumes to delete them");
                return;
            }
        };
        for volume in volumes.iter().filter(|v| {
            v.metadata
                .annotations
                .get(annotations::OWNER_VM)
                .map(String::as_str)
                == Some(uid)
        }) {
            let key = volume.metadata.key();
            let name = key.as_str();
            match storage.volumes.delete(name, None).await {
                Ok(_) | Err(ServiceError::NotFound { .. }) => {
                    tracing::info!(volume = name, vm_uid = %uid, "deleted the VM's volume")
                }
                Err(e) => tracing::warn!(volume = name, error = %e, "deleting the VM's volume"),
            }
        }
    }
}

fn started(st: &mut VmStatus, info: &VmInfo, phase: Phase, generation: u64) {
    st.phase = phase;
    st.pid = Some(info.pid);
    st.accelerator = Some(info.accel);
    st.qemu_version = Some(info.emulator_version.clone());
    st.started_at = Some(now());
    st.boot_time_ms = None;
    st.exit = None;
    st.message = None;
    st.observed_generation = generation;
    let reason = if phase == Phase::Running {
        reasons::RUNNING
    } else {
        reasons::PAUSED
    };
    st.set_condition(Condition::new(
        conditions::READY,
        phase == Phase::Running,
        reason,
        "",
    ));
}

/// How often a guest QEMU stopped on a failed write is resumed to try the write again.
const IO_ERROR_RETRY: Duration = Duration::from_secs(30);

/// What the controller does about a guest QEMU holds stopped, by QEMU's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Runs again on `cont`: paused by a user, never started (`prelaunch`: created paused, or
    /// corrald died between spawning QEMU and `cont`), or stopped by a debugger.
    Resumable,
    /// Stopped for good: a guest panic, an emulation error, a watchdog firing. The process is
    /// ended and the end counts as a failure, so the restart policy applies.
    Crashed,
    /// A disk write failed; QEMU retries it on `cont`.
    IoError,
    /// A passing state: saving or loading a snapshot, migrating.
    Busy,
    /// Anything else (suspended by the guest, after an outgoing migration, a state newer
    /// than this code): reported, left alone.
    Report,
}

impl Held {
    fn of(reason: &str) -> Held {
        match reason {
            "paused" | "prelaunch" | "debug" => Held::Resumable,
            "guest-panicked" | "internal-error" | "watchdog" => Held::Crashed,
            "io-error" => Held::IoError,
            "save-vm" | "restore-vm" | "finish-migrate" | "inmigrate" | "colo" => Held::Busy,
            _ => Held::Report,
        }
    }
}
