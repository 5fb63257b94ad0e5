//! Networks from the command line: `network …`, applying a manifest's networks, and the
//! network, port-forward and SSH/cloud-init flags of `vm create`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use corral_client::Client;
use corral_contract::{
    Cidr, CloudInit, Network, NetworkAttachment, NetworkMode, NetworkSpec, PortForward, Protocol,
    ResourceName, Vm,
};

use crate::CliError;
use crate::args::{OutputArgs, parse_name, parse_timeout};
use crate::output;

use crate::ssh::managed_key;

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network (mode user: QEMU's user-mode stack, no privileges needed)
    Create(NetworkCreateArgs),
    /// List networks
    #[command(visible_alias = "ls")]
    List(NetworkListArgs),
    /// Show one network
    Get(NetworkGetArgs),
    /// Delete a network no VM joins
    #[command(visible_alias = "rm")]
    Delete(NetworkGetArgs),
}

#[derive(Debug, Clone, Args)]
pub struct NetworkCreateArgs {
    /// The network's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// How it reaches guests: user, bridge, vmnet-shared or vmnet-bridged [default: user]
    #[arg(long)]
    pub mode: Option<NetworkMode>,
    /// The guests' subnet [default: 10.0.2.0/24 for user, 10.88.0.0/24 for bridge]
    #[arg(long)]
    pub cidr: Option<Cidr>,
    /// The guests' gateway [default: .2 of the subnet for user, .1 for bridge]
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// The DNS server guests get [default: .3 for user, .1 for bridge]
    #[arg(long)]
    pub dns: Option<Ipv4Addr>,
    /// MTU (bridge only)
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Linux bridge name (bridge only): a link that does not exist yet, which corrald creates
    /// [default: crl + 12 hex digits of a hash of the network's uid]
    #[arg(long)]
    pub bridge: Option<String>,
    /// Host interface (vmnet-bridged only)
    #[arg(long)]
    pub interface: Option<String>,
    /// Let guests open connections: outbound NAT, and the host's loopback services through the
    /// gateway (user only). Off by default: guests reach only the ports forwarded to them
    #[arg(long)]
    pub host_access: bool,
    /// Let VMs of every project join it (admins only; networks of project `default`)
    #[arg(long)]
    pub shared: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NetworkListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NetworkGetArgs {
    /// The network's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The network, port-forward, SSH and cloud-init flags of `vm create`.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkArgs {
    /// Join this network (one NIC each; repeat for more); `--forward`, `--ssh` and
    /// `--wait-ssh` use the first, or `default` when none is named
    #[arg(long = "network", value_name = "NAME", value_parser = parse_name)]
    pub networks: Vec<ResourceName>,
    /// Forward a host port to a guest port: GUEST or GUEST:HOST, optionally /udp, e.g. 22 or
    /// 80:8080 (guest port 80 on host port 8080); a host port left out is picked by corrald
    /// from its range and shown in status.networks
    #[arg(long = "forward", value_name = "GUEST[:HOST][/udp]", value_parser = parse_forward)]
    pub forwards: Vec<PortForward>,
    /// Make the VM reachable with `corral vm ssh`: forward guest port 22 and authorise the key
    /// corral manages for you (made on first use)
    #[arg(long)]
    pub ssh: bool,
    /// Also authorise this public key file (implies --ssh); repeat for more
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// Create this guest user with the keys (implies --ssh) [default: keys go to root only]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// cloud-init user-data file to put in the VM's NoCloud seed (instead of the one --ssh
    /// writes)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ssh_keys", "user"])]
    pub user_data: Option<PathBuf>,
    /// Wait until the guest's SSH server answers (implies --ssh)
    #[arg(long)]
    pub wait_ssh: bool,
    /// How long --wait-ssh waits
    #[arg(long, value_name = "S", default_value = "300", value_parser = parse_timeout)]
    pub ssh_timeout: Duration,
}

/// `GUEST`, `GUEST:HOST`, each optionally followed by `/tcp` or `/udp`.
pub fn parse_forward(s: &str) -> Result<PortForward, String> {
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((ports, proto)) => (ports, proto.parse::<Protocol>().map_err(|e| e.to_string())?),
        None => (s, Protocol::Tcp),
    };
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "{s:?} is not a forward: ports are 1-65535; write GUEST, GUEST:HOST, e.g. 22 or 80:8080/tcp"
            )),
        }
    };
    let (guest, host) = match ports.split_once(':') {
        Some((g, h)) => (port(g)?, Some(port(h)?)),
        None => (port(ports)?, None),
    };
    Ok(PortForward {
        guest_port: guest,
        host_port: host,
        protocol,
        host_address: None,
    })
}

