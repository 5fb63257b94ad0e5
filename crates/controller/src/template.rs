//! Starting a VM from a template's saved state (`spec.template`): the first start loads the
//! state instead of booting; the hardware must be what the state was saved from, or QEMU
//! would refuse it (or worse, load it into different devices).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_contract::names::conditions::{GUEST_IDENTITY, reasons};
use corral_contract::{Condition, Image, Vm, VmSpec};
use corral_hypervisor::{Hypervisor, VmConfig};
use corral_service::{StorageService, VmService, resolve};

/// How long a guest started from a template has for its agent to answer.
const AGENT_WAIT: Duration = Duration::from_secs(120);

/// Has `config` start from the saved state of `vm`'s template, if it names one and has not
/// started from it yet; returns what to record in `status.restored_from`. `Err`: why it
/// cannot start, for people.
pub(crate) async fn restore(
    storage: Option<&StorageService>,
    vm: &Vm,
    config: &mut VmConfig,
) -> Result<Option<String>, String> {
    let (Some(name), None) = (&vm.spec.template, &vm.status.restored_from) else {
        return Ok(None);
    };
    let storage = storage.ok_or("starting from a template needs the node's image store")?;
    let image: Image = resolve(
        &**storage.images.store(),
        vm.metadata.project(),
        name.as_str(),
    )
    .await
    .map_err(|e| e.to_string())?
    .ok_or_else(|| format!("spec.template: image {name} is missing"))?;
    let template = image.status.template.as_ref().ok_or_else(|| {
        format!("spec.template: image {name} is not a template (corral template create makes one)")
    })?;
    if let Some(field) = hardware_differs(&template.spec, &vm.spec) {
        return Err(format!(
            "spec.{field}: differs from template {name}'s VM, whose saved devices must match \
             (corral vm create --template copies them)"
        ));
    }
    let (path, digest) = storage.template_state(&image).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("opening template {name}'s state {}: {e}", path.display()))?;
    config.restore.pass(file);
    Ok(Some(format!("{name}@{digest}")))
}

/// The QEMU processes whose guests are being told their identity, so that each is told once
/// at a time (the start and every later look at the running VM may ask).
#[derive(Debug, Default)]
pub(crate) struct Telling(Mutex<HashSet<u32>>);

/// In the background: has the guest agent of `vm`, started from a template (process `pid`),
/// give the guest the VM's own hostname and MACs, and records the outcome in the
/// `GuestIdentity` condition. A guest without an agent keeps the template VM's; it runs all
/// the same. Called at the start, and again for a running VM started from a template whose
/// condition is missing (a corrald stopped before it was written); telling a guest that has
/// its identity already changes nothing.
pub(crate) fn tell_identity(
    hv: Arc<dyn Hypervisor>,
    svc: VmService,
    telling: Arc<Telling>,
    vm: &Vm,
    pid: u32,
) {
    if !telling
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid)
    {
        return;
    }
    let (key, uid) = (vm.metadata.key(), vm.metadata.uid.clone());
    let hostname = vm.metadata.name.to_string();
    tokio::spawn(async move {
        let outcome = hv.set_guest_identity(&uid, &hostname, AGENT_WAIT).await;
        let condition = match &outcome {
            Ok(done) => Condition::new(GUEST_IDENTITY, true, reasons::IDENTITY_SET, done),
            Err(e) => Condition::new(
                GUEST_IDENTITY,
                false,
                reasons::NO_GUEST_AGENT,
                format!("the guest keeps the template VM's hostname and MACs: {e}"),
            ),
        };
        tracing::info!(vm = %key, outcome = ?outcome, "identity of a VM started from a template");
        let _ = svc
            .update_status(&key, |_, st| {
                let same = st.pid == Some(pid);
                if same {
                    st.set_condition(condition.clone());
                }
                same
            })
            .await;
        telling
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
    });
}

/// Whether running `vm` was started from a template and its guest has not been told its
/// identity (or the telling's outcome was never recorded).
pub(crate) fn identity_untold(vm: &Vm) -> bool {
    vm.status.restored_from.is_some() && vm.status.condition(GUEST_IDENTITY).is_none()
}

/// The first field of `spec` whose value gives QEMU other devices than `template`'s.
fn hardware_differs(template: &VmSpec, spec: &VmSpec) -> Option<&'static str> {
    use corral_contract::Boot;
    let same_boot = match (&template.boot, &spec.boot) {
        (Boot::Kernel { .. }, Boot::Kernel { .. }) | (Boot::Volume { .. }, Boot::Volume { .. }) => {
            true
        }
        (a, b) => a == b,
    };
    [
        ("cpus", template.cpus == spec.cpus),
        ("memory", template.memory == spec.memory),
        ("arch", template.arch == spec.arch),
        ("machine", template.machine() == spec.machine()),
        (
            "introspection",
            template.introspection == spec.introspection,
        ),
        ("boot", same_boot),
        ("volumes", template.volumes.len() == spec.volumes.len()),
        ("networks", template.networks.len() == spec.networks.len()),
        (
            "cloud_init",
            template.cloud_init.is_some() == spec.cloud_init.is_some(),
        ),
        ("shares", spec.shares.is_empty()),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(field, _)| field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Boot, ByteSize};

    fn spec(memory: u64) -> VmSpec {
        VmSpec::builder(Boot::Volume {
            volume: "disk".parse().unwrap(),
        })
        .memory(ByteSize::from_mib(memory))
        .build()
        .unwrap()
    }

    #[test]
    fn only_what_changes_the_devices_must_match() {
        assert_eq!(hardware_differs(&spec(512), &spec(512)), None);
        assert_eq!(hardware_differs(&spec(512), &spec(1024)), Some("memory"));
        let mut other_volume = spec(512);
        other_volume.boot = Boot::Volume {
            volume: "clone".parse().unwrap(),
        };
        other_volume.power = corral_contract::Power::Paused;
        assert_eq!(hardware_differs(&spec(512), &other_volume), None);
    }
}
