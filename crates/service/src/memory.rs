//! Guest memory: opens a running VM's RAM through the node's [`Hypervisor`], reads, searches,
//! copies and renders it, and audits every act. Who may do it is decided before a call gets
//! here (the API's authorization layer), which records its refusals with
//! [`MemoryService::refused`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_contract::Phase;
use corral_guestmem::{GuestRam, HilbertStream, MemoryLayout, Region};
use corral_hypervisor::Hypervisor;
use tokio::sync::{Semaphore, mpsc};

use crate::audit::{AuditEntry, AuditLog};
use crate::{NodeRoute, ServiceError, VmService};

/// Bytes per chunk of a streamed read or snapshot.
pub const CHUNK: usize = 1 << 20;
/// Longest pattern `find` accepts.
pub const MAX_PATTERN: usize = 4096;
/// Addresses `find` returns unless asked for fewer.
pub const DEFAULT_FIND_LIMIT: u32 = 1000;
/// The most addresses one `find` returns (8 bytes each in corrald, about 20 in JSON).
pub const MAX_FIND_LIMIT: u32 = 100_000;
/// Page re-reads a consistent snapshot allows per changed page.
const MAX_REREADS: u32 = 8;
/// Snapshots one daemon streams at once unless configured otherwise.
pub const DEFAULT_SNAPSHOT_LIMIT: usize = 2;
/// The most RAM an atomic snapshot copies: it is the one mode that buffers (the guest stays
/// paused only for a copy into corrald's memory, not for the transfer to the client).
pub const MAX_ATOMIC_SNAPSHOT: u64 = 4 << 30;
/// Pieces a snapshot copies ahead of a slow client.
const SNAPSHOT_AHEAD: usize = 2;
/// How long a snapshot waits for a client that reads nothing before it gives up its place.
const SNAPSHOT_STALL: Duration = Duration::from_secs(120);
/// Bytes sampled per cell of a map (a PNG asked for once).
const MAP_SAMPLES: u32 = 64;
/// Bytes sampled per cell of a live frame (the fewest that still tell random data apart).
const STREAM_SAMPLES: u32 = 8;
/// Cells a live frame re-samples; the others keep their colour from earlier frames. At the
/// default 128×128 a cell is fresh 3.75 times a second at 60 fps, and three VMs streamed at
/// 60 fps cost about 4 % of a core (`bench/src/bin/memory.rs`).
const STREAM_CELLS_PER_FRAME: u32 = 1024;
/// The longest a live stream goes without sending a frame, however still the picture.
const STREAM_IDLE_FRAME: Duration = Duration::from_secs(1);

/// Why a memory request failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// From the service layer (not found, store trouble).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The request is malformed (field named in the message).
    #[error("{0}")]
    Invalid(String),
    /// The VM exists but its RAM cannot be read now (not introspectable, not running).
    #[error("{0}")]
    Unavailable(String),
    /// Reading RAM failed on a VM that should be readable.
    #[error("{0}")]
    Internal(String),
    /// The daemon is doing as much of this as it allows at once; retry later.
    #[error("{0}")]
    Exhausted(String),
}

/// An act on guest memory, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryOp {
    /// Read a range.
    Read,
    /// Search for a pattern.
    Find,
    /// Copy all RAM.
    Snapshot,
    /// Render a Hilbert map.
    Map,
    /// Stream live Hilbert frames.
    Stream,
}

impl MemoryOp {
    /// `memory.read`, `memory.find` …
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryOp::Read => "memory.read",
            MemoryOp::Find => "memory.find",
            MemoryOp::Snapshot => "memory.snapshot",
            MemoryOp::Map => "memory.map",
            MemoryOp::Stream => "memory.stream",
        }
    }
}

/// What a refused memory request asked for, as far as it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryAccess {
    /// The act.
    pub op: MemoryOp,
    /// The VM's name (empty when the request did not say).
    pub vm: String,
    /// `(guest-physical address, length)` of a read.
    pub range: Option<(u64, u64)>,
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
    /// `consistent` or `atomic`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMode::Consistent => "consistent",
            SnapshotMode::Atomic => "atomic",
        }
    }
}

