//! Server allocations on a VM: what the server fills into its `spec.networks` once, on
//! create — a MAC address per NIC and a host port per forward (the port registry). Both are
//! then part of the spec, so they survive daemon restarts and stay the VM's for its whole life.

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use corral_contract::{MacAddr, Network, Protocol, ValidationError, Vm, VmSpec};
use corral_store::Store;

use crate::ServiceError;
use crate::resources::{read_all, resolve};

/// Host ports forwards get when they name none: the daemon's configured range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl Default for PortRange {
    fn default() -> Self {
        PortRange(20000..=29999)
    }
}

/// A `--port-range` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a port range: write FIRST-LAST, e.g. 20000-29999")]
pub struct BadPortRange(pub String);

impl std::str::FromStr for PortRange {
    type Err = BadPortRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPortRange(s.to_owned());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(bad());
        }
        Ok(PortRange(a..=b))
    }
}

/// Who holds what, across every other VM in the store.
struct Taken {
    ports: HashMap<(Protocol, u16), String>,
    macs: HashMap<MacAddr, String>,
}

/// MACs and host ports held by other VMs, each with the name of its holder — or only "a VM of
/// another project", since a tenant may not learn other projects' names.
async fn taken(store: &dyn Store, project: &str, except_uid: &str) -> Result<Taken, ServiceError> {
    let mut taken = Taken {
        ports: HashMap::new(),
        macs: HashMap::new(),
    };
    for vm in read_all::<Vm>(store).await? {
        if vm.metadata.uid == except_uid {
            continue;
        }
        let name = if vm.metadata.project() == project {
            format!("VM {:?}", vm.metadata.name.as_str())
        } else {
            "a VM of another project".to_owned()
        };
        for net in &vm.spec.networks {
            if let Some(mac) = net.mac {
                taken.macs.insert(mac, name.clone());
            }
            for fwd in &net.forwards {
                if let Some(port) = fwd.host_port {
                    taken.ports.insert((fwd.protocol, port), name.clone());
                }
            }
        }
    }
    Ok(taken)
}

/// Whether this host lets us listen on `port` now (nobody else, Corral or not, holds it).
fn bindable(protocol: Protocol, addr: Ipv4Addr, port: u16) -> bool {
    match protocol {
        Protocol::Tcp => TcpListener::bind((addr, port)).is_ok(),
        Protocol::Udp => UdpSocket::bind((addr, port)).is_ok(),
    }
}

/// Checks what can be checked of the networks `spec` joins (those that exist), keeps the MACs and host ports `current`
/// (the stored spec, on update) already has, and fills in the missing ones: MACs derived from
/// the VM's uid, ports from `range`. An explicit port another VM holds, or (when
/// `check_this_host`: the VM runs here) that something on this host already listens on, is
/// an error naming the field and the holder.
pub(crate) async fn allocate(
    store: &dyn Store,
    range: &PortRange,
    check_this_host: bool,
    project: &str,
    uid: &str,
    spec: &mut VmSpec,
    current: Option<&VmSpec>,
) -> Result<(), ServiceError> {
    // Most VMs join no network: nothing to check or pick, and no scan of every VM.
    if spec.networks.is_empty() {
        return Ok(());
    }
    // A network that is missing or failed is not an error here: the VM waits for it (its
    // controller says so in a condition) and starts once it is Ready. What can be known now
    // is checked now: forwards on a network that is not a user network.
    for (i, att) in spec.networks.iter().enumerate() {
        let Some(net) = resolve::<Network>(store, project, att.network.as_str()).await? else {
            continue;
        };
        if net.spec.mode != corral_contract::NetworkMode::User && !att.forwards.is_empty() {
            return Err(ValidationError::new(
                format!("spec.networks[{i}].forwards"),
                format!(
                    "network {:?} is a {} network: port forwards are for user networks; reach the guest at its own address",
                    att.network.as_str(),
                    net.spec.mode
                ),
            )
            .into());
        }
    }
    let mut taken = taken(store, project, uid).await?;

    // Carry over what the stored spec already holds for the same network and forward.
    if let Some(current) = current {
        spec.keep_allocations(current);
    }
    let held = |protocol: Protocol, port: u16| {
        current.is_some_and(|c| {
            c.networks
                .iter()
                .flat_map(|n| &n.forwards)
                .any(|f| f.protocol == protocol && f.host_port == Some(port))
        })
    };

    let seed = uuid_tail(uid);
    for (i, att) in spec.networks.iter_mut().enumerate() {
        match att.mac {
            Some(mac) => {
                if let Some(holder) = taken.macs.get(&mac) {
                    return Err(ValidationError::new(
                        format!("spec.networks[{i}].mac"),
                        format!("{mac} is already used by {holder}"),
                    )
                    .into());
                }
            }
            None => {
                let mut n = u32::from_be_bytes(seed).wrapping_add(i as u32);
                let mut mac = MacAddr::generated(n.to_be_bytes());
                while taken.macs.contains_key(&mac) {
                    n = n.wrapping_add(97);
                    mac = MacAddr::generated(n.to_be_bytes());
                }
                att.mac = Some(mac);
            }
        }
        taken.macs.insert(
            att.mac.unwrap_or_else(|| MacAddr::generated(seed)),
            String::new(),
        );
    }

    // Explicit ports first, so that picked ones avoid them.
    for (i, att) in spec.networks.iter().enumerate() {
        for (j, fwd) in att.forwards.iter().enumerate() {
            let Some(port) = fwd.host_port else { continue };
            let field = format!("spec.networks[{i}].forwards[{j}].host_port");
            if let Some(holder) = taken.ports.get(&(fwd.protocol, port)) {
                return Err(ValidationError::new(
                    field,
                    format!("{port}/{} is already forwarded to {holder}: pick another port or leave it out", fwd.protocol),
                )
                .into());
            }
            if check_this_host
                && !held(fwd.protocol, port)
                && !bindable(fwd.protocol, fwd.host_address(), port)
            {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{port}/{} is in use on this host ({}): pick another port or leave it out",
                        fwd.protocol,
                        fwd.host_address()
                    ),
                )
                .into());
            }
            taken.ports.insert((fwd.protocol, port), String::new());
        }
    }
    for (i, att) in spec.networks.iter_mut().enumerate() {
        for (j, fwd) in att.forwards.iter_mut().enumerate() {
            if fwd.host_port.is_some() {
                continue;
            }
            let port = range
                .0
                .clone()
                .find(|p| {
                    !taken.ports.contains_key(&(fwd.protocol, *p))
                        && (!check_this_host || bindable(fwd.protocol, fwd.host_address(), *p))
                })
                .ok_or_else(|| {
                    ValidationError::new(
                        format!("spec.networks[{i}].forwards[{j}].host_port"),
                        format!(
                            "no free {} port left in {}-{}: free some or widen the daemon's --port-range",
                            fwd.protocol,
                            range.0.start(),
                            range.0.end()
                        ),
                    )
                })?;
            fwd.host_port = Some(port);
            taken.ports.insert((fwd.protocol, port), String::new());
        }
    }
    Ok(())
}

/// Four bytes of the uid, so a VM's generated MACs are stable for its life and differ between
/// VMs.
fn uuid_tail(uid: &str) -> [u8; 4] {
    let hash = uid.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let folded = (hash >> 32) as u32 ^ hash as u32;
    folded.to_be_bytes()
}
