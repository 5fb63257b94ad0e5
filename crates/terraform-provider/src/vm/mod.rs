//! `corral_vm`: the resource and the data source.

mod schema;

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{Machine, Phase, Power, Vm};
use corral_client::{ClientError, reached};

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::resource::{Ctx, DataSource, Outcome, Resource};
use crate::schema::Schema;
use crate::value::Value;

pub use schema::{attribute_for, effective_power};

const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
const DELETE_TIMEOUT: Duration = Duration::from_secs(120);

/// The `corral_vm` resource.
#[derive(Debug)]
pub struct VmResource {
    schema: Schema,
}

impl Default for VmResource {
    fn default() -> Self {
        VmResource {
            schema: schema::resource_schema(),
        }
    }
}

/// The `corral_vm` data source.
#[derive(Debug)]
pub struct VmData {
    schema: Schema,
}

impl Default for VmData {
    fn default() -> Self {
        VmData {
            schema: schema::data_schema(),
        }
    }
}

/// A client error as a diagnostic; invalid input lands on the attribute that set it.
fn client_error(summary: &str, err: ClientError) -> Vec<Diagnostic> {
    match err {
        ClientError::Invalid { message } => vec![schema::field_error(&message)],
        other => vec![Diagnostic::error(summary, other.to_string())],
    }
}

fn timeout(state: &Value, name: &str, default: Duration) -> Duration {
    state
        .get("timeouts")
        .get(name)
        .as_str()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(default)
}

fn name_of(state: &Value) -> Outcome<String> {
    state
        .get("name")
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            vec![Diagnostic::error(
                "VM without a name",
                "the state has no name",
            )]
        })
}

fn phase_for(power: Power) -> Phase {
    match power {
        Power::Running => Phase::Running,
        Power::Paused => Phase::Paused,
        Power::Stopped => Phase::Stopped,
    }
}

/// Waits until the VM reaches the phase its declared power asks for; fails early when it
/// fails or disappears, and when Terraform asks the provider to stop.
async fn wait_for_power(ctx: &Ctx, name: &str, power: Power, limit: Duration) -> Outcome<Vm> {
    let target = phase_for(power);
    let wait = ctx.client.wait_for(
        name,
        |vm| vm.is_none_or(|vm| reached(vm, target) || reached(vm, Phase::Failed)),
        limit,
    );
    let mut stop = ctx.stop.clone();
    let waited = tokio::select! {
        waited = wait => waited,
        _ = stop.wait_for(|s| *s) => {
            return Err(vec![Diagnostic::error(
                "Interrupted",
                format!("Terraform asked the provider to stop while waiting for VM {name:?} to be {target}"),
            )]);
        }
    };
    match waited {
        Ok(Some(vm)) if vm.status.phase == target => Ok(vm),
        Ok(Some(vm)) => Err(vec![Diagnostic::error(
            format!("VM {name:?} failed"),
            format!(
                "it did not reach {target}: {}",
                vm.status.message.as_deref().unwrap_or("no reason given")
            ),
        )]),
        Ok(None) => Err(vec![Diagnostic::error(
            format!("VM {name:?} disappeared"),
            format!("it was deleted while waiting for it to be {target}"),
        )]),
        Err(e) => Err(client_error(&format!("Waiting for VM {name:?}"), e)),
    }
}

/// Deletes the VM and waits until QEMU is stopped and its files are gone.
async fn delete_and_wait(ctx: &Ctx, name: &str, limit: Duration) -> Outcome<()> {
    match ctx.client.delete_vm(name).await {
        Ok(_) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => return Err(client_error(&format!("Deleting VM {name:?}"), e)),
    }
    ctx.client
        .wait_for(name, |vm| vm.is_none(), limit)
        .await
        .map(drop)
        .map_err(|e| client_error(&format!("Deleting VM {name:?}"), e))
}

#[async_trait]
impl Resource for VmResource {
    fn type_name(&self) -> &'static str {
        "corral_vm"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn validate(&self, config: &Value) -> Vec<Diagnostic> {
        schema::validate(config)
    }

