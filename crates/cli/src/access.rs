//! Guest access from the command line: `network …`, the network and cloud-init flags of
//! `vm create`, `vm ssh` and the interactive `vm console`.

use std::io::{IsTerminal, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use corral_client::{Client, ClientError};
use corral_contract::{
    Cidr, CloudInit, Network, NetworkAttachment, NetworkMode, NetworkSpec, PortForward, Protocol,
    ResourceName, Vm,
};

use crate::CliError;
use crate::args::{OutputArgs, parse_name, parse_timeout};
use crate::output;

use corral_contract::names::conditions::SSH_READY;

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
    /// Linux bridge name (bridge only)
    #[arg(long)]
    pub bridge: Option<String>,
    /// Host interface (vmnet-bridged only)
    #[arg(long)]
    pub interface: Option<String>,
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

/// The guest-access flags of `vm create`.
#[derive(Debug, Clone, Default, Args)]
pub struct AccessArgs {
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

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Log in as this user [default: root]
    #[arg(short = 'l', long, value_name = "USER", default_value = "root")]
    pub user: String,
    /// Private key to use [default: the key corral manages]
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// A command to run instead of a login shell, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
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
pub fn apply_flags(args: &AccessArgs, vm: &mut Vm) -> Result<(), CliError> {
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

/// The directory of the key corral manages: `$CORRAL_SSH_DIR`, else
/// `$XDG_DATA_HOME/corral/ssh` (`~/.local/share/corral/ssh`).
fn key_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORRAL_SSH_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("corral/ssh")
}

/// The key corral manages for this user: its private key file (mode 0600) and public key line.
/// Made with `ssh-keygen -t ed25519` on first use, under a lock so that concurrent first uses
/// agree on one key.
pub fn managed_key() -> Result<(PathBuf, String), CliError> {
    let dir = key_dir();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        CliError::Failed(format!("{what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("creating", &e))?;
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| fail("locking", &e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail("locking", &e))?;
    let key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    if !key.exists() || !public.exists() {
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral", "-f"])
            .arg(&key)
            .output()
            .map_err(|e| {
                CliError::Failed(format!(
                    "running ssh-keygen: {e} (install it: apt-get install openssh-client)"
                ))
            })?;
        if !out.status.success() {
            return Err(CliError::Failed(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let line = std::fs::read_to_string(&public).map_err(|e| fail("reading the key in", &e))?;
    Ok((key, line.trim().to_owned()))
}

/// `--wait-ssh`: waits until the VM's `SshReady` condition holds.
pub async fn wait_ssh(client: &Client, name: &str, timeout: Duration) -> Result<(), CliError> {
    let mut failed = None;
    let result = client
        .wait_for(
            name,
            |vm| match vm {
                Some(vm) if vm.status.phase == corral_contract::Phase::Failed => {
                    failed = vm.status.message.clone();
                    true
                }
                Some(vm) => vm.status.condition(SSH_READY).is_some_and(|c| c.status),
                None => true,
            },
            timeout,
        )
        .await;
    match (result, failed) {
        (_, Some(why)) => Err(CliError::Failed(format!("vm/{name} failed: {why}"))),
        (Ok(Some(_)), None) => {
            println!("vm/{name} ssh ready");
            Ok(())
        }
        (Ok(None), None) => Err(CliError::Failed(format!(
            "vm/{name} was deleted while waiting for ssh"
        ))),
        (Err(ClientError::Timeout { .. }), None) => Err(CliError::Failed(format!(
            "vm/{name}: ssh did not answer within {}s; see `corral vm console {name} --log`",
            timeout.as_secs()
        ))),
        (Err(e), None) => Err(e.into()),
    }
}

/// `vm ssh`: runs the system's `ssh` on the forwarded port of guest port 22, replacing this
/// process so the terminal and exit code are ssh's.
pub async fn ssh(client: &Client, args: &SshArgs) -> Result<(), CliError> {
    let name = args.name.as_str();
    let vm = client.get_vm(name).await?;
    let forward = vm
        .status
        .networks
        .iter()
        .flat_map(|n| &n.forwards)
        .find(|f| f.guest_port == 22 && f.protocol == Protocol::Tcp)
        .ok_or_else(|| {
            let why = if vm
                .spec
                .networks
                .iter()
                .flat_map(|n| &n.forwards)
                .any(|f| f.guest_port == 22)
            {
                format!("vm/{name} is {}: start it first", vm.status.phase)
            } else {
                format!("vm/{name} forwards no port to guest port 22: create it with --ssh")
            };
            CliError::Failed(why)
        })?;
    let host = match forward.host_address {
        Some(a) if !a.is_unspecified() => a,
        _ => Ipv4Addr::LOCALHOST,
    };
    let identity = match &args.identity {
        Some(path) => path.clone(),
        None => managed_key()?.0,
    };
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i")
        .arg(&identity)
        .args(["-p", &forward.host_port.to_string()])
        // The guest makes a new host key at every boot, so there is nothing stable to pin.
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg(format!("{}@{host}", args.user));
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let err = cmd.exec();
    Err(CliError::Failed(format!(
        "running ssh: {err} (install it: apt-get install openssh-client)"
    )))
}

/// Ctrl-], as virsh uses it to detach.
const DETACH: u8 = 0x1d;

/// `vm console NAME`: attaches in raw mode on a terminal (Ctrl-] detaches); with stdin not a
/// terminal, sends what it reads and prints output until a second after stdin ends.
pub async fn console(
    client: &Client,
    name: &str,
    read_only: bool,
    scrollback: bool,
) -> Result<(), CliError> {
    let mut session = client.attach_console(name, !read_only, scrollback).await?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty { Some(RawMode::enable()?) } else { None };
    if tty {
        eprint!("Connected to vm/{name}; escape character is ^]\r\n");
    }
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    // Blocking reads of stdin on their own thread: a terminal cannot be read asynchronously
    // without taking it over.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if stdin_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut out = std::io::stdout();
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let deadline = linger
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
        tokio::select! {
            data = session.output.recv() => match data {
                Some(Ok(bytes)) => {
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    if tty { eprint!("\r\nvm/{name}: console closed\r\n"); }
                    return Ok(());
                }
            },
            input = stdin_rx.recv(), if linger.is_none() => match input {
                Some(Some(bytes)) => {
                    if tty && bytes.contains(&DETACH) {
                        let before: Vec<u8> = bytes.iter().copied().take_while(|b| *b != DETACH).collect();
                        if !before.is_empty() && !read_only {
                            let _ = session.input.send(before).await;
                        }
                        eprint!("\r\n");
                        return Ok(());
                    }
                    if read_only {
                        continue;
                    }
                    if session.input.send(bytes).await.is_err() {
                        return Ok(());
                    }
                }
                _ => {
                    if tty {
                        return Ok(());
                    }
                    linger = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            },
            _ = tokio::time::sleep_until(deadline), if linger.is_some() => return Ok(()),
        }
    }
}

/// The terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enable() -> Result<RawMode, CliError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)
            .map_err(|e| CliError::Failed(format!("reading the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| CliError::Failed(format!("setting the terminal to raw mode: {e}")))?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
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
                    n.metadata.name.to_string(),
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

/// The networks a manifest declares: created when missing, left alone when the same, refused
/// when different (a network's spec cannot change while VMs may be on it).
pub async fn apply_network(client: &Client, desired: Network) -> Result<&'static str, ClientError> {
    match client.get_network(desired.metadata.name.as_str()).await {
        Ok(current) if current.spec == desired.spec => Ok("unchanged"),
        Ok(_) => Err(ClientError::FailedPrecondition {
            message:
                "a network's spec cannot be changed: delete it (no VM may join it) and apply again"
                    .into(),
        }),
        Err(ClientError::NotFound { .. }) => {
            let mut net = Network::new(desired.metadata.name.clone(), desired.spec.clone());
            net.metadata.labels = desired.metadata.labels.clone();
            client.create_network(&net).await.map(|_| "created")
        }
        Err(e) => Err(e),
    }
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
