//! Git sources: fetch a repository's manifests and apply them as the source's owner, with
//! prune and drift correction, through the one server-side apply ([`ApplyService`]).
//!
//! A reconcile never half-applies a broken commit: every file is parsed first (errors are
//! reported per file with their line), and the apply admits every resource before writing.
//! The last good commit stays in `status.commit` until a good one replaces it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use corral_contract::manifest;
use corral_contract::names::annotations::{DRIFT, PRUNE_APPROVED_AT, RECONCILE_REQUESTED_AT};
use corral_contract::{
    ApplyAction, ApplyReport, ApplyRequest, DEFAULT_SOURCE_INTERVAL_SECONDS, DriftPolicy, Kind,
    Resource, ResourceName, Source, SourceSpec, SourceStatus,
};
use corral_service::{ApplyService, HostAccess, ImportPolicy, SourceService};

use crate::git::{self, Checkout};

/// The git:// port when the URL names none.
const GIT_PORT: u16 = 9418;

/// Reconciles Git sources (see the module docs).
#[derive(Debug, Clone)]
pub struct SourceReconciler {
    apply: ApplyService,
    policy: ImportPolicy,
    cache_dir: PathBuf,
}

/// What one reconcile is asked to do beyond the spec.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The source's creator may name host things (admins): its fetches may reach any address.
    pub access: HostAccess,
    /// An approval (`corral source approve`) for a prune the guard stopped.
    pub allow_mass_prune: bool,
    /// The project the source is in, and its manifests are applied to.
    pub project: String,
}

impl SourceReconciler {
    /// Applies through `apply`; fetches under `policy` (the import rules: a non-admin's
    /// source may not reach loopback, link-local or private addresses); keeps one bare
    /// repository per source under `cache_dir`.
    pub fn new(apply: ApplyService, policy: ImportPolicy, cache_dir: impl Into<PathBuf>) -> Self {
        SourceReconciler {
            apply,
            policy,
            cache_dir: cache_dir.into(),
        }
    }

    /// Fetches `spec`'s ref, applies its manifests as owner `name`, and returns the new
    /// status (`last`: the one before, whose commit stays when this run changes nothing).
    pub async fn reconcile(
        &self,
        name: &ResourceName,
        spec: &SourceSpec,
        last: &SourceStatus,
        options: RunOptions,
    ) -> SourceStatus {
        let failed = |errors: Vec<String>| SourceStatus {
            errors,
            drift: Vec::new(),
            ..last.clone()
        };
        if let Err(e) = spec.validate() {
            return failed(vec![e.to_string()]);
        }
        let checkout = match self.fetch(name, spec, options.access).await {
            Ok(checkout) => checkout,
            Err(e) => return failed(vec![e]),
        };
        if !spec.verify_keys.is_empty() {
            if let Err(e) = git::verify(&checkout, &spec.verify_keys) {
                return failed(vec![e]);
            }
        }
        let resources = match parse(&checkout) {
            Ok(resources) => resources,
            Err(errors) => return failed(errors),
        };
        let mut request = ApplyRequest {
            owner: Some(name.clone()),
            prune: spec.prune,
            allow_mass_prune: options.allow_mass_prune,
            dry_run: true,
            resources,
        };
        // The same commit as last time: whatever apply would change was changed out of band,
        // and each resource's drift policy (its own, else the source's) says what to do.
        let same_commit = last.commit.as_deref() == Some(checkout.commit.as_str());
        let mut drift = Vec::new();
        let mut leave = BTreeSet::new();
        // A policy none of the three is a broken commit: nothing changes.
        let policies = match policies(&request.resources, spec.drift) {
            Ok(policies) => policies,
            Err(errors) => return failed(errors),
        };
        if same_commit {
            if policies.values().all(|p| *p == DriftPolicy::Ignore) {
                return SourceStatus {
                    errors: Vec::new(),
                    drift: Vec::new(),
                    ..last.clone()
                };
            }
            let plan = match self
                .apply
                .apply(request.clone(), options.access, &options.project)
                .await
            {
                Ok(plan) => plan,
                Err(e) => return failed(vec![e.to_string()]),
            };
            let mut correct = false;
            for (key, what) in drifted(&plan) {
                match policies.get(&key).copied().unwrap_or(spec.drift) {
                    DriftPolicy::Correct => {
                        correct = true;
                        drift.push(what);
                    }
                    DriftPolicy::Warn => {
                        leave.insert(key);
                        drift.push(what);
                    }
                    DriftPolicy::Ignore => {
                        leave.insert(key);
                    }
                }
            }
            if !correct {
                return SourceStatus {
                    errors: Vec::new(),
                    drift,
                    ..last.clone()
                };
            }
        }
        request.dry_run = false;
        let applied = counts(&request.resources);
        match self
            .apply
            .apply_leaving(request, options.access, &options.project, &leave)
            .await
        {
            Ok(_) => SourceStatus {
                commit: Some(checkout.commit),
                applied,
                drift,
                errors: Vec::new(),
                ..last.clone()
            },
            Err(e) => failed(vec![e.to_string()]),
        }
    }