/// Adds what the access flags ask for to a VM built from the other flags.
pub fn apply_flags(args: &NetworkArgs, vm: &mut Vm) -> Result<(), CliError> {
    let want_ssh = args.ssh || args.wait_ssh || !args.ssh_keys.is_empty() || args.user.is_some();
    let mut names = args.networks.clone();
    if names.is_empty() && (want_ssh || !args.forwards.is_empty()) {
        names.push(
            corral_contract::ResourceName::new("default")
                .map_err(|e| CliError::Failed(e.to_string()))?,
        );
    }
    let mut attachments: Vec<NetworkAttachment> =
        names.into_iter().map(NetworkAttachment::new).collect();
    if let Some(first) = attachments.first_mut() {
        first.forwards.extend(args.forwards.iter().cloned());
        let has_22 = first
            .forwards
            .iter()
            .any(|f| f.guest_port == 22 && f.protocol == Protocol::Tcp);
        if want_ssh && !has_22 {
            first.forwards.push(PortForward::tcp(22));
        }
    }
    vm.spec.networks.extend(attachments);
    if let Some(path) = &args.user_data {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Failed(format!("--user-data {}: {e}", path.display())))?;
        vm.spec.cloud_init = Some(CloudInit {
            user_data: Some(text),
            ..CloudInit::default()
        });
    } else if want_ssh {
        let mut keys = vec![managed_key()?.1];
        for path in &args.ssh_keys {
            let key = std::fs::read_to_string(path)
                .map_err(|e| CliError::Failed(format!("--ssh-key {}: {e}", path.display())))?;
            if !key.trim_start().starts_with("ssh-") && !key.trim_start().starts_with("ecdsa-") {
                return Err(CliError::Failed(format!(
                    "--ssh-key {}: not an OpenSSH public key (give the .pub file)",
                    path.display()
                )));
            }
            keys.push(key.trim().to_owned());
        }
        vm.spec.cloud_init = Some(CloudInit::ssh_user_data(
            args.user.as_deref(),
            &keys,
            Some(vm.metadata.name.as_str()),
        ));
    }
    vm.spec
        .validate()
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// `network …`.
pub async fn network(client: &Client, command: NetworkCommand) -> Result<(), CliError> {
    match command {
        NetworkCommand::Create(args) => {
            let mut spec_json = serde_json::json!({});
            if let Some(mode) = args.mode {
                spec_json["mode"] = mode.as_str().into();
            }
            if let Some(cidr) = args.cidr {
                spec_json["cidr"] = cidr.to_string().into();
            }
            let spec: NetworkSpec =
                serde_json::from_value(spec_json).map_err(|e| CliError::Failed(e.to_string()))?;
            let spec = NetworkSpec {
                gateway: args.gateway,
                dns: args.dns,
                mtu: args.mtu,
                bridge: args.bridge.clone(),
                interface: args.interface.clone(),
                host_access: args.host_access,
                shared: args.shared,
                ..spec
            };
            spec.validate()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let net = client
                .create_network(&Network::new(args.name.clone(), spec))
                .await?;
            match args.output.format {
                crate::args::Format::Table => {
                    println!(
                        "network/{} created ({})",
                        net.metadata.name, net.status.phase
                    );
                    Ok(())
                }
                f => print_networks(&[net], f, false),
            }
        }
        NetworkCommand::List(args) => {
            let nets = client.list_networks("").await?;
            print_networks(&nets, args.output.format, true)
        }
        NetworkCommand::Get(args) => {
            let net = client.get_network(args.name.as_str()).await?;
            print_networks(&[net], args.output.format, false)
        }
        NetworkCommand::Delete(args) => {
            let net = client.delete_network(args.name.as_str()).await?;
            println!("network/{} deleted", net.metadata.name);
            Ok(())
        }
    }
}

fn print_networks(
    nets: &[Network],
    format: crate::args::Format,
    list: bool,
) -> Result<(), CliError> {
    use crate::args::Format;
    let resources: Vec<corral_contract::Resource> = nets.iter().cloned().map(Into::into).collect();
    let text = match format {
        Format::Json if list => {
            serde_json::to_string_pretty(&serde_json::json!({"items": resources}))? + "\n"
        }
        Format::Json => serde_json::to_string_pretty(&resources[0])? + "\n",
        Format::Yaml => resources
            .iter()
            .map(output::yaml)
            .collect::<Vec<_>>()
            .join("---\n"),
        Format::Table => {
            let mut rows =
                vec![["NAME", "MODE", "CIDR", "GATEWAY", "DNS", "PHASE", "AGE"].map(str::to_owned)];
            let now = SystemTime::now();
            for n in nets {
                rows.push([
                    output::row_name(&n.metadata),
                    n.spec.mode.to_string(),
                    n.spec.cidr.to_string(),
                    n.spec.gateway().to_string(),
                    n.spec.dns().to_string(),
                    n.status.phase.to_string(),
                    n.metadata
                        .created_at
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                        .map_or_else(|| "-".to_owned(), |t| output::age(now, t)),
                ]);
            }
            let mut widths = [0usize; 7];
            for row in &rows {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.len());
                }
            }
            rows.iter()
                .map(|row| {
                    let cells: Vec<String> = row
                        .iter()
                        .zip(widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    cells.join("  ").trim_end().to_owned() + "\n"
                })
                .collect()
        }
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_guest_then_host() {
        let f = parse_forward("80:8080/udp").unwrap();
        assert_eq!(
            (f.guest_port, f.host_port, f.protocol),
            (80, Some(8080), Protocol::Udp)
        );
        let f = parse_forward("22").unwrap();
        assert_eq!(
            (f.guest_port, f.host_port, f.protocol),
            (22, None, Protocol::Tcp)
        );
        assert!(
            parse_forward("0")
                .unwrap_err()
                .contains("ports are 1-65535")
        );
        assert!(
            parse_forward("22/sctp")
                .unwrap_err()
                .contains("not a valid protocol")
        );
    }
}
