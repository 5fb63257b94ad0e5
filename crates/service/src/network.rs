//! Networks: the [`NetworkKind`] strategy (initial status by mode, no delete while a VM joins)
//! and the default user network every host has.

use corral_contract::{
    Network, NetworkMode, NetworkPhase, NetworkSpec, NetworkStatus, ValidationError, Vm,
};
use corral_store::Store;

use crate::ServiceError;
use crate::resources::{Resources, Strategy, read_all, refuse_if_used};

/// The network `corral vm create --ssh` joins when none is named; the daemon creates it.
pub const DEFAULT_NETWORK: &str = "default";

/// Networks: create, read, list, delete (at once, refused while a VM joins).
pub type NetworkService = Resources<NetworkKind>;

/// How networks are admitted.
#[derive(Debug, Default)]
pub struct NetworkKind;

impl Strategy for NetworkKind {
    type Object = Network;

    /// User networks need nothing from the host, so they are ready at once; the others need
    /// host set-up by the network controller.
    fn initial_status(&self, net: &Network) -> Result<NetworkStatus, ServiceError> {
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
        Ok(NetworkStatus {
            phase,
            message: message.map(str::to_owned),
            observed_generation: net.metadata.generation,
        })
    }

    async fn check_delete(&self, store: &dyn Store, net: &Network) -> Result<(), ServiceError> {
        let name = net.metadata.name.as_str();
        if name == DEFAULT_NETWORK {
            return Err(ServiceError::WrongState {
                kind: <Network as crate::Stored>::NOUN,
                name: name.to_owned(),
                state: "the host's default network".into(),
                rule: "it cannot be deleted: `corral vm create --ssh` joins it".into(),
            });
        }
        let vms = read_all::<Vm>(store).await?.into_iter();
        refuse_if_used(
            net,
            vms.filter(|vm| vm.spec.networks.iter().any(|a| a.network == name)),
            "delete those VMs or remove the network from their spec first",
        )
    }
}

impl Resources<NetworkKind> {
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

    /// Writes a network's phase and message (the network controller only).
    pub async fn set_status(
        &self,
        name: &str,
        phase: NetworkPhase,
        message: Option<String>,
    ) -> Result<Network, ServiceError> {
        self.update_status(name, |net, st| {
            let before = st.clone();
            st.phase = phase;
            st.message = message.clone();
            st.observed_generation = net.metadata.generation;
            *st != before
        })
        .await
    }
}
