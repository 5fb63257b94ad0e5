//! Applying a set of declared resources as one owner, with prune: the one server-side path
//! behind `corral apply`, `corral diff` (a dry run) and Git sources.
//!
//! Every resource goes through its kind's ordinary create or update (so through the same
//! admission), first all as a dry run — a set with one bad resource changes nothing — then
//! for real. Resources carry the owner label [`OWNER`]; another owner's resource is never
//! touched. Prune removes the owner's resources that are no longer declared, users before
//! what they use, and stops before removing more than half (or all) of them unless allowed.

use std::collections::BTreeSet;
use std::time::Duration;

use corral_contract::names::{PREFIX, labels::OWNER};
use corral_contract::{
    ApplyAction, ApplyItem, ApplyReport, ApplyRequest, DEFAULT_MASS_PRUNE_PERCENT, Kind,
    Object as _, ObjectMeta, Resource, ResourceName, ValidationError, Vm, field_changes,
};
use serde_json::json;

use crate::{
    HostAccess, ImportProgress, NetworkService, Resources, ServiceError, StorageService, Stored,
    Strategy, VmService, read,
};

/// How long a prune waits for the VMs it deleted to be gone before deleting what they used.
const PRUNE_WAIT: Duration = Duration::from_secs(120);

/// How many times one resource is planned again when someone else changed it in between.
const ATTEMPTS: usize = 5;

/// Applies declared resources (see the module docs).
#[derive(Debug, Clone)]
pub struct ApplyService {
    vms: VmService,
    networks: NetworkService,
    storage: StorageService,
}

/// What one resource needs: the object to create, or the stored one with the declaration in.
enum Plan<T> {
    Create(T),
    Change(T, Vec<corral_contract::FieldChange>),
    Unchanged,
}

impl ApplyService {
    /// Over the services of each kind (which share one store).
    pub fn new(vms: VmService, networks: NetworkService, storage: StorageService) -> Self {
        ApplyService {
            vms,
            networks,
            storage,
        }
    }

    /// Applies `request` for a caller with `access` to host things (see the module docs).
    /// With `dry_run`, reports what would happen and writes nothing.
    /// Everything happens in `project`: resources that name none are put there, one that
    /// names another is refused, and only that project's resources of the owner are pruned.
    pub async fn apply(
        &self,
        request: ApplyRequest,
        access: HostAccess,
        project: &str,
    ) -> Result<ApplyReport, ServiceError> {
        self.apply_leaving(request, access, project, &BTreeSet::new())
            .await
    }

    /// [`apply`](Self::apply), leaving the resources named in `leave` (kind, name) as they
    /// are: they count as declared — never pruned — but are not written. A source uses it for
    /// resources whose drift policy is `warn` or `ignore`.
    pub async fn apply_leaving(
        &self,
        request: ApplyRequest,
        access: HostAccess,
        project: &str,
        leave: &BTreeSet<(Kind, String)>,
    ) -> Result<ApplyReport, ServiceError> {
        let owner = request.owner.as_ref().map(|o| o.to_string());
        if request.prune && owner.is_none() {
            return Err(ValidationError::new(
                "owner",
                "prune needs an owner: only resources of that owner are pruned",
            )
            .into());
        }
        let mut resources = request.resources;
        let mut declared = BTreeSet::new();
        let in_project =
            ResourceName::new(project).map_err(|e| ValidationError::new("project", e))?;
        for (i, r) in resources.iter_mut().enumerate() {
            let meta = r.metadata_mut();
            match &meta.project {
                Some(p) if p.as_str() != project => {
                    return Err(ValidationError::new(
                        format!("resources[{i}].metadata.project"),
                        format!(
                            "{:?} is not the project applied to, {project:?}",
                            p.as_str()
                        ),
                    )
                    .into());
                }
                _ => meta.project = Some(in_project.clone()),
            }
        }
        for (i, r) in resources.iter().enumerate() {
            if matches!(
                r.kind(),
                Kind::Identity | Kind::Project | Kind::Source | Kind::Node
            ) {
                return Err(ValidationError::new(
                    format!("resources[{i}].kind"),
                    format!(
                        "{} is not applied: use Vm, Network, Image, Volume or Snapshot",
                        r.kind()
                    ),
                )
                .into());
            }
            if !declared.insert((r.kind(), r.metadata().name.to_string())) {
                return Err(ValidationError::new(
                    format!("resources[{i}]"),
                    format!(
                        "{} appears twice: keep one",
                        what(r.kind(), r.metadata().name.as_str())
                    ),
                )
                .into());
            }
        }
        resources.retain(|r| !leave.contains(&(r.kind(), r.metadata().name.to_string())));
        resources.sort_by_key(|r| apply_rank(r.kind()));
        let owner = owner.as_deref();
        // Everything through admission first: one bad resource, nothing changed.
        let mut items = Vec::with_capacity(resources.len());
        for r in &resources {
            items.push(self.apply_one(r.clone(), owner, access, true).await?);
        }
        let prune = match owner {
            Some(owner) if request.prune => {
                self.prune_candidates(owner, project, &declared).await?
            }
            _ => Vec::new(),
        };
        if !request.dry_run && !request.allow_mass_prune && !prune.is_empty() {
            let total = self.owned(owner.unwrap_or_default(), project).await?.len();
            let over = prune.len() * 100 > total * usize::from(DEFAULT_MASS_PRUNE_PERCENT);
            if over || prune.len() == total {
                return Err(ServiceError::MassPrune {
                    owner: owner.unwrap_or_default().to_owned(),
                    prune: prune.iter().map(|(k, n)| what(*k, n)).collect(),
                    total,
                    percent: DEFAULT_MASS_PRUNE_PERCENT,
                });
            }
        }
        if !request.dry_run {
            items.clear();
            for r in resources {
                items.push(self.apply_one(r, owner, access, false).await?);
            }
            self.prune(&prune, project).await?;
        }
        items.extend(prune.into_iter().map(|(kind, name)| ApplyItem {
            kind,
            name,
            action: ApplyAction::Prune,
            changes: Vec::new(),
        }));
        Ok(ApplyReport {
            dry_run: request.dry_run,
            items,
        })
    }

