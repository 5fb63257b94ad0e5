//! Live migration between nodes, carried out by the VM controllers of the two nodes through
//! the VM's status, so that either side may restart at any line and carry on.
//!
//! 1. `corral vm migrate` sets the `corral.dev/migrate-to` annotation (`NODE@TIME`, or
//!    `@TIME` for the scheduler to pick).
//! 2. The source (the node in `status.node`) takes a new request: it writes
//!    `status.migration` = `Pending` with the target node.
//! 3. The target starts QEMU with `-incoming defer`, makes it listen, writes `Listening` and
//!    the address.
//! 4. The source tells its QEMU to migrate there (`Migrating`), and follows `query-migrate`.
//! 5. When QEMU says `completed`, the source is stopped (`postmigrate`) and the target's QEMU
//!    holds the VM paused (it was started with `-S`). The source writes `status.node` = target
//!    and `Completed` in one compare-and-swap write: the VM belongs to one node at every
//!    instant and runs in neither QEMU across the switch. Then the source's QEMU is ended and
//!    the target's controller, now the owner, resumes the guest.
//!
//! Failure or cancellation (the annotation removed or replaced) before the switch leaves the
//! VM running on the source; the target's QEMU, bound elsewhere, is then ended like any
//! process of a VM bound to another node.

use std::time::Duration;

use corral_contract::names::annotations;
use corral_contract::{MigrationOptions, MigrationPhase, MigrationStatus, Power, Vm};
use corral_hypervisor::{MigrationInfo, MigrationLimits, MigrationSetup, StopMode, VmState};

use crate::migrate_disks::{failed_towards, mirror_progress, moved_here_with_disks};
use crate::schedule::{ScheduleConfig, place};
use crate::{ControllerError, VmController};

/// How often a migration in flight is looked at.
const POLL: Duration = Duration::from_millis(100);

/// How often once QEMU has paused the guest for the last pass (stop-and-copy): the end is a
/// few milliseconds away, and until the switch the guest runs nowhere, so each millisecond of
/// waiting here is a millisecond of downtime the guest sees. The `STOP` event brings the VM
/// here at the start of that pass.
const FINISH_POLL: Duration = Duration::from_millis(2);

/// How often the target looks at a guest that arrived with its disks while its QEMU still
/// reads the last of the state (the guest runs nowhere meanwhile).
const ARRIVING_POLL: Duration = Duration::from_millis(10);

/// Longest downtime QEMU may plan for the switch, in milliseconds.
pub const DOWNTIME_LIMIT_MS: u64 = 300;

/// A request made by the `corral.dev/migrate-to` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The annotation's value: the request's identity.
    value: String,
    /// The node asked for; `None`: the scheduler picks.
    target: Option<String>,
    /// A drain asked for it: if the VM cannot move live, it is evicted instead.
    drain: bool,
}

impl Request {
    pub(crate) fn of(vm: &Vm) -> Option<Request> {
        Request::of_value(vm.metadata.annotations.get(annotations::MIGRATE_TO)?)
    }

    fn of_value(value: &str) -> Option<Request> {
        let (target, when) = value.split_once('@')?;
        Some(Request {
            value: value.to_owned(),
            target: (!target.is_empty()).then(|| target.to_owned()),
            drain: when.starts_with(annotations::MIGRATE_DRAIN),
        })
    }
}

/// The migration `vm`'s status follows, if it follows the current request and has not ended.
fn in_flight(vm: &Vm) -> Option<&MigrationStatus> {
    let request = Request::of(vm)?;
    vm.status
        .migration
        .as_ref()
        .filter(|m| m.request == request.value && !m.phase.ended())
}

