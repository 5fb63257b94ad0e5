//! Networks: the [`NetworkKind`] strategy (initial status by mode, bridge networks admitted
//! against the host and each other, no delete while a VM joins) and the default user network
//! every host has.
//!
//! A bridge network owns a Linux bridge that Corral creates and deletes. So that it can never
//! take over a link it did not make, or route a subnet the host or another network uses, a
//! bridge network is admitted only when, under the allocation lock:
//! - its bridge name (`spec.bridge`, else [`bridge_name`] of its uid) is no other network's and
//!   no existing link's;
//! - its CIDR overlaps no other bridge network's and no address or route of the host.
//!
//! User networks live inside QEMU and touch none of this.

mod host;

pub use host::{HostAddr, HostLink, HostNet, HostNetError, HostRoute, link_alias};

use corral_contract::{
    Network, NetworkMode, NetworkPhase, NetworkSpec, NetworkStatus, ValidationError, Vm,
};
use corral_store::Store;

use crate::resources::{Resources, Strategy, read_all, refuse_if_used};
use crate::{HostAccess, RequireAdmin, ServiceError, may_refer};

/// The network `corral vm create --ssh` joins when none is named; the daemon creates it.
pub const DEFAULT_NETWORK: &str = "default";

/// Networks: create, read, list, delete (at once, refused while a VM joins).
pub type NetworkService = Resources<NetworkKind>;

/// How networks are admitted.
#[derive(Debug, Default)]
pub struct NetworkKind {
    // Held from the conflict checks until the write, so two bridge networks admitted at once
    // cannot both take the same subnet or link.
    allocation: tokio::sync::Mutex<()>,
}

/// The Linux bridge of a bridge network: `spec.bridge`, else `crl` and 12 hex digits of the
/// BLAKE3 hash of its uid (15 bytes, the longest interface name Linux takes, so nothing is cut
/// off and two networks never share one). `None` for other modes.
pub fn bridge_name(net: &Network) -> Option<String> {
    if net.spec.mode != NetworkMode::Bridge {
        return None;
    }
    Some(net.spec.bridge.clone().unwrap_or_else(|| {
        let hash = blake3::hash(net.metadata.uid.as_bytes()).to_hex();
        format!("crl{}", &hash[..12])
    }))
}

