//! What the image, volume, network and snapshot resources share: each is a [`Kind`] — a
//! schema, a mapping between attributes and its API type, and the client calls — and
//! [`Managed`] turns a kind into a [`Resource`] that creates, waits for `Ready`, reads,
//! updates (where the kind allows), deletes and imports.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::Object;
use corral_client::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::resource::{Ctx, DataSource, Outcome, Resource};
use crate::schema::{Attr, Schema};
use crate::value::Value;

/// How often a wait asks corrald again.
const POLL: Duration = Duration::from_millis(200);

/// Where an object is in its life, as far as a wait cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not usable yet.
    Pending,
    /// Usable.
    Ready,
    /// It will not become usable; the sentence says why.
    Failed(String),
}

/// One kind of object corrald stores (image, volume, network, snapshot).
#[async_trait]
pub trait Kind: Send + Sync + 'static {
    /// The API type.
    type Obj: Object + DeserializeOwned + serde::Serialize + Clone + Send + Sync;
    /// The type name in configurations (`corral_image`).
    const TYPE: &'static str;
    /// For people (`image`).
    const WHAT: &'static str;
    /// Default wait for create (and update).
    const CREATE_TIMEOUT: Duration;

    /// The resource's attributes.
    fn schema() -> Schema;
    /// The attribute that sets an API field (`spec.size` → `size`).
    fn attribute_for(field: &str) -> Option<&'static str>;
    /// The API's JSON (without status) for what a configuration declares; unknown values
    /// left out so a configuration can be checked before apply.
    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>>;
    /// The state of `obj`, written the way `hint` wrote equal values.
    fn to_state(obj: &Self::Obj, hint: &Value) -> Value;
    /// Whether `obj` is usable.
    fn progress(obj: &Self::Obj) -> Progress;
    /// Its name.
    fn name(obj: &Self::Obj) -> &str;

    /// Creates it.
    async fn create(client: &Client, obj: &Self::Obj) -> Result<Self::Obj, ClientError>;
    /// Reads it.
    async fn get(client: &Client, name: &str) -> Result<Self::Obj, ClientError>;
    /// Asks for its deletion.
    async fn delete(client: &Client, name: &str) -> Result<(), ClientError>;
    /// Changes it in place to what `wanted` declares; kinds whose every attribute replaces
    /// never get here.
    async fn update(
        client: &Client,
        current: Self::Obj,
        wanted: Self::Obj,
    ) -> Result<Self::Obj, ClientError> {
        let _ = (client, wanted);
        Ok(current)
    }
    /// Adjusts a plan (e.g. refuses to shrink a volume).
    fn refine_plan(plan: &mut Plan) {
        let _ = plan;
    }
}

/// A diagnostic from a message of the form `spec.size: must be …`, on the attribute that set
/// the field.
pub fn field_error<K: Kind>(message: &str) -> Diagnostic {
    if let Some((field, detail)) = message.split_once(": ") {
        if let Some(attr) = K::attribute_for(field) {
            return Diagnostic::attr_error(
                &[attr],
                format!("Invalid {attr}"),
                format!("{detail} ({field})"),
            );
        }
    }
    Diagnostic::error(format!("Invalid {}", K::WHAT), message)
}

fn client_error<K: Kind>(summary: &str, err: ClientError) -> Vec<Diagnostic> {
    match err {
        ClientError::Invalid { message } => vec![field_error::<K>(&message)],
        other => vec![Diagnostic::error(summary, other.to_string())],
    }
}

/// The object a configuration or plan declares, checked by the contract's own deserialiser.
pub fn object_from<K: Kind>(config: &Value) -> Result<K::Obj, Vec<Diagnostic>> {
    let manifest = K::manifest(config)?;
    let obj: K::Obj = serde_path_to_error::deserialize(manifest).map_err(|e| {
        // The contract's own errors name their field; serde's are named by the path.
        let inner = e.inner().to_string();
        let named = inner
            .split_once(": ")
            .is_some_and(|(field, _)| K::attribute_for(field).is_some());
        let message = if named {
            inner
        } else {
            format!("{}: {inner}", e.path())
        };
        vec![field_error::<K>(&message)]
    })?;
    obj.validate()
        .map_err(|e| vec![field_error::<K>(&e.to_string())])?;
    Ok(obj)
}

/// A known scalar attribute as JSON; `None` when null or unknown.
pub fn known(config: &Value, name: &str) -> Option<serde_json::Value> {
    match config.get(name) {
        Value::String(s) => Some(json!(s)),
        Value::Bool(b) => Some(json!(b)),
        Value::Number(n) if n.fract() == 0.0 => Some(json!(*n as i64)),
        Value::Number(n) => Some(json!(n)),
        _ => None,
    }
}

