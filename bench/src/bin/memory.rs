//! Guest memory bridge: reads, snapshots and live Hilbert frames of real guests' RAM, against
//! `memcpy` of the same size measured in the same run.
//!
//! `cargo run --release -p corral-bench --bin memory -- [--runs 15] [--seconds 5]`
//!
//! Boots three guest-kit VMs of 256 MiB with introspection, running under TCG while they are
//! measured. For 64 MiB (the first 64 MiB of a guest's RAM) and 256 MiB it prints:
//! `read_physical` of 4 KiB (borrow + copy out) p50/p99; full snapshot median and p99 as a
//! ratio to memcpy (heap → heap) of the same size, both into a fresh buffer and into a
//! reused one; consistent snapshot as a ratio to memcpy; the guest's pause during an atomic
//! snapshot (QMP stop, copy, cont through the backend's monitor); sustained snapshot
//! throughput next to memcpy's. Then the CPU share of one core that a 60 fps Hilbert stream
//! of all three VMs costs, frames made as corrald makes them (and, for comparison, with every
//! cell re-sampled every frame). `--side/--samples/--stripes` change the stream's settings.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use corral_bench::{flag, median, ms, percentile, ratio};
use corral_contract::Arch;
use corral_guestmem::{GuestRam, HilbertStream, MemoryLayout};
use corral_testkit::TestVm;
use nix::sys::resource::{UsageWho, getrusage};

/// What corrald's WebSocket stream uses by default (`memory::STREAM_*`).
const STREAM_SIDE: u32 = 128;
const STREAM_SAMPLES: u32 = 8;
const STREAM_STRIPES: u32 = 16;

struct Guest {
    vm: TestVm,
    ram: GuestRam,
}

/// The guest kit's RAM size (the smallest the kit's initramfs boots in comfortably).
const KIT_MIB: u64 = 256;

async fn boot() -> anyhow::Result<Guest> {
    let vm = TestVm::builder(Arch::X86_64)
        .memory_mib(KIT_MIB)
        .introspection()
        .start()
        .await?;
    vm.wait_for_boot().await?;
    let path = vm.config().memory_file.clone().context("no memory file")?;
    let ram = GuestRam::open(&path, MemoryLayout::x86_q35(KIT_MIB << 20))?;
    Ok(Guest { vm, ram })
}

/// The first `mib` MiB of `guest`'s RAM as a handle of its own (guest-physical 0..mib).
fn window(guest: &Guest, mib: u64) -> anyhow::Result<GuestRam> {
    Ok(GuestRam::open(
        guest.ram.path(),
        MemoryLayout::flat(mib << 20),
    )?)
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

/// A pseudo-random, fully faulted-in heap buffer: memcpy's source.
fn heap(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn measure(guest: &Guest, ram: &GuestRam, runs: usize, seconds: f64) -> anyhow::Result<()> {
    let size = ram.len() as usize;
    let label = format!("{} MiB", size >> 20);

    // read_physical of 4 KiB at pseudo-random pages, borrowed then copied out.
    let pages = size as u64 / 4096;
    let mut buf = vec![0u8; 4096];
    let mut reads = Vec::with_capacity(20_000);
    let mut x = 12345u64;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let gpa = (x >> 16) % pages * 4096;
        let t = Instant::now();
        let bytes = ram.read_physical(gpa, 4096)?;
        buf.copy_from_slice(bytes);
        black_box(&buf);
        reads.push(t.elapsed());
    }

    // Snapshots and memcpy, interleaved so machine noise hits both alike.
    let src = heap(size);
    let mut reused_snap = vec![0u8; size];
    let mut reused_copy = vec![0u8; size];
    let (mut copy_fresh, mut snap_fresh, mut copy_reused, mut snap_reused, mut consistent) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut torn, mut reread) = (0usize, 0u64);
    for _ in 0..runs {
        let t = Instant::now();
        let mut v = Vec::with_capacity(size);
        v.extend_from_slice(&src);
        black_box(&v);
        copy_fresh.push(t.elapsed());
        drop(v);

        let t = Instant::now();
        black_box(ram.snapshot());
        snap_fresh.push(t.elapsed());

        let t = Instant::now();
        reused_copy.copy_from_slice(&src);
        black_box(&reused_copy);
        copy_reused.push(t.elapsed());

        let t = Instant::now();
        ram.snapshot_into(&mut reused_snap);
        black_box(&reused_snap);
        snap_reused.push(t.elapsed());

        let t = Instant::now();
        let c = ram.snapshot_consistent(8);
        consistent.push(t.elapsed());
        torn += c.torn_pages.len();
        reread += c.reread_pages;
    }

    // Atomic: the guest's pause as corrald takes it (buffer faulted in first, then the
    // backend's stop, copy, cont).
    let mut pauses = Vec::new();
    for _ in 0..runs.min(10) {
        let mut data = ram.snapshot_buffer();
        let (data, paused) = guest
            .vm
            .backend()
            .while_paused(guest.vm.uid(), move || {
                ram.snapshot_into(&mut data);
                data
            })
            .await?;
        black_box(data);
        pauses.push(paused);
    }

    // Sustained: back-to-back snapshots into a reused buffer, then memcpy the same way.
    let sustained = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < seconds / 2.0 {
            f();
            n += 1;
        }
        gbps(n * size as u64, start.elapsed())
    };
    let snap_gbps = sustained(&mut || ram.snapshot_into(&mut reused_snap));
    let copy_gbps = sustained(&mut || reused_copy.copy_from_slice(&src));

    let mc = median(&copy_fresh);
    let mr = median(&copy_reused);
    println!("{label}:");
    println!(
        "  read_physical 4 KiB (borrow + copy out)  p50 {}  p99 {}",
        us(median(&reads)),
        us(percentile(&reads, 99.0))
    );
    println!(
        "  memcpy {label} (heap → heap)            fresh buffer median {}  reused buffer median {}",
        ms(mc),
        ms(mr)
    );
    println!(
        "  full snapshot, fresh buffer              median {} ({:.2}× memcpy)  p99 {} ({:.2}× memcpy median)",
        ms(median(&snap_fresh)),
        ratio(median(&snap_fresh), mc),
        ms(percentile(&snap_fresh, 99.0)),
        ratio(percentile(&snap_fresh, 99.0), mc)
    );
    println!(
        "  full snapshot, reused buffer             median {} ({:.2}× memcpy)  p99 {} ({:.2}× memcpy median)",
        ms(median(&snap_reused)),
        ratio(median(&snap_reused), mr),
        ms(percentile(&snap_reused, 99.0)),
        ratio(percentile(&snap_reused, 99.0), mr)
    );
    println!(
        "  consistent snapshot (running guest)      median {} ({:.2}× memcpy)  p99 {}  [{} pages re-read, {} torn over {runs} runs]",
        ms(median(&consistent)),
        ratio(median(&consistent), mc),
        ms(percentile(&consistent, 99.0)),
        reread,
        torn
    );
    println!(
        "  atomic snapshot guest pause              median {}  p99 {}  ({:.2}× memcpy into a reused buffer: stop + copy + cont)",
        ms(median(&pauses)),
        ms(percentile(&pauses, 99.0)),
        ratio(median(&pauses), mr)
    );
    println!(
        "  sustained full snapshots                 {snap_gbps:.2} GB/s  (memcpy {copy_gbps:.2} GB/s, {:.2}×)",
        snap_gbps / copy_gbps
    );
    Ok(())
}

fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn thread_cpu_time() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("clock_gettime");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// What one stream run cost.
struct StreamCost {
    /// CPU time spent making frames / wall time.
    frames: f64,
    /// The whole process's CPU time / wall time (frames, the tick loop, and this program's
    /// other work: the three VMs' console pumps).
    process: f64,
    /// Median CPU time of one frame.
    frame: Duration,
    /// Frames per second achieved, per VM.
    fps: f64,
}

/// Frames of every guest at `fps` for `seconds`, made as corrald's stream makes them (a
/// [`HilbertStream`] per VM, one band re-sampled per frame); `None` settings tick without
/// making frames, to measure what the rest of the process costs.
async fn stream(
    guests: &[Guest],
    fps: u32,
    seconds: f64,
    settings: Option<(u32, u32, u32)>,
) -> StreamCost {
    let mut views: Vec<(HilbertStream, &GuestRam)> = match settings {
        Some((side, samples, stripes)) => guests
            .iter()
            .map(|g| (HilbertStream::new(side, samples, stripes), &g.ram))
            .collect(),
        None => Vec::new(),
    };
    // One full pass first: a stream's first pass also maps the guest's pages into the
    // process (a minor fault each), which a long-running stream pays once.
    for (view, ram) in &mut views {
        for _ in 0..settings.map_or(0, |s| s.2) {
            black_box(view.next_frame(ram));
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / fps);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut frame_times = Vec::new();
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    while wall0.elapsed().as_secs_f64() < seconds {
        tick.tick().await;
        for (view, ram) in &mut views {
            let t = thread_cpu_time();
            black_box(view.next_frame(ram));
            frame_times.push(thread_cpu_time() - t);
        }
    }
    let wall = wall0.elapsed();
    StreamCost {
        frames: ratio(frame_times.iter().sum(), wall),
        process: ratio(cpu_time() - cpu0, wall),
        frame: median(&frame_times),
        fps: frame_times.len() as f64 / guests.len() as f64 / wall.as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 15);
    let seconds: f64 = flag("--seconds", 5.0);
    println!(
        "guest memory benchmark: {runs} runs per figure, guests running under TCG, release build"
    );
    let mut guests = Vec::new();
    for i in 0..3 {
        guests.push(
            boot()
                .await
                .with_context(|| format!("booting guest {}", i + 1))?,
        );
    }
    // 64 MiB: the first 64 MiB of the first guest (the kit does not boot in 64 MiB), its
    // atomic snapshot still pausing that real guest.
    measure(&guests[0], &window(&guests[0], 64)?, runs, seconds).await?;
    measure(&guests[0], &guests[0].ram, runs, seconds).await?;
    let side = flag("--side", STREAM_SIDE);
    let samples = flag("--samples", STREAM_SAMPLES);
    let stripes = flag("--stripes", STREAM_STRIPES);
    let idle = stream(&guests, 60, seconds, None).await;
    for (side, samples, stripes) in [(side, samples, stripes), (side, samples, 1)] {
        let cost = stream(&guests, 60, seconds, Some((side, samples, stripes))).await;
        println!(
            "Hilbert stream, 3 VMs of {KIT_MIB} MiB at 60 fps ({:.1} fps achieved), {side}×{side}, \
             {samples} samples/cell, 1/{stripes} of cells re-sampled per frame, {seconds} s: \
             frames {:.1} % of one core (thread CPU time), median frame {}; whole process \
             {:.1} % ({:.1} % when ticking without frames)",
            cost.fps,
            cost.frames * 100.0,
            us(cost.frame),
            cost.process * 100.0,
            idle.process * 100.0
        );
    }
    Ok(())
}