/// How a snapshot was taken, known once its last byte is copied.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// Pages that may mix old and new bytes (consistent mode).
    pub torn_pages: Vec<u64>,
    /// Pages re-read because they changed during the copy (consistent mode).
    pub reread_pages: u64,
    /// How long the guest was paused (atomic mode).
    pub paused: Duration,
    /// How long the copy took.
    pub copy: Duration,
}

/// A piece of a streamed snapshot.
#[derive(Debug)]
pub enum SnapshotPiece {
    /// The next bytes of RAM, in layout order.
    Data(Vec<u8>),
    /// Every byte was sent; how they were taken.
    Done(SnapshotReport),
}

/// A copy of all guest RAM on its way to a client, a piece at a time: at most
/// [`CHUNK`] × 3 bytes of it are in corrald at once (the atomic mode, which copies RAM
/// while the guest is paused, holds the whole copy, up to [`MAX_ATOMIC_SNAPSHOT`]).
/// Dropping it, or not reading it for two minutes, stops the copy and frees its place among
/// the daemon's concurrent snapshots.
#[derive(Debug)]
pub struct SnapshotStream {
    /// How it is taken.
    pub mode: SnapshotMode,
    /// `(guest-physical base, len)` of each stretch of the data, in order.
    pub regions: Vec<(u64, u64)>,
    /// Bytes of data that will come.
    pub total_bytes: u64,
    pieces: mpsc::Receiver<SnapshotPiece>,
}

impl SnapshotStream {
    /// A snapshot whose pieces come from `pieces` (one relayed from the node that runs the
    /// VM).
    pub fn new(
        mode: SnapshotMode,
        regions: Vec<(u64, u64)>,
        total_bytes: u64,
        pieces: mpsc::Receiver<SnapshotPiece>,
    ) -> Self {
        SnapshotStream {
            mode,
            regions,
            total_bytes,
            pieces,
        }
    }

    /// The next piece; `None` after [`SnapshotPiece::Done`], or early if the copy failed.
    pub async fn next(&mut self) -> Option<SnapshotPiece> {
        self.pieces.recv().await
    }

    /// The pieces as a stream.
    pub fn into_pieces(self) -> mpsc::Receiver<SnapshotPiece> {
        self.pieces
    }
}

/// A live Hilbert view: RGB frames (`side`×`side`, 3 bytes a pixel, rows top down).
#[derive(Debug)]
pub struct FrameStream {
    /// Width and height in pixels.
    pub side: u32,
    /// Frames per second asked for: the map is re-sampled at this rate.
    pub fps: u32,
    /// The frames, each sent when the picture changed and at least once a second; ends when
    /// the VM stops or the receiver is dropped.
    pub frames: mpsc::Receiver<Vec<u8>>,
}

/// A VM's RAM opened for one request.
struct Opened {
    uid: String,
    ram: Arc<GuestRam>,
}

/// Where a request's VM is read: here, or on the node that runs it.
enum Target {
    Here(Opened),
    Node(NodeRoute, String),
}

/// Reads the RAM of running VMs that were created with `spec.introspection: true`, on the
/// node whose [`Hypervisor`] runs them.
#[derive(Debug)]
pub struct MemoryService {
    vms: VmService,
    hypervisor: Arc<dyn Hypervisor>,
    audit: Arc<AuditLog>,
    snapshots: Arc<Semaphore>,
    snapshot_limit: usize,
    /// VMs of other nodes are read on their node.
    route: Option<NodeRoute>,
}

impl MemoryService {
    /// Guest memory of the VMs `hypervisor` runs, auditing to `audit`.
    pub fn new(vms: VmService, hypervisor: Arc<dyn Hypervisor>, audit: Arc<AuditLog>) -> Self {
        MemoryService {
            vms,
            hypervisor,
            audit,
            snapshots: Arc::new(Semaphore::new(DEFAULT_SNAPSHOT_LIMIT)),
            snapshot_limit: DEFAULT_SNAPSHOT_LIMIT,
            route: None,
        }
    }

    /// Reads the RAM of VMs that other nodes run over `route` (a server's): this service
    /// audits the request, the node reads.
    #[must_use]
    pub fn with_route(mut self, route: NodeRoute) -> Self {
        self.route = Some(route);
        self
    }

