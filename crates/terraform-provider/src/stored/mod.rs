//! What every resource corrald stores shares — VMs, images, volumes, networks, snapshots.
//!
//! Each is a [`Kind`]: a schema, a mapping between attributes and its API type, the client
//! calls, and hooks for what only some kinds do (an in-place update that stops, restarts or
//! powers the object; a plan adjustment; a watch to follow it). [`Managed`] turns a kind into
//! a [`Resource`] that creates, waits until the object is where its spec asks ([`Progress`]),
//! reads, updates, deletes and imports; [`Lookup`] into the data source that reads it by name.
//! The helpers of [`map`](self) build a kind's schema, manifest and state from the shared
//! pieces (`id`, `name`, `labels`, `uid`, `created_at`, `timeouts`).

mod map;
mod wait;

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::Object;
use corral_client::{Client, ClientError};
use serde::de::DeserializeOwned;

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::resource::{Ctx, DataSource, Outcome, Resource};
use crate::schema::Schema;
use crate::value::Value;

pub use map::{
    base_schema, field_error, identity, known, labels_state, list_state, mentioned, merge_labels,
    metadata, names, num, object_from, opt, state_of, timeouts, validate,
};
pub use wait::Step;

use map::{client_error, name_of, timeout};
use wait::{delete_and_wait, wait_until};

/// Where an object is in its life, as far as a wait cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet.
    Pending,
    /// Where its spec asks (usable, or in its declared power state).
    Ready,
    /// It will not get there; the sentence says why.
    Failed(String),
}

impl Progress {
    /// Failed, for the reason the object's status gives.
    pub fn failed(message: Option<&str>) -> Progress {
        Progress::Failed(message.unwrap_or("no reason given").to_owned())
    }
}

/// One kind of object corrald stores.
#[async_trait]
pub trait Kind: Send + Sync + Sized + 'static {
    /// The API type.
    type Obj: Object + DeserializeOwned + serde::Serialize + Clone + Send + Sync;
    /// The type name in configurations (`corral_image`).
    const TYPE: &'static str;
    /// For people (`image`, `VM`); lowercased, the CLI's noun (`corral vm list`).
    const WHAT: &'static str;
    /// Default wait for create.
    const CREATE_TIMEOUT: Duration;
    /// Default wait for an update.
    const UPDATE_TIMEOUT: Duration = Self::CREATE_TIMEOUT;
    /// Default wait for delete.
    const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

    /// The resource's attributes (see [`base_schema`], [`identity`], [`timeouts`]).
    fn schema() -> Schema;
    /// The attribute that sets an API field (`spec.size` → `size`).
    fn attribute_for(field: &str) -> Option<&'static str>;
    /// The API's JSON (without status) for what a configuration declares; unknown values
    /// left out so a configuration can be checked before apply.
    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>>;
    /// The kind's own attributes of `obj`, written the way `hint` wrote equal values;
    /// [`state_of`] adds the shared ones.
    fn to_state(obj: &Self::Obj, hint: &Value, state: &mut Value);
    /// Whether `obj` is where its spec asks.
    fn progress(obj: &Self::Obj) -> Progress;
    /// Where `obj`'s spec asks it to be, for messages (`Ready`, `Running`).
    fn goal(obj: &Self::Obj) -> String {
        let _ = obj;
        "Ready".into()
    }

    /// Adjusts a plan the schema made (e.g. refuses to shrink a volume, warns of a restart).
    fn refine_plan(plan: &mut Plan) {
        let _ = plan;
    }

    /// State written by schema `version` (older than the schema's), in today's shape.
    fn upgrade_state(version: i64, state: serde_json::Value) -> serde_json::Value {
        let _ = version;
        state
    }

    /// Creates it (`stored::client_calls!` writes the three calls).
    fn create(
        client: &Client,
        obj: &Self::Obj,
    ) -> impl Future<Output = Result<Self::Obj, ClientError>> + Send;
    /// Reads it.
    fn get(
        client: &Client,
        name: &str,
    ) -> impl Future<Output = Result<Self::Obj, ClientError>> + Send;
    /// Asks for its deletion.
    fn delete(client: &Client, name: &str) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Changes `current` in place to what `wanted` declares and returns what corrald stored;
    /// [`Managed`] then waits until it is where its spec asks. `step` reads, waits for
    /// intermediate states (a VM stopped before its disks change) and names errors. Kinds
    /// whose every attribute replaces never get here.
    async fn update(
        step: &Step<'_, Self>,
        current: Self::Obj,
        wanted: Self::Obj,
    ) -> Outcome<Self::Obj> {
        let _ = (step, wanted);
        Ok(current)
    }

    /// Follows `name` until `done` accepts what it sees (`None` once it is gone): `Ok(true)`,
    /// or `Ok(false)` when `limit` passes first. Polls [`Kind::get`] by default; a kind the
    /// API can watch follows the watch instead.
    async fn follow(
        client: &Client,
        name: &str,
        limit: Duration,
        done: &mut (dyn for<'o> FnMut(Option<&'o Self::Obj>) -> bool + Send),
    ) -> Result<bool, ClientError> {
        wait::poll::<Self>(client, name, limit, done).await
    }
}

