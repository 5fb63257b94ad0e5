//! Dependencies: what an object needs to be Ready before its controller acts on it, whether it
//! is, and who waits on whom.
//!
//! A resource whose dependencies are missing or not Ready waits — it never fails for good on
//! "not yet". Controllers keep a [`DependencyIndex`] (dependency → dependents) up to date from
//! the watch events of their own kind, and on each event of a dependency's kind requeue exactly
//! the dependents the index names, never a scan of every object.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use corral_contract::{
    Image, Kind, Network, NetworkPhase, ObjectMeta, StoragePhase, Vm, VmSpec, Volume, names,
    split_key,
};
use corral_service::{ServiceError, read, reference_keys, resolve};
use corral_store::Store;

use crate::disks::attached_volumes;

/// One object another one needs: its kind and its store key in the dependent's project (an
/// image or network may turn out to be a shared one of `default`: see [`resolve`]).
pub type Dependency = (Kind, String);

/// What a VM needs: the volumes it attaches (boot first) and the networks it joins.
pub fn of_vm(meta: &ObjectMeta, spec: &VmSpec) -> Vec<Dependency> {
    let volumes = attached_volumes(spec)
        .into_iter()
        .map(|a| (Kind::Volume, meta.key_of(&a.volume)));
    let networks = spec
        .networks
        .iter()
        .map(|a| (Kind::Network, meta.key_of(&a.network)));
    volumes.chain(networks).collect()
}

/// What a volume needs: the image it clones, if any.
pub fn of_volume(volume: &Volume) -> Vec<Dependency> {
    volume
        .spec
        .image
        .iter()
        .map(|i| (Kind::Image, volume.metadata.key_of(i)))
        .collect()
}

/// The keys a change to which may change `dep`: its own, and for kinds that can be shared,
/// that of the shared object of `default` it falls back to.
fn watched_keys((kind, key): &Dependency) -> Vec<Dependency> {
    let (project, name) = split_key(key);
    let keys = match kind {
        Kind::Image => reference_keys::<Image>(project, name),
        Kind::Network => reference_keys::<Network>(project, name),
        _ => vec![key.clone()],
    };
    keys.into_iter().map(|k| (*kind, k)).collect()
}

/// Dependents by dependency, for one kind of dependent.
#[derive(Debug, Default)]
pub struct DependencyIndex {
    inner: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    dependents: BTreeMap<Dependency, BTreeSet<String>>,
    needs: BTreeMap<String, Vec<Dependency>>,
}

impl DependencyIndex {
    /// Records that `dependent` needs exactly `deps` now (replacing what it needed before).
    pub fn set(&self, dependent: &str, deps: Vec<Dependency>) {
        let mut index = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if index.needs.get(dependent) == Some(&deps) {
            return;
        }
        if let Some(old) = index.needs.remove(dependent) {
            for dep in old.iter().flat_map(watched_keys) {
                if let Some(set) = index.dependents.get_mut(&dep) {
                    set.remove(dependent);
                    if set.is_empty() {
                        index.dependents.remove(&dep);
                    }
                }
            }
        }
        for dep in deps.iter().flat_map(watched_keys) {
            index
                .dependents
                .entry(dep)
                .or_default()
                .insert(dependent.to_owned());
        }
        if !deps.is_empty() {
            index.needs.insert(dependent.to_owned(), deps);
        }
    }

    /// Forgets a dependent that is gone.
    pub fn forget(&self, dependent: &str) {
        self.set(dependent, Vec::new());
    }

