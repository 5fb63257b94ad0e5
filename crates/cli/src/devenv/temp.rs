//! `corral temp [FOLDER]`: a throwaway VM with FOLDER mounted at /project, a shell in it
//! there, and the VM deleted when the shell ends — or by corrald at its time to live, if this
//! process never gets there (a closed laptop, a kill -9).

use std::time::Duration;

use clap::Args;
use corral_client::Client;
use corral_contract::names::annotations::{EXPIRES_AT, OWNER_VM};
use corral_contract::{
    Boot, ByteSize, CloudInit, NetworkAttachment, ObjectMeta, PortForward, ResourceName, Vm,
    VmSpec, Volume, VolumeSpec,
};

use crate::args::{parse_cpus, parse_memory, parse_name, parse_timeout, parse_ttl};
use crate::commands::print;
use crate::wait::{Goal, wait};
use crate::{CliError, ssh};

#[derive(Debug, Clone, Args)]
pub struct TempArgs {
    /// A host folder to mount at /project, where the shell starts (read-write; files the
    /// guest's root makes are the folder owner's)
    #[arg(value_name = "FOLDER")]
    pub folder: Option<std::path::PathBuf>,
    /// The image the VM boots
    #[arg(long, value_name = "IMAGE", value_parser = parse_name, default_value = "debian-12")]
    pub image: ResourceName,
    /// Number of vCPUs [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<u32>,
    /// Guest RAM, e.g. 2G
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, default_value = "1G")]
    pub memory: ByteSize,
    /// corrald deletes the VM this long after it was made, even if this command never
    /// returns to do it
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl, default_value = "8h")]
    pub ttl: Duration,
    /// How long to wait for the guest's ssh to answer
    #[arg(long, value_name = "S", default_value = "15m", value_parser = parse_timeout)]
    pub ssh_timeout: Duration,
    /// A command to run instead of an interactive shell, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The VM and its disk: `temp-XXXXXX`, booting a clone of `args.image` that goes with it.
fn vm(args: &TempArgs, key: &str) -> Result<(Vm, Volume), CliError> {
    let suffix: String = (0..6)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    let name = ResourceName::new(format!("temp-{suffix}")).expect("a valid name");
    let mut net = NetworkAttachment::new(ResourceName::new("default").expect("valid"));
    net.forwards.push(PortForward::tcp(22));
    let mut cloud_init = CloudInit::ssh_user_data(None, &[key.to_owned()], Some(name.as_str()));
    let mounts = match &args.folder {
        Some(folder) => {
            let host = std::path::absolute(folder)
                .map_err(|e| CliError::Usage(format!("FOLDER {}: {e}", folder.display())))?;
            if !host.is_dir() {
                return Err(CliError::Usage(format!(
                    "FOLDER {}: not a folder here",
                    folder.display()
                )));
            }
            vec![super::folders::Mount {
                host,
                guest: super::folders::DEFAULT_GUEST.to_owned(),
                read_only: false,
            }]
        }
        None => Vec::new(),
    };
    let spec = VmSpec::builder(Boot::Volume {
        volume: name.clone(),
    })
    .memory(args.memory)
    .network(net);
    let mut spec = super::folders::attach(spec, &mut cloud_init, &mounts).cloud_init(cloud_init);
    if let Some(cpus) = args.cpus {
        spec = spec.cpus(cpus);
    }
    let mut vm = Vm::new(
        name.clone(),
        spec.build().map_err(|e| CliError::Failed(e.to_string()))?,
    );
    crate::create::expire_after(&mut vm, args.ttl);
    let volume = Volume {
        metadata: ObjectMeta::new(name),
        spec: VolumeSpec {
            kind: Default::default(),
            format: None,
            image: Some(args.image.clone()),
            pool: None,
            size: None,
        },
        status: Default::default(),
    };
    Ok((vm, volume))
}

/// `corral temp`.
pub async fn temp(client: &Client, args: &TempArgs) -> Result<(), CliError> {
    let (identity, key) = ssh::managed_key()?;
    let (vm, mut volume) = vm(args, &key)?;
    let created = client.create_vm(&vm).await?;
    let name = created.metadata.name.clone();
    // The volume names the VM as its owner: deleting the VM, by hand or at its TTL, deletes it.
    volume
        .metadata
        .annotations
        .insert(OWNER_VM.to_owned(), created.metadata.uid.clone());
    let result = async {
        client.create_volume(&volume).await?;
        print(&format!(
            "vm/{name} created (deleted on exit, or by corrald at {})\n",
            vm.metadata.annotations[EXPIRES_AT]
        ))?;
        ssh::wait_ssh(client, name.as_str(), args.ssh_timeout).await?;
        let vm = client.get_vm(name.as_str()).await?;
        let mut cmd = ssh::command(&vm, "root", &identity)?;
        match (args.command.is_empty(), args.folder.is_some()) {
            (true, false) => {
                cmd.arg("-t");
            }
            // A fixed command line: no user value in it.
            (true, true) => {
                cmd.args(["-t", "--", "cd /project && exec \"${SHELL:-/bin/sh}\" -l"]);
            }
            (false, true) => {
                cmd.args(["--", "cd /project &&"]).args(&args.command);
            }
            (false, false) => {
                cmd.arg("--").args(&args.command);
            }
        }
        // Ctrl-C belongs to the shell in the guest; this process waits to clean up.
        let mut interrupts =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| CliError::Failed(format!("cannot catch Ctrl-C: {e}")))?;
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| CliError::Failed(format!("running ssh: {e}")))?;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = interrupts.recv() => {}
            }
        }
        .map_err(|e| CliError::Failed(format!("waiting for ssh: {e}")))?;
        Ok::<_, CliError>(status)
    }
    .await;
    let deleted = client.delete_vm_with(name.as_str(), Some(0)).await;
    let gone = match deleted {
        Ok(_) => wait(client, name.as_str(), Goal::Gone, Duration::from_secs(120))
            .await
            .map(drop),
        Err(e) => Err(e.into()),
    };
    match &gone {
        Ok(()) => print(&format!("vm/{name} deleted\n"))?,
        Err(e) => eprintln!(
            "error: vm/{name} could not be deleted now ({e}): corrald deletes it at its TTL"
        ),
    }
    let status = result?;
    gone?;
    match status.code() {
        Some(0) => Ok(()),
        // The shell's or the command's exit code, as ssh passes it on.
        Some(code) => Err(CliError::Reported(u8::try_from(code).unwrap_or(1))),
        None => Err(CliError::Failed("ssh ended by a signal".into())),
    }
}
