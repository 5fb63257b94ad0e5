//! Bridge networks on a Linux host: a bridge with the gateway address, a dnsmasq for DHCP and
//! DNS, NAT through an nftables table of its own, and one TAP per VM NIC. Every command is an
//! argument vector (`ip`, `nft`, `dnsmasq`), never a shell.
//!
//! Level-triggered: [`NetworkController`] compares the Network objects with what it finds on
//! the host (state under `<dir>/<name>/`) every second and makes the difference good, including
//! tearing down what belongs to a network that no longer exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_contract::{Network, NetworkMode, NetworkPhase};
use corral_service::NetworkService;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ControllerError;

/// What was made on the host for one network, so it can be undone without the object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct HostState {
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

/// The bridge's name: the spec's, else `crl-<name>` cut to 15 bytes.
pub(crate) fn bridge_name(net: &Network) -> String {
    net.spec.bridge.clone().unwrap_or_else(|| {
        format!("crl-{}", net.metadata.name)
            .chars()
            .take(15)
            .collect()
    })
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

/// Makes the TAP for a NIC and puts it on the bridge (idempotent).
pub(crate) async fn ensure_tap(net: &Network, tap: &str) -> Result<(), ControllerError> {
    if !link_exists(tap) {
        run("ip", &["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
    }
    let bridge = bridge_name(net);
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

fn pid_alive(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .next()
        .is_some_and(|argv0| argv0.ends_with(b"dnsmasq"))
        .then_some(pid)
}

/// Sets up (or repairs) everything a bridge network needs.
async fn ensure(dir: &Path, net: &Network) -> Result<(), ControllerError> {
    let name = net.metadata.name.as_str();
    let state_dir = dir.join(name);
    std::fs::create_dir_all(&state_dir).map_err(ControllerError::io("creating", &state_dir))?;
    let state = HostState {
        bridge: bridge_name(net),
        table: table_name(name),
    };
    // Written first, so that a crash half-way still leaves enough to tear it down.
    let state_file = state_dir.join("state.json");
    let json = serde_json::to_string(&state).expect("two strings serialize");
    std::fs::write(&state_file, json).map_err(ControllerError::io("writing", &state_file))?;

    let br = state.bridge.as_str();
    let cidr = net.spec.cidr;
    let gw = net.spec.gateway();
    if !link_exists(br) {
        run("ip", &["link", "add", "name", br, "type", "bridge"]).await?;
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
    if pid_alive(&pid_file).is_none() {
        let lease_file = state_dir.join("dnsmasq.leases");
        let first = cidr.host(10);
        let last = std::net::Ipv4Addr::from(u32::from(cidr.broadcast()) - 1);
        let mut args = vec![
            "--conf-file=/dev/null".to_owned(),
            format!("--pid-file={}", pid_file.display()),
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
    // Routing between the bridge and the host's uplink (NAT needs it).
    let forwarding = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(forwarding, "1").map_err(ControllerError::io(
        "enabling IPv4 forwarding in",
        forwarding,
    ))?;
    Ok(())
}

/// Removes everything `ensure` made for the network whose state is in `state_dir`.
async fn teardown(state_dir: &Path) -> Result<(), ControllerError> {
    let state: Option<HostState> = std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if let Some(pid) = pid_alive(&state_dir.join("dnsmasq.pid")) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if nix::sys::signal::kill(pid, None).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    if let Some(state) = &state {
        if run("nft", &["list", "table", "ip", &state.table])
            .await
            .is_ok()
        {
            run("nft", &["delete", "table", "ip", &state.table]).await?;
        }
        if link_exists(&state.bridge) {
            run("ip", &["link", "del", "dev", &state.bridge]).await?;
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
        for net in nets.iter().filter(|n| n.spec.mode == NetworkMode::Bridge) {
            let name = net.metadata.name.as_str();
            let (phase, message) = match ensure(&self.dir, net).await {
                Ok(()) => (NetworkPhase::Ready, None),
                Err(e) => {
                    tracing::warn!(network = name, error = %e, "cannot set up bridge network");
                    (NetworkPhase::Failed, Some(e.to_string()))
                }
            };
            if net.status.phase != phase || net.status.message != message {
                let _ = self.nets.set_status(name, phase, message).await;
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let declared = nets
                .iter()
                .any(|n| n.metadata.name == name.as_str() && n.spec.mode == NetworkMode::Bridge);
            if !declared {
                tracing::info!(network = %name, "tearing down a deleted bridge network");
                teardown(&entry.path()).await?;
            }
        }
        Ok(())
    }
}
