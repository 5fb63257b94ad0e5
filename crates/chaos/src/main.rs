//! corral-chaos: a seeded storm of API operations and faults against a real corrald and real
//! QEMU, then a settle period, then checks that what corrald says is what is true.
//!
//! ```text
//! corral-chaos [--seed N] [--ops 300]         one run (what the test suite does)
//! corral-chaos --soak --minutes 60            new seeds until the time is up
//! corral-chaos --replay trace.json            the steps of an earlier run, exactly
//! ```
//!
//! Faults: SIGKILL of corrald (alone, or in the middle of an operation: a reconcile, an image
//! import, a snapshot), SIGKILL and SIGSTOP of QEMU, a `qemu-img` that fails, and a data
//! directory on a small tmpfs that fills up. A failing run prints its seed and the shortest
//! trace found that still fails, and writes it as JSON for `--replay`.

mod check;
mod follow;
mod plan;
mod procs;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::plan::{Fault, Step};
use crate::world::World;

/// Fault-injection suite for corrald: random operations and faults, then invariant checks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The seed of the workload (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many API operations one run makes.
    #[arg(long, default_value_t = 300)]
    ops: usize,
    /// Keep running with new seeds until `--minutes` have passed.
    #[arg(long)]
    soak: bool,
    /// How long a soak runs.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Run the steps in this JSON file (written by a failing run) instead of a seed's.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// How long a failing run may spend looking for a shorter trace that still fails.
    #[arg(long, default_value_t = 5)]
    shrink_minutes: u64,
    /// The most milliseconds to wait between steps (drawn from the seed).
    #[arg(long, default_value_t = 200)]
    pace_ms: u64,
    /// How long corrald gets to settle after the storm.
    #[arg(long, default_value_t = 240)]
    settle_secs: u64,
    /// Size of the tmpfs holding corrald's data directory.
    #[arg(long, default_value = "768m")]
    disk: String,
    /// The corrald binary (default: beside this one).
    #[arg(long)]
    corrald: Option<PathBuf>,
    /// The corral CLI (default: beside this one).
    #[arg(long)]
    corral: Option<PathBuf>,
    /// Where failing traces are written.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Print every step and what it answered.
    #[arg(long, short)]
    verbose: bool,
}