    /// Streams at most `limit` snapshots at once (at least 1); more are refused with
    /// [`MemoryError::Exhausted`].
    pub fn with_snapshot_limit(mut self, limit: usize) -> Self {
        self.snapshot_limit = limit.max(1);
        self.snapshots = Arc::new(Semaphore::new(self.snapshot_limit));
        self
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Records that `who` was refused `access` because of `reason`.
    pub fn refused(&self, who: &str, access: &MemoryAccess, reason: &str) {
        self.audit.record(&AuditEntry {
            identity: who,
            verb: access.op.as_str(),
            kind: Some("Vm"),
            name: &access.vm,
            addr: access.range.map(|r| r.0),
            len: access.range.map(|r| r.1),
            outcome: "denied",
            reason: Some(reason),
            ..AuditEntry::default()
        });
    }

    /// Passes on the result of a check of a request's arguments made before the RAM is
    /// opened, auditing a refusal like any other: a bad argument is a refused request too.
    fn checked<T>(
        &self,
        who: &str,
        op: MemoryOp,
        name: &str,
        range: Option<(u64, u64)>,
        check: Result<T, MemoryError>,
    ) -> Result<T, MemoryError> {
        if let Err(e) = &check {
            let access = MemoryAccess {
                op,
                vm: name.to_owned(),
                range,
            };
            self.refused(who, &access, &e.to_string());
        }
        check
    }

    /// Opens VM `name`'s RAM for `who` and checks `range` against it; writes the one audit
    /// line of the request, whatever the outcome.
    async fn open(
        &self,
        who: &str,
        name: &str,
        op: MemoryOp,
        range: Option<(u64, u64)>,
    ) -> Result<Target, MemoryError> {
        let entry = |uid: Option<&str>, outcome, reason: Option<String>| {
            self.audit.record(&AuditEntry {
                identity: who,
                verb: op.as_str(),
                kind: Some("Vm"),
                name,
                uid,
                addr: range.map(|r| r.0),
                len: range.map(|r| r.1),
                outcome,
                reason: reason.as_deref(),
                ..AuditEntry::default()
            })
        };
        let vm = match self.vms.get(name).await {
            Ok(vm) => vm,
            Err(e) => {
                entry(None, "error", Some(e.to_string()));
                return Err(e.into());
            }
        };
        let uid = vm.metadata.uid.clone();
        if let Some((route, node)) = self
            .route
            .as_ref()
            .and_then(|r| r.elsewhere(&vm).map(|node| (r, node)))
        {
            // Read there; the node checks the range against the RAM it maps.
            let readable = readable(name, &vm);
            match &readable {
                Ok(()) => entry(Some(&uid), "ok", Some(format!("read on node {node}"))),
                Err(e) => entry(Some(&uid), "error", Some(e.to_string())),
            }
            readable?;
            return Ok(Target::Node(route.clone(), node.to_owned()));
        }
        let opened = self.open_vm(name, &vm, range).await;
        match &opened {
            Ok(_) => entry(Some(&uid), "ok", None),
            Err(e) => entry(Some(&uid), "error", Some(e.to_string())),
        }
        opened.map(Target::Here)
    }

    async fn open_vm(
        &self,
        name: &str,
        vm: &corral_contract::Vm,
        range: Option<(u64, u64)>,
    ) -> Result<Opened, MemoryError> {
        readable(name, vm)?;
        let uid = vm.metadata.uid.clone();
        let map = self.hypervisor.guest_ram(&uid).await.map_err(|e| {
            MemoryError::Unavailable(format!(
                "vm {name}: its memory cannot be read on this node: {e} (was spec.introspection \
                 turned on after it started? then restart it)"
            ))
        })?;
        let regions = map
            .regions
            .iter()
            .map(|r| Region {
                guest_phys_base: r.guest_phys_base,
                file_offset: r.file_offset,
                len: r.len,
            })
            .collect();
        let ram = MemoryLayout::new(regions)
            .and_then(|layout| GuestRam::open(&map.path, layout))
            .map_err(|e| ram_error(name, e))?;
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
        who: &str,
        name: &str,
        addr: u64,
        len: u64,
        max_len: Option<u64>,
    ) -> Result<ChunkReader, MemoryError> {
        let too_long = match max_len.filter(|max| len > *max) {
            Some(max) => Err(MemoryError::Invalid(format!(
                "len: {len} bytes is more than one read returns ({max}); use `corral vm memory \
                 dump` (a snapshot) or the gRPC MemoryService.Read stream for large ranges"
            ))),
            None => Ok(()),
        };
        self.checked(who, MemoryOp::Read, name, Some((addr, len)), too_long)?;
        match self
            .open(who, name, MemoryOp::Read, Some((addr, len)))
            .await?
        {
            Target::Here(opened) => Ok(ChunkReader(Chunks::Here {
                ram: opened.ram,
                next: addr,
                end: addr + len,
            })),
            Target::Node(route, node) => {
                let chunks = route
                    .link()
                    .memory_read(&node, name, who, addr, len)
                    .await?;
                Ok(ChunkReader(Chunks::Node(chunks)))
            }
        }
    }

    /// Guest-physical addresses of `pattern` in VM `name`'s RAM (at most `limit`, 0 for
    /// [`DEFAULT_FIND_LIMIT`], up to [`MAX_FIND_LIMIT`]), and whether there were more. The scan
    /// stops at the match after the limit, so its memory is bounded by the limit, not by how
    /// often the pattern occurs.
    pub async fn find(
        &self,
        who: &str,
        name: &str,
        pattern: Vec<u8>,
        limit: u32,
    ) -> Result<(Vec<u64>, bool), MemoryError> {
        let limit = self.checked(who, MemoryOp::Find, name, None, find_limit(&pattern, limit))?;
        let opened = match self.open(who, name, MemoryOp::Find, None).await? {
            Target::Here(opened) => opened,
            Target::Node(route, node) => {
                return route
                    .link()
                    .memory_find(&node, name, who, &pattern, limit as u32)
                    .await;
            }
        };
        blocking(move || {
            // One match past the limit tells whether there were more.
            let mut hits: Vec<u64> = opened.ram.find_iter(&pattern).take(limit + 1).collect();
            let truncated = hits.len() > limit;
            hits.truncate(limit);
            (hits, truncated)
        })
        .await
    }

    /// A copy of all of VM `name`'s RAM, streamed: see [`SnapshotStream`]. Refused with
    /// [`MemoryError::Exhausted`] while the daemon already streams its limit of snapshots.
    pub async fn snapshot(
        &self,
        who: &str,
        name: &str,
        mode: SnapshotMode,
    ) -> Result<SnapshotStream, MemoryError> {
        let Ok(permit) = self.snapshots.clone().try_acquire_owned() else {
            let limit = self.snapshot_limit;
            let reason = format!(
                "snapshot: {limit} memory snapshots are already streaming from this daemon, \
                 the most it copies at once; try again when one has finished"
            );
            let access = MemoryAccess {
                op: MemoryOp::Snapshot,
                vm: name.to_owned(),
                range: None,
            };
            self.refused(who, &access, &reason);
            return Err(MemoryError::Exhausted(reason));
        };
        let opened = match self.open(who, name, MemoryOp::Snapshot, None).await? {
            Target::Here(opened) => opened,
            Target::Node(route, node) => {
                let relayed = route.link().memory_snapshot(&node, name, who, mode).await?;
                // This daemon's place is held while the node's copy streams through it.
                let (tx, pieces) = mpsc::channel(SNAPSHOT_AHEAD);
                let mut from = relayed.pieces;
                tokio::spawn(async move {
                    let _permit = permit;
                    while let Some(piece) = from.recv().await {
                        if !hand_over(&tx, piece).await {
                            return;
                        }
                    }
                });
                return Ok(SnapshotStream { pieces, ..relayed });
            }
        };
        let ram = opened.ram.clone();
        let regions = ram
            .layout()
            .regions()
            .iter()
            .map(|r| (r.guest_phys_base, r.len))
            .collect();
        let total_bytes = ram.len();
        let (tx, pieces) = mpsc::channel(SNAPSHOT_AHEAD);
        let t0 = Instant::now();
        match mode {
            SnapshotMode::Consistent => {
                let runtime = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let mut report = SnapshotReport::default();
                    for chunk in ram.consistent_chunks(CHUNK, MAX_REREADS) {
                        report.torn_pages.extend(chunk.torn_pages);
                        report.reread_pages += chunk.reread_pages;
                        let piece = SnapshotPiece::Data(chunk.data);
                        if !runtime.block_on(hand_over(&tx, piece)) {
                            return;
                        }
                    }
                    report.copy = t0.elapsed();
                    runtime.block_on(hand_over(&tx, SnapshotPiece::Done(report)));
                });
            }
            SnapshotMode::Atomic => {
                if total_bytes > MAX_ATOMIC_SNAPSHOT {
                    return Err(MemoryError::Invalid(format!(
                        "mode: an atomic snapshot copies all RAM into corrald while vm {name} \
                         is paused, and its {total_bytes} bytes are more than the \
                         {MAX_ATOMIC_SNAPSHOT} allowed; take a consistent snapshot"
                    )));
                }
                // The hypervisor pauses the guest itself, so a controller seeing the pause
                // cannot resume the guest halfway through the copy.
                let mut data = ram.snapshot_buffer();
                let paused = self
                    .hypervisor
                    .run_paused(&opened.uid, Box::new(|| ram.snapshot_into(&mut data)))
                    .await
                    .map_err(|e| {
                        MemoryError::Unavailable(format!("vm {name}: cannot pause it: {e}"))
                    })?;
                let copy = t0.elapsed();
                tokio::spawn(async move {
                    let _permit = permit;
                    for chunk in data.chunks(CHUNK) {
                        if !hand_over(&tx, SnapshotPiece::Data(chunk.to_vec())).await {
                            return;
                        }
                    }
                    let report = SnapshotReport {
                        paused,
                        copy,
                        ..SnapshotReport::default()
                    };
                    hand_over(&tx, SnapshotPiece::Done(report)).await;
                });
            }
        }
        Ok(SnapshotStream {
            mode,
            regions,
            total_bytes,
            pieces,
        })
    }

    /// A Hilbert map of VM `name`'s RAM as PNG, `side` pixels square (0 for 512).
    pub async fn map(&self, who: &str, name: &str, side: u32) -> Result<Vec<u8>, MemoryError> {
        let side = self.checked(who, MemoryOp::Map, name, None, check_side(side, 512))?;
        let opened = match self.open(who, name, MemoryOp::Map, None).await? {
            Target::Here(opened) => opened,
            Target::Node(route, node) => {
                return route.link().memory_map(&node, name, who, side).await;
            }
        };
        blocking(move || {
            let frame = corral_guestmem::hilbert_frame(&opened.ram, side, MAP_SAMPLES);
            corral_guestmem::to_png(&frame, side)
        })
        .await?
        .map_err(|e| ram_error(name, e))
    }

    /// Live Hilbert frames of VM `name`'s RAM, `fps` a second (1 to 60), until the VM stops
    /// or the receiver goes. Each frame re-samples a band of cells in turn (see
    /// [`HilbertStream`]), so a frame's cost does not grow with `side`.
    pub async fn stream(
        &self,
        who: &str,
        name: &str,
        side: u32,
        fps: u32,
    ) -> Result<FrameStream, MemoryError> {
        let args = check_side(side, 128).and_then(|side| {
            if (1..=60).contains(&fps) {
                Ok(side)
            } else {
                Err(MemoryError::Invalid(format!(
                    "fps: must be 1 to 60 (got {fps})"
                )))
            }
        });
        let side = self.checked(who, MemoryOp::Stream, name, None, args)?;
        let opened = match self.open(who, name, MemoryOp::Stream, None).await? {
            Target::Here(opened) => opened,
            Target::Node(route, node) => {
                return route
                    .link()
                    .memory_stream(&node, name, who, side, fps)
                    .await;
            }
        };
        let (tx, frames) = mpsc::channel(1);
        let hypervisor = self.hypervisor.clone();
        let stripes = (side * side / STREAM_CELLS_PER_FRAME).max(1);
        let mut view = HilbertStream::new(side, STREAM_SAMPLES, stripes);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / fps);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut checked = Instant::now();
            // A frame goes out when the picture changed, and at least this often (a client
            // knows the stream lives); an idle guest's map costs the sampling only.
            let mut sent: Option<Instant> = None;
            loop {
                tick.tick().await;
                if checked.elapsed() >= Duration::from_secs(1) {
                    // The mapping outlives the VM (the file is unlinked, not unmapped):
                    // stop rather than show a frozen picture.
                    let state = hypervisor.state(&opened.uid).await;
                    if !matches!(state, Ok(s) if !matches!(s, corral_hypervisor::VmState::Exited(_)))
                    {
                        return;
                    }
                    checked = Instant::now();
                }
                let ram = opened.ram.clone();
                let Ok((v, changed)) = tokio::task::spawn_blocking(move || {
                    let changed = view.refresh(&ram);
                    (view, changed)
                })
                .await
                else {
                    return;
                };
                view = v;
                if !changed && sent.is_some_and(|t| t.elapsed() < STREAM_IDLE_FRAME) {
                    continue;
                }
                if tx.send(view.frame().to_vec()).await.is_err() {
                    return;
                }
                sent = Some(Instant::now());
            }
        });
        Ok(FrameStream { side, fps, frames })
    }
}

