//! Git sources: reconcile time of a repository of many unchanged resources, against applying
//! the same resources directly (no Git) in the same run.
//!
//! `cargo run --release -p corral-bench --bin gitops -- [--resources 1000] [--runs 5]`
//!
//! A `git daemon` serves a repository of `--resources` stopped VMs in files of 100; the store
//! is SQLite in a temporary directory (what corrald uses); a Git source reconciles it. Timed:
//! the first reconcile (fetch, parse, create all), then unchanged reconciles (fetch, parse, a
//! dry run that finds no drift), and as the baseline one `ApplyService` call with the same
//! resources already parsed (what `corral apply` costs corrald, no Git and no parsing).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_contract::{ApplyRequest, DriftPolicy, SourceSpec, SourceStatus, manifest};
use corral_controller::{RunOptions, SourceReconciler};
use corral_service::{
    ApplyService, HostAccess, ImportPolicy, NetworkService, StorageConfig, StorageService,
    VmService,
};
use corral_store::SqliteStore;
use corral_testkit::GitServer;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The apply service over a new SQLite store `name` under `dir`.
async fn open(dir: &Path, name: &str) -> Result<ApplyService> {
    let store = Arc::new(SqliteStore::open(dir.join(name)).await?);
    let vms = VmService::new(store.clone());
    let storage = StorageService::new(store.clone(), StorageConfig::new(dir))?;
    Ok(ApplyService::new(vms, NetworkService::new(store), storage))
}

#[tokio::main]
async fn main() -> Result<()> {
    let count = flag("--resources", 1000);
    let runs = flag("--runs", 5);
    let dir = tempfile::tempdir()?;
    let server = GitServer::start(dir.path());
    let mut texts = Vec::new();
    let mut files = Vec::new();
    for file in 0..count.div_ceil(100) {
        let mut text = String::new();
        for i in file * 100..((file + 1) * 100).min(count) {
            text += &format!(
                "kind: Vm\nmetadata: {{name: vm-{i}}}\nspec: {{power: stopped, memory: 64M, boot: {{kernel: {{kernel: /k/vmlinuz}}}}}}\n---\n"
            );
        }
        files.push((format!("vms/part-{file:03}.yaml"), text.clone()));
        texts.push((format!("part-{file:03}.yaml"), text));
    }
    let files: Vec<(&str, Option<&str>)> = files
        .iter()
        .map(|(path, text)| (path.as_str(), Some(text.as_str())))
        .collect();
    server.commit(&files, "vms");

    let sources = SourceReconciler::new(
        open(dir.path(), "source.db").await?,
        ImportPolicy::default(),
        dir.path().join("git"),
    );
    let spec = SourceSpec {
        git: format!("git://127.0.0.1:{}/repo.git", server.port()),
        reference: "main".into(),
        path: "vms".into(),
        prune: true,
        drift: DriftPolicy::Correct,
        interval_seconds: None,
        depends_on: Vec::new(),
        verify_keys: Vec::new(),
    };
    let name = "bench".parse()?;
    let options = RunOptions {
        access: HostAccess::Admin,
        allow_mass_prune: false,
        project: corral_contract::DEFAULT_PROJECT.to_owned(),
    };
    let started = Instant::now();
    let mut status = sources
        .reconcile(&name, &spec, &SourceStatus::default(), options.clone())
        .await;
    let first = started.elapsed();
    ensure!(status.errors.is_empty(), "{:?}", status.errors);
    ensure!(
        status.applied.get("Vm") == Some(&(count as u32)),
        "{status:?}"
    );
    let mut unchanged = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        status = sources
            .reconcile(&name, &spec, &status, options.clone())
            .await;
        unchanged.push(started.elapsed());
        ensure!(
            status.errors.is_empty() && status.drift.is_empty(),
            "{status:?}"
        );
    }

    let direct = open(dir.path(), "direct.db").await?;
    let mut resources = Vec::new();
    for (file, text) in &texts {
        resources.extend(manifest::parse(file, text)?);
    }
    let request = ApplyRequest {
        owner: Some("bench".parse()?),
        prune: true,
        allow_mass_prune: false,
        dry_run: false,
        resources,
    };
    direct
        .apply(
            request.clone(),
            HostAccess::Admin,
            corral_contract::DEFAULT_PROJECT,
        )
        .await?;
    let mut baseline = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let report = direct
            .apply(
                request.clone(),
                HostAccess::Admin,
                corral_contract::DEFAULT_PROJECT,
            )
            .await?;
        baseline.push(started.elapsed());
        ensure!(!report.changes_anything(), "the baseline changed something");
    }
    drop(server);

    println!(
        "git source of {count} stopped VMs ({} files), {runs} runs",
        texts.len()
    );
    println!(
        "first reconcile (fetch, parse, create all):   {}",
        ms(first)
    );
    println!(
        "unchanged reconcile, median:                  {}",
        ms(median(&unchanged))
    );
    println!(
        "apply of the same resources, no git, median:  {}",
        ms(median(&baseline))
    );
    println!(
        "unchanged reconcile / direct apply:           {:.2}x",
        median(&unchanged).as_secs_f64() / median(&baseline).as_secs_f64()
    );
    Ok(())
}