/// How one run went.
#[derive(Debug)]
struct Outcome {
    violations: Vec<String>,
    trace: Vec<world::Record>,
    summary: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let code = runtime.block_on(run(args))?;
    std::process::exit(code)
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let beside = |name: &str| -> anyhow::Result<PathBuf> {
        let me = std::env::current_exe()?;
        let path = me.with_file_name(name);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build the workspace first (cargo build --workspace), or pass --{name}",
            path.display()
        );
        Ok(path)
    };
    let corrald = match &args.corrald {
        Some(p) => p.clone(),
        None => beside("corrald")?,
    };
    let corral = match &args.corral {
        Some(p) => p.clone(),
        None => beside("corral")?,
    };
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let mut seed = args.seed.unwrap_or_else(clock_seed);
    loop {
        let steps = match &args.replay {
            Some(file) => serde_json::from_slice(
                &std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
            )
            .with_context(|| format!("{} is not a trace", file.display()))?,
            None => plan::steps(seed, args.ops),
        };
        println!(
            "corral-chaos: seed {seed}, {} steps ({} faults)",
            steps.len(),
            steps.iter().filter(|s| matches!(s, Step::Fault(_))).count()
        );
        let outcome = once(&args, &corrald, &corral, seed, &steps).await?;
        println!("{}", outcome.summary);
        if !outcome.violations.is_empty() {
            report_failure(&args, &corrald, &corral, seed, &steps, outcome).await?;
            return Ok(1);
        }
        if !args.soak || args.replay.is_some() || Instant::now() > deadline {
            println!("corral-chaos: PASS (seed {seed})");
            return Ok(0);
        }
        seed = seed.wrapping_add(1);
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// One run: start a fresh corrald, carry out the steps, heal, settle, check.
async fn once(
    args: &Args,
    corrald: &Path,
    corral: &Path,
    seed: u64,
    steps: &[Step],
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut world = World::start(corrald, corral, &args.disk).await?;
    let followed = follow::spawn(world.corrald.socket());
    let mut pace = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    for (i, step) in steps.iter().enumerate() {
        world.step(i, step).await;
        if args.verbose {
            if let Some(r) = world.trace.last() {
                println!(
                    "  {:>3} @{:>6} ms {} -> {}",
                    r.index,
                    r.at_ms,
                    serde_json::to_string(&r.step)?,
                    r.outcome
                );
            }
        }
        if (i + 1) % 50 == 0 {
            println!(
                "  step {}/{} ({:.0} s)",
                i + 1,
                steps.len(),
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(pace.u64(0..=args.pace_ms))).await;
    }
    let storm = started.elapsed();
    world.heal().await?;
    let (seen, settled) =
        check::settle(world.client(), Duration::from_secs(args.settle_secs)).await?;
    let settle = started.elapsed() - storm;
    let run_dir = world.corrald.run_dir();
    let data_dir = world.corrald.data_dir();
    let dirs = check::Dirs {
        run: &run_dir,
        data: &data_dir,
    };
    let mut violations = Vec::new();
    if !settled {
        violations.push(format!(
            "corrald did not settle within {} s",
            args.settle_secs
        ));
    }
    let invariants = check::invariants(&seen, &dirs, world.max_qemus_per_vm);
    let watch = check::watch_agrees(&followed, &seen).await;
    violations.extend(invariants.iter().cloned());
    violations.extend(watch.iter().cloned());
    let followed = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let summary = summarize(
        &world.trace,
        &seen,
        (storm, settle),
        &followed,
        world.max_qemus_per_vm,
        &violations,
    );
    if !violations.is_empty() {
        println!("--- corrald log (last 60 lines) ---");
        let log = world.corrald.log();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(60)..] {
            println!("{line}");
        }
    }
    Ok(Outcome {
        violations,
        trace: world.trace,
        summary,
    })
}

/// Why an operation was refused, in a few words: most are the workload asking for what the
/// state does not allow (a random plan deletes what it later starts) or corrald being down
/// (killed by a fault); anything else is worth reading.
fn error_class(outcome: &str) -> &'static str {
    let o = outcome.to_ascii_lowercase();
    if o.contains("injected failure") {
        "injected qemu-img failure"
    } else if o.contains("timed out") {
        "timed out"
    } else if o.contains("transport")
        || o.contains("connect")
        || o.contains("unavailable")
        || o.contains("broken pipe")
        || o.contains("connection")
        || o.contains("no such file or directory (os error 2)")
    {
        "corrald down"
    } else if o.contains("not found") || o.contains("is missing") {
        "not found"
    } else if o.contains("already exists") {
        "already exists"
    } else if o.contains("is used by") || o.contains("in use") {
        "in use"
    } else if o.contains("being deleted")
        || o.contains("only while")
        || o.contains(" while ")
        || o.contains(" is without ")
        || o.contains("not ready")
        || o.contains("is not running")
        || o.contains("state")
    {
        "not in that state"
    } else {
        "other"
    }
}

