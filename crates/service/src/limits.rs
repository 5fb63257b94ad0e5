//! Project limits, checked when an object is created: what a new object asks for
//! ([`Usage`], from its kind's [`Strategy::usage`](crate::Strategy::usage)) plus what the
//! project's objects use must stay within its [`ProjectLimits`].

use corral_contract::{ByteSize, DEFAULT_PROJECT, Image, Project, ProjectLimits, Vm, Volume};
use corral_store::Store;

use crate::ServiceError;
use crate::resources::{Resources, Strategy, read, read_all};

/// What objects use of a project's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// VMs.
    pub vms: u64,
    /// vCPUs.
    pub cpus: u64,
    /// Guest memory, bytes.
    pub memory: u64,
    /// Volume sizes, bytes.
    pub disk: u64,
    /// Image bytes.
    pub images: u64,
}

impl Usage {
    /// Nothing: kinds that count against no limit.
    pub const NONE: Usage = Usage {
        vms: 0,
        cpus: 0,
        memory: 0,
        disk: 0,
        images: 0,
    };

    /// One VM: itself, its vCPUs and its memory.
    pub fn of_vm(vm: &Vm) -> Usage {
        Usage {
            vms: 1,
            cpus: u64::from(vm.spec.cpus),
            memory: vm.spec.memory.as_u64(),
            ..Usage::NONE
        }
    }

    /// One volume: its size (as asked, else as made).
    pub fn of_volume(volume: &Volume) -> Usage {
        let size = volume
            .spec
            .size
            .map(ByteSize::as_u64)
            .or(volume.status.size)
            .unwrap_or(0);
        Usage {
            disk: size,
            ..Usage::NONE
        }
    }

    /// One image: its stored bytes; a new one counts at least one, so a full project takes
    /// no more.
    pub fn of_image(image: &Image) -> Usage {
        Usage {
            images: image.status.size.unwrap_or(0).max(1),
            ..Usage::NONE
        }
    }

    fn is_none(&self) -> bool {
        *self == Usage::NONE
    }

    fn add(self, other: Usage) -> Usage {
        Usage {
            vms: self.vms + other.vms,
            cpus: self.cpus + other.cpus,
            memory: self.memory + other.memory,
            disk: self.disk + other.disk,
            images: self.images + other.images,
        }
    }
}

/// What the objects of `project` use.
pub async fn in_use(store: &dyn Store, project: &str) -> Result<Usage, ServiceError> {
    let mut used = Usage::NONE;
    let ours = |meta: &corral_contract::ObjectMeta| meta.project() == project;
    for vm in read_all::<Vm>(store).await? {
        if ours(&vm.metadata) {
            used = used.add(Usage::of_vm(&vm));
        }
    }
    for volume in read_all::<Volume>(store).await? {
        if ours(&volume.metadata) {
            used = used.add(Usage::of_volume(&volume));
        }
    }
    for image in read_all::<Image>(store).await? {
        if ours(&image.metadata) {
            used = used.add(Usage::of_image(&image));
        }
    }
    Ok(used)
}

/// Refuses `asked` when it would take project `project` past one of its limits.
async fn check(
    store: &dyn Store,
    project: &str,
    noun: &'static str,
    asked: Usage,
) -> Result<(), ServiceError> {
    let Some(p) = existing(store, project).await? else {
        return Ok(());
    };
    let ProjectLimits {
        vms,
        cpus,
        memory,
        disk,
        images,
    } = p.spec.limits;
    let used = in_use(store, project).await?;
    let size = |s: Option<ByteSize>| s.map(ByteSize::as_u64);
    // (limit, its maximum, in use, asked, whether bytes)
    let checks = [
        ("vms", vms, used.vms, asked.vms, false),
        ("cpus", cpus, used.cpus, asked.cpus, false),
        ("memory", size(memory), used.memory, asked.memory, true),
        ("disk", size(disk), used.disk, asked.disk, true),
        ("images", size(images), used.images, asked.images, true),
    ];
    for (limit, max, used, asked, bytes) in checks {
        let Some(max) = max else { continue };
        if asked > 0 && used.saturating_add(asked) > max {
            return Err(ServiceError::OverLimit {
                project: project.to_owned(),
                limit,
                max,
                used,
                asked,
                bytes,
                noun,
            });
        }
    }
    Ok(())
}

/// Project `project`: `None` for a `default` nobody declared (it always exists, without
/// limits); refused when any other is missing.
async fn existing(store: &dyn Store, project: &str) -> Result<Option<Project>, ServiceError> {
    match read::<Project>(store, project).await? {
        None if project != DEFAULT_PROJECT => Err(ServiceError::NotFound {
            kind: "project",
            name: project.to_owned(),
        }),
        found => Ok(found),
    }
}

/// One creation at a time is checked against the limits, so two cannot both fit the last
/// room.
static ADMISSION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl<S: Strategy> Resources<S> {
    /// Holds the admission lock and checks the project's limits for a new `obj`; the guard
    /// is kept until the object is written.
    pub(crate) async fn admit_within_limits(
        &self,
        obj: &S::Object,
    ) -> Result<Option<tokio::sync::MutexGuard<'static, ()>>, ServiceError> {
        let project = corral_contract::Object::metadata(obj).project();
        let kind = <S::Object as corral_contract::Object>::KIND;
        let asked = self.strategy().usage(obj);
        if asked.is_none() {
            if kind.in_project() {
                existing(&**self.store(), project).await?;
            }
            return Ok(None);
        }
        let guard = ADMISSION.lock().await;
        let noun = <S::Object as crate::Stored>::NOUN;
        check(&**self.store(), project, noun, asked).await?;
        Ok(Some(guard))
    }
}
