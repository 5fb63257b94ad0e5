//! `corral node …`: the hosts that run VMs — what they have, whether they are Ready, and
//! keeping VMs off one (cordon) or moving them away (drain).

use clap::{Args, Subcommand};
use corral_client::Client;
use corral_contract::{Node, ResourceName, Vm};

use crate::CliError;
use crate::args::{Format, OutputArgs, parse_name};
use crate::commands::print;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes: Ready or not, cordoned, what they have and how many VMs they run
    #[command(visible_alias = "ls")]
    List(NodeListArgs),
    /// Show one node
    Get(NodeNameArgs),
    /// Place no new VM on the node (VMs already there stay) — admin only
    Cordon(NodeNameArgs),
    /// Let the scheduler place VMs on the node again — admin only
    Uncordon(NodeNameArgs),
    /// Cordon the node and move its VMs: running VMs move live (corral vm migrate) to a node
    /// the scheduler picks; the others — and any that cannot move live, with the reason in
    /// their Evicting condition — are stopped there and started elsewhere (a VM no other node
    /// can take waits, Pending) — admin only
    Drain(NodeNameArgs),
    /// Mint a single-use token a new host joins the cluster with — admin only. On that host:
    /// `CORRAL_JOIN_TOKEN=<token> corrald --role agent --server https://SERVER:PORT
    /// --node-name NAME`. The token pins the cluster CA; the agent's key never leaves it.
    JoinToken(JoinTokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct JoinTokenArgs {
    /// How long the token is accepted, e.g. `30m` (at most 7d)
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Only a host joining under this node name may use it
    #[arg(long, value_parser = parse_name)]
    pub node: Option<ResourceName>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NodeListArgs {
    /// Only nodes whose labels match, e.g. `zone=a`
    #[arg(short = 'l', long = "selector", default_value = "")]
    pub selector: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NodeNameArgs {
    /// The node's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `node …`.
pub async fn node(client: &Client, command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::List(args) => {
            let nodes = client.list_nodes(&args.selector).await?;
            let vms = bound_vms(client).await?;
            show(&nodes, &vms, args.output.format)
        }
        NodeCommand::Get(args) => {
            let node = client.get_node(args.name.as_str()).await?;
            if args.output.format != Format::Table {
                return said(&node, "", args.output.format);
            }
            let vms = bound_vms(client).await?;
            show(std::slice::from_ref(&node), &vms, Format::Table)
        }
        NodeCommand::Cordon(args) => {
            let node = client.cordon_node(args.name.as_str(), true).await?;
            said(&node, "cordoned", args.output.format)
        }
        NodeCommand::Uncordon(args) => {
            let node = client.cordon_node(args.name.as_str(), false).await?;
            said(&node, "uncordoned", args.output.format)
        }
        NodeCommand::JoinToken(args) => {
            let node = args.node.as_ref().map_or("", |n| n.as_str());
            let t = client.create_join_token(&args.ttl, node).await?;
            let value = serde_json::json!({
                "token": t.token, "expires": t.expires, "ca_sha256": t.ca_sha256,
            });
            match args.output.format {
                Format::Table => print(&format!(
                    "{}\n# single use, until {}; pins the cluster CA sha256 {}\n",
                    t.token, t.expires, t.ca_sha256
                )),
                Format::Json => print(&(serde_json::to_string_pretty(&value)? + "\n")),
                Format::Yaml => print(&output::yaml(&value)),
            }
        }
        NodeCommand::Drain(args) => {
            let node = client.drain_node(args.name.as_str()).await?;
            let moving = bound_vms(client)
                .await?
                .iter()
                .filter(|vm| vm.status.node.as_deref() == Some(args.name.as_str()))
                .count();
            said(
                &node,
                &format!("drained: cordoned, {moving} VM(s) moving off"),
                args.output.format,
            )
        }
    }
}

/// Every VM of every project the caller works in, to count what each node runs.
async fn bound_vms(client: &Client) -> Result<Vec<Vm>, CliError> {
    Ok(client.clone().in_project(None, true)?.list_vms("").await?)
}

fn said(node: &Node, what: &str, format: Format) -> Result<(), CliError> {
    let resource = corral_contract::Resource::from(node.clone());
    match format {
        Format::Table => print(&format!("node/{} {what}\n", node.metadata.name)),
        Format::Json => print(&(serde_json::to_string_pretty(&resource)? + "\n")),
        Format::Yaml => print(&output::yaml(&resource)),
    }
}

fn show(nodes: &[Node], vms: &[Vm], format: Format) -> Result<(), CliError> {
    let resources: Vec<corral_contract::Resource> = nodes.iter().cloned().map(Into::into).collect();
    match format {
        Format::Json => return print(&(serde_json::to_string_pretty(&resources)? + "\n")),
        Format::Yaml => return print(&output::yaml(&resources)),
        Format::Table => {}
    }
    let mut text = format!(
        "{:<20} {:<18} {:<5} {:<8} {:<15} {:<9} {:<4} {:<16} {}\n",
        "NAME", "STATUS", "CPUS", "MEMORY", "ARCH", "ACCEL", "VMS", "POOLS", "HEARTBEAT"
    );
    for n in nodes {
        let mut status = if n.ready() { "Ready" } else { "NotReady" }.to_owned();
        if n.spec.unschedulable {
            status += ",Cordoned";
        }
        let join = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(",")
            }
        };
        let count = vms
            .iter()
            .filter(|vm| vm.status.node.as_deref() == Some(n.metadata.name.as_str()))
            .count();
        text += &format!(
            "{:<20} {:<18} {:<5} {:<8} {:<15} {:<9} {:<4} {:<16} {}\n",
            n.metadata.name,
            status,
            n.status.allocatable.cpus,
            approx(n.status.allocatable.memory.as_u64()),
            join(n.status.arches.iter().map(ToString::to_string).collect()),
            join(
                n.status
                    .accelerators
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            ),
            count,
            // A shared pool is marked `*`: `nfs*,fast`.
            join(
                n.status
                    .pools
                    .iter()
                    .map(|p| format!("{}{}", p.name, if p.shared { "*" } else { "" }))
                    .collect()
            ),
            n.status.heartbeat.as_deref().unwrap_or("never"),
        );
    }
    print(&text)
}

/// A size for a table, in the largest binary unit with one decimal (`22.5G`); exact sizes
/// are in `-o json`.
fn approx(bytes: u64) -> String {
    let units = [
        (1u64 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    match units.iter().find(|(unit, _)| bytes >= *unit) {
        Some((unit, suffix)) => {
            let value = bytes as f64 / *unit as f64;
            let text = format!("{value:.1}");
            format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
        }
        None => format!("{bytes}B"),
    }
}

#[cfg(test)]
mod approx_tests {
    #[test]
    fn table_sizes_are_rounded_to_one_decimal_of_the_largest_unit() {
        assert_eq!(super::approx(23_635_216 * 1024), "22.5G");
        assert_eq!(super::approx(8 << 30), "8G");
        assert_eq!(super::approx(512 << 20), "512M");
        assert_eq!(super::approx(100), "100B");
    }
}
