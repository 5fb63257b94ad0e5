//! Bridge networks on a Linux host: a bridge with the gateway address, a dnsmasq for DHCP and
//! DNS, NAT through an nftables table of its own, and one TAP per VM NIC. Every command is an
//! argument vector (`ip`, `nft`, `dnsmasq`), never a shell.
//!
//! Level-triggered: [`NetworkController`] compares the Network objects with what it finds on
//! the host (state under `<dir>/<name>/`) every second and makes the difference good, including
//! tearing down what belongs to a network that no longer exists.
//!
//! Corral changes and deletes only links it made: it creates the bridge and marks it at once
//! with the alias `corral:<uid>`; before it adds an address to a bridge or deletes one it
//! checks that mark, and a network whose bridge exists without it fails and touches nothing.
//! Its subnet is checked against the host and the other networks again on every pass.

mod dnsmasq;
mod forwarding;

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_contract::{Network, NetworkMode, NetworkPhase};
use corral_service::{
    HostNet, NetworkService, ServiceError, bridge_name, host_conflict, link_alias, network_conflict,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ControllerError;

/// What was made on the host for one network, so it can be undone without the object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct HostState {
    /// The network's uid: the bridge carries the alias `corral:<uid>`. Empty in state written
    /// before links were marked (see `teardown`).
    #[serde(default)]
    uid: String,
    bridge: String,
    table: String,
}

/// Runs `program args…`, returning its stderr as the error.
async fn run(program: &str, args: &[&str]) -> Result<(), ControllerError> {
    let failed = |stderr: String| ControllerError::Command {
        command: format!("{program} {}", args.join(" ")),
        stderr,
        hint: None,
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// Whether the calling thread's network namespace has interface `name`. (`/sys/class/net`
/// shows the namespace sysfs was mounted in, which need not be ours.)
fn link_exists(name: &str) -> bool {
    std::fs::read_to_string("/proc/thread-self/net/dev").is_ok_and(|dev| {
        dev.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(ifname, _)| ifname.trim() == name)
    })
}

/// The bridge of a network as its status records it (else derived the same way).
fn bridge_of(net: &Network) -> Option<String> {
    net.status.bridge.clone().or_else(|| bridge_name(net))
}

fn table_name(name: &str) -> String {
    format!("corral_{}", name.replace('-', "_"))
}

/// The TAP device of a VM's NIC `index`: `ct` + 8 hex digits of its uid + the index.
pub(crate) fn tap_name(uid: &str, index: usize) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect();
    format!("ct{hex}{index}")
}

/// Makes the TAP for a NIC and puts it on the network's bridge (idempotent).
pub(crate) async fn ensure_tap(net: &Network, tap: &str) -> Result<(), ControllerError> {
    let bridge = bridge_of(net).ok_or_else(|| ControllerError::Command {
        command: "ip link set master".into(),
        stderr: format!("network {:?} has no bridge", net.metadata.name.as_str()),
        hint: None,
    })?;
    if !link_exists(tap) {
        run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
    }
    run("ip", &["link", "set", "dev", tap, "master", &bridge]).await?;
    if let Some(mtu) = net.spec.mtu {
        run("ip", &["link", "set", "dev", tap, "mtu", &mtu.to_string()]).await?;
    }
    run("ip", &["link", "set", "dev", tap, "up"]).await
}

/// Removes a TAP if it exists.
pub(crate) async fn remove_tap(tap: &str) {
    if link_exists(tap) {
        if let Err(e) = run("ip", &["link", "del", "dev", tap]).await {
            tracing::warn!(tap, error = %e, "cannot remove TAP");
        }
    }
}

