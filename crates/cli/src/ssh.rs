//! `vm ssh`, `--wait-ssh`, and the SSH key corral manages for its user.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;
use corral_client::{Client, ClientError};
use corral_contract::{Protocol, ResourceName, Vm};

use crate::CliError;
use crate::args::parse_name;

use corral_contract::names::conditions::SSH_READY;

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

#[derive(Debug, Clone, Args)]
pub struct TunnelArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The guest TCP port (the VM must forward it)
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
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
///
/// A VM another node of a cluster runs is reached through corrald (`corral vm tunnel` as
/// ssh's ProxyCommand, with this command's connection), since its forward listens on that
/// node.
pub async fn ssh(
    client: &Client,
    connection: &crate::args::ConnectionArgs,
    args: &SshArgs,
) -> Result<(), CliError> {
    let vm = client.get_vm(args.name.as_str()).await?;
    let identity = match &args.identity {
        Some(path) => path.clone(),
        None => managed_key()?.0,
    };
    let mut cmd = command(&vm, &args.user, &identity)?;
    if let Some(node) = &vm.status.node {
        if *node != client.version().await?.node {
            cmd.args(["-o", &proxy_command(connection, vm.metadata.name.as_str())?]);
            // A token given with --token reaches the tunnel in its environment, never on a
            // command line.
            if let Some(token) = &connection.token {
                cmd.env(corral_client::ENV_TOKEN, token);
            }
        }
    }
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let err = cmd.exec();
    Err(CliError::Failed(format!(
        "running ssh: {err} (install it: apt-get install openssh-client)"
    )))
}

/// `ProxyCommand=corral vm tunnel NAME 22` with this command's connection flags, quoted for
/// the shell ssh runs it with.
fn proxy_command(connection: &crate::args::ConnectionArgs, vm: &str) -> Result<String, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("finding this program for ssh: {e}")))?;
    let mut words = vec![exe.to_string_lossy().into_owned()];
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            words.push(name.to_owned());
            words.push(value);
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    flag("--socket", path(&connection.socket));
    flag("--server", connection.server.clone());
    flag("--token-file", path(&connection.token_file));
    flag("--ca-file", path(&connection.ca_file));
    for project in &connection.project {
        flag("--project", Some(project.to_string()));
    }
    words.extend(["vm", "tunnel", vm, "22"].map(str::to_owned));
    let quoted = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|e| CliError::Failed(format!("quoting the tunnel command for ssh: {e}")))?;
    Ok(format!("ProxyCommand={quoted}"))
}

/// `vm tunnel`: standard input to guest port `port` of the VM, its bytes to standard output,
/// until the guest's side closes.
pub async fn tunnel(client: &Client, args: &TunnelArgs) -> Result<(), CliError> {
    use std::io::{Read, Write};
    let mut tunnel = client.tunnel(args.name.as_str(), args.port).await?;
    let input = tunnel.input.clone();
    drop(tunnel.input);
    // A thread of its own: a blocked read of stdin must not keep the process from ending.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if input.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stdout = std::io::stdout().lock();
    while let Some(data) = tunnel.output.recv().await {
        stdout.write_all(&data?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// The system's `ssh` to `user` on `vm`, through the forward of guest port 22; the caller
/// adds the remote command.
pub fn command(vm: &Vm, user: &str, identity: &Path) -> Result<Command, CliError> {
    let name = vm.metadata.name.as_str();
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
    let mut cmd = Command::new("ssh");
    cmd.arg("-i")
        .arg(identity)
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
        .arg(format!("{user}@{host}"));
    Ok(cmd)
}
