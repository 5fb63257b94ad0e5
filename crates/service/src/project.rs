//! Projects: what owns objects, and the limits they are admitted within (see `limits.rs`).

use corral_contract::{DEFAULT_PROJECT, Image, Network, Project, Snapshot, Vm, Volume};
use corral_store::Store;

use crate::ServiceError;
use crate::resources::{Resources, Stored, Strategy, read_all};

/// Projects: [`Resources`] of the [`ProjectKind`] strategy.
pub type ProjectService = Resources<ProjectKind>;

/// How projects are admitted: their limits may change at any time; lowering one below what
/// is in use refuses only new objects.
#[derive(Debug, Default)]
pub struct ProjectKind;

impl Strategy for ProjectKind {
    type Object = Project;

    fn check_update(&self, current: &Project, desired: &Project) -> Result<(), ServiceError> {
        let _ = (current, desired);
        Ok(())
    }

    /// A project is deleted once empty: deleting it must not orphan objects nobody could
    /// reach any more. `default` always stays.
    async fn check_delete(&self, store: &dyn Store, project: &Project) -> Result<(), ServiceError> {
        let name = project.metadata.name.as_str();
        if name == DEFAULT_PROJECT {
            return Err(ServiceError::WrongState {
                kind: Project::NOUN,
                name: name.to_owned(),
                state: "the default project".into(),
                rule: "it cannot be deleted: objects that name no project are in it".into(),
            });
        }
        let mut left = Vec::new();
        count::<Vm>(store, name, &mut left).await?;
        count::<Volume>(store, name, &mut left).await?;
        count::<Snapshot>(store, name, &mut left).await?;
        count::<Image>(store, name, &mut left).await?;
        count::<Network>(store, name, &mut left).await?;
        if left.is_empty() {
            return Ok(());
        }
        Err(ServiceError::WrongState {
            kind: Project::NOUN,
            name: name.to_owned(),
            state: format!("not empty ({})", left.join(", ")),
            rule: format!("delete its objects first (corral --project {name} … delete)"),
        })
    }
}

/// Adds "2 VM(s)" to `left` when `project` holds objects of kind `T`.
async fn count<T: Stored>(
    store: &dyn Store,
    project: &str,
    left: &mut Vec<String>,
) -> Result<(), ServiceError> {
    let n = read_all::<T>(store)
        .await?
        .iter()
        .filter(|o| o.metadata().project() == project)
        .count();
    if n > 0 {
        left.push(format!("{n} {}(s)", T::NOUN));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_contract::{Boot, DEFAULT_PROJECT, ProjectSpec, Vm, VmSpec};

    use super::*;
    use crate::VmService;

    #[tokio::test]
    async fn creates_past_a_limit_are_refused_naming_it_and_its_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            corral_store::SqliteStore::open(dir.path().join("state.db"))
                .await
                .unwrap(),
        );
        let projects = ProjectService::new(store.clone());
        let vms = VmService::new(store);
        let spec = |cpus| {
            VmSpec::builder(Boot::kernel("/boot/vmlinuz"))
                .cpus(cpus)
                .build()
                .unwrap()
        };
        vms.create(Vm::new("free".parse().unwrap(), spec(4)))
            .await
            .unwrap();
        let limits = "vms=3,cpus=6".parse().unwrap();
        projects
            .create(Project::new(
                DEFAULT_PROJECT.parse().unwrap(),
                ProjectSpec { limits },
            ))
            .await
            .unwrap();
        vms.create(Vm::new("a".parse().unwrap(), spec(2)))
            .await
            .unwrap();
        let err = vms
            .create(Vm::new("b".parse().unwrap(), spec(1)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limit cpus=6") && err.contains("6 in use") && err.contains("asks 1"),
            "{err}"
        );
        assert!(!vms.exists("b").await.unwrap(), "nothing is left half-made");
        let mut raised = projects.get(DEFAULT_PROJECT).await.unwrap();
        raised.spec.limits = "vms=2,cpus=16".parse().unwrap();
        projects.update(raised).await.unwrap();
        let err = vms
            .create(Vm::new("b".parse().unwrap(), spec(1)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limit vms=2") && err.contains("2 in use"),
            "{err}"
        );
    }
}