fn summarize(
    trace: &[world::Record],
    seen: &check::Seen,
    (storm, settle): (Duration, Duration),
    followed: &follow::Followed,
    max_qemus: usize,
    violations: &[String],
) -> String {
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut ops, mut refused) = (0, 0);
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    let mut others: Vec<&str> = Vec::new();
    for record in trace {
        match &record.step {
            Step::Op(_) => {
                ops += 1;
                if record.outcome != "ok" {
                    refused += 1;
                    let class = error_class(&record.outcome);
                    *why.entry(class).or_default() += 1;
                    if class == "other" && others.len() < 3 {
                        others.push(&record.outcome);
                    }
                }
            }
            Step::Fault(f) => {
                let name = match f {
                    Fault::KillDaemon { .. } => "corrald SIGKILL",
                    Fault::KillDaemonDuring { .. } => "corrald SIGKILL mid-operation",
                    Fault::KillQemu { .. } => "QEMU SIGKILL",
                    Fault::FreezeQemu { .. } => "QEMU SIGSTOP",
                    Fault::BreakQemuImg { .. } => "qemu-img failing",
                };
                *faults.entry(name).or_default() += 1;
                if matches!(f, Fault::KillDaemonDuring { .. }) {
                    ops += 1;
                }
            }
        }
    }
    let phases: BTreeMap<String, usize> = seen.vms.iter().fold(BTreeMap::new(), |mut m, vm| {
        *m.entry(vm.status.phase.to_string()).or_default() += 1;
        m
    });
    let why = why
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let others: String = others.iter().map(|o| format!("\n  other: {o}")).collect();
    let mut text = format!(
        "operations: {ops} ({refused} answered with an error: {why}){others}\nfaults: {}\n\
         storm {:.0} s, settle {:.0} s\nfinal: {} VMs {phases:?}, {} images, {} volumes, {} snapshots\n\
         watch: {} resumes, {} relists; most QEMUs for one VM at a sampled instant: {max_qemus}\n",
        faults
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        storm.as_secs_f64(),
        settle.as_secs_f64(),
        seen.vms.len(),
        seen.images.len(),
        seen.volumes.len(),
        seen.snapshots.len(),
        followed.resumes,
        followed.relists,
    );
    let checks = [
        "phase matches the QEMU processes",
        "never two QEMUs for one VM",
        "declared power reached where dependencies are Ready",
        "no QEMU, RAM file, seed, run dir or volume file without its object",
        "no Ready volume or image without its file; no image temp file",
        "the watch reconstructs the final list",
    ];
    if violations.is_empty() {
        text.push_str(&format!(
            "checks: {} of {} passed",
            checks.len(),
            checks.len()
        ));
    } else {
        text.push_str(&format!("checks FAILED: {} violations", violations.len()));
        for v in violations {
            text.push_str(&format!("\n  - {v}"));
        }
    }
    text
}

/// Prints the seed and the shortest failing trace found within the shrink budget, and writes
/// it for `--replay`.
async fn report_failure(
    args: &Args,
    corrald: &Path,
    corral: &Path,
    seed: u64,
    steps: &[Step],
    outcome: Outcome,
) -> anyhow::Result<()> {
    let mut shortest: Vec<Step> = steps.to_vec();
    let deadline = Instant::now() + Duration::from_secs(args.shrink_minutes * 60);
    // ddmin, coarse: drop chunks while the run still fails, halving the chunk size.
    let mut chunk = shortest.len() / 2;
    while chunk > 0 && Instant::now() < deadline {
        let mut start = 0;
        while start < shortest.len() && Instant::now() < deadline {
            let end = (start + chunk).min(shortest.len());
            let candidate: Vec<Step> = shortest[..start]
                .iter()
                .chain(&shortest[end..])
                .cloned()
                .collect();
            println!(
                "shrinking: trying {} of {} steps",
                candidate.len(),
                shortest.len()
            );
            let failed = once(args, corrald, corral, seed, &candidate)
                .await
                .map(|o| !o.violations.is_empty())
                .unwrap_or(false);
            if failed {
                shortest = candidate;
            } else {
                start = end;
            }
        }
        chunk /= 2;
    }
    std::fs::create_dir_all(&args.out)?;
    let file = args.out.join(format!("trace-{seed}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&shortest)?)?;
    println!(
        "corral-chaos: FAIL (seed {seed}); the shortest failing trace found has {} of {} steps:",
        shortest.len(),
        steps.len()
    );
    for (i, step) in shortest.iter().enumerate() {
        println!("  {i:>3} {}", serde_json::to_string(step)?);
    }
    println!("violations of the original run:");
    for v in &outcome.violations {
        println!("  - {v}");
    }
    println!("outcomes of the original run's steps:");
    for r in &outcome.trace {
        if r.outcome != "ok" {
            println!("  {:>3} @{} ms: {}", r.index, r.at_ms, r.outcome);
        }
    }
    println!(
        "replay: cargo run -p corral-chaos -- --seed {seed} --replay {}",
        file.display()
    );
    Ok(())
}
