//! `corral_vm`: the resource and the data source — one more [`Kind`] whose hooks add what a VM
//! has that stored objects lack: a power state it waits for, an update that stops, restarts
//! or re-powers a running VM, a plan that warns of a restart, and a watch to follow it.

mod schema;

use std::time::Duration;

use async_trait::async_trait;
use corral_client::contract::{Machine, Phase, Power, Vm};
use corral_client::{Client, ClientError, reached};

use crate::diag::Diagnostic;
use crate::plan::Plan;
use crate::resource::Outcome;
use crate::schema::Schema;
use crate::stored::{Kind, Lookup, Managed, Progress, Step};
use crate::value::Value;

pub use schema::{attribute_for, effective_power};

/// The `corral_vm` kind.
#[derive(Debug)]
pub struct VmKind;

/// The `corral_vm` resource.
pub type VmResource = Managed<VmKind>;

/// The `corral_vm` data source.
pub fn data_source() -> Lookup<VmKind> {
    Lookup::new("A VM that exists in corrald, read by name.")
}

fn phase_for(power: Power) -> Phase {
    match power {
        Power::Running => Phase::Running,
        Power::Paused => Phase::Paused,
        Power::Stopped => Phase::Stopped,
    }
}

/// Whether `vm` reached `target` for its current spec, or failed on the way.
fn toward(vm: &Vm, target: Phase) -> Progress {
    if reached(vm, target) {
        Progress::Ready
    } else if reached(vm, Phase::Failed) {
        Progress::Failed(format!(
            "it did not reach {target}: {}",
            vm.status.message.as_deref().unwrap_or("no reason given")
        ))
    } else {
        Progress::Pending
    }
}

#[async_trait]
impl Kind for VmKind {
    type Obj = Vm;
    const TYPE: &'static str = "corral_vm";
    const WHAT: &'static str = "VM";
    const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

    fn schema() -> Schema {
        schema::resource_schema()
    }

    fn attribute_for(field: &str) -> Option<&'static str> {
        schema::attribute_for(field)
    }

    fn manifest(config: &Value) -> Result<serde_json::Value, Vec<Diagnostic>> {
        schema::manifest(config)
    }

    fn to_state(vm: &Vm, hint: &Value, state: &mut Value) {
        schema::to_state(vm, hint, state);
    }

    /// A VM is there when it reached the phase its declared power asks for.
    fn progress(vm: &Vm) -> Progress {
        toward(vm, phase_for(vm.spec.power))
    }

    fn goal(vm: &Vm) -> String {
        phase_for(vm.spec.power).to_string()
    }

    fn refine_plan(plan: &mut Plan) {
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
        let hardware: Vec<&str> = schema::hardware()
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

    async fn create(client: &Client, vm: &Vm) -> Result<Vm, ClientError> {
        client.create_vm(vm).await
    }

    async fn get(client: &Client, name: &str) -> Result<Vm, ClientError> {
        client.get_vm(name).await
    }

    async fn delete(client: &Client, name: &str) -> Result<(), ClientError> {
        client.delete_vm(name).await.map(drop)
    }

    /// Writes the new spec with compare-and-swap on the version read (a concurrent change
    /// fails the update instead of being overwritten), around it stopping a running VM whose
    /// disks change, restarting one whose hardware changes, and asking again for a declared
    /// power state it left on its own.
    async fn update(step: &Step<'_, Self>, current: Vm, wanted: Vm) -> Outcome<Vm> {
        let client = step.client();
        let name = step.name();
        let failed = |e| step.failed(e);
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
            client.stop_vm(name, false).await.map_err(failed)?;
            let stopped = step
                .until(Phase::Stopped.as_str(), |vm| toward(vm, Phase::Stopped))
                .await?;
            next.metadata = stopped.metadata;
            next.metadata.labels = wanted.metadata.labels.clone();
            live = false;
        }
        let updated = client.update_vm(&next).await.map_err(failed)?;

        let power = next.spec.power;
        let was = step.prior().get("power").as_str();
        if power != Power::Stopped && hardware_changed && live {
            client.restart_vm(name).await.map_err(failed)?;
            if power == Power::Paused {
                step.until(Phase::Running.as_str(), |vm| toward(vm, Phase::Running))
                    .await?;
                client.pause_vm(name).await.map_err(failed)?;
            }
        } else if current.spec.power == power && was != Some(power.as_str()) {
            // Declared already, but not where it should be (it shut itself down): ask again.
            match power {
                Power::Running => client.start_vm(name).await.map(drop),
                Power::Paused => client.pause_vm(name).await.map(drop),
                Power::Stopped => client.stop_vm(name, false).await.map(drop),
            }
            .map_err(failed)?;
        }
        Ok(updated)
    }

    /// Follows the VM's watch: every change is seen, and a corrald restart is waited out.
    async fn follow(
        client: &Client,
        name: &str,
        limit: Duration,
        done: &mut (dyn for<'o> FnMut(Option<&'o Vm>) -> bool + Send),
    ) -> Result<bool, ClientError> {
        match client.wait_for(name, done, limit).await {
            Ok(_) => Ok(true),
            Err(ClientError::Timeout { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