    async fn fetch(
        &self,
        name: &ResourceName,
        spec: &SourceSpec,
        access: HostAccess,
    ) -> Result<Checkout, String> {
        let url = self.pinned_url(&spec.git, access).await?;
        let (reference, path) = (spec.reference.clone(), spec.path.clone());
        let cache = self.cache_dir.join(name.as_str());
        let shown = spec.git.clone();
        tokio::task::spawn_blocking(move || git::fetch(&url, &reference, &path, &cache))
            .await
            .map_err(|e| format!("fetching {shown}: {e}"))?
            .map_err(|mut e| {
                // Say the URL as the user wrote it, not the address it was pinned to.
                e.url = shown;
                e.to_string()
            })
    }

    /// The URL with its host replaced by an address the caller may reach, checked under the
    /// import rules for non-admins (the fetch then connects to exactly that address, so a
    /// name that resolves differently a moment later changes nothing).
    async fn pinned_url(&self, url: &str, access: HostAccess) -> Result<String, String> {
        let rest = url.strip_prefix("git://").unwrap_or(url);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = split_port(authority)
            .ok_or_else(|| format!("spec.git: {url:?}: the port is not a number"))?;
        let port = port.unwrap_or(GIT_PORT);
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("spec.git: cannot resolve {host:?}: {e}"))?
            .map(|a| a.ip())
            .collect();
        let Some(first) = addrs.first().copied() else {
            return Err(format!("spec.git: {host:?} resolves to no address"));
        };
        if access != HostAccess::Admin {
            let what = format!("the source's host {host:?} resolves to");
            for ip in &addrs {
                self.policy.check(&what, *ip).map_err(|e| {
                    format!("spec.git: {e}; only an admin's source may fetch from it")
                })?;
            }
        }
        let host = match first {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Ok(format!("git://{host}:{port}/{path}"))
    }
}