/// Whether VM `name`'s RAM may be read now: made with `spec.introspection`, and running or
/// paused.
fn readable(name: &str, vm: &corral_contract::Vm) -> Result<(), MemoryError> {
    if !vm.spec.introspection {
        return Err(MemoryError::Unavailable(format!(
            "vm {name} was not created with spec.introspection: true; guest memory cannot be \
             read"
        )));
    }
    let phase = vm.status.phase;
    if !matches!(phase, Phase::Running | Phase::Paused) {
        return Err(MemoryError::Unavailable(format!(
            "vm {name} is {phase}; guest memory can be read only while it runs or is paused"
        )));
    }
    Ok(())
}

/// Passes `piece` to the client's side of a snapshot; `false` when the client went away or
/// read nothing for [`SNAPSHOT_STALL`] (the snapshot then ends without its report, and frees
/// its place).
async fn hand_over(tx: &mpsc::Sender<SnapshotPiece>, piece: SnapshotPiece) -> bool {
    matches!(
        tokio::time::timeout(SNAPSHOT_STALL, tx.send(piece)).await,
        Ok(Ok(()))
    )
}

/// A range of guest RAM handed out chunk by chunk: each copied when asked for, or relayed
/// as the node that runs the VM sends it. A relay that breaks off ends with an error.
#[derive(Debug)]
pub struct ChunkReader(Chunks);

