//! The one generic path every kind goes through: typed create / get / list / update / delete /
//! watch over the store, with server-stamped identity, compare-and-swap retries and the
//! admission steps of a [`Strategy`] (after Kubernetes' generic registry store and its
//! `RESTCreateStrategy`).

use std::collections::BTreeSet;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use corral_contract::{Object as Resource, ResourceName, ValidationError};
use corral_store::{EventType, Object, Selector, Store, WatchStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ServiceError;

/// How many times a read-modify-write retries on a conflict before giving up.
const CAS_RETRIES: usize = 16;

/// A contract type the generic path stores: metadata, a spec users write, a status
/// controllers write.
pub trait Stored: Resource + Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// What users write.
    type Spec: PartialEq + Clone + Send + Sync + Serialize;
    /// What controllers write.
    type Status: Default + Clone + Send + Sync;
    /// The kind as a sentence names it (`VM`, `volume` …).
    const NOUN: &'static str;

    /// The spec.
    fn spec(&self) -> &Self::Spec;
    /// The spec, to replace on update.
    fn spec_mut(&mut self) -> &mut Self::Spec;
    /// The status.
    fn status(&self) -> &Self::Status;
    /// The status, for controllers.
    fn status_mut(&mut self) -> &mut Self::Status;
}

macro_rules! stored {
    ($($t:ty => $spec:ty, $status:ty, $noun:literal;)*) => {$(
        impl Stored for $t {
            type Spec = $spec;
            type Status = $status;
            const NOUN: &'static str = $noun;
            fn spec(&self) -> &$spec { &self.spec }
            fn spec_mut(&mut self) -> &mut $spec { &mut self.spec }
            fn status(&self) -> &$status { &self.status }
            fn status_mut(&mut self) -> &mut $status { &mut self.status }
        }
    )*};
}

stored! {
    corral_contract::Vm => corral_contract::VmSpec, corral_contract::VmStatus, "VM";
    corral_contract::Network => corral_contract::NetworkSpec, corral_contract::NetworkStatus, "network";
    corral_contract::Image => corral_contract::ImageSpec, corral_contract::ImageStatus, "image";
    corral_contract::Volume => corral_contract::VolumeSpec, corral_contract::VolumeStatus, "volume";
    corral_contract::Snapshot => corral_contract::SnapshotSpec, corral_contract::SnapshotStatus, "snapshot";
    corral_contract::Identity => corral_contract::IdentitySpec, corral_contract::IdentityStatus, "identity";
    corral_contract::Project => corral_contract::ProjectSpec, corral_contract::ProjectStatus, "project";
    corral_contract::Source => corral_contract::SourceSpec, corral_contract::SourceStatus, "source";
    corral_contract::Node => corral_contract::NodeSpec, corral_contract::NodeStatus, "node";
}