impl VmController {
    /// The source's part, for a VM bound to this node. `Some(after)`: the migration took this
    /// round (look again after `after`); `None`: nothing to do for it, converge as usual.
    pub(crate) async fn migrate_out(
        &self,
        vm: &Vm,
        me: &str,
        actual: Option<&VmState>,
    ) -> Result<Option<Duration>, ControllerError> {
        let key = vm.metadata.key();
        let uid = &vm.metadata.uid;
        let request = Request::of(vm);
        let status = vm.status.migration.clone();
        let live = matches!(actual, Some(VmState::Running | VmState::Paused { .. }));

        // Arrived with its disks, not resumed yet: the export closes and the volumes point
        // at the files here before the guest runs on them.
        if moved_here_with_disks(vm, me) && matches!(actual, Some(VmState::Paused { .. })) {
            // The source has written the switch once its own side completed; this QEMU may
            // still be reading the last of the state, and its disks are not active until then.
            if matches!(actual, Some(VmState::Paused { reason }) if reason == "inmigrate") {
                return Ok(Some(ARRIVING_POLL));
            }
            self.hv.stop_disk_export(uid).await?;
            if let Err(why) = self.take_moved_volumes(vm).await {
                tracing::warn!(vm = %key, %why, "pointing the volumes at their files here");
                return Ok(Some(Duration::from_secs(1)));
            }
        }

        // Withdrawn or replaced while in flight: cancel it; the VM stays here.
        if let Some(st) = status.as_ref().filter(|st| !st.phase.ended()) {
            if request.as_ref().is_none_or(|r| r.value != st.request) {
                if st.phase == MigrationPhase::Migrating && live {
                    let _ = self.hv.migrate_cancel(uid).await;
                }
                if st.disk_address.is_some() && live {
                    let _ = self.hv.abort_disk_mirrors(uid).await;
                }
                self.write_migration(&key, &st.request, |m| {
                    m.phase = MigrationPhase::Cancelled;
                    m.message = Some("the request was withdrawn; the VM stays".into());
                })
                .await?;
                return Ok(Some(Duration::ZERO));
            }
        }
        let Some(request) = request else {
            return Ok(None);
        };
        let current = status.filter(|st| st.request == request.value);
        let Some(st) = current else {
            return self.take_request(vm, me, &request, live).await;
        };
        match st.phase {
            MigrationPhase::Pending => Ok(Some(POLL)),
            MigrationPhase::Listening | MigrationPhase::Migrating => {
                let Some(address) = st.address.clone() else {
                    return Ok(Some(POLL));
                };
                let info = self.hv.migration(uid).await?;
                if info.completed() {
                    // Only the run state, read after, tells an outgoing migration that
                    // completed from the incoming one a QEMU that arrived here by migration
                    // still reports.
                    match self.hv.state(uid).await? {
                        VmState::Paused { reason } if reason == "postmigrate" => {
                            return self.hand_over(vm, me, &st, &info).await;
                        }
                        VmState::Paused { reason } if reason == "finish-migrate" => {
                            return Ok(Some(FINISH_POLL));
                        }
                        _ => {}
                    }
                }
                if st.phase == MigrationPhase::Migrating && info.failed() {
                    let why = info
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("QEMU's migration ended as {}", info.status));
                    return self.failed_out(vm, &st, why).await;
                }
                if !sending(&info) {
                    if let Some(after) = self.disks_first(vm, &st).await? {
                        return Ok(after);
                    }
                    // Not sent yet (also after a restart between the command and the status
                    // write, when QEMU would say so): send now.
                    tracing::info!(vm = %key, target = %st.target, %address, tls = st.tls, "migrating");
                    let setup = match self.setup(&st, false) {
                        Ok(setup) => setup,
                        Err(why) => return self.failed_out(vm, &st, why).await,
                    };
                    let limits = MigrationLimits {
                        downtime_ms: DOWNTIME_LIMIT_MS,
                        bandwidth: self.bandwidth(&st),
                    };
                    // With disks, the setup was made before the mirrors, whose NBD clients hold
                    // its TLS credentials.
                    let prepared = match st.disk_address {
                        Some(_) => Ok(()),
                        None => self.hv.prepare_migration(uid, &setup).await,
                    };
                    let sent = match prepared {
                        Ok(()) => self.hv.migrate(uid, &address, limits).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        return self.failed_out(vm, &st, e.to_string()).await;
                    }
                }
                let mut info = self.hv.migration(uid).await.unwrap_or(info);
                let finishing = info.status == "active"
                    && matches!(
                        self.hv.state(uid).await,
                        Ok(VmState::Paused { reason }) if reason == "finish-migrate"
                    );
                // Post-copy once the first pass of RAM is sent (libvirt's
                // --postcopy-after-precopy): what is left follows on demand.
                if st.postcopy && info.status == "active" && info.dirty_sync_count >= 2 {
                    tracing::info!(vm = %key, "switching the migration to post-copy");
                    if let Err(e) = self.hv.migrate_start_postcopy(uid).await {
                        tracing::warn!(vm = %key, error = %e, "cannot switch to post-copy");
                    }
                    info = self.hv.migration(uid).await.unwrap_or(info);
                }
                // Progress is written in steps of a tenth of RAM, not at every look: each write
                // wakes the store and both nodes' controllers (and the target's look at its
                // receiving QEMU), which competes with the migration for the CPUs, and a write
                // made here brings this VM back at once rather than after `POLL`.
                let step = (st.total_bytes / 10).max(1);
                let news = st.phase != MigrationPhase::Migrating
                    || info.transferred.abs_diff(st.transferred_bytes) >= step;
                if sending(&info) && news {
                    self.write_migration(&key, &st.request, |m| {
                        m.phase = MigrationPhase::Migrating;
                        progress(m, &info);
                    })
                    .await?;
                } else if st.phase != MigrationPhase::Migrating {
                    self.write_migration(&key, &st.request, |m| {
                        m.phase = MigrationPhase::Migrating;
                    })
                    .await?;
                }
                Ok(Some(if finishing { FINISH_POLL } else { POLL }))
            }
            // The target gave up (its QEMU failed): make sure ours is not still sending, and
            // evict a drained node's VM (the target may write only the migration's status).
            MigrationPhase::Failed if live => {
                if self
                    .hv
                    .migration(uid)
                    .await
                    .is_ok_and(|i| i.status == "active")
                {
                    let _ = self.hv.migrate_cancel(uid).await;
                }
                if st.disk_address.is_some() {
                    let _ = self.hv.abort_disk_mirrors(uid).await;
                }
                let evicting = vm
                    .status
                    .condition(corral_service::EVICTING)
                    .is_some_and(|c| c.status);
                if request.drain && st.source == me && !evicting {
                    let why = st.message.clone().unwrap_or_default();
                    self.svc
                        .update_status(&key, |vm, s| {
                            if vm.status.node.as_deref() != Some(me) {
                                return false;
                            }
                            evict(s, me, &why);
                            true
                        })
                        .await?;
                    return Ok(Some(Duration::ZERO));
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// A new request on the source: check it can move, pick the target, write `Pending`.
    async fn take_request(
        &self,
        vm: &Vm,
        me: &str,
        request: &Request,
        live: bool,
    ) -> Result<Option<Duration>, ControllerError> {
        let key = vm.metadata.key();
        let refuse = |why: String| MigrationStatus {
            request: request.value.clone(),
            source: me.to_owned(),
            target: request.target.clone().unwrap_or_default(),
            phase: MigrationPhase::Failed,
            message: Some(why),
            ..MigrationStatus::default()
        };
        let verdict = if !live || vm.spec.power == Power::Stopped {
            Err(format!(
                "only a running or paused VM moves live; it is {}",
                vm.status.phase
            ))
        } else if !vm.spec.shares.is_empty() {
            Err(
                "its shared folders (virtiofs) cannot move with it; stop it and start it on \
                 the other node instead"
                    .into(),
            )
        } else {
            match self.local_disks(vm).await {
                Ok(_) => self.pick_target(vm, me, request).await,
                Err(why) => Err(why),
            }
        };
        let options = vm
            .metadata
            .annotations
            .get(annotations::MIGRATE_OPTIONS)
            .map(|o| MigrationOptions::from_annotation(o))
            .unwrap_or_default();
        let status = match verdict {
            Ok(target) => MigrationStatus {
                request: request.value.clone(),
                source: me.to_owned(),
                target,
                phase: MigrationPhase::Pending,
                auto_converge: options.auto_converge,
                postcopy: options.postcopy,
                bandwidth: options.bandwidth,
                ..MigrationStatus::default()
            },
            Err(why) => {
                tracing::info!(vm = %key, %why, "migration refused");
                refuse(why)
            }
        };
        let pending = status.phase == MigrationPhase::Pending;
        let me = me.to_owned();
        self.svc
            .update_status(&key, |vm, st| {
                if vm.status.node.as_deref() != Some(me.as_str()) {
                    return false;
                }
                if !pending && request.drain {
                    evict(st, &me, status.message.as_deref().unwrap_or_default());
                }
                st.migration = Some(status.clone());
                true
            })
            .await?;
        Ok(Some(if pending { POLL } else { Duration::ZERO }))
    }

    /// The node the VM goes to: the one asked for, if it may take it, else the scheduler's
    /// choice among the other nodes.
    async fn pick_target(&self, vm: &Vm, me: &str, request: &Request) -> Result<String, String> {
        let nodes = corral_service::NodeService::new(self.svc.store().clone());
        let (nodes, _) = nodes.list("").await.map_err(|e| e.to_string())?;
        let (bound, _) = self.svc.list("").await.map_err(|e| e.to_string())?;
        let others: Vec<_> = nodes
            .into_iter()
            .filter(|n| n.metadata.name.as_str() != me)
            .filter(|n| {
                request
                    .target
                    .as_deref()
                    .is_none_or(|t| n.metadata.name.as_str() == t)
            })
            .collect();
        if others.is_empty() {
            return Err(match &request.target {
                Some(t) if t == me => format!("it already runs on node {me}"),
                Some(t) => format!("there is no node {t}"),
                None => "there is no other node to move it to".into(),
            });
        }
        // The disks move with it (or are on every node): only their pools count.
        let mut needs = crate::VolumeNeeds::NONE;
        if let Some(storage) = &self.storage {
            for name in vm.spec.volume_names() {
                let volume = storage
                    .volumes
                    .get(&vm.metadata.key_of(name))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(pool) = &volume.spec.pool {
                    needs.add_pool(pool.as_str());
                }
            }
        }
        place(vm, &others, &bound, &needs, &ScheduleConfig::default()).map_err(|u| u.to_string())
    }

    /// QEMU says the VM arrived: the switch of owner, then the end of the source's QEMU.
    async fn hand_over(
        &self,
        vm: &Vm,
        me: &str,
        st: &MigrationStatus,
        info: &MigrationInfo,
    ) -> Result<Option<Duration>, ControllerError> {
        let key = vm.metadata.key();
        let uid = &vm.metadata.uid;
        if st.disk_address.is_some() {
            // libvirt's order: the mirrors end after the RAM, copying the last dirty blocks
            // while the guest is stopped, so the target's disks are the source's at the
            // switch. If they cannot, the guest runs on here.
            if let Err(e) = self.hv.complete_disk_mirrors(uid).await {
                let _ = self.hv.abort_disk_mirrors(uid).await;
                let _ = self.hv.resume(uid).await;
                let why = format!("the disks did not finish moving: {e}");
                return self.migration_failed(&key, st, why, true).await;
            }
        }
        let (me, target, request) = (me.to_owned(), st.target.clone(), st.request.clone());
        let written = self
            .svc
            .update_status(&key, |vm, s| {
                let ours = vm.status.node.as_deref() == Some(me.as_str())
                    && vm
                        .status
                        .migration
                        .as_ref()
                        .is_some_and(|m| m.request == request);
                if !ours {
                    return false;
                }
                s.node = Some(target.clone());
                s.pid = None;
                if let Some(m) = s.migration.as_mut() {
                    progress(m, info);
                    m.phase = MigrationPhase::Completed;
                    m.downtime_ms = info.downtime_ms;
                    m.total_time_ms = Some(info.total_time_ms);
                }
                true
            })
            .await?;
        if written.status.node.as_deref() == Some(st.target.as_str()) {
            tracing::info!(
                vm = %key,
                target = %st.target,
                downtime_ms = ?info.downtime_ms,
                total_ms = info.total_time_ms,
                "migrated"
            );
            self.hv.stop(&vm.metadata.uid, StopMode::Force).await?;
            self.hv.cleanup(&vm.metadata.uid).await?;
            if st.disk_address.is_some() {
                self.remove_moved_away_disks(vm).await;
            }
        }
        // Not ours any more: the next look finds it bound to the target.
        Ok(Some(Duration::ZERO))
    }

    async fn migration_failed(
        &self,
        key: &str,
        st: &MigrationStatus,
        why: String,
        on_source: bool,
    ) -> Result<Option<Duration>, ControllerError> {
        tracing::warn!(vm = %key, target = %st.target, %why, "migration failed");
        // Only the source evicts: the target may change the migration's status alone.
        let drain = on_source && Request::of_value(&st.request).is_some_and(|r| r.drain);
        let source = st.source.clone();
        self.svc
            .update_status(key, |_, s| match s.migration.as_mut() {
                Some(m) if m.request == st.request && !m.phase.ended() => {
                    m.phase = MigrationPhase::Failed;
                    m.message = Some(format!("{why}; the VM runs on where it was"));
                    if drain {
                        evict(s, &source, &why);
                    }
                    true
                }
                _ => false,
            })
            .await?;
        Ok(Some(Duration::ZERO))
    }

    /// The target's part, for a VM bound to another node. `Some`: a migration towards this
    /// node holds its process here; `None`: not ours, treat it as any VM bound elsewhere.
    pub(crate) async fn migrate_in(
        &self,
        vm: &Vm,
        me: &str,
        actual: Option<&VmState>,
    ) -> Result<Option<Duration>, ControllerError> {
        let Some(st) = in_flight(vm).filter(|m| m.target == me).cloned() else {
            if failed_towards(vm, me) {
                self.remove_incoming_disks(vm).await;
            }
            return Ok(None);
        };
        let key = vm.metadata.key();
        let uid = &vm.metadata.uid;
        let alive = matches!(
            actual,
            Some(VmState::Running | VmState::Paused { .. } | VmState::ShuttingDown)
        );
        match st.phase {
            MigrationPhase::Pending => {
                // A QEMU left from before a restart may have listened already: start afresh.
                if actual.is_some() {
                    let _ = self.hv.stop(uid, StopMode::Force).await;
                    self.hv.cleanup(uid).await?;
                }
                self.remove_incoming_disks(vm).await;
                match self.listen(vm, &st).await {
                    Ok((address, disk_address)) => {
                        let tls = self.config.migration_tls.is_some();
                        tracing::info!(vm = %key, %address, tls, "waiting for a migrating VM");
                        self.write_migration(&key, &st.request, |m| {
                            m.phase = MigrationPhase::Listening;
                            m.address = Some(address.clone());
                            m.disk_address = disk_address.clone();
                            m.tls = tls;
                        })
                        .await?;
                        Ok(Some(POLL))
                    }
                    Err(why) => {
                        let _ = self.hv.stop(uid, StopMode::Force).await;
                        let _ = self.hv.cleanup(uid).await;
                        self.remove_incoming_disks(vm).await;
                        self.migration_failed(
                            &key,
                            &st,
                            format!("node {me} could not receive it: {why}"),
                            false,
                        )
                        .await
                    }
                }
            }
            _ if !alive => {
                let why = match actual {
                    Some(VmState::Exited(exit)) => format!("the receiving QEMU ended: {exit}"),
                    _ => "the receiving QEMU is gone".into(),
                };
                let _ = self.hv.cleanup(uid).await;
                self.remove_incoming_disks(vm).await;
                self.migration_failed(&key, &st, format!("node {me}: {why}"), false)
                    .await
            }
            _ => Ok(Some(Duration::from_secs(1))),
        }
    }

    /// How this node's side of migration `st` is set up: TLS if this node has a certificate
    /// (and then only TLS: a source with one never sends in the clear, nor does a target
    /// listen in the clear), with the migration's options.
    /// The bandwidth of the move `st`: what it asked for, and this node's own limit, the
    /// lower of the two.
    pub(crate) fn bandwidth(&self, st: &MigrationStatus) -> Option<u64> {
        match (st.bandwidth, self.config.migration_bandwidth) {
            (Some(asked), Some(node)) => Some(asked.min(node)),
            (asked, node) => asked.or(node),
        }
    }

    fn setup(&self, st: &MigrationStatus, incoming: bool) -> Result<MigrationSetup, String> {
        let tls = self.config.migration_tls.clone();
        if !incoming && st.tls != tls.is_some() {
            return Err(if st.tls {
                format!(
                    "node {} listens with TLS, and this node has no certificate from the cluster \
                     CA to migrate with",
                    st.target
                )
            } else {
                format!(
                    "node {} listens without TLS (it has no certificate from the cluster CA), and \
                     this node migrates over TLS only",
                    st.target
                )
            });
        }
        Ok(MigrationSetup {
            tls,
            incoming,
            peer: st.target.clone(),
            auto_converge: st.auto_converge,
            postcopy: st.postcopy,
        })
    }

    /// Starts the VM's QEMU here waiting for its state (on files made here for its
    /// node-local volumes, exported for the source to mirror into), and makes it listen; the
    /// address, and that of the disks.
    async fn listen(
        &self,
        vm: &Vm,
        st: &MigrationStatus,
    ) -> Result<(String, Option<String>), String> {
        let setup = self.setup(st, true)?;
        let disks = self.local_disks(vm).await?;
        let (mut config, _) = self.launch_config(vm).await?;
        self.make_incoming_disks(&disks, &mut config).await?;
        config.incoming = true;
        let info = self
            .hv
            .start(&config)
            .await
            .map_err(|e| format!("starting QEMU: {e}"))?;
        // Its pid goes into the status once the VM is this node's (see `record_live`).
        self.adopted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm.metadata.uid.clone(), info);
        let host = self.config.migration_address;
        // QEMU binds the port itself; one free a moment ago is very likely free still, and a
        // clash fails this attempt only (the request can be made again).
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port on {host}: {e}"))?
            .port();
        let address = match host {
            std::net::IpAddr::V6(v6) => format!("tcp:[{v6}]:{port}"),
            std::net::IpAddr::V4(v4) => format!("tcp:{v4}:{port}"),
        };
        self.hv
            .prepare_migration(&vm.metadata.uid, &setup)
            .await
            .map_err(|e| format!("setting up the migration: {e}"))?;
        let disk_address = match disks.is_empty() {
            true => None,
            false => Some(
                self.export_incoming_disks(&vm.metadata.uid, &disks, setup.tls.is_some())
                    .await?,
            ),
        };
        self.hv
            .migrate_incoming(&vm.metadata.uid, &address)
            .await
            .map_err(|e| format!("listening at {address}: {e}"))?;
        Ok((address, disk_address))
    }

    /// Source: the disks go first. `Some(after)`: they took this round (the mirrors started,
    /// or are not ready yet, or failed); `None`: every disk follows the guest, the RAM may go.
    async fn disks_first(
        &self,
        vm: &Vm,
        st: &MigrationStatus,
    ) -> Result<Option<Option<Duration>>, ControllerError> {
        let Some(address) = st.disk_address.clone() else {
            return Ok(None);
        };
        let key = vm.metadata.key();
        let uid = &vm.metadata.uid;
        let mirrors = self.hv.disk_mirrors(uid).await?;
        if mirrors.is_empty() {
            if st.disks_ready {
                let why = "the disk mirrors ended before the RAM moved".to_owned();
                return self.failed_out(vm, st, why).await.map(Some);
            }
            let started = match (self.setup(st, false), self.local_disks(vm).await) {
                (Ok(setup), Ok(disks)) => match self.hv.prepare_migration(uid, &setup).await {
                    Ok(()) => {
                        let peer = setup.tls.is_some().then(|| st.target.clone());
                        self.start_mirrors(uid, &disks, &address, peer, self.bandwidth(st))
                            .await
                    }
                    Err(e) => Err(e.to_string()),
                },
                (Err(why), _) | (_, Err(why)) => Err(why),
            };
            if let Err(why) = started {
                return self.failed_out(vm, st, why).await.map(Some);
            }
            tracing::info!(vm = %key, target = %st.target, %address, "mirroring the disks");
            return Ok(Some(Some(POLL)));
        }
        if let Some(e) = mirrors.iter().find_map(|m| m.error.clone()) {
            let why = format!("mirroring the disks: {e}");
            return self.failed_out(vm, st, why).await.map(Some);
        }
        let (copied, total, ready) = mirror_progress(&mirrors);
        // In steps of a tenth, like the RAM's progress (see `migrate_out`). The phase stays
        // `Listening` until the RAM goes: QEMU's report of an earlier, cancelled attempt must
        // not read as this one's end.
        let news = ready != st.disks_ready
            || st.disk_total_bytes == 0
            || copied.abs_diff(st.disk_copied_bytes) >= (total / 10).max(1);
        if news {
            self.write_migration(&key, &st.request, |m| {
                m.disk_copied_bytes = copied;
                m.disk_total_bytes = total;
                m.disks_ready = ready;
            })
            .await?;
        }
        Ok((!ready).then_some(Some(POLL)))
    }

    /// Source: the migration failed; the disk mirrors stop, the VM runs on here.
    async fn failed_out(
        &self,
        vm: &Vm,
        st: &MigrationStatus,
        why: String,
    ) -> Result<Option<Duration>, ControllerError> {
        if st.disk_address.is_some() {
            let _ = self.hv.abort_disk_mirrors(&vm.metadata.uid).await;
        }
        self.migration_failed(&vm.metadata.key(), st, why, true)
            .await
    }

    /// Changes the migration of `status` if it still carries out `request`.
    async fn write_migration(
        &self,
        key: &str,
        request: &str,
        mut change: impl FnMut(&mut MigrationStatus),
    ) -> Result<(), ControllerError> {
        self.svc
            .update_status(key, |_, st| match st.migration.as_mut() {
                Some(m) if m.request == request => {
                    let before = m.clone();
                    change(m);
                    *m != before
                }
                _ => false,
            })
            .await?;
        Ok(())
    }
}

/// A drained node's VM that could not move live: it is stopped there and placed again
/// (see `VmController::evict`), saying why.
fn evict(st: &mut corral_contract::VmStatus, node: &str, why: &str) {
    let mut c = corral_contract::Condition::new(
        corral_service::EVICTING,
        true,
        "NodeDrained",
        format!(
            "node {node} is drained and the VM could not move live ({why}): it stops there and \
             is placed again"
        ),
    );
    c.last_transition =
        Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    st.set_condition(c);
}

/// QEMU is sending the VM (the states of an outgoing migration under way).
fn sending(info: &MigrationInfo) -> bool {
    matches!(
        info.status.as_str(),
        "setup" | "active" | "device" | "pre-switchover" | "wait-unplug" | "postcopy-active"
    )
}

fn progress(m: &mut MigrationStatus, info: &MigrationInfo) {
    m.transferred_bytes = info.transferred;
    m.remaining_bytes = info.remaining;
    m.total_bytes = info.total;
    m.dirty_pages_rate = info.dirty_pages_rate;
    m.expected_downtime_ms = info.expected_downtime_ms;
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Boot, VmSpec};

    fn vm_with(annotation: Option<&str>) -> Vm {
        let spec = VmSpec::builder(Boot::Kernel {
            kernel: "/k".into(),
            initrd: None,
            cmdline: None,
        })
        .build()
        .unwrap();
        let mut vm = Vm::new("a".parse().unwrap(), spec);
        if let Some(a) = annotation {
            vm.metadata
                .annotations
                .insert(annotations::MIGRATE_TO.into(), a.into());
        }
        vm
    }

    #[test]
    fn a_request_names_its_node_or_leaves_it_to_the_scheduler() {
        let to_b = Request::of(&vm_with(Some("b@2026-12-04T18:00:00Z"))).unwrap();
        assert_eq!(to_b.target.as_deref(), Some("b"));
        let any = Request::of(&vm_with(Some("@2026-12-04T18:00:00Z"))).unwrap();
        assert_eq!(any.target, None);
        assert_eq!(Request::of(&vm_with(Some("garbage"))), None);
        assert_eq!(Request::of(&vm_with(None)), None);
    }

    #[test]
    fn a_migration_is_in_flight_only_for_the_current_request() {
        let mut vm = vm_with(Some("b@1"));
        vm.status.migration = Some(MigrationStatus {
            request: "b@1".into(),
            phase: MigrationPhase::Migrating,
            ..MigrationStatus::default()
        });
        assert!(in_flight(&vm).is_some());
        vm.metadata
            .annotations
            .insert(annotations::MIGRATE_TO.into(), "b@2".into());
        assert!(in_flight(&vm).is_none(), "a new request replaces it");
        vm.metadata.annotations.clear();
        assert!(in_flight(&vm).is_none(), "withdrawn");
    }
}
