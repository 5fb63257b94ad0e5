//! Networks: create, read, list, delete; and the default user network every host has.

use std::sync::Arc;
use std::time::SystemTime;

use corral_contract::{Network, NetworkMode, NetworkPhase, NetworkSpec, ValidationError, Vm};
use corral_store::{Object, Selector, Store};

use crate::ServiceError;

pub(crate) const KIND: &str = "Network";

/// The network `corral vm create --ssh` joins when none is named; the daemon creates it.
pub const DEFAULT_NETWORK: &str = "default";

/// The network operations every transport exposes.
#[derive(Debug, Clone)]
pub struct NetworkService {
    store: Arc<dyn Store>,
}

fn to_object(net: &Network) -> Result<Object, ServiceError> {
    let body = serde_json::to_string(net)
        .map_err(|e| ServiceError::FailedPrecondition(format!("cannot encode network: {e}")))?;
    let mut obj = Object::new(
        KIND,
        net.metadata.name.as_str(),
        net.metadata.uid.clone(),
        body,
    );
    obj.labels = net.metadata.labels.clone();
    obj.resource_version = net.metadata.resource_version;
    Ok(obj)
}

pub(crate) fn from_object(obj: Object) -> Result<Network, ServiceError> {
    let mut net: Network = serde_json::from_str(&obj.body).map_err(|e| {
        ServiceError::FailedPrecondition(format!(
            "stored network {:?} does not decode: {e}",
            obj.name
        ))
    })?;
    net.metadata.resource_version = obj.resource_version;
    Ok(net)
}

/// Where a network of `mode` stands right after creation. User networks need nothing from the
/// host, so they are ready at once; the others need host set-up this server does not do.
fn initial_status(net: &mut Network) {
    net.status.observed_generation = net.metadata.generation;
    let (phase, message) = match net.spec.mode {
        NetworkMode::User => (NetworkPhase::Ready, None),
        NetworkMode::Bridge => (
            NetworkPhase::Pending,
            Some("waiting for the network controller to set up the bridge"),
        ),
        NetworkMode::VmnetShared | NetworkMode::VmnetBridged => (
            NetworkPhase::Pending,
            Some("vmnet networks exist only on macOS hosts"),
        ),
    };
    net.status.phase = phase;
    net.status.message = message.map(str::to_owned);
}

impl NetworkService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        NetworkService { store }
    }

    /// Creates a network.
    pub async fn create(&self, mut net: Network) -> Result<Network, ServiceError> {
        net.metadata.validate()?;
        net.spec.validate()?;
        net.metadata.uid = uuid::Uuid::new_v4().to_string();
        net.metadata.generation = 1;
        net.metadata.resource_version = 0;
        net.metadata.created_at =
            Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        net.metadata.deleting = false;
        net.status = Default::default();
        initial_status(&mut net);
        let stored = self
            .store
            .create(to_object(&net)?)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        from_object(stored)
    }

    /// Creates the `default` user network unless a network of that name exists.
    pub async fn ensure_default(&self) -> Result<(), ServiceError> {
        let name = DEFAULT_NETWORK
            .parse()
            .map_err(|e| ValidationError::new("metadata.name", e))?;
        match self
            .create(Network::new(name, NetworkSpec::default()))
            .await
        {
            Ok(_) | Err(ServiceError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One network.
    pub async fn get(&self, name: &str) -> Result<Network, ServiceError> {
        let obj = self
            .store
            .get(KIND, name)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        from_object(obj)
    }

    /// Networks matching a label selector, by name.
    pub async fn list(&self, selector: &str) -> Result<Vec<Network>, ServiceError> {
        let selector: Selector = selector
            .parse()
            .map_err(|e| ValidationError::new("label_selector", e))?;
        let (objects, _) = self
            .store
            .list(KIND, &selector)
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        objects.into_iter().map(from_object).collect()
    }

    /// Writes a network's status (controllers only).
    pub async fn set_status(
        &self,
        name: &str,
        phase: NetworkPhase,
        message: Option<String>,
    ) -> Result<Network, ServiceError> {
        for _ in 0..16 {
            let mut net = self.get(name).await?;
            net.status.phase = phase;
            net.status.message = message.clone();
            net.status.observed_generation = net.metadata.generation;
            match self.store.update(to_object(&net)?).await {
                Ok(obj) => return from_object(obj),
                Err(corral_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ServiceError::from_store(KIND, e)),
            }
        }
        Err(ServiceError::FailedPrecondition(format!(
            "network {name:?} kept changing while its status was written"
        )))
    }

    /// Deletes a network that no VM joins; otherwise names the VMs that do.
    pub async fn delete(&self, name: &str) -> Result<Network, ServiceError> {
        let net = self.get(name).await?;
        let (vms, _) = self
            .store
            .list("Vm", &Selector::everything())
            .await
            .map_err(|e| ServiceError::from_store("Vm", e))?;
        let users: Vec<String> = vms
            .iter()
            .filter_map(|obj| serde_json::from_str::<Vm>(&obj.body).ok())
            .filter(|vm| vm.spec.networks.iter().any(|a| a.network == name))
            .map(|vm| format!("{:?}", vm.metadata.name.as_str()))
            .collect();
        if !users.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "network {name:?} is joined by VM {}: delete those VMs or remove the network from their spec first",
                users.join(", ")
            )));
        }
        let obj = self
            .store
            .delete(KIND, name, Some(net.metadata.resource_version))
            .await
            .map_err(|e| ServiceError::from_store(KIND, e))?;
        from_object(obj)
    }
}