/// A kind's [`Kind::create`], [`Kind::get`] and [`Kind::delete`] as the `corral-client`
/// methods named: `client_calls!(create_vm, get_vm, delete_vm);` inside `impl Kind`.
macro_rules! client_calls {
    ($create:ident, $get:ident, $delete:ident) => {
        async fn create(
            client: &corral_client::Client,
            obj: &Self::Obj,
        ) -> Result<Self::Obj, corral_client::ClientError> {
            client.$create(obj).await
        }

        async fn get(
            client: &corral_client::Client,
            name: &str,
        ) -> Result<Self::Obj, corral_client::ClientError> {
            client.$get(name).await
        }

        async fn delete(
            client: &corral_client::Client,
            name: &str,
        ) -> Result<(), corral_client::ClientError> {
            client.$delete(name).await.map(drop)
        }
    };
}
pub(crate) use client_calls;

/// A [`Kind`] as a Terraform resource.
#[derive(Debug)]
pub struct Managed<K> {
    schema: Schema,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Default for Managed<K> {
    fn default() -> Self {
        Managed {
            schema: K::schema(),
            kind: PhantomData,
        }
    }
}

fn name<K: Kind>(obj: &K::Obj) -> String {
    obj.metadata().name.as_str().to_owned()
}

#[async_trait]
impl<K: Kind> Resource for Managed<K> {
    fn type_name(&self) -> &'static str {
        K::TYPE
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &Value) -> Vec<Diagnostic> {
        validate::<K>(config)
    }

    fn refine_plan(&self, plan: &mut Plan) {
        if !plan.planned.is_null() {
            K::refine_plan(plan);
        }
    }

    fn upgrade_state(&self, version: i64, state: serde_json::Value) -> serde_json::Value {
        K::upgrade_state(version, state)
    }