/// `host`, `host:port` or `[v6]:port`; `None` when the port is not a number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None => Some((host, None)),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// Every resource of the checkout, or every file's error (`path:line: …`), all of them.
fn parse(checkout: &Checkout) -> Result<Vec<Resource>, Vec<String>> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    for (path, text) in &checkout.files {
        match manifest::parse_any(path, text) {
            Ok(parsed) => {
                for r in parsed {
                    let key = (r.kind(), r.metadata().name.to_string());
                    if let Some(first) = seen.insert(key.clone(), path.clone()) {
                        errors.push(format!(
                            "{path}: {}/{} is declared in {first} too: keep one",
                            key.0.as_str().to_lowercase(),
                            key.1
                        ));
                    }
                    resources.push(r);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// Each resource's drift policy: its `corral.dev/drift` annotation, else `default`; errors
/// name the resource and the values allowed.
fn policies(
    resources: &[Resource],
    default: DriftPolicy,
) -> Result<BTreeMap<(Kind, String), DriftPolicy>, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for r in resources {
        let name = r.metadata().name.to_string();
        let policy = match r.metadata().annotations.get(DRIFT) {
            None => default,
            Some(value) => match value.parse() {
                Ok(policy) => policy,
                Err(e) => {
                    errors.push(format!(
                        "{}/{name}: metadata.annotations.{DRIFT}: {e}",
                        r.kind().as_str().to_lowercase()
                    ));
                    continue;
                }
            },
        };
        out.insert((r.kind(), name), policy);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// For each resource a dry run would change: its key and `vm/web-1: spec.power`, or
/// `vm/web-1: deleted out of band`, in the order of those sentences.
fn drifted(plan: &ApplyReport) -> Vec<((Kind, String), String)> {
    let mut drifted: Vec<_> = plan
        .items
        .iter()
        .filter_map(|i| {
            let what = format!("{}/{}", i.kind.as_str().to_lowercase(), i.name);
            let said = match i.action {
                ApplyAction::Change => {
                    let fields: BTreeSet<&str> =
                        i.changes.iter().map(|c| c.path.as_str()).collect();
                    format!(
                        "{what}: {}",
                        fields.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
                ApplyAction::Create => format!("{what}: deleted out of band"),
                ApplyAction::Unchanged | ApplyAction::Prune => return None,
            };
            Some(((i.kind, i.name.clone()), said))
        })
        .collect();
    drifted.sort_by(|a, b| a.1.cmp(&b.1));
    drifted
}

fn counts(resources: &[Resource]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for r in resources {
        *counts.entry(r.kind().as_str().to_owned()).or_default() += 1;
    }
    counts
}

/// Runs Git sources: each is reconciled when created or changed, when asked
/// (`corral source reconcile`/`approve`), and every `spec.interval_seconds` otherwise.
#[derive(Debug, Clone)]
pub struct SourceController {
    sources: SourceService,
    reconciler: SourceReconciler,
}

/// What the controller remembers of a source between runs (only for pacing: everything it
/// must not forget is in the object).
struct Seen {
    at: Instant,
    requested: Option<String>,
}

impl SourceController {
    /// Reconciles the sources in `sources` with `reconciler`.
    pub fn new(sources: SourceService, reconciler: SourceReconciler) -> Self {
        SourceController {
            sources,
            reconciler,
        }
    }

    /// Runs until `stop` becomes true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        while !*stop.borrow() {
            match self.sources.list("").await {
                Ok((items, _)) => {
                    for source in items {
                        if self.due(&source, seen.get(&source.metadata.key())) {
                            let requested = source
                                .metadata
                                .annotations
                                .get(RECONCILE_REQUESTED_AT)
                                .cloned();
                            self.reconcile(&source).await;
                            seen.insert(
                                source.metadata.key(),
                                Seen {
                                    at: Instant::now(),
                                    requested,
                                },
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing sources"),
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn due(&self, source: &Source, seen: Option<&Seen>) -> bool {
        if source.metadata.deleting {
            return false;
        }
        let Some(seen) = seen else { return true };
        let interval = Duration::from_secs(
            source
                .spec
                .interval_seconds
                .unwrap_or(DEFAULT_SOURCE_INTERVAL_SECONDS),
        );
        // A waiting source looks at what it waits for on every pass: that costs reads only.
        source.status.waiting.is_some()
            || source.status.observed_generation != source.metadata.generation
            || source.metadata.annotations.get(RECONCILE_REQUESTED_AT) != seen.requested.as_ref()
            || seen.at.elapsed() >= interval
    }

    /// Why `source` must wait: a source it depends on is missing, has applied nothing yet,
    /// or failed its last reconcile.
    async fn waiting(&self, source: &Source) -> Option<String> {
        let mut reasons = Vec::new();
        for dep in &source.spec.depends_on {
            match self.sources.get(&source.metadata.key_of(dep)).await {
                Ok(d) if !d.status.errors.is_empty() => {
                    reasons.push(format!("source/{dep} failed: {}", d.status.errors[0]));
                }
                Ok(d) if d.status.commit.is_none() => {
                    reasons.push(format!("source/{dep} has applied nothing yet"));
                }
                Ok(_) => {}
                Err(corral_service::ServiceError::NotFound { .. }) => {
                    reasons.push(format!("source/{dep} does not exist"));
                }
                Err(e) => reasons.push(format!("source/{dep}: {e}")),
            }
        }
        (!reasons.is_empty()).then(|| format!("waiting for {}", reasons.join("; ")))
    }

    async fn reconcile(&self, source: &Source) {
        if let Some(waiting) = self.waiting(source).await {
            let next = SourceStatus {
                waiting: Some(waiting),
                observed_generation: source.metadata.generation,
                ..source.status.clone()
            };
            self.write(source, next).await;
            return;
        }
        let approval = source.metadata.annotations.get(PRUNE_APPROVED_AT).cloned();
        let allow_mass_prune = approval.is_some() && approval != source.status.approval_used;
        let options = RunOptions {
            access: SourceService::access_of(source),
            allow_mass_prune,
            project: source.metadata.project().to_owned(),
        };
        let mut next = self
            .reconciler
            .reconcile(&source.metadata.name, &source.spec, &source.status, options)
            .await;
        next.observed_generation = source.metadata.generation;
        next.waiting = None;
        next.approval_used = if allow_mass_prune {
            approval
        } else {
            source.status.approval_used.clone()
        };
        for e in &next.errors {
            tracing::warn!(source = %source.metadata.name, error = %e, "source not applied");
        }
        self.write(source, next).await;
    }

    async fn write(&self, source: &Source, mut next: SourceStatus) {
        next.last_reconcile =
            Some(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
        let key = source.metadata.key();
        let name = key.as_str();
        if let Err(e) = self
            .sources
            .update_status(name, |_, status| {
                *status = next.clone();
                true
            })
            .await
        {
            tracing::warn!(source = %name, error = %e, "writing the source's status");
        }
    }
}
