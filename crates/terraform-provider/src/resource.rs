//! What a resource or data source implements; the protocol plumbing is the server's.

use async_trait::async_trait;
use corral_client::Client;
use tokio::sync::watch;

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::schema::Schema;
use crate::value::Value;

/// What a configured provider hands every operation.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The connection to corrald.
    pub client: Client,
    /// Becomes `true` when Terraform asks the provider to stop (Ctrl-C): long waits end.
    pub stop: watch::Receiver<bool>,
}

/// The result of a resource operation: a value, or the diagnostics that explain why not.
pub type Outcome<T> = Result<T, Vec<Diagnostic>>;

/// A kind of object Terraform manages (`corral_vm`).
///
/// The schema declares how attributes plan ([`crate::plan`] applies it); the resource turns
/// values into API calls. Values passed in are whole objects of [`Resource::schema`]'s type.
#[async_trait]
pub trait Resource: Send + Sync {
    /// The type name in configurations, e.g. `corral_vm`.
    fn type_name(&self) -> &'static str;

    /// The attributes and how they plan.
    fn schema(&self) -> &Schema;

    /// Checks a configuration (values may be unknown) without calling the server.
    fn validate(&self, config: &Value) -> Vec<Diagnostic> {
        let _ = config;
        Vec::new()
    }

    /// State that an older version of the schema wrote (`version`, as JSON), rewritten in the
    /// current schema's shape. Attributes the schema dropped are dropped afterwards anyway.
    fn upgrade_state(&self, version: i64, state: serde_json::Value) -> serde_json::Value {
        let _ = version;
        state
    }

    /// Adjusts a plan the schema produced (e.g. which computed attributes an update changes).
    fn refine_plan(&self, plan: &mut Plan) {
        let _ = plan;
    }

    /// Creates the object; returns its state.
    async fn create(&self, ctx: &Ctx, planned: &Value) -> Outcome<Value>;

    /// Reads the object; `None` when it no longer exists.
    async fn read(&self, ctx: &Ctx, state: &Value) -> Outcome<Option<Value>>;

    /// Changes the object in place; returns its state.
    async fn update(&self, ctx: &Ctx, prior: &Value, planned: &Value) -> Outcome<Value>;

    /// Deletes the object.
    async fn delete(&self, ctx: &Ctx, prior: &Value) -> Outcome<()>;

    /// The state of an existing object named by `id` (`terraform import`).
    async fn import(&self, ctx: &Ctx, id: &str) -> Outcome<Value>;
}

/// A kind of object Terraform reads (`data "corral_vm"`).
#[async_trait]
pub trait DataSource: Send + Sync {
    /// The type name in configurations.
    fn type_name(&self) -> &'static str;

    /// The attributes.
    fn schema(&self) -> &Schema;

    /// Reads the object the configuration names.
    async fn read(&self, ctx: &Ctx, config: &Value) -> Outcome<Value>;
}
