//! Planning from the schema: defaults, computed values, replacement.
//!
//! Terraform proposes a new state (the configuration, with computed attributes taken from the
//! prior state); the provider answers what it will be after apply. The rules, per attribute:
//!
//! - set by the user: the configuration's value;
//! - optional with a default, left unset: the default;
//! - optional and computed, left unset: the prior value (unknown on create);
//! - optional with a default for creation only ([`Attr::initial`](crate::schema::Attr::initial)),
//!   left unset: the default on create, the prior value on update;
//! - computed: unknown on create; on update kept when [`Attr::stable`](crate::schema::Attr),
//!   or when nothing the user sets changes but [`quiet`](crate::schema::Attr::quiet)
//!   attributes and `timeouts` (which only tell the provider how long to wait), else unknown;
//! - marked `replace`: a change replaces the object.
//!
//! Attributes of list blocks (`network { … }`) follow the same rules, element by element, with
//! one difference: an optional and computed attribute left unset keeps the value Terraform
//! proposed (the prior element's at that index) or, in a new element, is unknown. A resource
//! that can match elements better (a network by its name) refines that.
//!
//! A resource then refines the plan ([`crate::Resource::refine_plan`]): e.g. a VM warns that
//! a hardware change restarts it.

use crate::diag::Diagnostic;
use crate::resource::Resource;
use crate::schema::{Mode, Nesting, Schema};
use crate::value::Value;

/// A plan being made for one resource instance.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The resource's schema.
    pub schema: &'a Schema,
    /// The state before the change; null when the object is to be created.
    pub prior: Value,
    /// The configuration as written (values may be unknown).
    pub config: Value,
    /// The state after apply, as far as known now.
    pub planned: Value,
    /// Attributes whose change replaces the object.
    pub requires_replace: Vec<String>,
    /// Warnings or errors to show with the plan.
    pub diags: Vec<Diagnostic>,
}

impl Plan<'_> {
    /// Whether the object is to be created.
    pub fn creating(&self) -> bool {
        self.prior.is_null()
    }

    /// Whether attribute `name` is planned to differ from the prior state.
    pub fn changes(&self, name: &str) -> bool {
        self.planned.get(name) != self.prior.get(name)
    }

    /// Whether any user-set attribute other than those in `except` changes.
    pub fn changes_other_than(&self, except: &[&str]) -> bool {
        let user_set = self
            .schema
            .attrs
            .iter()
            .filter(|a| a.mode != Mode::Computed)
            .map(|a| a.name);
        let blocks = self.schema.blocks.iter().map(|b| b.name);
        user_set
            .chain(blocks)
            .filter(|name| !except.contains(name))
            .any(|name| self.changes(name))
    }

    /// Keeps the prior value of attribute `name`.
    pub fn keep(&mut self, name: &str) {
        let prior = self.prior.get(name).clone();
        self.planned.set(name, prior);
    }
}

/// Plans a change of `resource` from `prior` to `proposed` (null: destroy).
pub fn plan<'a>(
    resource: &'a dyn Resource,
    prior: Value,
    proposed: Value,
    config: Value,
) -> Plan<'a> {
    let schema = resource.schema();
    let mut plan = Plan {
        schema,
        prior,
        config,
        planned: proposed,
        requires_replace: Vec::new(),
        diags: Vec::new(),
    };
    if plan.planned.is_null() {
        return plan;
    }
    let creating = plan.creating();
    for attr in &schema.attrs {
        let configured = plan.config.get(attr.name).clone();
        let value = match attr.mode {
            Mode::Required | Mode::Optional => configured,
            Mode::OptionalComputed if !configured.is_null() => configured,
            Mode::OptionalComputed => match &attr.default {
                Some(default) if creating || !attr.initial_only => default.clone(),
                _ if creating => Value::Unknown,
                _ => plan.prior.get(attr.name).clone(),
            },
            Mode::Computed if creating => Value::Unknown,
            Mode::Computed => plan.prior.get(attr.name).clone(),
        };
        plan.planned.set(attr.name, value);
    }
    for block in &schema.blocks {
        if block.nesting == Nesting::List {
            let config = plan.config.get(block.name).clone();
            let proposed = plan.planned.get(block.name).clone();
            plan.planned
                .set(block.name, plan_list(&block.schema, &config, &proposed));
        }
    }
    let quiet: Vec<&str> = schema
        .attrs
        .iter()
        .filter(|a| a.quiet)
        .map(|a| a.name)
        .chain(["timeouts"])
        .collect();
    if !creating && plan.changes_other_than(&quiet) {
        for attr in &schema.attrs {
            if attr.mode == Mode::Computed && !attr.stable {
                plan.planned.set(attr.name, Value::Unknown);
            }
        }
    }
    resource.refine_plan(&mut plan);
    if !plan.creating() {
        let replaced: Vec<String> = schema
            .attrs
            .iter()
            .filter(|a| a.replace && plan.changes(a.name))
            .map(|a| a.name.to_owned())
            .collect();
        plan.requires_replace = replaced;
    }
    plan
}