    fn refine_plan(&self, plan: &mut Plan) {
        if plan.planned.is_null() {
            return;
        }
        // An unset machine is the architecture's default, known as soon as the arch is.
        if plan.config.get("machine").is_null() && (plan.creating() || plan.changes("arch")) {
            let machine = match plan.planned.get("arch").as_str().map(str::parse) {
                Some(Ok(arch)) => Value::string(Machine::default_for(arch).as_str()),
                _ => Value::Unknown,
            };
            plan.planned.set("machine", machine);
        }
        if plan.creating() {
            return;
        }
        // Labels, restart policy and timeouts are metadata: the running QEMU stays as it is.
        if !plan.changes_other_than(&["labels", "restart_policy", "timeouts"]) {
            for name in schema::RUNTIME {
                plan.keep(name);
            }
        }
        let hardware: Vec<&str> = schema::HARDWARE
            .iter()
            .copied()
            .filter(|name| plan.changes(name))
            .collect();
        let running = matches!(plan.prior.get("power").as_str(), Some("running" | "paused"));
        let stays_up = !matches!(plan.planned.get("power").as_str(), Some("stopped"));
        if !hardware.is_empty() && running && stays_up {
            plan.diags.push(Diagnostic::attr_warning(
                &[hardware[0]],
                "The VM will restart",
                format!(
                    "changing {} of a running VM restarts it in a new QEMU process (same uid); \
                     set power = \"stopped\" first to change it while it is down",
                    hardware.join(", ")
                ),
            ));
        }
    }

    async fn create(&self, ctx: &Ctx, planned: &Value) -> Outcome<Value> {
        let vm = schema::vm_from(planned)?;
        let name = vm.metadata.name.as_str().to_owned();
        let power = vm.spec.power;
        match ctx.client.create_vm(&vm).await {
            Ok(_) => {}
            Err(ClientError::AlreadyExists { message }) => {
                return Err(vec![Diagnostic::attr_error(
                    &["name"],
                    "VM exists",
                    format!(
                        "{message}: to manage it with Terraform, import it: terraform import \
                         <address of this resource> {name}"
                    ),
                )]);
            }
            Err(e) => return Err(client_error(&format!("Creating VM {name:?}"), e)),
        }
        let limit = timeout(planned, "create", CREATE_TIMEOUT);
        match wait_for_power(ctx, &name, power, limit).await {
            Ok(vm) => Ok(schema::to_state(&vm, planned)),
            Err(mut diags) => {
                // Leave nothing half-made: a VM that did not come up is deleted.
                let limit = timeout(planned, "delete", DELETE_TIMEOUT);
                if let Err(more) = delete_and_wait(ctx, &name, limit).await {
                    diags.extend(more);
                }
                Err(diags)
            }
        }
    }

    async fn read(&self, ctx: &Ctx, state: &Value) -> Outcome<Option<Value>> {
        let name = name_of(state)?;
        match ctx.client.get_vm(&name).await {
            Ok(vm) => Ok(Some(schema::to_state(&vm, state))),
            Err(ClientError::NotFound { .. }) => Ok(None),
            Err(e) => Err(client_error(&format!("Reading VM {name:?}"), e)),
        }
    }