    async fn create(&self, ctx: &Ctx, planned: &Value) -> Outcome<Value> {
        let obj = object_from::<K>(planned)?;
        let name = name::<K>(&obj);
        match K::create(&ctx.client, &obj).await {
            Ok(_) => {}
            Err(ClientError::AlreadyExists { message }) => {
                return Err(vec![Diagnostic::attr_error(
                    &["name"],
                    format!("{} exists", K::WHAT),
                    format!(
                        "{message}: to manage it with Terraform, import it: terraform import \
                         <address of this resource> {name}"
                    ),
                )]);
            }
            Err(e) => {
                return Err(client_error::<K>(
                    &format!("Creating {} {name:?}", K::WHAT),
                    e,
                ));
            }
        }
        let limit = timeout(planned, "create", K::CREATE_TIMEOUT);
        let goal = K::goal(&obj);
        match wait_until::<K>(ctx, &name, "creating", &goal, limit, K::progress).await {
            Ok(obj) => Ok(state_of::<K>(&obj, planned)),
            Err(mut diags) => {
                // Leave nothing half-made.
                let limit = timeout(planned, "delete", K::DELETE_TIMEOUT);
                if let Err(more) = delete_and_wait::<K>(ctx, &name, limit).await {
                    diags.extend(more);
                }
                Err(diags)
            }
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Value) -> Outcome<Option<Value>> {
        let name = name_of::<K>(state)?;
        match K::get(&ctx.client, &name).await {
            Ok(obj) => Ok(Some(state_of::<K>(&obj, state))),
            Err(ClientError::NotFound { .. }) => Ok(None),
            Err(e) => Err(client_error::<K>(
                &format!("Reading {} {name:?}", K::WHAT),
                e,
            )),
        }
    }

    async fn update(&self, ctx: &Ctx, prior: &Value, planned: &Value) -> Outcome<Value> {
        let wanted = object_from::<K>(planned)?;
        let name = name::<K>(&wanted);
        let goal = K::goal(&wanted);
        let step = Step::<K>::new(
            ctx,
            &name,
            prior,
            timeout(planned, "update", K::UPDATE_TIMEOUT),
        );
        let current = step.get().await?;
        let updated = K::update(&step, current, wanted).await?;
        // Only a status that has seen this change counts.
        let generation = updated.metadata().generation;
        let obj = wait_until::<K>(ctx, &name, "updating", &goal, step.limit(), |obj| {
            let observed = serde_json::to_value(obj)
                .ok()
                .and_then(|v| v["status"]["observed_generation"].as_u64());
            if observed.is_none_or(|o| o >= generation) {
                K::progress(obj)
            } else {
                Progress::Pending
            }
        })
        .await?;
        Ok(state_of::<K>(&obj, planned))
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value) -> Outcome<()> {
        let name = name_of::<K>(prior)?;
        delete_and_wait::<K>(ctx, &name, timeout(prior, "delete", K::DELETE_TIMEOUT)).await
    }

    async fn import(&self, ctx: &Ctx, id: &str) -> Outcome<Value> {
        match K::get(&ctx.client, id).await {
            Ok(obj) => Ok(state_of::<K>(&obj, &Value::Null)),
            Err(ClientError::NotFound { message }) => Err(vec![Diagnostic::error(
                format!("Cannot import a {} that does not exist", K::WHAT),
                format!(
                    "{message}: the import ID is the {}'s name (corral {} list)",
                    K::WHAT,
                    K::WHAT.to_lowercase()
                ),
            )]),
            Err(e) => Err(client_error::<K>(
                &format!("Importing {} {id:?}", K::WHAT),
                e,
            )),
        }
    }
}

/// A [`Kind`] as a Terraform data source, found by `name`.
#[derive(Debug)]
pub struct Lookup<K> {
    schema: Schema,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Lookup<K> {
    /// The data source described by `description`: the resource's attributes, read only.
    pub fn new(description: &'static str) -> Self {
        Lookup {
            schema: K::schema().read_only(description, &["name"]),
            kind: PhantomData,
        }
    }
}

#[async_trait]
impl<K: Kind> DataSource for Lookup<K> {
    fn type_name(&self) -> &'static str {
        K::TYPE
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn read(&self, ctx: &Ctx, config: &Value) -> Outcome<Value> {
        let name = name_of::<K>(config)?;
        match K::get(&ctx.client, &name).await {
            Ok(obj) => {
                let mut state = state_of::<K>(&obj, &Value::Null);
                if let Value::Map(m) = &mut state {
                    m.remove("timeouts");
                }
                Ok(state)
            }
            Err(ClientError::NotFound { message }) => Err(vec![Diagnostic::attr_error(
                &["name"],
                format!("No such {}", K::WHAT),
                message,
            )]),
            Err(e) => Err(client_error::<K>(
                &format!("Reading {} {name:?}", K::WHAT),
                e,
            )),
        }
    }
}