/// `metadata` for a configuration: its name and labels.
pub fn metadata(config: &Value) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "name".into(),
        known(config, "name").unwrap_or(json!("unknown-until-apply")),
    );
    if let Value::Map(labels) = config.get("labels") {
        let labels: serde_json::Map<_, _> = labels
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), json!(v.as_str()?))))
            .collect();
        metadata.insert("labels".into(), json!(labels));
    }
    json!(metadata)
}

/// Labels as state: empty labels stay as `hint` wrote them (`{}` or null).
pub fn labels_state(labels: &BTreeMap<String, String>, hint: &Value) -> Value {
    if labels.is_empty() && !matches!(hint.get("labels"), Value::Map(_)) {
        Value::Null
    } else {
        Value::Map(
            labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::string(v)))
                .collect(),
        )
    }
}

/// An optional string as a value.
pub fn opt(v: Option<&str>) -> Value {
    v.map_or(Value::Null, Value::string)
}

/// An optional count as a number.
pub fn num(v: Option<u64>) -> Value {
    v.map_or(Value::Null, |n| Value::Number(n as f64))
}

/// The `id`, `name`, `labels` attributes every kind starts with.
pub fn base_schema(description: &'static str, what: &'static str) -> Schema {
    Schema::new(description)
        .attr(
            Attr::string("id")
                .computed()
                .stable()
                .describe("The name (the import ID)."),
        )
        .attr(Attr::string("name").required().replace().describe(what))
}

/// `uid` and `created_at`.
pub fn identity(schema: Schema, what: &'static str) -> Schema {
    schema
        .attr(
            Attr::string("uid")
                .computed()
                .stable()
                .describe("Assigned by corrald on creation; never changes."),
        )
        .attr(
            Attr::string("created_at")
                .computed()
                .stable()
                .describe(what),
        )
}

/// The `timeouts` block: `create`, and `update` when the kind changes in place, and `delete`.
pub fn timeouts(schema: Schema, create: &'static str, update: Option<&'static str>) -> Schema {
    let mut block = Schema::new("How long to wait for corrald (Go durations: `30s`, `5m`).")
        .attr(Attr::string("create").describe(create));
    if let Some(update) = update {
        block = block.attr(Attr::string("update").describe(update));
    }
    block = block.attr(
        Attr::string("delete").describe("For corrald to delete it and its files (default 2m)."),
    );
    schema.block("timeouts", block)
}

fn timeout(state: &Value, name: &str, default: Duration) -> Duration {
    state
        .get("timeouts")
        .get(name)
        .as_str()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(default)
}

fn name_of<K: Kind>(state: &Value) -> Outcome<String> {
    state
        .get("name")
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            vec![Diagnostic::error(
                format!("{} without a name", K::WHAT),
                "the state has no name",
            )]
        })
}

/// Checks a configuration whose values may be unknown: the contract's errors on known
/// values, and the timeouts.
pub fn validate<K: Kind>(config: &Value) -> Vec<Diagnostic> {
    let mut diags = match object_from::<K>(config) {
        Ok(_) => Vec::new(),
        Err(diags) => diags,
    };
    diags.retain(|d| d.path.first().is_none_or(|a| !config.get(a).is_unknown()));
    if let Value::Map(timeouts) = config.get("timeouts") {
        for (name, value) in timeouts {
            if let Some(text) = value.as_str() {
                if let Err(e) = humantime::parse_duration(text) {
                    diags.push(Diagnostic::attr_error(
                        &["timeouts", name],
                        format!("Invalid {name} timeout"),
                        format!("{text:?} is not a duration ({e}): use e.g. 30s, 5m or 1h"),
                    ));
                }
            }
        }
    }
    diags
}