    async fn update(&self, ctx: &Ctx, prior: &Value, planned: &Value) -> Outcome<Value> {
        let wanted = schema::vm_from(planned)?;
        let name = wanted.metadata.name.as_str().to_owned();
        let failed = |e| client_error(&format!("Updating VM {name:?}"), e);
        let current = ctx.client.get_vm(&name).await.map_err(failed)?;
        let mut next = current.clone();
        next.spec = wanted.spec.clone();
        // The plan fills in the default machine; a VM that never named one keeps not naming
        // it, so that this is no change of hardware.
        if current.spec.machine.is_none() && next.spec.machine == Some(current.spec.machine()) {
            next.spec.machine = None;
        }
        next.metadata.labels = wanted.metadata.labels.clone();
        // Attachments keep what Terraform does not express (read-only, serial).
        next.spec.volumes = wanted
            .spec
            .volumes
            .iter()
            .map(|w| {
                current
                    .spec
                    .volumes
                    .iter()
                    .find(|c| c.volume == w.volume)
                    .cloned()
                    .unwrap_or_else(|| w.clone())
            })
            .collect();
        let mut old_hw = current.spec.clone();
        old_hw.power = next.spec.power;
        old_hw.restart_policy = next.spec.restart_policy;
        let hardware_changed = old_hw != next.spec;
        let mut live = matches!(
            current.status.phase,
            Phase::Running | Phase::Paused | Phase::Starting
        );
        // corrald changes a VM's disks only while it is stopped: stop it, change it, and the
        // declared power state brings it back.
        let disks_changed =
            current.spec.volumes != next.spec.volumes || current.spec.boot != next.spec.boot;
        if disks_changed && live {
            let limit = timeout(planned, "update", UPDATE_TIMEOUT);
            ctx.client.stop_vm(&name, false).await.map_err(failed)?;
            wait_for_power(ctx, &name, Power::Stopped, limit).await?;
            let stopped = ctx.client.get_vm(&name).await.map_err(failed)?;
            next.metadata = stopped.metadata;
            next.metadata.labels = wanted.metadata.labels.clone();
            live = false;
        }
        // Compare-and-swap on the version read: a concurrent change fails the update
        // instead of being overwritten.
        ctx.client.update_vm(&next).await.map_err(failed)?;

        let power = next.spec.power;
        let was = prior.get("power").as_str();
        if power != Power::Stopped && hardware_changed && live {
            ctx.client.restart_vm(&name).await.map_err(failed)?;
            if power == Power::Paused {
                let limit = timeout(planned, "update", UPDATE_TIMEOUT);
                wait_for_power(ctx, &name, Power::Running, limit).await?;
                ctx.client.pause_vm(&name).await.map_err(failed)?;
            }
        } else if current.spec.power == power && was != Some(power.as_str()) {
            // Declared already, but not where it should be (it shut itself down): ask again.
            match power {
                Power::Running => ctx.client.start_vm(&name).await.map(drop),
                Power::Paused => ctx.client.pause_vm(&name).await.map(drop),
                Power::Stopped => ctx.client.stop_vm(&name, false).await.map(drop),
            }
            .map_err(failed)?;
        }
        let limit = timeout(planned, "update", UPDATE_TIMEOUT);
        let vm = wait_for_power(ctx, &name, power, limit).await?;
        Ok(schema::to_state(&vm, planned))
    }

    async fn delete(&self, ctx: &Ctx, prior: &Value) -> Outcome<()> {
        let name = name_of(prior)?;
        delete_and_wait(ctx, &name, timeout(prior, "delete", DELETE_TIMEOUT)).await
    }

    async fn import(&self, ctx: &Ctx, id: &str) -> Outcome<Value> {
        match ctx.client.get_vm(id).await {
            Ok(vm) => Ok(schema::to_state(&vm, &Value::Null)),
            Err(ClientError::NotFound { message }) => Err(vec![Diagnostic::error(
                "Cannot import a VM that does not exist",
                format!("{message}: the import ID is the VM's name (corral vm list)"),
            )]),
            Err(e) => Err(client_error(&format!("Importing VM {id:?}"), e)),
        }
    }
}

#[async_trait]
impl DataSource for VmData {
    fn type_name(&self) -> &'static str {
        "corral_vm"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn read(&self, ctx: &Ctx, config: &Value) -> Outcome<Value> {
        let name = name_of(config)?;
        match ctx.client.get_vm(&name).await {
            Ok(vm) => {
                let mut state = schema::to_state(&vm, &Value::Null);
                if let Value::Map(m) = &mut state {
                    m.remove("timeouts");
                }
                Ok(state)
            }
            Err(ClientError::NotFound { message }) => Err(vec![Diagnostic::attr_error(
                &["name"],
                "No such VM",
                message,
            )]),
            Err(e) => Err(client_error(&format!("Reading VM {name:?}"), e)),
        }
    }
}