fn read_state(state_dir: &Path) -> Option<HostState> {
    std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// Sets up (or repairs) everything a bridge network needs. `others` are all networks and
/// `host` the host's network as this pass read it, to check the bridge and subnet against.
async fn ensure(
    dir: &Path,
    net: &Network,
    others: &[Network],
    host: &HostNet,
) -> Result<(), ControllerError> {
    let name = net.metadata.name.as_str();
    let uid = net.metadata.uid.as_str();
    let Some(br) = bridge_of(net) else {
        return Ok(());
    };
    let state_dir = dir.join(state_name(net));
    // A network deleted and created again under the same name between two passes: what the
    // old one made goes first.
    if read_state(&state_dir).is_some_and(|old| old.uid != uid) {
        teardown(&state_dir).await?;
    }
    // Nothing is made, or changed, for a network that collides with another or with the host.
    network_conflict(net, others).map_err(ServiceError::from)?;
    host_conflict(net, host).map_err(ServiceError::from)?;

    std::fs::create_dir_all(&state_dir).map_err(ControllerError::io("creating", &state_dir))?;
    let state = HostState {
        uid: uid.to_owned(),
        bridge: br.clone(),
        table: table_name(name),
    };
    // Written first, so that a crash half-way still leaves enough to tear it down.
    let state_file = state_dir.join("state.json");
    let json = serde_json::to_string(&state).expect("three strings serialize");
    std::fs::write(&state_file, json).map_err(ControllerError::io("writing", &state_file))?;

    let br = br.as_str();
    let cidr = net.spec.cidr;
    let gw = net.spec.gateway();
    if !link_exists(br) {
        run("ip", &["link", "add", "name", br, "type", "bridge"]).await?;
        // The mark comes right after; a link this call did not create was refused above.
        if let Err(e) = run("ip", &["link", "set", "dev", br, "alias", &link_alias(uid)]).await {
            let _ = run("ip", &["link", "del", "dev", br]).await;
            return Err(e);
        }
    }
    run(
        "ip",
        &[
            "addr",
            "replace",
            &format!("{gw}/{}", cidr.prefix()),
            "dev",
            br,
        ],
    )
    .await?;
    if let Some(mtu) = net.spec.mtu {
        run("ip", &["link", "set", "dev", br, "mtu", &mtu.to_string()]).await?;
    }
    run("ip", &["link", "set", "dev", br, "up"]).await?;

    let pid_file = state_dir.join("dnsmasq.pid");
    if dnsmasq::find(&pid_file).is_none() {
        let lease_file = state_dir.join("dnsmasq.leases");
        let first = cidr.host(10);
        let last = std::net::Ipv4Addr::from(u32::from(cidr.broadcast()) - 1);
        let mut args = vec![
            "--conf-file=/dev/null".to_owned(),
            dnsmasq::pid_file_arg(&pid_file),
            format!("--dhcp-leasefile={}", lease_file.display()),
            format!("--interface={br}"),
            "--bind-interfaces".to_owned(),
            "--except-interface=lo".to_owned(),
            format!("--listen-address={gw}"),
            format!("--dhcp-range={first},{last},{},1h", cidr.netmask()),
            format!("--dhcp-option=option:router,{gw}"),
            format!("--dhcp-option=option:dns-server,{}", net.spec.dns()),
            "--dhcp-authoritative".to_owned(),
            // No ICMP probe of an address before offering it: the range is Corral's alone, and
            // the 3 s probe outlasts a busy guest's DHCP patience.
            "--no-ping".to_owned(),
            format!("--log-facility={}", state_dir.join("dnsmasq.log").display()),
            "--log-dhcp".to_owned(),
        ];
        if let Some(mtu) = net.spec.mtu {
            args.push(format!("--dhcp-option=option:mtu,{mtu}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // dnsmasq puts itself in the background once it listens, so this returns then; like
        // QEMU, it outlives corrald.
        run("dnsmasq", &refs)
            .await
            .map_err(|e| e.hint("install it: apt-get install dnsmasq-base"))?;
    }

    let rules = format!(
        "table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} ip daddr != {cidr} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{br}\" accept\n\
         \t\toifname \"{br}\" ct state established,related accept\n\
         \t}}\n\
         }}\n",
        table = state.table
    );
    let rules_file = state_dir.join("nat.nft");
    if std::fs::read_to_string(&rules_file).ok().as_deref() != Some(&rules)
        || run("nft", &["list", "table", "ip", &state.table])
            .await
            .is_err()
    {
        let _ = run("nft", &["delete", "table", "ip", &state.table]).await;
        std::fs::write(&rules_file, &rules).map_err(ControllerError::io("writing", &rules_file))?;
        run("nft", &["-f", &rules_file.to_string_lossy()])
            .await
            .map_err(|e| e.hint("install it: apt-get install nftables"))?;
    }
    // Routing between the bridge and the host's uplink (NAT needs it); put back as it was
    // when the last bridge network goes.
    forwarding::enable(dir)
}

/// Whether link `name` carries the mark of the network with `uid`.
async fn marked_by(name: &str, uid: &str) -> Result<bool, ControllerError> {
    let host = HostNet::read().await?;
    Ok(!uid.is_empty()
        && host
            .link(name)
            .is_some_and(|l| l.alias.as_deref() == Some(link_alias(uid).as_str())))
}

/// Removes everything `ensure` made for the network whose state is in `state_dir`.
async fn teardown(state_dir: &Path) -> Result<(), ControllerError> {
    let state = read_state(state_dir);
    dnsmasq::stop(&state_dir.join("dnsmasq.pid")).await;
    if let Some(state) = &state {
        if run("nft", &["list", "table", "ip", &state.table])
            .await
            .is_ok()
        {
            run("nft", &["delete", "table", "ip", &state.table]).await?;
        }
        if link_exists(&state.bridge) {
            // State written before links were marked (no uid) names the bridge that version
            // derived, `crl-<name>`, which only corrald made; a bridge such state names any
            // other way (a `spec.bridge` that may have been the host's) is left alone.
            let legacy = state.uid.is_empty() && state.bridge.starts_with("crl-");
            if legacy || marked_by(&state.bridge, &state.uid).await? {
                run("ip", &["link", "del", "dev", &state.bridge]).await?;
            } else {
                tracing::warn!(
                    link = %state.bridge,
                    "not deleting a link that does not carry this network's mark"
                );
            }
        }
    }
    std::fs::remove_dir_all(state_dir).map_err(ControllerError::io("removing", state_dir))
}

/// Keeps bridge networks set up on this host, and removes what belongs to deleted ones.
#[derive(Debug)]
pub struct NetworkController {
    nets: NetworkService,
    dir: PathBuf,
}

impl NetworkController {
    /// A controller keeping its host state under `dir`.
    pub fn new(nets: NetworkService, dir: PathBuf) -> Self {
        NetworkController { nets, dir }
    }

    /// Reconciles every second until `shutdown` turns true. What it made stays when it stops.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "network reconcile failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// One pass over every network. Idempotent.
    pub async fn reconcile(&self) -> Result<(), ControllerError> {
        let (nets, _) = self.nets.list("").await?;
        let bridges: Vec<&Network> = nets
            .iter()
            .filter(|n| n.spec.mode == NetworkMode::Bridge)
            .collect();
        // Read once a pass (three `ip` runs), and only when there is something to check.
        let host = if bridges.is_empty() {
            Ok(HostNet::default())
        } else {
            HostNet::read().await
        };
        for net in bridges {
            let key = net.metadata.key();
            let name = key.as_str();
            let outcome = match &host {
                Ok(host) => ensure(&self.dir, net, &nets, host)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (phase, message) = match outcome {
                Ok(()) => (NetworkPhase::Ready, None),
                Err(e) => {
                    tracing::warn!(network = name, error = %e, "cannot set up bridge network");
                    (NetworkPhase::Failed, Some(e))
                }
            };
            if net.status.phase != phase || net.status.message != message {
                let _ = self.nets.set_status(name, phase, message).await;
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        let mut left = 0;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let declared = nets
                .iter()
                .any(|n| state_name(n) == name && n.spec.mode == NetworkMode::Bridge);
            if declared {
                left += 1;
            } else {
                tracing::info!(network = %name, "tearing down a deleted bridge network");
                teardown(&entry.path()).await?;
            }
        }
        if left == 0 {
            forwarding::restore(&self.dir)?;
        }
        Ok(())
    }
}

/// The directory a bridge network's state lives in: its name in project `default`,
/// `project_name` in others (names never hold a `_`, so the two never meet).
fn state_name(net: &Network) -> String {
    net.metadata.key().replace('/', "_")
}