/// What differs between kinds: each kind is a `Strategy` and nothing else. Every hook has a
/// default, so a kind overrides only what it needs. The generic path calls them in this order:
///
/// - create: `validate` (the contract's own checks) → [`admit`](Strategy::admit) →
///   identity stamped → [`initial_status`](Strategy::initial_status) →
///   [`prepare`](Strategy::prepare) → write;
/// - update: `validate` → [`admit`](Strategy::admit) (with the stored object) →
///   [`prepare`](Strategy::prepare) → compare-and-swap loop: refuse if deleting,
///   [`check_update`](Strategy::check_update) when the spec changed, copy spec, labels and
///   annotations, bump `generation` when the spec changed;
/// - delete: [`check_delete`](Strategy::check_delete) → mark `deleting` if
///   [`FINALIZED`](Strategy::FINALIZED), else remove and call
///   [`deleted`](Strategy::deleted).
///
/// Hooks that read other kinds use [`read`] and [`read_all`] on the store they are given;
/// `prepare` and the write run under [`allocation_lock`](Strategy::allocation_lock).
pub trait Strategy: Send + Sync + 'static {
    /// The contract type.
    type Object: Stored;

    /// Whether delete only marks the object (`metadata.deleting`) for a controller that
    /// removes what it made and then the object ([`Resources::remove`]); otherwise delete
    /// removes it at once.
    const FINALIZED: bool = false;

    /// Admission after the object's own validation: references exist and are usable, host
    /// checks. `current` is the stored object on update, `None` on create. Read-only.
    fn admit(
        &self,
        store: &dyn Store,
        obj: &Self::Object,
        current: Option<&Self::Object>,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        let _ = (store, obj, current);
        async { Ok(()) }
    }

    /// The status a new object starts with; a status in the request is ignored. Default: the
    /// empty status, for a controller to fill.
    fn initial_status(
        &self,
        obj: &Self::Object,
    ) -> Result<<Self::Object as Stored>::Status, ServiceError> {
        let _ = obj;
        Ok(Default::default())
    }

    /// A lock held from [`prepare`](Strategy::prepare) until the write, so two writers never
    /// allocate the same thing.
    fn allocation_lock(&self) -> Option<&tokio::sync::Mutex<()>> {
        None
    }

    /// Server allocations (MACs, ports …) on a new object (`current` `None`; uid stamped) or
    /// on an update (`current` the stored object, whose allocations are kept).
    fn prepare(
        &self,
        store: &dyn Store,
        obj: &mut Self::Object,
        current: Option<&Self::Object>,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        let _ = (store, obj, current);
        async { Ok(()) }
    }

    /// Whether the spec may change from `current` to `desired` (called only when it differs;
    /// every spec change bumps `generation`). Default: the spec is fixed at creation.
    fn check_update(
        &self,
        current: &Self::Object,
        desired: &Self::Object,
    ) -> Result<(), ServiceError> {
        let _ = (current, desired);
        Err(ServiceError::Immutable {
            kind: <Self::Object as Stored>::NOUN,
            field: "spec",
        })
    }

    /// Refuses to delete an object others still use.
    fn check_delete(
        &self,
        store: &dyn Store,
        obj: &Self::Object,
    ) -> impl Future<Output = Result<(), ServiceError>> + Send {
        let _ = (store, obj);
        async { Ok(()) }
    }

    /// What a new object counts against its project's limits (checked on create). Default:
    /// nothing.
    fn usage(&self, obj: &Self::Object) -> crate::Usage {
        let _ = obj;
        crate::Usage::NONE
    }

    /// Cleans up after an object that is not [`FINALIZED`](Strategy::FINALIZED) was removed.
    fn deleted(&self, store: &dyn Store, obj: &Self::Object) -> impl Future<Output = ()> + Send {
        let _ = (store, obj);
        async {}
    }
}

/// The objects of one kind in a store, through the kind's strategy `S`.
#[derive(Debug)]
pub struct Resources<S> {
    store: Arc<dyn Store>,
    strategy: Arc<S>,
}

