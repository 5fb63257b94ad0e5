//! Guest memory through the API: the one place that decides who may read a VM's RAM, opens
//! it, and audits the act. REST, WebSocket and gRPC handlers (`rest.rs`, `grpc.rs` here) only
//! decode, call [`MemoryBridge`] and encode.

pub mod grpc;
pub mod rest;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_contract::{Arch, Phase};
use corral_guestmem::{GuestRam, HilbertStream, MemoryLayout, discover, discover_layout};
use corral_qemu::QemuBackend;
use corral_service::{ServiceError, VmService};
use tokio::sync::mpsc;

use crate::audit::{AuditEntry, AuditLog};
use crate::auth::Caller;

/// The most bytes one REST read returns; larger ranges go through gRPC's stream or a snapshot.
pub const MAX_REST_READ: u64 = 64 << 20;
/// Bytes per chunk of a streamed read or snapshot.
pub const CHUNK: usize = 1 << 20;
/// Longest pattern `find` accepts.
pub const MAX_PATTERN: usize = 4096;
/// Addresses `find` returns unless asked for fewer.
pub const DEFAULT_FIND_LIMIT: u32 = 1000;
/// Page re-reads a consistent snapshot allows per changed page.
const MAX_REREADS: u32 = 8;
/// Bytes sampled per cell of a map (a PNG asked for once).
const MAP_SAMPLES: u32 = 64;
/// Bytes sampled per cell of a live frame (the fewest that still tell random data apart).
const STREAM_SAMPLES: u32 = 8;
/// Cells a live frame re-samples; the others keep their colour from earlier frames. At the
/// default 128×128 a cell is fresh 3.75 times a second at 60 fps, and three VMs streamed at
/// 60 fps cost about 4 % of a core (`bench/src/bin/memory.rs`).
const STREAM_CELLS_PER_FRAME: u32 = 1024;

/// Why a memory request failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The caller lacks the `memory` permission.
    #[error("{0}")]
    PermissionDenied(String),
    /// From the service layer (not found, store trouble).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The request is malformed (field named in the message).
    #[error("{0}")]
    Invalid(String),
    /// The VM exists but its RAM cannot be read now (not introspectable, not running).
    #[error("{0}")]
    Unavailable(String),
    /// The bridge failed on a VM that should be readable.
    #[error("{0}")]
    Internal(String),
}

/// How to copy all of a guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// While the guest runs, re-reading pages that changed during the copy.
    Consistent,
    /// With the guest's vCPUs paused for the copy.
    Atomic,
}

impl SnapshotMode {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Consistent => "consistent",
            SnapshotMode::Atomic => "atomic",
        }
    }
}

/// A copy of all guest RAM and how it was taken.
#[derive(Debug)]
pub struct Snapshot {
    /// RAM in layout order.
    pub data: Vec<u8>,
    /// `(guest-physical base, len)` of each stretch of `data`, in order.
    pub regions: Vec<(u64, u64)>,
    /// How it was taken.
    pub mode: SnapshotMode,
    /// Pages that may mix old and new bytes (consistent mode).
    pub torn_pages: Vec<u64>,
    /// Pages re-read because they changed during the copy (consistent mode).
    pub reread_pages: u64,
    /// How long the guest was paused (atomic mode).
    pub paused: Duration,
    /// How long the copy took.
    pub copy: Duration,
}

/// A live Hilbert view: RGB frames (`side`×`side`, 3 bytes a pixel, rows top down).
#[derive(Debug)]
pub struct FrameStream {
    /// Width and height in pixels.
    pub side: u32,
    /// Frames per second asked for.
    pub fps: u32,
    /// The frames; ends when the VM stops or the receiver is dropped.
    pub frames: mpsc::Receiver<Vec<u8>>,
}

/// A VM's RAM opened for one request.
struct Opened {
    uid: String,
    ram: Arc<GuestRam>,
}

/// Reads the RAM of running VMs that were created with `spec.introspection: true`.
#[derive(Debug)]
pub struct MemoryBridge {
    vms: VmService,
    backend: Arc<QemuBackend>,
    audit: AuditLog,
    shm_dir: PathBuf,
}