/// A node's answer to a read, as guest-physical address and bytes, in order.
pub type RemoteChunks = mpsc::Receiver<Result<(u64, Vec<u8>), MemoryError>>;

#[derive(Debug)]
enum Chunks {
    Here {
        ram: Arc<GuestRam>,
        next: u64,
        end: u64,
    },
    Node(RemoteChunks),
}

impl futures_util::Stream for ChunkReader {
    /// Guest-physical address and bytes.
    type Item = Result<(u64, Vec<u8>), MemoryError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match &mut self.0 {
            Chunks::Here { ram, next, end } => {
                if *next >= *end {
                    return std::task::Poll::Ready(None);
                }
                let len = (*end - *next).min(CHUNK as u64);
                let addr = *next;
                *next += len;
                // The whole range was checked when the reader was made.
                let bytes = ram
                    .read_physical(addr, len)
                    .map(<[u8]>::to_vec)
                    .map_err(|e| {
                        MemoryError::Internal(format!("reading {len} bytes at {addr:#x}: {e}"))
                    });
                std::task::Poll::Ready(Some(bytes.map(|b| (addr, b))))
            }
            Chunks::Node(rx) => rx.poll_recv(cx),
        }
    }
}

/// The number of matches a find returns: `limit`, 0 for [`DEFAULT_FIND_LIMIT`], up to
/// [`MAX_FIND_LIMIT`]; and the pattern checked.
fn find_limit(pattern: &[u8], limit: u32) -> Result<usize, MemoryError> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN {
        return Err(MemoryError::Invalid(format!(
            "pattern: must be 1 to {MAX_PATTERN} bytes (got {})",
            pattern.len()
        )));
    }
    match limit {
        0 => Ok(DEFAULT_FIND_LIMIT as usize),
        1..=MAX_FIND_LIMIT => Ok(limit as usize),
        _ => Err(MemoryError::Invalid(format!(
            "limit: must be 1 to {MAX_FIND_LIMIT} (got {limit}); 0 means {DEFAULT_FIND_LIMIT}"
        ))),
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

fn ram_error(name: &str, e: corral_guestmem::Error) -> MemoryError {
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
