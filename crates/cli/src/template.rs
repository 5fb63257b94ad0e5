//! `corral template`: save a running VM as a template, and `vm create --template`: a VM that
//! starts where the template was saved instead of booting.
//!
//! A template is an Image whose source is a VM: its bytes are the VM's disk (a standalone
//! qcow2 that volumes clone) and its status holds the saved RAM and device state and the
//! VM's spec, whose hardware every VM started from it copies.

use std::time::Instant;

use clap::{Args, Subcommand};
use corral_client::Client;
use corral_contract::{
    Boot, ByteSize, Image, ImageSource, ImageSpec, Power, ResourceName, TemplateSource, Vm,
};

use crate::CliError;
use crate::args::{CreateArgs, Format, OutputArgs, parse_label, parse_name};
use crate::commands::print;
use crate::storage::{NameOutput, StorageListArgs, ago, bar, meta, render};

/// Templates: running VMs saved so that new VMs start from them.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Save running VM --from as template NAME: its guest pauses while its RAM, device state
    /// and disk are copied (about a second per GiB), then runs on
    ///
    /// The VM must have one volume (its disk) and no shared folders. Start VMs from it with
    /// `corral vm create NAME --template TEMPLATE`; each gets its own copy of the disk.
    Create(CreateTemplateArgs),
    /// List templates
    #[command(visible_alias = "ls")]
    List(StorageListArgs),
    /// Show one template
    Get(NameOutput),
    /// Delete a template (refused while a VM's disk is cloned from it)
    #[command(visible_alias = "rm")]
    Delete(NameOutput),
}

/// `template create`.
#[derive(Debug, Args)]
pub struct CreateTemplateArgs {
    /// The template's name (an Image of that name is made)
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The running VM to save
    #[arg(long = "from", value_name = "VM", value_parser = parse_name)]
    pub from: ResourceName,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs a `template` command.
pub async fn template(client: Client, command: TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::Create(args) => {
            let image = Image {
                metadata: meta(&args.name, &args.labels),
                spec: ImageSpec {
                    source: ImageSource::Template(TemplateSource {
                        vm: args.from.clone(),
                    }),
                    format: None,
                    checksum: None,
                    shared: false,
                },
                status: Default::default(),
            };
            let t0 = Instant::now();
            let progress = bar(None, &format!("saving vm/{}", args.from));
            let result = client.create_image(&image).await;
            progress.finish_and_clear();
            let saved = result?;
            if args.output.format == Format::Table {
                let template = saved.status.template.as_ref();
                print(&format!(
                    "template/{} saved from vm/{} in {:.1}s: RAM and devices {}, disk {}, guest \
                     paused {} ms\n",
                    saved.metadata.name,
                    args.from,
                    t0.elapsed().as_secs_f64(),
                    ByteSize::new(template.map_or(0, |t| t.state_size)),
                    ByteSize::new(saved.status.size.unwrap_or(0)),
                    template.map_or(0, |t| t.paused_ms),
                ))
            } else {
                print(&templates(&[saved], args.output.format, true)?)
            }
        }
        TemplateCommand::List(args) => {
            let selector: Vec<String> = args
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let items: Vec<Image> = client
                .list_images(&selector.join(","))
                .await?
                .into_iter()
                .filter(|i| i.status.template.is_some())
                .collect();
            print(&templates(&items, args.output.format, false)?)
        }
        TemplateCommand::Get(args) => {
            let image = get(&client, &args.name).await?;
            print(&templates(&[image], args.output.format, true)?)
        }
        TemplateCommand::Delete(args) => {
            get(&client, &args.name).await?;
            let image = client.delete_image(args.name.as_str()).await?;
            print(&format!("template/{} deleted\n", image.metadata.name))
        }
    }
}

/// Template `name`, refused when the image of that name is not one.
async fn get(client: &Client, name: &ResourceName) -> Result<Image, CliError> {
    let image = client.get_image(name.as_str()).await?;
    if image.status.template.is_none() {
        return Err(CliError::Failed(format!(
            "image/{name} is not a template (corral template create makes one)"
        )));
    }
    Ok(image)
}

fn templates(items: &[Image], format: Format, single: bool) -> Result<String, CliError> {
    render(
        items,
        format,
        single,
        ["NAME", "VM", "CPUS", "MEMORY", "STATE", "DISK", "AGE"],
        |i| {
            let t = i.status.template.as_ref();
            [
                crate::output::row_name(&i.metadata),
                t.map_or_else(|| "-".into(), |t| t.vm.clone()),
                t.map_or_else(|| "-".into(), |t| t.spec.cpus.to_string()),
                t.map_or_else(|| "-".into(), |t| t.spec.memory.to_string()),
                t.map_or_else(|| "-".into(), |t| ByteSize::new(t.state_size).to_string()),
                ByteSize::new(i.status.size.unwrap_or(0)).to_string(),
                ago(&i.metadata.created_at),
            ]
        },
    )
}

/// The VM `vm create NAME --template T` makes: the template VM's spec, on a disk of its own
/// (a volume named like the VM, cloned from the template and deleted with the VM), with
/// MACs and host ports left for corrald to pick anew.
pub async fn vm_from_template(
    client: &Client,
    args: &CreateArgs,
    template: &ResourceName,
) -> Result<Vm, CliError> {
    let image = get(client, template)
        .await
        .map_err(|e| CliError::Failed(format!("--template: {e}")))?;
    let saved = image
        .status
        .template
        .as_ref()
        .expect("get checked it is a template");
    let mut spec = (*saved.spec).clone();
    spec.template = Some(template.clone());
    spec.power = if args.no_start {
        Power::Stopped
    } else {
        Power::Running
    };
    let disk = args.name.clone();
    match &mut spec.boot {
        Boot::Volume { volume } => *volume = disk,
        _ => match spec.volumes.first_mut() {
            Some(first) => first.volume = disk,
            None => {
                return Err(CliError::Failed(format!(
                    "--template: template {template} saved no volume"
                )));
            }
        },
    }
    for network in &mut spec.networks {
        network.mac = None;
        for forward in &mut network.forwards {
            forward.host_port = None;
        }
    }
    if let Some(policy) = args.restart_policy {
        spec.restart_policy = policy;
    }
    if let Some(accel) = args.accel {
        spec.accel = accel;
    }
    spec.validate()
        .map_err(|e| CliError::Failed(format!("--template: {e}")))?;
    let mut vm = Vm::new(args.name.clone(), spec);
    vm.metadata.labels.extend(args.labels.iter().cloned());
    if let Some(ttl) = args.ttl {
        crate::create::expire_after(&mut vm, ttl);
    }
    Ok(vm)
}