impl MemoryBridge {
    /// A bridge over the service layer and backend, auditing to `audit`; RAM files live in
    /// `shm_dir` as `corral-<uid>`.
    pub fn new(
        vms: VmService,
        backend: Arc<QemuBackend>,
        audit: AuditLog,
        shm_dir: PathBuf,
    ) -> Self {
        MemoryBridge {
            vms,
            backend,
            audit,
            shm_dir,
        }
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Checks the caller, opens VM `name`'s RAM and checks `range` against it; writes the one
    /// audit line of the request, whatever the outcome.
    async fn open(
        &self,
        caller: Option<&Caller>,
        name: &str,
        op: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Opened, MemoryError> {
        let who = caller.map_or_else(|| "unknown".to_owned(), ToString::to_string);
        let entry = |uid: Option<&str>, outcome, reason| {
            self.audit.record(&AuditEntry {
                who: who.clone(),
                vm: name,
                vm_uid: uid,
                op,
                addr: range.map(|r| r.0),
                len: range.map(|r| r.1),
                outcome,
                reason,
            })
        };
        if !caller.is_some_and(Caller::may_read_memory) {
            let message = format!(
                "{who} may not read guest memory: reading a VM's RAM needs the `memory` scope \
                 (make the token's line with `corrald hash-token --scope memory`)"
            );
            entry(None, "denied", Some(message.clone()));
            return Err(MemoryError::PermissionDenied(message));
        }
        let vm = match self.vms.get(name).await {
            Ok(vm) => vm,
            Err(e) => {
                entry(None, "error", Some(e.to_string()));
                return Err(e.into());
            }
        };
        let uid = vm.metadata.uid.clone();
        let opened = self.open_vm(name, &vm, range).await;
        match &opened {
            Ok(_) => entry(Some(&uid), "ok", None),
            Err(e) => entry(Some(&uid), "error", Some(e.to_string())),
        }
        opened
    }

    async fn open_vm(
        &self,
        name: &str,
        vm: &corral_contract::Vm,
        range: Option<(u64, u64)>,
    ) -> Result<Opened, MemoryError> {
        if !vm.spec.introspection {
            return Err(MemoryError::Unavailable(format!(
                "vm {name} was not created with spec.introspection: true; guest memory cannot \
                 be read"
            )));
        }
        let phase = vm.status.phase;
        if !matches!(phase, Phase::Running | Phase::Paused) {
            return Err(MemoryError::Unavailable(format!(
                "vm {name} is {phase}; guest memory can be read only while it runs or is paused"
            )));
        }
        let uid = vm.metadata.uid.clone();
        let qmp = self.backend.qmp(&uid).await.map_err(|e| {
            MemoryError::Unavailable(format!("vm {name} is not running on this node: {e}"))
        })?;
        let expected = self.shm_dir.join(format!("corral-{uid}"));
        let backend = discover(&qmp)
            .await
            .map_err(|e| bridge_error(name, e))?
            .into_iter()
            .find(|b| b.mem_path == expected && b.share)
            .ok_or_else(|| {
                MemoryError::Unavailable(format!(
                    "vm {name} runs without its RAM in {} (was spec.introspection turned on \
                     after it started?); restart it to read its memory",
                    expected.display()
                ))
            })?;
        let fallback = match vm.spec.arch {
            Arch::X86_64 => MemoryLayout::x86_q35,
            Arch::Aarch64 => MemoryLayout::aarch64_virt,
        };
        let layout = discover_layout(&qmp, &backend, fallback)
            .await
            .map_err(|e| bridge_error(name, e))?;
        let ram = GuestRam::open(&backend.mem_path, layout).map_err(|e| bridge_error(name, e))?;
        if let Some((addr, len)) = range {
            if len == 0 {
                return Err(MemoryError::Invalid("len: must be at least 1".into()));
            }
            ram.read_physical(addr, len)
                .map_err(|e| MemoryError::Invalid(format!("addr/len: {e}")))?;
        }
        Ok(Opened {
            uid,
            ram: Arc::new(ram),
        })
    }

    /// `len` bytes at guest-physical `addr` of VM `name`, as chunks of at most [`CHUNK`]
    /// bytes copied one at a time as the consumer asks. `max_len` bounds one request.
    pub async fn read(
        &self,
        caller: Option<&Caller>,
        name: &str,
        addr: u64,
        len: u64,
        max_len: Option<u64>,
    ) -> Result<ChunkReader, MemoryError> {
        if let Some(max) = max_len.filter(|max| len > *max) {
            return Err(MemoryError::Invalid(format!(
                "len: {len} bytes is more than one read returns ({max}); use `corral vm memory \
                 dump` (a snapshot) or the gRPC MemoryService.Read stream for large ranges"
            )));
        }
        let opened = self
            .open(caller, name, "memory.read", Some((addr, len)))
            .await?;
        Ok(ChunkReader {
            ram: opened.ram,
            next: addr,
            end: addr + len,
        })
    }

    /// Guest-physical addresses of `pattern` in VM `name`'s RAM (at most `limit`), and whether
    /// there were more.
    pub async fn find(
        &self,
        caller: Option<&Caller>,
        name: &str,
        pattern: Vec<u8>,
        limit: u32,
    ) -> Result<(Vec<u64>, bool), MemoryError> {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN {
            return Err(MemoryError::Invalid(format!(
                "pattern: must be 1 to {MAX_PATTERN} bytes (got {})",
                pattern.len()
            )));
        }
        let limit = if limit == 0 {
            DEFAULT_FIND_LIMIT
        } else {
            limit
        } as usize;
        let opened = self.open(caller, name, "memory.find", None).await?;
        blocking(move || {
            let mut hits = opened.ram.find(&pattern);
            let truncated = hits.len() > limit;
            hits.truncate(limit);
            (hits, truncated)
        })
        .await
    }

    /// A copy of all of VM `name`'s RAM.
    pub async fn snapshot(
        &self,
        caller: Option<&Caller>,
        name: &str,
        mode: SnapshotMode,
    ) -> Result<Snapshot, MemoryError> {
        let opened = self.open(caller, name, "memory.snapshot", None).await?;
        let regions = opened
            .ram
            .layout()
            .regions()
            .iter()
            .map(|r| (r.guest_phys_base, r.len))
            .collect();
        let t0 = Instant::now();
        match mode {
            SnapshotMode::Consistent => {
                let ram = opened.ram.clone();
                let snap = blocking(move || ram.snapshot_consistent(MAX_REREADS)).await?;
                Ok(Snapshot {
                    data: snap.data,
                    regions,
                    mode,
                    torn_pages: snap.torn_pages,
                    reread_pages: snap.reread_pages,
                    paused: Duration::ZERO,
                    copy: t0.elapsed(),
                })
            }
            SnapshotMode::Atomic => {
                // Not `GuestRam::snapshot_atomic`: the backend pauses the guest itself, so the
                // controller, seeing the pause, cannot resume the guest halfway through the
                // copy.
                let mut data = opened.ram.snapshot_buffer();
                let ram = opened.ram.clone();
                let (data, paused) = self
                    .backend
                    .while_paused(&opened.uid, move || {
                        ram.snapshot_into(&mut data);
                        data
                    })
                    .await
                    .map_err(|e| {
                        MemoryError::Unavailable(format!("vm {name}: cannot pause it: {e}"))
                    })?;
                Ok(Snapshot {
                    data,
                    regions,
                    mode,
                    torn_pages: Vec::new(),
                    reread_pages: 0,
                    paused,
                    copy: t0.elapsed(),
                })
            }
        }
    }

    /// A Hilbert map of VM `name`'s RAM as PNG, `side` pixels square.
    pub async fn map(
        &self,
        caller: Option<&Caller>,
        name: &str,
        side: u32,
    ) -> Result<Vec<u8>, MemoryError> {
        let side = check_side(side, 512)?;
        let opened = self.open(caller, name, "memory.map", None).await?;
        blocking(move || {
            let frame = corral_guestmem::hilbert_frame(&opened.ram, side, MAP_SAMPLES);
            corral_guestmem::to_png(&frame, side)
        })
        .await?
        .map_err(|e| bridge_error(name, e))
    }

    /// Live Hilbert frames of VM `name`'s RAM, `fps` a second (1 to 60), until the VM stops
    /// or the receiver goes. Each frame re-samples a band of cells in turn (see
    /// [`HilbertStream`]), so a frame's cost does not grow with `side`.
    pub async fn stream(
        &self,
        caller: Option<&Caller>,
        name: &str,
        side: u32,
        fps: u32,
    ) -> Result<FrameStream, MemoryError> {
        let side = check_side(side, 128)?;
        if !(1..=60).contains(&fps) {
            return Err(MemoryError::Invalid(format!(
                "fps: must be 1 to 60 (got {fps})"
            )));
        }
        let opened = self.open(caller, name, "memory.stream", None).await?;
        let (tx, frames) = mpsc::channel(1);
        let backend = self.backend.clone();
        let stripes = (side * side / STREAM_CELLS_PER_FRAME).max(1);
        let mut view = HilbertStream::new(side, STREAM_SAMPLES, stripes);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / fps);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut checked = Instant::now();
            loop {
                tick.tick().await;
                if checked.elapsed() >= Duration::from_secs(1) {
                    // The mapping outlives the VM (the file is unlinked, not unmapped):
                    // stop rather than show a frozen picture.
                    if backend.qmp(&opened.uid).await.is_err() {
                        return;
                    }
                    checked = Instant::now();
                }
                let ram = opened.ram.clone();
                let Ok((v, frame)) = tokio::task::spawn_blocking(move || {
                    let frame = view.next_frame(&ram).to_vec();
                    (view, frame)
                })
                .await
                else {
                    return;
                };
                view = v;
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Ok(FrameStream { side, fps, frames })
    }
}

/// A range of guest RAM handed out chunk by chunk, each copied when asked for.
#[derive(Debug)]
pub struct ChunkReader {
    ram: Arc<GuestRam>,
    next: u64,
    end: u64,
}

impl Iterator for ChunkReader {
    /// Guest-physical address and bytes.
    type Item = (u64, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let len = (self.end - self.next).min(CHUNK as u64);
        let addr = self.next;
        self.next += len;
        // The whole range was checked when the reader was made.
        let bytes = self.ram.read_physical(addr, len).ok()?.to_vec();
        Some((addr, bytes))
    }
}

fn check_side(side: u32, default: u32) -> Result<u32, MemoryError> {
    match side {
        0 => Ok(default),
        16..=2048 if side.is_power_of_two() => Ok(side),
        _ => Err(MemoryError::Invalid(format!(
            "side: must be a power of two from 16 to 2048 (got {side})"
        ))),
    }
}

fn bridge_error(name: &str, e: corral_guestmem::Error) -> MemoryError {
    let mut message = format!("guest memory of vm {name}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    MemoryError::Internal(message)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, MemoryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MemoryError::Internal(format!("guest memory task failed: {e}")))
}