/// Polls `name` until `done` says so, it fails, time runs out or Terraform asks to stop.
/// `done` sees `None` once the object is gone.
async fn wait<K: Kind>(
    ctx: &Ctx,
    name: &str,
    doing: &str,
    limit: Duration,
    done: impl Fn(Option<&K::Obj>) -> Result<bool, String>,
) -> Outcome<Option<K::Obj>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut stop = ctx.stop.clone();
    loop {
        let current = match K::get(&ctx.client, name).await {
            Ok(obj) => Some(obj),
            Err(ClientError::NotFound { .. }) => None,
            Err(e) => {
                return Err(client_error::<K>(
                    &format!("Waiting for {} {name:?}", K::WHAT),
                    e,
                ));
            }
        };
        match done(current.as_ref()) {
            Ok(true) => return Ok(current),
            Ok(false) => {}
            Err(why) => {
                return Err(vec![Diagnostic::error(
                    format!("{} {name:?} failed", K::WHAT),
                    why,
                )]);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(vec![Diagnostic::error(
                format!("Timed out {doing} {} {name:?}", K::WHAT),
                format!(
                    "still not done after {}: raise the timeout in the resource's timeouts block",
                    humantime::format_duration(limit)
                ),
            )]);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => {
                return Err(vec![Diagnostic::error(
                    "Interrupted",
                    format!("Terraform asked the provider to stop while {doing} {} {name:?}", K::WHAT),
                )]);
            }
        }
    }
}

async fn wait_ready<K: Kind>(
    ctx: &Ctx,
    name: &str,
    doing: &str,
    limit: Duration,
    fresh: impl Fn(&K::Obj) -> bool,
) -> Outcome<K::Obj> {
    let got = wait::<K>(ctx, name, doing, limit, |obj| match obj {
        None => Err("it was deleted while waiting for it to be Ready".into()),
        Some(obj) if !fresh(obj) => Ok(false),
        Some(obj) => match K::progress(obj) {
            Progress::Ready => Ok(true),
            Progress::Pending => Ok(false),
            Progress::Failed(why) => Err(why),
        },
    })
    .await?;
    got.ok_or_else(|| vec![Diagnostic::error(format!("{} vanished", K::WHAT), name)])
}

async fn delete_and_wait<K: Kind>(ctx: &Ctx, name: &str, limit: Duration) -> Outcome<()> {
    match K::delete(&ctx.client, name).await {
        Ok(()) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => {
            return Err(client_error::<K>(
                &format!("Deleting {} {name:?}", K::WHAT),
                e,
            ));
        }
    }
    wait::<K>(ctx, name, "deleting", limit, |obj| Ok(obj.is_none()))
        .await
        .map(drop)
}

const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

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

    async fn create(&self, ctx: &Ctx, planned: &Value) -> Outcome<Value> {
        let obj = object_from::<K>(planned)?;
        let name = K::name(&obj).to_owned();
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
        match wait_ready::<K>(ctx, &name, "creating", limit, |_| true).await {
            Ok(obj) => Ok(K::to_state(&obj, planned)),
            Err(mut diags) => {
                // Leave nothing half-made.
                let limit = timeout(planned, "delete", DELETE_TIMEOUT);
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
            Ok(obj) => Ok(Some(K::to_state(&obj, state))),
            Err(ClientError::NotFound { .. }) => Ok(None),
            Err(e) => Err(client_error::<K>(
                &format!("Reading {} {name:?}", K::WHAT),
                e,
            )),
        }
    }

    async fn update(&self, ctx: &Ctx, _prior: &Value, planned: &Value) -> Outcome<Value> {
        let wanted = object_from::<K>(planned)?;
        let name = K::name(&wanted).to_owned();
        let failed = |e| client_error::<K>(&format!("Updating {} {name:?}", K::WHAT), e);
        let current = K::get(&ctx.client, &name).await.map_err(failed)?;
        let updated = K::update(&ctx.client, current, wanted)
            .await
            .map_err(failed)?;
        let limit = timeout(planned, "update", K::CREATE_TIMEOUT);
        let generation = serde_json::to_value(&updated)
            .ok()
            .and_then(|v| v["metadata"]["generation"].as_u64())
            .unwrap_or(0);
        let obj = wait_ready::<K>(ctx, &name, "updating", limit, |obj| {
            let observed = serde_json::to_value(obj)
                .ok()
                .and_then(|v| v["status"]["observed_generation"].as_u64());
            observed.is_none_or(|o| o >= generation)
        })
        .await?;
        Ok(K::to_state(&obj, planned))
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value) -> Outcome<()> {
        let name = name_of::<K>(prior)?;
        delete_and_wait::<K>(ctx, &name, timeout(prior, "delete", DELETE_TIMEOUT)).await
    }

    async fn import(&self, ctx: &Ctx, id: &str) -> Outcome<Value> {
        match K::get(&ctx.client, id).await {
            Ok(obj) => Ok(K::to_state(&obj, &Value::Null)),
            Err(ClientError::NotFound { message }) => Err(vec![Diagnostic::error(
                format!("Cannot import a {} that does not exist", K::WHAT),
                format!("{message}: the import ID is the {}'s name", K::WHAT),
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
    /// The data source described by `description`.
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
                let mut state = K::to_state(&obj, &Value::Null);
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