/// The planned elements of a list block: `config`'s, each completed from `proposed`.
fn plan_list(schema: &Schema, config: &Value, proposed: &Value) -> Value {
    let elements = match config {
        Value::List(elements) => elements.as_slice(),
        // Terraform writes absent blocks as an empty list.
        Value::Null => &[],
        _ => return config.clone(),
    };
    let proposed = match proposed {
        Value::List(p) => p.as_slice(),
        _ => &[],
    };
    let planned = elements.iter().enumerate().map(|(i, element)| {
        let proposed = proposed.get(i).unwrap_or(&Value::Null);
        plan_element(schema, element, proposed)
    });
    Value::List(planned.collect())
}

fn plan_element(schema: &Schema, config: &Value, proposed: &Value) -> Value {
    if config.is_unknown() {
        return Value::Unknown;
    }
    let mut planned = Value::Null;
    for attr in &schema.attrs {
        let configured = config.get(attr.name).clone();
        let kept = proposed.get(attr.name);
        let value = match attr.mode {
            Mode::Required | Mode::Optional => configured,
            Mode::OptionalComputed if !configured.is_null() => configured,
            Mode::OptionalComputed | Mode::Computed => match &attr.default {
                Some(default) => default.clone(),
                None if kept.is_null() => Value::Unknown,
                None => kept.clone(),
            },
        };
        planned.set(attr.name, value);
    }
    for block in &schema.blocks {
        let value = match block.nesting {
            Nesting::List => plan_list(
                &block.schema,
                config.get(block.name),
                proposed.get(block.name),
            ),
            Nesting::Single => config.get(block.name).clone(),
        };
        planned.set(block.name, value);
    }
    planned
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::resource::{Ctx, Outcome};
    use crate::schema::Attr;

    struct Thing(Schema);

    #[async_trait]
    impl Resource for Thing {
        fn type_name(&self) -> &'static str {
            "thing"
        }
        fn schema(&self) -> &Schema {
            &self.0
        }
        async fn create(&self, _: &Ctx, planned: &Value) -> Outcome<Value> {
            Ok(planned.clone())
        }
        async fn read(&self, _: &Ctx, state: &Value) -> Outcome<Option<Value>> {
            Ok(Some(state.clone()))
        }
        async fn update(&self, _: &Ctx, _: &Value, planned: &Value) -> Outcome<Value> {
            Ok(planned.clone())
        }
        async fn delete(&self, _: &Ctx, _: &Value) -> Outcome<()> {
            Ok(())
        }
        async fn import(&self, _: &Ctx, _: &str) -> Outcome<Value> {
            Ok(Value::Null)
        }
    }

    fn thing() -> Thing {
        Thing(
            Schema::new("t")
                .attr(Attr::string("name").required().replace())
                .attr(Attr::number("cpus").default(Value::Number(1.0)))
                .attr(Attr::string("machine").optional_computed().replace())
                .attr(Attr::string_map("labels").quiet())
                .attr(Attr::string("uid").computed().stable())
                .attr(Attr::string("phase").computed()),
        )
    }

    #[test]
    fn create_fills_defaults_and_leaves_computed_unknown() {
        let t = thing();
        let config = Value::object(&[("name", Value::string("a"))]);
        let p = plan(&t, Value::Null, config.clone(), config);
        assert_eq!(p.planned.get("cpus"), &Value::Number(1.0));
        assert_eq!(p.planned.get("machine"), &Value::Unknown);
        assert_eq!(p.planned.get("uid"), &Value::Unknown);
        assert!(p.requires_replace.is_empty());
    }

    fn prior() -> Value {
        Value::object(&[
            ("name", Value::string("a")),
            ("labels", Value::Null),
            ("cpus", Value::Number(1.0)),
            ("machine", Value::string("q35")),
            ("uid", Value::string("u-1")),
            ("phase", Value::string("Running")),
        ])
    }

    #[test]
    fn nothing_to_do_plans_the_prior_state() {
        let t = thing();
        let config = Value::object(&[("name", Value::string("a"))]);
        let p = plan(&t, prior(), prior(), config);
        assert_eq!(p.planned, prior());
        assert!(p.requires_replace.is_empty());
    }

    #[test]
    fn an_update_keeps_stable_values_and_forgets_the_rest() {
        let t = thing();
        let config = Value::object(&[("name", Value::string("a")), ("cpus", Value::Number(2.0))]);
        let p = plan(&t, prior(), prior(), config);
        assert_eq!(p.planned.get("cpus"), &Value::Number(2.0));
        assert_eq!(p.planned.get("machine"), &Value::string("q35"));
        assert_eq!(p.planned.get("uid"), &Value::string("u-1"));
        assert_eq!(p.planned.get("phase"), &Value::Unknown);
        assert!(p.requires_replace.is_empty());
    }

    #[test]
    fn a_quiet_change_keeps_every_computed_value() {
        let t = thing();
        let mut labels = Value::Null;
        labels.set("tier", Value::string("web"));
        let config = Value::object(&[("name", Value::string("a")), ("labels", labels.clone())]);
        let p = plan(&t, prior(), prior(), config);
        assert_eq!(p.planned.get("labels"), &labels);
        assert_eq!(p.planned.get("phase"), &Value::string("Running"));
    }

    #[test]
    fn changing_a_replace_attribute_replaces() {
        let t = thing();
        let config = Value::object(&[("name", Value::string("b"))]);
        let p = plan(&t, prior(), prior(), config);
        assert_eq!(p.requires_replace, ["name"]);
    }

    #[test]
    fn destroy_plans_null() {
        let t = thing();
        let p = plan(&t, prior(), Value::Null, Value::Null);
        assert!(p.planned.is_null());
    }
}