    async fn apply_one(
        &self,
        resource: Resource,
        owner: Option<&str>,
        access: HostAccess,
        dry_run: bool,
    ) -> Result<ApplyItem, ServiceError> {
        let kind = resource.kind();
        let name = resource.metadata().name.to_string();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self
                .try_apply(resource.clone(), owner, access, dry_run)
                .await
            {
                Err(ServiceError::Conflict { .. } | ServiceError::AlreadyExists { .. })
                    if !dry_run =>
                {
                    last = Some(ServiceError::ChangedTooOften {
                        kind: kind.as_str(),
                        name: name.clone(),
                        attempts: ATTEMPTS,
                    });
                }
                Ok((action, changes)) => {
                    return Ok(ApplyItem {
                        kind,
                        name,
                        action,
                        changes,
                    });
                }
                Err(e) => {
                    return Err(ServiceError::Applying {
                        what: what(kind, &name),
                        source: Box::new(e),
                    });
                }
            }
        }
        Err(ServiceError::Applying {
            what: what(kind, &name),
            source: Box::new(last.expect("at least one attempt")),
        })
    }

    async fn try_apply(
        &self,
        resource: Resource,
        owner: Option<&str>,
        access: HostAccess,
        dry: bool,
    ) -> Result<(ApplyAction, Vec<corral_contract::FieldChange>), ServiceError> {
        let done = |action| Ok((action, Vec::new()));
        match resource {
            Resource::Vm(vm) => {
                let plan = plan(&self.vms, vm, owner, |desired, current| {
                    // MACs and host ports left out of the manifest are the ones corrald picked.
                    desired.keep_allocations(current);
                })
                .await?;
                match plan {
                    Plan::Create(vm) => {
                        self.vms.create_as_opts(vm, access, dry).await?;
                        done(ApplyAction::Create)
                    }
                    Plan::Change(vm, changes) => {
                        self.vms.update_as_opts(vm, access, dry).await?;
                        Ok((ApplyAction::Change, changes))
                    }
                    Plan::Unchanged => done(ApplyAction::Unchanged),
                }
            }
            Resource::Network(net) => match plan(&self.networks, net, owner, |_, _| {}).await? {
                Plan::Create(net) => {
                    self.networks.create_as_opts(net, access, dry).await?;
                    done(ApplyAction::Create)
                }
                Plan::Change(net, changes) => {
                    self.networks.update_opts(net, dry).await?;
                    Ok((ApplyAction::Change, changes))
                }
                Plan::Unchanged => done(ApplyAction::Unchanged),
            },
            Resource::Volume(v) => {
                let volumes = &self.storage.volumes;
                change_or_create(volumes, plan(volumes, v, owner, |_, _| {}).await?, dry).await
            }
            Resource::Snapshot(s) => {
                let snapshots = &self.storage.snapshots;
                change_or_create(snapshots, plan(snapshots, s, owner, |_, _| {}).await?, dry).await
            }
            Resource::Image(image) => {
                let images = &self.storage.images;
                match plan(images, image, owner, |_, _| {}).await? {
                    Plan::Create(image) if dry => {
                        // Its bytes are fetched only for real; the checks before that run.
                        self.storage.check_new_image(&image, access).await?;
                        done(ApplyAction::Create)
                    }
                    Plan::Create(image) => {
                        let progress = ImportProgress::default();
                        self.storage.create_image(image, progress, access).await?;
                        done(ApplyAction::Create)
                    }
                    plan => change_or_create(images, plan, dry).await,
                }
            }
            Resource::Identity(_)
            | Resource::Project(_)
            | Resource::Source(_)
            | Resource::Node(_) => {
                unreachable!("refused before planning")
            }
        }
    }

    /// Every live resource labelled with `owner`, in prune order.
    /// Every live resource of `project` labelled with `owner`, in prune order.
    async fn owned(&self, owner: &str, project: &str) -> Result<Vec<(Kind, String)>, ServiceError> {
        let selector = format!("{OWNER}={owner}");
        let mut out = Vec::new();
        out.extend(live(&self.vms, &selector, project).await?);
        out.extend(live(&self.storage.snapshots, &selector, project).await?);
        out.extend(live(&self.storage.volumes, &selector, project).await?);
        out.extend(live(&self.storage.images, &selector, project).await?);
        out.extend(live(&self.networks, &selector, project).await?);
        Ok(out)
    }

    async fn prune_candidates(
        &self,
        owner: &str,
        project: &str,
        declared: &BTreeSet<(Kind, String)>,
    ) -> Result<Vec<(Kind, String)>, ServiceError> {
        let owned = self.owned(owner, project).await?;
        Ok(owned
            .into_iter()
            .filter(|k| !declared.contains(k))
            .collect())
    }

    /// Deletes `items` (in prune order): VMs first, and what they used once they are gone.
    /// `items` are named in `project`.
    async fn prune(&self, items: &[(Kind, String)], project: &str) -> Result<(), ServiceError> {
        let items: Vec<(Kind, String)> = items
            .iter()
            .map(|(k, n)| (*k, corral_contract::object_key(project, n)))
            .collect();
        let vms: Vec<&str> = items
            .iter()
            .filter(|(k, _)| *k == Kind::Vm)
            .map(|(_, n)| n.as_str())
            .collect();
        for name in &vms {
            ignore_gone(self.vms.delete(name, None).await.map(drop))
                .map_err(|e| pruning(Kind::Vm, name, e))?;
        }
        let deadline = tokio::time::Instant::now() + PRUNE_WAIT;
        for name in &vms {
            while read::<Vm>(&**self.vms.store(), name).await?.is_some() {
                if tokio::time::Instant::now() > deadline {
                    return Err(pruning(
                        Kind::Vm,
                        name,
                        ServiceError::WrongState {
                            kind: Vm::NOUN,
                            name: (*name).to_owned(),
                            state: "still being deleted".into(),
                            rule: "what it used is pruned once it is gone: apply again".into(),
                        },
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for (kind, name) in &items {
            let result = match kind {
                Kind::Vm => continue,
                Kind::Snapshot => self.storage.delete_snapshot(name).await.map(drop),
                Kind::Volume => self.storage.delete_volume(name).await.map(drop),
                Kind::Image => self.storage.delete_image(name).await.map(drop),
                Kind::Network => self.networks.delete(name, None).await.map(drop),
                Kind::Identity | Kind::Project | Kind::Source | Kind::Node => continue,
            };
            ignore_gone(result).map_err(|e| pruning(*kind, name, e))?;
        }
        Ok(())
    }
}

/// Creates in this order: networks and images before the volumes and VMs that use them,
/// snapshots of a VM after it.
fn apply_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Network => 0,
        Kind::Image => 1,
        Kind::Volume => 2,
        Kind::Vm => 3,
        Kind::Snapshot => 4,
        Kind::Identity | Kind::Project | Kind::Source | Kind::Node => 5,
    }
}

/// `vm/web-1`, as the CLI writes a resource.
fn what(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str().to_lowercase())
}

fn pruning(kind: Kind, name: &str, e: ServiceError) -> ServiceError {
    ServiceError::Applying {
        what: format!("pruning {}", what(kind, name)),
        source: Box::new(e),
    }
}

fn ignore_gone(result: Result<(), ServiceError>) -> Result<(), ServiceError> {
    match result {
        Err(ServiceError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// Names of the objects of `S`'s kind matching `selector` that are not being deleted.
async fn live<S: Strategy>(
    resources: &Resources<S>,
    selector: &str,
    project: &str,
) -> Result<Vec<(Kind, String)>, ServiceError> {
    let (items, _) = resources
        .list_in(selector, &crate::Projects::one(project))
        .await?;
    Ok(items
        .into_iter()
        .filter(|o| !o.metadata().deleting)
        .map(|o| {
            (
                <S::Object as corral_contract::Object>::KIND,
                o.metadata().name.to_string(),
            )
        })
        .collect())
}

/// Whether `owner` may write an object whose stored metadata is `current`: its own, or one
/// nobody owns (which it adopts). Without an owner, only objects nobody owns.
fn check_owner(kind: Kind, current: &ObjectMeta, owner: Option<&str>) -> Result<(), ServiceError> {
    match current.labels.get(OWNER) {
        Some(theirs) if Some(theirs.as_str()) != owner => Err(ServiceError::OwnedByOther {
            what: what(kind, current.name.as_str()),
            owner: theirs.clone(),
        }),
        _ => Ok(()),
    }
}

/// What declaring `desired` means for the stored object: create it, change it (the stored
/// object with the declared spec, labels and annotations — corrald's own annotations kept —
/// and each field that differs) or nothing. `fix` adjusts the declared spec to the stored one
/// (allocations the declaration leaves to the server).
async fn plan<S: Strategy>(
    resources: &Resources<S>,
    mut desired: S::Object,
    owner: Option<&str>,
    fix: impl FnOnce(&mut <S::Object as Stored>::Spec, &<S::Object as Stored>::Spec),
) -> Result<Plan<S::Object>, ServiceError> {
    let kind = <S::Object as corral_contract::Object>::KIND;
    let declared = desired.metadata().labels.get(OWNER).map(String::as_str);
    if declared.is_some() && declared != owner {
        return Err(ValidationError::new(
            format!("metadata.labels.{OWNER}"),
            "is set by apply's owner (corral apply --owner NAME, a source's name), not declared",
        )
        .into());
    }
    if let Some(owner) = owner {
        let meta = desired.metadata_mut();
        meta.labels.insert(OWNER.to_owned(), owner.to_owned());
    }
    let key = desired.metadata().key();
    let Some(current) = read::<S::Object>(&**resources.store(), &key).await? else {
        let meta = desired.metadata();
        let mut fresh = ObjectMeta::new(meta.name.clone());
        fresh.project = meta.project.clone();
        fresh.labels = meta.labels.clone();
        fresh.annotations = meta.annotations.clone();
        *desired.metadata_mut() = fresh;
        *desired.status_mut() = Default::default();
        return Ok(Plan::Create(desired));
    };
    check_owner(kind, current.metadata(), owner)?;
    let mut spec = desired.spec().clone();
    fix(&mut spec, current.spec());
    let mut annotations = desired.metadata().annotations.clone();
    for (key, value) in &current.metadata().annotations {
        if key.starts_with(PREFIX) && !annotations.contains_key(key) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    let (old, new) = (current.metadata(), desired.metadata());
    if *current.spec() == spec && old.labels == new.labels && old.annotations == annotations {
        return Ok(Plan::Unchanged);
    }
    let mut next = current.clone();
    *next.spec_mut() = spec;
    let meta = next.metadata_mut();
    meta.labels = desired.metadata().labels.clone();
    meta.annotations = annotations;
    let view = |o: &S::Object| {
        json!({
            "metadata": {"labels": o.metadata().labels, "annotations": o.metadata().annotations},
            "spec": serde_json::to_value(o.spec()).unwrap_or_default(),
        })
    };
    let mut changes = Vec::new();
    field_changes("", Some(&view(&current)), Some(&view(&next)), &mut changes);
    Ok(Plan::Change(next, changes))
}

/// Runs a plan through the kind's generic create or update.
async fn change_or_create<S: Strategy>(
    resources: &Resources<S>,
    plan: Plan<S::Object>,
    dry: bool,
) -> Result<(ApplyAction, Vec<corral_contract::FieldChange>), ServiceError> {
    match plan {
        Plan::Create(obj) => {
            resources.create_opts(obj, dry).await?;
            Ok((ApplyAction::Create, Vec::new()))
        }
        Plan::Change(obj, changes) => {
            resources.update_opts(obj, dry).await?;
            Ok((ApplyAction::Change, changes))
        }
        Plan::Unchanged => Ok((ApplyAction::Unchanged, Vec::new())),
    }
}
