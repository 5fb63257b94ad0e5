//! Projects: what owns objects, and the limits they are admitted within (see `limits.rs`).

use corral_contract::Project;

use crate::ServiceError;
use crate::resources::{Resources, Strategy};

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