impl<S> Clone for Resources<S> {
    fn clone(&self) -> Self {
        Resources {
            store: self.store.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

/// A change seen by [`Resources::watch`].
#[derive(Debug, Clone)]
pub struct Event<T> {
    /// What happened.
    pub event: EventType,
    /// The store revision of the change; resume a watch after it.
    pub revision: u64,
    /// The object after the change (its last state, for a deletion).
    pub object: T,
}

/// A stream of [`Event`]s of one kind, optionally for one name.
#[derive(Debug)]
pub struct Watch<T> {
    inner: WatchStream,
    name: Option<String>,
    projects: Projects,
    _kind: PhantomData<fn() -> T>,
}

impl<T: Stored> Watch<T> {
    /// The next event; `None` when the stream ended.
    pub async fn recv(&mut self) -> Option<Result<Event<T>, ServiceError>> {
        loop {
            let event = match self.inner.recv().await? {
                Ok(event) => event,
                Err(e) => return Some(Err(ServiceError::Store(e))),
            };
            if self.name.as_deref().is_some_and(|n| n != event.object.name) {
                continue;
            }
            let (project, _) = corral_contract::split_key(&event.object.name);
            if !self.projects.contains(project) {
                continue;
            }
            return Some(decode(event.object).map(|object| Event {
                event: event.event,
                revision: event.revision,
                object,
            }));
        }
    }
}

/// Names the project of an object of a kind that has them (`default` when it names none), and
/// refuses one on a kind that has none.
fn settle_project<T: Stored>(obj: &mut T) -> Result<(), ValidationError> {
    let meta = obj.metadata_mut();
    if T::KIND.in_project() {
        meta.project.get_or_insert_with(|| {
            ResourceName::new(corral_contract::DEFAULT_PROJECT).expect("a valid name")
        });
    } else if meta.project.is_some() {
        return Err(ValidationError::new(
            "metadata.project",
            format!("{} objects belong to no project: leave it out", T::NOUN),
        ));
    }
    Ok(())
}

/// Which projects a list or watch shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    /// Every project (an admin's `--all-projects`, and controllers).
    All,
    /// These.
    Only(BTreeSet<String>),
}

impl Projects {
    /// One project.
    pub fn one(project: &str) -> Self {
        Projects::Only(BTreeSet::from([project.to_owned()]))
    }

    /// Whether objects of `project` are shown.
    pub fn contains(&self, project: &str) -> bool {
        match self {
            Projects::All => true,
            Projects::Only(set) => set.contains(project),
        }
    }
}

/// The current time as the API writes it (RFC 3339, milliseconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The kind's name as the store and messages spell it.
pub(crate) fn kind<T: Stored>() -> &'static str {
    T::KIND.as_str()
}

fn encode<T: Stored>(obj: &T) -> Result<Object, ServiceError> {
    let meta = obj.metadata();
    let body = serde_json::to_string(obj).map_err(|source| ServiceError::Encode {
        kind: kind::<T>(),
        name: meta.name.to_string(),
        source,
    })?;
    let mut o = Object::new(kind::<T>(), meta.key(), meta.uid.clone(), body);
    o.labels = meta.labels.clone();
    o.resource_version = meta.resource_version;
    Ok(o)
}

fn decode<T: Stored>(obj: Object) -> Result<T, ServiceError> {
    let mut t: T = serde_json::from_str(&obj.body).map_err(|e| ServiceError::Corrupt {
        kind: kind::<T>(),
        name: obj.name.clone(),
        source: e.into(),
    })?;
    t.metadata_mut().resource_version = obj.resource_version;
    Ok(t)
}

/// One object of kind `T` by name, `None` if there is none: for strategies that check
/// references.
pub async fn read<T: Stored>(store: &dyn Store, name: &str) -> Result<Option<T>, ServiceError> {
    match store.get(kind::<T>(), name).await {
        Ok(obj) => decode(obj).map(Some),
        Err(corral_store::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(ServiceError::from_store(kind::<T>(), e)),
    }
}

/// The object of kind `T` that an object of `project` names `name`: its own project's, or
/// failing that, for kinds that can be shared (images, networks), a shared one of project
/// `default`. `None` when there is none yet; refused when the only one is `default`'s and not
/// shared: references never cross projects otherwise.
pub async fn resolve<T: Stored>(
    store: &dyn Store,
    project: &str,
    name: &str,
) -> Result<Option<T>, ServiceError> {
    if let Some(own) = read::<T>(store, &corral_contract::object_key(project, name)).await? {
        return Ok(Some(own));
    }
    if project == corral_contract::DEFAULT_PROJECT {
        return Ok(None);
    }
    match read::<T>(store, name).await? {
        Some(common) if common.shared() => Ok(Some(common)),
        Some(_) => Err(ServiceError::PermissionDenied {
            what: format!(
                "{} {name:?} belongs to project {:?} and is not shared with project {project:?}",
                T::NOUN,
                corral_contract::DEFAULT_PROJECT
            ),
            remedy: "make one in this project, or ask an admin to share it (spec.shared)",
        }),
        None => Ok(None),
    }
}

/// Whether `user`'s reference `name` may mean `target`: same project, or `target` shared from
/// `default`. For [`Strategy::check_delete`], which errs on the side of refusing.
pub fn may_refer<T: Stored>(
    user: &corral_contract::ObjectMeta,
    name: &ResourceName,
    target: &T,
) -> bool {
    let t = target.metadata();
    t.name == *name
        && (user.project() == t.project()
            || (target.shared() && t.project() == corral_contract::DEFAULT_PROJECT))
}

/// The store keys an object of `project` may mean by `name`, most specific first: for
/// dependency indexes, which must requeue on a change to either.
pub fn reference_keys<T: Stored>(project: &str, name: &str) -> Vec<String> {
    let own = corral_contract::object_key(project, name);
    let shareable = matches!(
        T::KIND,
        corral_contract::Kind::Image | corral_contract::Kind::Network
    );
    if shareable && project != corral_contract::DEFAULT_PROJECT {
        vec![own, name.to_owned()]
    } else {
        vec![own]
    }
}

/// Every object of kind `T`: for strategies that look for users of an object.
pub async fn read_all<T: Stored>(store: &dyn Store) -> Result<Vec<T>, ServiceError> {
    let (objects, _) = store
        .list(kind::<T>(), &Selector::everything())
        .await
        .map_err(|e| ServiceError::from_store(kind::<T>(), e))?;
    objects.into_iter().map(decode).collect()
}

/// For [`Strategy::check_delete`]: refuses to delete `obj` while any of `users` exist,
/// naming them and what to do first.
pub fn refuse_if_used<T: Stored, U: Stored>(
    obj: &T,
    users: impl Iterator<Item = U>,
    remedy: &'static str,
) -> Result<(), ServiceError> {
    let by: Vec<String> = users.map(|u| u.metadata().name.to_string()).collect();
    if by.is_empty() {
        return Ok(());
    }
    Err(ServiceError::InUse {
        kind: T::NOUN,
        name: obj.metadata().name.to_string(),
        by_kind: U::NOUN,
        by,
        remedy,
    })
}

impl<S: Strategy> Resources<S> {
    /// The objects of `S`'s kind in `store`, with the strategy's default settings.
    pub fn new(store: Arc<dyn Store>) -> Self
    where
        S: Default,
    {
        Self::with_strategy(store, S::default())
    }

    /// The objects of `S`'s kind in `store`, admitted by `strategy`.
    pub fn with_strategy(store: Arc<dyn Store>, strategy: S) -> Self {
        Resources {
            store,
            strategy: Arc::new(strategy),
        }
    }

    /// The store underneath (for controllers that share it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The kind's strategy.
    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    fn kind() -> &'static str {
        kind::<S::Object>()
    }

    fn store_error(e: corral_store::StoreError) -> ServiceError {
        ServiceError::from_store(Self::kind(), e)
    }

    async fn lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.strategy.allocation_lock() {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    /// Creates an object. The server assigns uid, generation 1 and creation time; a status in
    /// the request is replaced by the strategy's initial status.
    pub async fn create(&self, obj: S::Object) -> Result<S::Object, ServiceError> {
        self.create_opts(obj, false).await
    }

    /// [`create`](Self::create), or with `dry_run` every admission step (validation,
    /// references, limits, allocations) without the write: the object as it would be stored.
    pub async fn create_opts(
        &self,
        mut obj: S::Object,
        dry_run: bool,
    ) -> Result<S::Object, ServiceError> {
        obj.validate()?;
        settle_project(&mut obj)?;
        self.strategy.admit(&*self.store, &obj, None).await?;
        let _within_limits = self.admit_within_limits(&obj).await?;
        let meta = obj.metadata_mut();
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.generation = 1;
        meta.resource_version = 0;
        meta.created_at = Some(now());
        meta.deleting = false;
        *obj.status_mut() = self.strategy.initial_status(&obj)?;
        let _claim = self.lock().await;
        self.strategy.prepare(&*self.store, &mut obj, None).await?;
        if dry_run {
            if self.exists(obj.metadata().name.as_str()).await? {
                return Err(ServiceError::AlreadyExists {
                    kind: Self::kind(),
                    name: obj.metadata().name.to_string(),
                });
            }
            return Ok(obj);
        }
        let stored = self
            .store
            .create(encode(&obj)?)
            .await
            .map_err(Self::store_error)?;
        decode(stored)
    }

    /// One object by name.
    pub async fn get(&self, name: &str) -> Result<S::Object, ServiceError> {
        let obj = self
            .store
            .get(Self::kind(), name)
            .await
            .map_err(Self::store_error)?;
        decode(obj)
    }

    /// Whether an object by that name exists.
    pub async fn exists(&self, name: &str) -> Result<bool, ServiceError> {
        Ok(read::<S::Object>(&*self.store, name).await?.is_some())
    }

    /// Objects matching a label selector (`""` for all), sorted by name, and the store
    /// revision of that snapshot (watch after it to follow changes).
    pub async fn list(&self, selector: &str) -> Result<(Vec<S::Object>, u64), ServiceError> {
        self.list_in(selector, &Projects::All).await
    }

    /// [`list`](Self::list) of the objects in `projects`.
    pub async fn list_in(
        &self,
        selector: &str,
        projects: &Projects,
    ) -> Result<(Vec<S::Object>, u64), ServiceError> {
        let selector: Selector = selector
            .parse()
            .map_err(|e| ValidationError::new("label_selector", e))?;
        let (objects, revision) = self
            .store
            .list(Self::kind(), &selector)
            .await
            .map_err(Self::store_error)?;
        let items = objects
            .into_iter()
            .map(decode::<S::Object>)
            .filter(|o| {
                o.as_ref()
                    .map_or(true, |o| projects.contains(o.metadata().project()))
            })
            .collect::<Result<_, _>>()?;
        Ok((items, revision))
    }

    /// Replaces an object's spec, labels and annotations. With `metadata.resource_version`
    /// set, the write happens only if nobody changed the object since (else
    /// [`ServiceError::Conflict`]); with 0 it applies to the current version. A changed spec
    /// bumps the generation. Status is never taken from the request.
    pub async fn update(&self, obj: S::Object) -> Result<S::Object, ServiceError> {
        self.update_opts(obj, false).await
    }

    /// [`update`](Self::update), or with `dry_run` every admission step and the update's own
    /// checks without the write: the object as it would be stored.
    pub async fn update_opts(
        &self,
        mut obj: S::Object,
        dry_run: bool,
    ) -> Result<S::Object, ServiceError> {
        obj.validate()?;
        settle_project(&mut obj)?;
        let name = obj.metadata().key();
        let current = self.get(&name).await?;
        self.strategy
            .admit(&*self.store, &obj, Some(&current))
            .await?;
        let _claim = self.lock().await;
        self.strategy
            .prepare(&*self.store, &mut obj, Some(&current))
            .await?;
        let expected = obj.metadata().resource_version;
        if dry_run {
            let mut next = current;
            let actual = next.metadata().resource_version;
            if expected != 0 && actual != expected {
                return Err(ServiceError::Conflict {
                    kind: Self::kind(),
                    name,
                    expected,
                    actual,
                });
            }
            self.apply_update(&mut next, &obj)?;
            return Ok(next);
        }
        self.modify(&name, expected, |current| self.apply_update(current, &obj))
            .await
    }

    /// `current` with `obj`'s spec, labels and annotations, if the strategy lets the spec
    /// change; whether anything changed.
    fn apply_update(&self, current: &mut S::Object, obj: &S::Object) -> Result<bool, ServiceError> {
        refuse_deleting(current)?;
        let spec_changed = current.spec() != obj.spec();
        if spec_changed {
            self.strategy.check_update(current, obj)?;
        }
        let (old, new) = (current.metadata(), obj.metadata());
        let changed =
            spec_changed || old.labels != new.labels || old.annotations != new.annotations;
        *current.spec_mut() = obj.spec().clone();
        let meta = current.metadata_mut();
        meta.labels = obj.metadata().labels.clone();
        meta.annotations = obj.metadata().annotations.clone();
        if spec_changed {
            meta.generation += 1;
        }
        Ok(changed)
    }

    /// Deletes an object others do not use (the strategy says who does). A
    /// [`FINALIZED`](Strategy::FINALIZED) kind is only marked `deleting`: its controller
    /// removes what it made, then the object; watch for the deletion to know when that is
    /// done. With `resource_version`, only if nobody changed the object since.
    pub async fn delete(
        &self,
        name: &str,
        resource_version: Option<u64>,
    ) -> Result<S::Object, ServiceError> {
        let obj = self.get(name).await?;
        if !obj.metadata().deleting {
            self.strategy.check_delete(&*self.store, &obj).await?;
        }
        if S::FINALIZED {
            return self
                .modify(name, resource_version.unwrap_or(0), |obj| {
                    let meta = obj.metadata_mut();
                    let first = !meta.deleting;
                    meta.deleting = true;
                    Ok(first)
                })
                .await;
        }
        let version = resource_version.unwrap_or(obj.metadata().resource_version);
        let removed = self
            .store
            .delete(Self::kind(), name, Some(version))
            .await
            .map_err(Self::store_error)?;
        let removed = decode(removed)?;
        self.strategy.deleted(&*self.store, &removed).await;
        Ok(removed)
    }

    /// Removes an object for good, if it is still at `resource_version`. For controllers of
    /// [`FINALIZED`](Strategy::FINALIZED) kinds, once nothing of the object is left.
    pub async fn remove(&self, name: &str, resource_version: u64) -> Result<(), ServiceError> {
        self.store
            .delete(Self::kind(), name, Some(resource_version))
            .await
            .map(drop)
            .map_err(Self::store_error)
    }

    /// Follows changes after store revision `after` (0: from the oldest kept), of one object
    /// (`name`, if not empty) or all.
    pub async fn watch(
        &self,
        name: Option<&str>,
        after: u64,
    ) -> Result<Watch<S::Object>, ServiceError> {
        self.watch_in(name, after, Projects::All).await
    }

    /// [`watch`](Self::watch) of the objects in `projects` (`name` is a store key).
    pub async fn watch_in(
        &self,
        name: Option<&str>,
        after: u64,
        projects: Projects,
    ) -> Result<Watch<S::Object>, ServiceError> {
        let inner = self
            .store
            .watch(Some(Self::kind()), after)
            .await
            .map_err(Self::store_error)?;
        Ok(Watch {
            inner,
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
            projects,
            _kind: PhantomData,
        })
    }

    /// Writes an object's status (controllers only): `f` edits it and says whether anything
    /// changed. Retries on conflicts with other writers of spec or status.
    pub async fn update_status(
        &self,
        name: &str,
        mut f: impl FnMut(&S::Object, &mut <S::Object as Stored>::Status) -> bool,
    ) -> Result<S::Object, ServiceError> {
        self.modify(name, 0, |obj| {
            let mut status = obj.status().clone();
            let changed = f(obj, &mut status);
            *obj.status_mut() = status;
            Ok(changed)
        })
        .await
    }

    /// Read-modify-write with compare-and-swap, for kind-specific verbs. `expected` 0 retries
    /// on conflicts; otherwise a conflict is the caller's. `f` returns whether it changed
    /// anything (nothing is written if not).
    pub async fn modify(
        &self,
        name: &str,
        expected: u64,
        mut f: impl FnMut(&mut S::Object) -> Result<bool, ServiceError>,
    ) -> Result<S::Object, ServiceError> {
        for _ in 0..CAS_RETRIES {
            let mut obj = self.get(name).await?;
            let actual = obj.metadata().resource_version;
            if expected != 0 && actual != expected {
                return Err(ServiceError::Conflict {
                    kind: Self::kind(),
                    name: name.to_owned(),
                    expected,
                    actual,
                });
            }
            if !f(&mut obj)? {
                return Ok(obj);
            }
            match self.store.update(encode(&obj)?).await {
                Ok(stored) => return decode(stored),
                Err(corral_store::StoreError::Conflict { .. }) if expected == 0 => continue,
                Err(e) => return Err(Self::store_error(e)),
            }
        }
        Err(ServiceError::ChangedTooOften {
            kind: S::Object::NOUN,
            name: name.to_owned(),
            attempts: CAS_RETRIES,
        })
    }

    /// Like [`modify`](Resources::modify) with retries, starting from `seen`: the object as
    /// the caller last read it (from a list, say). The usual case costs one compare-and-swap
    /// write and no read; a conflict reads the object again and retries.
    pub async fn modify_seen(
        &self,
        name: &str,
        seen: S::Object,
        mut f: impl FnMut(&mut S::Object) -> Result<bool, ServiceError>,
    ) -> Result<S::Object, ServiceError> {
        let mut obj = seen;
        for _ in 0..CAS_RETRIES {
            if !f(&mut obj)? {
                return Ok(obj);
            }
            match self.store.update(encode(&obj)?).await {
                Ok(stored) => return decode(stored),
                Err(corral_store::StoreError::Conflict { .. }) => obj = self.get(name).await?,
                Err(e) => return Err(Self::store_error(e)),
            }
        }
        Err(ServiceError::ChangedTooOften {
            kind: S::Object::NOUN,
            name: name.to_owned(),
            attempts: CAS_RETRIES,
        })
    }

    /// [`modify_seen`](Resources::modify_seen) of several objects in one store write: `f`
    /// changes each as the caller last read it (`false` leaves it out), and the changed ones
    /// are written together, all or none ([`Store::update_all`](corral_store::Store::update_all),
    /// at most [`MAX_TXN_OBJECTS`](corral_store::MAX_TXN_OBJECTS)). No retry: on a conflict
    /// nothing is written and the caller goes on one object at a time. Returns what was
    /// written.
    pub async fn modify_all_seen(
        &self,
        seen: Vec<S::Object>,
        mut f: impl FnMut(&mut S::Object) -> bool,
    ) -> Result<Vec<S::Object>, ServiceError> {
        let mut changed = Vec::with_capacity(seen.len());
        for mut obj in seen {
            if f(&mut obj) {
                changed.push(encode(&obj)?);
            }
        }
        self.store
            .update_all(changed)
            .await
            .map_err(Self::store_error)?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// Like [`modify`](Resources::modify) with retries, refusing objects marked for deletion:
    /// for verbs that express a new intent (start, restart, restore …).
    pub async fn modify_live(
        &self,
        name: &str,
        mut f: impl FnMut(&mut S::Object) -> Result<bool, ServiceError>,
    ) -> Result<S::Object, ServiceError> {
        self.modify(name, 0, |obj| {
            refuse_deleting(obj)?;
            f(obj)
        })
        .await
    }
}

fn refuse_deleting<T: Stored>(obj: &T) -> Result<(), ServiceError> {
    if obj.metadata().deleting {
        return Err(ServiceError::Deleting {
            kind: T::NOUN,
            name: obj.metadata().name.to_string(),
        });
    }
    Ok(())
}
