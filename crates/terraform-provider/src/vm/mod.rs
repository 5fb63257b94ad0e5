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
use crate::stored::{self, Kind, Lookup, Managed, Progress, Step};
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
        schema::match_networks(plan);
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

    /// Version 0 wrote `volumes = ["a", "b"]`; version 1 has `volume { name = "a" }` blocks.
    fn upgrade_state(version: i64, mut state: serde_json::Value) -> serde_json::Value {
        if version < 1 {
            if let Some(map) = state.as_object_mut() {
                let names = map.remove("volumes");
                let blocks: Vec<_> = names
                    .iter()
                    .filter_map(|v| v.as_array())
                    .flatten()
                    .map(|name| serde_json::json!({"name": name, "read_only": false, "serial": null}))
                    .collect();
                map.insert("volume".into(), serde_json::Value::Array(blocks));
            }
        }
        state
    }

    stored::client_calls!(create_vm, get_vm, delete_vm);

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
        // What the configuration never declared stays as whoever set it left it.
        let prior = step.prior();
        next.metadata.labels =
            stored::merge_labels(&current.metadata.labels, prior, &wanted.metadata.labels);
        if !stored::mentioned(prior, "volume") && wanted.spec.volumes.is_empty() {
            next.spec.volumes = current.spec.volumes.clone();
        }
        if !stored::mentioned(prior, "network") && wanted.spec.networks.is_empty() {
            next.spec.networks = current.spec.networks.clone();
        }
        if !stored::mentioned(prior, "cloud_init") && wanted.spec.cloud_init.is_none() {
            next.spec.cloud_init = current.spec.cloud_init.clone();
        }
        if !stored::mentioned(prior, "placement") && wanted.spec.placement.is_empty() {
            next.spec.placement = current.spec.placement.clone();
        }
        let mut old_hw = current.spec.clone();
        old_hw.power = next.spec.power;
        old_hw.restart_policy = next.spec.restart_policy;
        // Placement is read when the VM is placed; changing it moves nothing that runs.
        old_hw.placement = next.spec.placement.clone();
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
            let labels = next.metadata.labels.clone();
            next.metadata = stopped.metadata;
            next.metadata.labels = labels;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::stored::{object_from, state_of};

    fn config(pairs: &[(&str, Value)]) -> Value {
        let base = [
            ("name", Value::string("web-1")),
            ("kernel", Value::string("/k/vmlinuz")),
        ];
        Value::object(&base).with(pairs)
    }

    /// The state of a VM that runs `config` as QEMU pid 42.
    fn running(config: &Value) -> Value {
        let mut vm = object_from::<VmKind>(config).unwrap();
        vm.status.phase = Phase::Running;
        vm.status.pid = Some(42);
        state_of::<VmKind>(&vm, config)
    }

    #[test]
    fn labels_alone_keep_the_running_qemu_known() {
        let r = VmResource::default();
        let prior = running(&config(&[]));
        let labels = Value::object(&[("tier", Value::string("web"))]);
        let p = plan(
            &r,
            prior.clone(),
            prior.clone(),
            config(&[("labels", labels)]),
        );
        assert_eq!(p.planned.get("pid"), &Value::Number(42.0));
        assert_eq!(p.planned.get("phase").as_str(), Some("Running"));
        assert!(p.diags.is_empty() && p.requires_replace.is_empty(), "{p:?}");
    }

    #[test]
    fn hardware_of_a_running_vm_warns_of_a_restart_unless_it_stops() {
        let r = VmResource::default();
        let prior = running(&config(&[]));
        let bigger = config(&[("memory", Value::string("1G"))]);
        let p = plan(&r, prior.clone(), prior.clone(), bigger);
        assert_eq!(p.planned.get("pid"), &Value::Unknown);
        assert_eq!(p.diags.len(), 1, "{:?}", p.diags);
        assert_eq!(p.diags[0].summary, "The VM will restart");
        assert_eq!(p.diags[0].path, ["memory"]);
        assert!(!p.diags[0].error);
        let stopped = config(&[
            ("memory", Value::string("1G")),
            ("power", Value::string("stopped")),
        ]);
        let p = plan(&r, prior.clone(), prior, stopped);
        assert!(p.diags.is_empty(), "{:?}", p.diags);
    }

    #[test]
    fn an_unset_machine_plans_the_arch_default() {
        let r = VmResource::default();
        let p = plan(&r, Value::Null, config(&[]), config(&[]));
        assert_eq!(p.planned.get("machine").as_str(), Some("q35"));
        let arm = config(&[("arch", Value::string("aarch64"))]);
        let p = plan(&r, Value::Null, arm.clone(), arm);
        assert_eq!(p.planned.get("machine").as_str(), Some("virt"));
    }

    #[test]
    fn progress_waits_for_the_declared_power_state() {
        let mut vm = object_from::<VmKind>(&config(&[])).unwrap();
        assert_eq!(VmKind::goal(&vm), "Running");
        vm.status.phase = Phase::Starting;
        assert_eq!(VmKind::progress(&vm), Progress::Pending);
        vm.status.phase = Phase::Running;
        assert_eq!(VmKind::progress(&vm), Progress::Ready);
        vm.status.phase = Phase::Failed;
        vm.status.message = Some("QEMU exited".into());
        let Progress::Failed(why) = VmKind::progress(&vm) else {
            panic!("a failed VM fails the wait")
        };
        assert!(why.contains("did not reach Running: QEMU exited"), "{why}");
        vm.metadata.generation = 2;
        vm.status.observed_generation = 1;
        assert_eq!(
            VmKind::progress(&vm),
            Progress::Pending,
            "a status from before the change says nothing"
        );
    }

    fn forward(guest: u16, host: Option<u16>) -> Value {
        Value::object(&[
            ("guest_port", Value::Number(f64::from(guest))),
            (
                "host_port",
                host.map_or(Value::Null, |p| Value::Number(f64::from(p))),
            ),
            ("protocol", Value::string("tcp")),
            ("host_address", Value::Null),
        ])
    }

    fn network(name: &str, mac: Option<&str>, forwards: Vec<Value>) -> Value {
        Value::object(&[
            ("name", Value::string(name)),
            ("mac", mac.map_or(Value::Null, Value::string)),
            ("forward", Value::List(forwards)),
        ])
    }

    #[test]
    fn what_corrald_picked_is_planned_from_the_same_network_and_port() {
        let r = VmResource::default();
        let mut prior = running(&config(&[]));
        prior.set(
            "network",
            Value::List(vec![
                network("lan", Some("52:54:00:00:00:01"), vec![]),
                network(
                    "default",
                    Some("52:54:00:00:00:02"),
                    vec![forward(22, Some(30022)), forward(80, Some(30080))],
                ),
            ]),
        );
        // The first network goes, and a forward is added: Terraform proposes by index.
        let conf = config(&[(
            "network",
            Value::List(vec![network(
                "default",
                None,
                vec![forward(80, None), forward(443, None)],
            )]),
        )]);
        let p = plan(&r, prior.clone(), prior, conf);
        let net = &p.planned.get("network");
        let Value::List(nets) = net else {
            panic!("{net:?}")
        };
        assert_eq!(nets[0].get("mac").as_str(), Some("52:54:00:00:00:02"));
        let Value::List(fwds) = nets[0].get("forward") else {
            panic!("{nets:?}")
        };
        assert_eq!(fwds[0].get("host_port"), &Value::Number(30080.0));
        assert_eq!(fwds[1].get("host_port"), &Value::Unknown);
        assert_eq!(fwds[1].get("protocol").as_str(), Some("tcp"));
        assert_eq!(p.diags[0].summary, "The VM will restart", "{:?}", p.diags);
    }

    #[test]
    fn unset_hardware_keeps_what_the_vm_has_but_creation_plans_defaults() {
        let r = VmResource::default();
        let p = plan(&r, Value::Null, config(&[]), config(&[]));
        assert_eq!(p.planned.get("cpus"), &Value::Number(1.0));
        let mut prior = running(&config(&[]));
        prior.set("cpus", Value::Number(4.0));
        let p = plan(&r, prior.clone(), prior, config(&[]));
        assert_eq!(p.planned.get("cpus"), &Value::Number(4.0));
        assert!(p.diags.is_empty(), "{:?}", p.diags);
    }

    #[test]
    fn state_of_version_0_names_its_volumes_as_blocks() {
        let old = serde_json::json!({"name": "web-1", "volumes": ["root", "data"]});
        let new = VmKind::upgrade_state(0, old);
        assert_eq!(new["volume"][1]["name"], "data");
        assert_eq!(new["volume"][0]["read_only"], false);
        assert!(new.get("volumes").is_none());
    }
}