/// Whether `net` (a bridge network) collides with another bridge network of `others`: the same
/// bridge or overlapping subnets. The error names the field and the other network.
pub fn network_conflict(net: &Network, others: &[Network]) -> Result<(), ValidationError> {
    let Some(link) = bridge_name(net) else {
        return Ok(());
    };
    let others = others
        .iter()
        .filter(|o| o.spec.mode == NetworkMode::Bridge && o.metadata.name != net.metadata.name);
    for other in others {
        let name = other.metadata.name.as_str();
        if bridge_name(other).as_deref() == Some(link.as_str()) {
            return Err(ValidationError::new(
                "spec.bridge",
                format!("{link:?} is the bridge of network {name:?}: name another link"),
            ));
        }
        if other.spec.cidr.overlaps(&net.spec.cidr) {
            return Err(ValidationError::new(
                "spec.cidr",
                format!(
                    "{} overlaps network {name:?} ({}): choose a subnet no other network uses",
                    net.spec.cidr, other.spec.cidr
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `net` (a bridge network) collides with the host: its bridge name is a link that is
/// not the network's own (alias `corral:<uid>`), or its subnet overlaps an address or route of
/// the host other than those on its own bridge. The error names the field and the host's thing.
pub fn host_conflict(net: &Network, host: &HostNet) -> Result<(), ValidationError> {
    let Some(link) = bridge_name(net) else {
        return Ok(());
    };
    let mut own = None;
    if let Some(found) = host.link(&link) {
        if found.alias.as_deref() != Some(link_alias(&net.metadata.uid).as_str()) {
            return Err(ValidationError::new(
                "spec.bridge",
                format!(
                    "link {link:?} already exists on the host and was not made by Corral for \
                     this network: name a link that does not exist (Corral creates it)"
                ),
            ));
        }
        own = Some(link.as_str());
    }
    match host.overlap(&net.spec.cidr, own) {
        Some(thing) => Err(ValidationError::new(
            "spec.cidr",
            format!(
                "{} overlaps {thing}: choose a subnet the host does not use",
                net.spec.cidr
            ),
        )),
        None => Ok(()),
    }
}

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
            bridge: bridge_name(net),
        })
    }

    fn allocation_lock(&self) -> Option<&tokio::sync::Mutex<()>> {
        Some(&self.allocation)
    }

    /// A new bridge network must not collide with another network or the host (checked here,
    /// under the allocation lock, because its uid — and so its default bridge — is known now).
    async fn prepare(
        &self,
        store: &dyn Store,
        net: &mut Network,
        current: Option<&Network>,
    ) -> Result<(), ServiceError> {
        if current.is_some() || net.spec.mode != NetworkMode::Bridge {
            return Ok(());
        }
        network_conflict(net, &read_all::<Network>(store).await?)?;
        let host = HostNet::read()
            .await
            .map_err(|e| ServiceError::Host(Box::new(e)))?;
        host_conflict(net, &host)?;
        Ok(())
    }

    async fn check_delete(&self, store: &dyn Store, net: &Network) -> Result<(), ServiceError> {
        let name = net.metadata.name.as_str();
        if net.metadata.key() == DEFAULT_NETWORK {
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
            vms.filter(|vm| {
                vm.spec
                    .networks
                    .iter()
                    .any(|a| may_refer(&vm.metadata, &a.network, net))
            }),
            "delete those VMs or remove the network from their spec first",
        )
    }
}

impl Resources<NetworkKind> {
    /// Creates a network for a caller with `access`: modes other than `user` reconfigure the
    /// host (a bridge, its DHCP server, NAT), so only admins may create them.
    pub async fn create_as(
        &self,
        net: Network,
        access: HostAccess,
    ) -> Result<Network, ServiceError> {
        self.create_as_opts(net, access, false).await
    }

    /// [`create_as`](Self::create_as), or only its checks with `dry_run`.
    pub async fn create_as_opts(
        &self,
        net: Network,
        access: HostAccess,
        dry_run: bool,
    ) -> Result<Network, ServiceError> {
        crate::check_share(&net.metadata, net.spec.shared, access)?;
        if net.spec.mode != NetworkMode::User {
            access.require_admin(
                format!(
                    "mode {} (spec.mode) reconfigures the host and is for admins only",
                    net.spec.mode
                ),
                "use mode user, or ask an admin to create this network",
            )?;
        }
        self.create_opts(net, dry_run).await
    }

    /// Creates the `default` user network unless a network of that name exists.
    pub async fn ensure_default(&self) -> Result<(), ServiceError> {
        let name = DEFAULT_NETWORK
            .parse()
            .map_err(|e| ValidationError::new("metadata.name", e))?;
        // Shared, so that `corral vm create --ssh` works in every project.
        let spec = NetworkSpec {
            shared: true,
            ..NetworkSpec::default()
        };
        match self.create(Network::new(name, spec)).await {
            Ok(_) => Ok(()),
            Err(ServiceError::AlreadyExists { .. }) => {
                // Made before networks could be shared.
                self.modify(DEFAULT_NETWORK, 0, |net| {
                    let share = !net.spec.shared;
                    net.spec.shared = true;
                    Ok(share)
                })
                .await
                .map(drop)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(name: &str, uid: &str, json: &str) -> Network {
        let mut net = Network::new(name.parse().unwrap(), serde_json::from_str(json).unwrap());
        net.metadata.uid = uid.to_owned();
        net
    }

    #[test]
    fn bridge_names_are_15_bytes_from_the_uid_and_differ_for_similar_names() {
        let a = bridge(
            "project-frontend-network-a",
            "0b7c4c1e-6a43-4b0e-9a49-3f3a1c1d2e01",
            r#"{"mode": "bridge"}"#,
        );
        let b = bridge(
            "project-frontend-network-b",
            "0b7c4c1e-6a43-4b0e-9a49-3f3a1c1d2e02",
            r#"{"mode": "bridge"}"#,
        );
        let (na, nb) = (bridge_name(&a).unwrap(), bridge_name(&b).unwrap());
        assert_eq!((na.len(), nb.len()), (15, 15));
        assert!(na.starts_with("crl") && na[3..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(na, nb);
        assert_eq!(bridge_name(&a), bridge_name(&a.clone()), "stable");
        let named = bridge("n", "u", r#"{"mode": "bridge", "bridge": "br-lab"}"#);
        assert_eq!(bridge_name(&named).as_deref(), Some("br-lab"));
        assert_eq!(bridge_name(&bridge("u", "u", "{}")), None);
    }

    #[test]
    fn bridge_networks_may_not_share_a_link_or_overlap() {
        let lan = bridge("lan", "1", r#"{"mode": "bridge", "cidr": "10.77.0.0/16"}"#);
        let inner = bridge(
            "inner",
            "2",
            r#"{"mode": "bridge", "cidr": "10.77.5.0/24"}"#,
        );
        let err = network_conflict(&inner, std::slice::from_ref(&lan)).unwrap_err();
        assert_eq!(err.field, "spec.cidr");
        assert!(
            err.to_string()
                .contains("overlaps network \"lan\" (10.77.0.0/16)"),
            "{err}"
        );
        let same_link = bridge(
            "other",
            "3",
            r#"{"mode": "bridge", "cidr": "10.78.0.0/24", "bridge": "br-x"}"#,
        );
        let taken = bridge(
            "first",
            "4",
            r#"{"mode": "bridge", "cidr": "10.79.0.0/24", "bridge": "br-x"}"#,
        );
        let err = network_conflict(&same_link, &[taken]).unwrap_err();
        assert!(
            err.to_string().contains("the bridge of network \"first\""),
            "{err}"
        );
        // User networks live inside QEMU: they overlap nothing on the host.
        let user = bridge("u", "5", r#"{"cidr": "10.77.0.0/24"}"#);
        assert!(network_conflict(&inner, &[user]).is_ok());
        // A network never conflicts with itself.
        assert!(network_conflict(&lan, std::slice::from_ref(&lan)).is_ok());
    }

    #[test]
    fn bridge_networks_may_not_take_host_links_addresses_or_routes() {
        let host = HostNet {
            links: vec![
                HostLink {
                    name: "br0".into(),
                    alias: None,
                },
                HostLink {
                    name: "crl-mine".into(),
                    alias: Some(link_alias("7")),
                },
            ],
            addrs: vec![HostAddr {
                link: "eth0".into(),
                addr: "192.0.2.2".parse().unwrap(),
                prefix: 24,
            }],
            routes: vec![
                HostRoute {
                    dst: "10.0.0.0/8".parse().unwrap(),
                    link: Some("wg0".into()),
                },
                HostRoute {
                    dst: "10.200.0.0/24".parse().unwrap(),
                    link: Some("crl-mine".into()),
                },
            ],
        };
        let br0 = bridge(
            "n",
            "6",
            r#"{"mode": "bridge", "bridge": "br0", "cidr": "172.31.0.0/24"}"#,
        );
        let err = host_conflict(&br0, &host).unwrap_err();
        assert_eq!(err.field, "spec.bridge");
        assert!(
            err.to_string().contains("link \"br0\" already exists"),
            "{err}"
        );
        let on_eth0 = bridge("n", "6", r#"{"mode": "bridge", "cidr": "192.0.0.0/16"}"#);
        let err = host_conflict(&on_eth0, &host).unwrap_err();
        assert!(
            err.to_string()
                .contains("the host's address 192.0.2.2/24 on eth0"),
            "{err}"
        );
        let routed = bridge("n", "6", r#"{"mode": "bridge", "cidr": "10.9.0.0/24"}"#);
        let err = host_conflict(&routed, &host).unwrap_err();
        assert!(
            err.to_string()
                .contains("the host's route to 10.0.0.0/8 via wg0"),
            "{err}"
        );
        // Its own marked bridge, and the route on it, are the network's own.
        let mine = bridge(
            "n",
            "7",
            r#"{"mode": "bridge", "bridge": "crl-mine", "cidr": "10.200.0.0/24"}"#,
        );
        let host_without_wg = HostNet {
            routes: host.routes[1..].to_vec(),
            ..host.clone()
        };
        assert!(host_conflict(&mine, &host_without_wg).is_ok());
        let free = bridge("n", "8", r#"{"mode": "bridge", "cidr": "172.31.0.0/24"}"#);
        assert!(host_conflict(&free, &host).is_ok());
    }
}