    /// Who needs `kind`/`name`.
    pub fn dependents(&self, kind: Kind, name: &str) -> Vec<String> {
        let index = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        index
            .dependents
            .get(&(kind, name.to_owned()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Whether an object's dependencies let its controller go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// All Ready.
    Ready,
    /// Some are missing or not Ready yet: `Waiting: volume/v9 is Pending, network/lan is missing`.
    Waiting(String),
    /// Some failed; the message carries theirs. The object recovers when they are fixed or
    /// replaced.
    Failed(String),
}

impl Readiness {
    /// The condition reason for it.
    pub fn reason(&self) -> &'static str {
        match self {
            Readiness::Ready => names::conditions::reasons::RUNNING,
            Readiness::Waiting(_) => names::conditions::reasons::WAITING,
            Readiness::Failed(_) => names::conditions::reasons::DEPENDENCY_FAILED,
        }
    }

    /// The sentence for people.
    pub fn message(&self) -> &str {
        match self {
            Readiness::Ready => "",
            Readiness::Waiting(m) | Readiness::Failed(m) => m,
        }
    }
}

/// Reads each dependency and says whether all are Ready.
pub async fn check(store: &dyn Store, deps: &[Dependency]) -> Result<Readiness, ServiceError> {
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for (kind, key) in deps {
        let (project, name) = split_key(key);
        let what = format!("{}/{name}", kind.as_str().to_lowercase());
        let state = match kind {
            Kind::Volume => read::<Volume>(store, key)
                .await?
                .map(|v| storage_state(v.metadata.deleting, v.status.phase, v.status.message)),
            Kind::Image => resolve::<Image>(store, project, name)
                .await?
                .map(|i| storage_state(i.metadata.deleting, i.status.phase, i.status.message)),
            Kind::Network => resolve::<Network>(store, project, name).await?.map(|n| {
                match (n.metadata.deleting, n.status.phase) {
                    (true, _) => State::NotYet("being deleted".into()),
                    (false, NetworkPhase::Ready) => State::Ready,
                    (false, NetworkPhase::Failed) => {
                        State::Failed(n.status.message.unwrap_or_default())
                    }
                    (false, phase) => State::NotYet(format!("{phase}")),
                }
            }),
            other => {
                let _ = other;
                Some(State::Ready)
            }
        };
        match state {
            None => waiting.push(format!("{what} is missing")),
            Some(State::Ready) => {}
            Some(State::NotYet(why)) => waiting.push(format!("{what} is {why}")),
            Some(State::Failed(message)) => failed.push(format!("{what} failed: {message}")),
        }
    }
    Ok(if !failed.is_empty() {
        failed.extend(waiting);
        Readiness::Failed(failed.join("; "))
    } else if !waiting.is_empty() {
        Readiness::Waiting(format!("Waiting: {}", waiting.join(", ")))
    } else {
        Readiness::Ready
    })
}

enum State {
    Ready,
    NotYet(String),
    Failed(String),
}

fn storage_state(deleting: bool, phase: StoragePhase, message: Option<String>) -> State {
    match (deleting, phase) {
        (true, _) => State::NotYet("being deleted".into()),
        (false, StoragePhase::Ready) => State::Ready,
        (false, StoragePhase::Failed) => State::Failed(message.unwrap_or_default()),
        (false, StoragePhase::Pending) => State::NotYet("Pending".into()),
    }
}

/// The VM's dependencies, for [`DependencyIndex::set`].
pub fn vm_deps(vm: &Vm) -> Vec<Dependency> {
    let mut deps = of_vm(&vm.metadata, &vm.spec);
    // A template is needed until the VM has started from it; later starts boot.
    if let (Some(template), None) = (&vm.spec.template, &vm.status.restored_from) {
        deps.push((Kind::Image, vm.metadata.key_of(template)));
    }
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_what_each_dependent_needs_now() {
        let index = DependencyIndex::default();
        index.set(
            "web",
            vec![(Kind::Volume, "v1".into()), (Kind::Network, "lan".into())],
        );
        index.set("db", vec![(Kind::Volume, "v1".into())]);
        assert_eq!(index.dependents(Kind::Volume, "v1"), ["db", "web"]);
        index.set("web", vec![(Kind::Volume, "v2".into())]);
        assert_eq!(index.dependents(Kind::Volume, "v1"), ["db"]);
        assert_eq!(index.dependents(Kind::Volume, "v2"), ["web"]);
        assert!(index.dependents(Kind::Network, "lan").is_empty());
        index.forget("db");
        assert!(index.dependents(Kind::Volume, "v1").is_empty());
    }
}
