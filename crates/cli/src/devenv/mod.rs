//! Development environments from a project file: `corral init`, `up`, `status`, `ssh`,
//! `down`, `destroy`. `up` turns `corral.yaml` into ordinary volumes and VMs and applies them
//! through corrald's one apply call with the project as their owner, so that it is
//! idempotent, changes apply in place, and VMs dropped from the file are pruned.

mod file;
mod folders;
mod init;
mod presets;
mod provision;
mod temp;

pub use temp::{TempArgs, temp};

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use corral_client::{Client, ClientError};
use corral_contract::names::annotations::PROJECT_FILE;
use corral_contract::names::labels::OWNER;
use corral_contract::{
    ApplyRequest, Boot, CloudInit, Distribution, Image, ImageBuild, ImageSource, ImageSpec,
    NetworkAttachment, ObjectMeta, Protocol, Resource, ResourceName, Vm, VmSpec, Volume,
    VolumeSpec,
};

pub use file::schema;

use crate::args::{OutputArgs, parse_name, parse_timeout};
use crate::commands::{connect_to, endpoint, print};
use crate::wait::{Goal, wait};
use crate::{CliError, ssh};
use file::{DEFAULT_MEMORY, Project};

/// The project file to use: `-f`, else corral.yaml here or in the nearest folder above.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// The project file [default: corral.yaml in this folder or the nearest one above]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The folder to write corral.yaml in [default: this one]
    #[arg(value_name = "FOLDER")]
    pub dir: Option<PathBuf>,
    /// Replace a corral.yaml that exists
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// How long to wait for each VM's ssh to answer (a Debian boot under TCG takes minutes)
    #[arg(long, value_name = "S", default_value = "15m", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: FileArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SshArgs {
    /// The VM, as corral.yaml names it [default: the only one]
    #[arg(value_parser = parse_name)]
    pub vm: Option<ResourceName>,
    #[command(flatten)]
    pub file: FileArgs,
    /// Log in as this user
    #[arg(short = 'l', long, value_name = "USER", default_value = "root")]
    pub user: String,
    /// A command to run instead of a login shell, after `--`
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Kill the VMs at once instead of asking their guests to shut down
    #[arg(long)]
    pub force: bool,
    /// How long to wait for them to stop
    #[arg(long, value_name = "S", default_value = "120", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub file: FileArgs,
}

fn load(args: &FileArgs) -> Result<Project, CliError> {
    let path = match &args.file {
        Some(path) => path.clone(),
        None => {
            let cwd = std::env::current_dir()
                .map_err(|e| CliError::Failed(format!("cannot read the current directory: {e}")))?;
            file::find(&cwd)?
        }
    };
    file::load(&path)
}

async fn connect(connection: &crate::args::ConnectionArgs) -> Result<Client, CliError> {
    connect_to(endpoint(connection)?, connection).await
}

/// `corral init`.
pub fn init(args: &InitArgs) -> Result<(), CliError> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|e| CliError::Failed(format!("cannot read the current directory: {e}")))?,
    };
    let (path, presets) = init::write(&dir, args.force)?;
    let found = if presets.is_empty() {
        "no language detected".to_owned()
    } else {
        let words: Vec<&str> = presets.iter().map(|p| p.as_str()).collect();
        format!("preset {}", words.join(", "))
    };
    print(&format!(
        "wrote {} ({found}); `corral up` starts it\n",
        path.display()
    ))
}

/// The volumes and VMs a project file declares, as apply takes them.
pub fn resources(project: &Project, key: &str) -> Result<Vec<Resource>, CliError> {
    let mut out = Vec::new();
    for (vm, decl) in &project.file.vms {
        let name = project.vm_name(vm);
        let field = |e: corral_contract::ValidationError| {
            CliError::Failed(format!("{}: vms.{vm}: {e}", project.path.display()))
        };
        out.push(Resource::Volume(Volume {
            metadata: ObjectMeta::new(name.clone()),
            spec: VolumeSpec {
                kind: Default::default(),
                format: None,
                image: Some(decl.image()),
                pool: None,
                size: decl.disk,
            },
            status: Default::default(),
        }));
        let mut net = NetworkAttachment::new(ResourceName::new("default").expect("valid"));
        // Guest ports the file forwards itself (`"22:2222"`, `"5432:15432"`) keep its host
        // port; ssh's and the services' get one picked by corrald.
        let declared = |port: u16| {
            decl.ports
                .iter()
                .any(|p| p.0.guest_port == port && p.0.protocol == Protocol::Tcp)
        };
        let defaults = std::iter::once(22).chain(decl.services().map(file::Service::port));
        for port in defaults.filter(|p| !declared(*p)) {
            net.forwards.push(corral_contract::PortForward::tcp(port));
        }
        net.forwards.extend(decl.ports.iter().map(|p| p.0.clone()));
        let mut cloud_init = CloudInit::ssh_user_data(None, &[key.to_owned()], Some(name.as_str()));
        let base = project.path.parent().unwrap_or(std::path::Path::new("/"));
        let mounts: Vec<_> = decl
            .folders()
            .iter()
            .map(|f| folders::Mount::resolve(f, base))
            .collect();
        let spec = VmSpec::builder(Boot::Volume {
            volume: name.clone(),
        })
        .memory(decl.memory.unwrap_or(DEFAULT_MEMORY))
        .network(net);
        let spec = folders::attach(spec, &mut cloud_init, &mounts);
        let mut spec = spec.cloud_init(cloud_init);
        if let Some(cpus) = decl.cpus {
            spec = spec.cpus(cpus);
        }
        let mut vm = Vm::new(name, spec.build().map_err(field)?);
        vm.metadata
            .annotations
            .insert(PROJECT_FILE.to_owned(), project.path.display().to_string());
        vm.metadata.validate().map_err(field)?;
        out.push(Resource::Vm(vm));
    }
    Ok(out)
}

/// Builds the images the project boots that corrald does not have and `up` knows how to
/// make: `debian-12` and the presets' images. Others must be there.
async fn ensure_images(client: &Client, project: &Project) -> Result<(), CliError> {
    let mut done = std::collections::BTreeSet::new();
    for (vm, decl) in &project.file.vms {
        let image = decl.image();
        if !done.insert(image.clone()) {
            continue;
        }
        match client.get_image(image.as_str()).await {
            Ok(_) => continue,
            Err(ClientError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let packages = match &decl.image {
            None => decl.packages(),
            Some(named) if named == file::DEFAULT_IMAGE => Vec::new(),
            Some(_) => {
                return Err(CliError::Failed(format!(
                    "{}: vms.{vm}.image: image/{image} does not exist: build it with \
                     `corral image build` or pull it with `corral image pull`",
                    project.path.display()
                )));
            }
        };
        print(&format!(
            "image/{image} building on corrald from Debian packages (minutes, once)\n"
        ))?;
        let spec = ImageSpec {
            source: ImageSource::Build(ImageBuild {
                distribution: Distribution::Debian12,
                packages,
                size: None,
            }),
            format: None,
            checksum: None,
            shared: false,
        };
        let built = Image {
            metadata: ObjectMeta::new(image.clone()),
            spec,
            status: Default::default(),
        };
        match client.create_image(&built).await {
            // Another `up` built it meanwhile.
            Ok(_) | Err(ClientError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `corral up`.
pub async fn up(connection: &crate::args::ConnectionArgs, args: &UpArgs) -> Result<(), CliError> {
    let project = load(&args.file)?;
    let (identity, key) = ssh::managed_key()?;
    let declared = resources(&project, &key)?;
    let client = connect(connection).await?;
    owned_vms(&client, &project).await?;
    ensure_images(&client, &project).await?;
    let request = ApplyRequest {
        owner: Some(project.name.clone()),
        prune: true,
        // corral.yaml is all the project declares: a VM taken out of it goes.
        allow_mass_prune: true,
        dry_run: false,
        resources: declared,
    };
    let report = client.apply(&request).await?;
    crate::declare::print_report(&report, crate::args::Format::Table, false)?;
    for (vm, decl) in &project.file.vms {
        let name = project.vm_name(vm);
        ssh::wait_ssh(&client, name.as_str(), args.timeout).await?;
        provision::run(&client, &name, decl, &identity).await?;
        print_services(&client, &name, decl).await?;
    }
    let first = project.file.vms.keys().next().map(ToString::to_string);
    let hint = match (project.file.vms.len(), first) {
        (1, _) => "corral ssh".to_owned(),
        (_, Some(vm)) => format!("corral ssh {vm}"),
        _ => String::new(),
    };
    print(&format!("project {} is up: `{hint}`\n", project.name))
}

/// Prints where the VM's services are reachable from the host.
async fn print_services(
    client: &Client,
    name: &ResourceName,
    decl: &file::VmDecl,
) -> Result<(), CliError> {
    if decl.services.is_empty() {
        return Ok(());
    }
    let vm = client.get_vm(name.as_str()).await?;
    for service in decl.services() {
        let forward = vm
            .status
            .networks
            .iter()
            .flat_map(|n| &n.forwards)
            .find(|f| f.guest_port == service.port() && f.protocol == Protocol::Tcp);
        if let Some(f) = forward {
            let host = f
                .host_address
                .filter(|a| !a.is_unspecified())
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST);
            print(&format!(
                "vm/{name} {}: {}\n",
                service.as_str(),
                service.url(host, f.host_port)
            ))?;
        }
    }
    Ok(())
}

/// The project's VMs corrald has, by their owner label. Refused when they came from another
/// folder's file of the same project name: its `up` or `destroy` here would replace or
/// delete that project's VMs.
async fn owned_vms(client: &Client, project: &Project) -> Result<Vec<Vm>, CliError> {
    let vms = client
        .list_vms(&format!("{OWNER}={}", project.name))
        .await?;
    let here = project.path.display().to_string();
    let other = vms
        .iter()
        .filter_map(|vm| vm.metadata.annotations.get(PROJECT_FILE))
        .find(|path| **path != here);
    if let Some(other) = other {
        return Err(CliError::Failed(format!(
            "project {} is up from {other}, not {here}: set a different `name:` in one of \
             the two files",
            project.name
        )));
    }
    Ok(vms)
}

/// `corral status`.
pub async fn status(
    connection: &crate::args::ConnectionArgs,
    args: &StatusArgs,
) -> Result<(), CliError> {
    let project = load(&args.file)?;
    let client = connect(connection).await?;
    let vms = owned_vms(&client, &project).await?;
    if args.output.format != crate::args::Format::Table {
        return print(&crate::output::vms(
            &vms,
            args.output.format,
            SystemTime::now(),
        )?);
    }
    let mut rows = vec![["VM", "NAME", "PHASE", "SSH", "PORTS", "PROVISIONED"].map(String::from)];
    for (vm, decl) in &project.file.vms {
        let name = project.vm_name(vm);
        let Some(have) = vms.iter().find(|v| v.metadata.name == name) else {
            rows.push([
                vm.to_string(),
                name.to_string(),
                "not created".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        let forwards: Vec<_> = have
            .status
            .networks
            .iter()
            .flat_map(|n| &n.forwards)
            .collect();
        let ssh_port = forwards
            .iter()
            .find(|f| f.guest_port == 22 && f.protocol == Protocol::Tcp)
            .map_or("-".to_owned(), |f| f.host_port.to_string());
        let ports: Vec<String> = forwards
            .iter()
            .filter(|f| f.guest_port != 22)
            .map(|f| format!("{}->{}/{}", f.host_port, f.guest_port, f.protocol))
            .collect();
        rows.push([
            vm.to_string(),
            name.to_string(),
            have.status.phase.to_string(),
            ssh_port,
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            provision::state(have, decl).to_owned(),
        ]);
    }
    print(&crate::output::columns(&rows))
}

/// Which of the project's VMs a command names: the one given, else the only one.
fn pick(project: &Project, vm: Option<&ResourceName>) -> Result<ResourceName, CliError> {
    let names: Vec<String> = project.file.vms.keys().map(ToString::to_string).collect();
    match vm {
        Some(vm) if project.file.vms.contains_key(vm) => Ok(project.vm_name(vm)),
        Some(vm) => Err(CliError::Usage(format!(
            "{} declares no VM {vm}: it declares {}",
            project.path.display(),
            names.join(", ")
        ))),
        None if names.len() == 1 => {
            Ok(project.vm_name(project.file.vms.keys().next().expect("one")))
        }
        None => Err(CliError::Usage(format!(
            "{} declares several VMs ({}): name one, e.g. `corral ssh {}`",
            project.path.display(),
            names.join(", "),
            names[0]
        ))),
    }
}

/// `corral ssh`: the same ssh as `vm ssh`, to a VM named as corral.yaml names it.
pub async fn ssh(connection: &crate::args::ConnectionArgs, args: &SshArgs) -> Result<(), CliError> {
    let project = load(&args.file)?;
    let name = pick(&project, args.vm.as_ref())?;
    let client = connect(connection).await?;
    let vm = match client.get_vm(name.as_str()).await {
        Err(ClientError::NotFound { .. }) => {
            return Err(CliError::Failed(format!(
                "vm/{name} does not exist: run `corral up` first"
            )));
        }
        other => other?,
    };
    let mut cmd = ssh::command(&vm, &args.user, &ssh::managed_key()?.0)?;
    if !args.command.is_empty() {
        cmd.arg("--").args(&args.command);
    }
    let err = cmd.exec();
    Err(CliError::Failed(format!(
        "running ssh: {err} (install it: apt-get install openssh-client)"
    )))
}

/// `corral down`: every VM of the project declared stopped (its disk stays).
pub async fn down(
    connection: &crate::args::ConnectionArgs,
    args: &DownArgs,
) -> Result<(), CliError> {
    let project = load(&args.file)?;
    let client = connect(connection).await?;
    let vms = owned_vms(&client, &project).await?;
    for vm in &vms {
        client
            .stop_vm(vm.metadata.name.as_str(), args.force)
            .await?;
        print(&format!("vm/{} stopping\n", vm.metadata.name))?;
    }
    for vm in &vms {
        let name = vm.metadata.name.as_str();
        wait(
            &client,
            name,
            Goal::for_power(corral_contract::Power::Stopped),
            args.timeout,
        )
        .await?;
        print(&format!("vm/{name} Stopped\n"))?;
    }
    if vms.is_empty() {
        print(&format!("project {} has no VMs\n", project.name))?;
    }
    Ok(())
}

/// `corral destroy`: the project's VMs and their disks deleted — an apply of nothing, as the
/// project's owner, with prune.
pub async fn destroy(
    connection: &crate::args::ConnectionArgs,
    args: &DestroyArgs,
) -> Result<(), CliError> {
    let project = load(&args.file)?;
    let client = connect(connection).await?;
    owned_vms(&client, &project).await?;
    let request = ApplyRequest {
        owner: Some(project.name.clone()),
        prune: true,
        allow_mass_prune: true,
        dry_run: false,
        resources: Vec::new(),
    };
    let report = client.apply(&request).await?;
    if report.items.is_empty() {
        return print(&format!(
            "project {} has nothing to destroy\n",
            project.name
        ));
    }
    crate::declare::print_report(&report, crate::args::Format::Table, false)
}

/// `corral schema`: corral.yaml's JSON Schema.
pub fn print_schema() -> Result<(), CliError> {
    print(&schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_becomes_a_volume_and_a_vm_per_entry() {
        let dir = std::path::Path::new("/home/u/shop");
        let (file, name) = file::parse(
            "corral.yaml",
            "vms:\n  app:\n    services: [redis]\n    cpus: 2\n    disk: 10G\n    \
             ports: [8080, \"22:2222\"]\n  db:\n    image: pg-16\n",
            dir,
            std::path::Path::new("/nonexistent"),
        )
        .unwrap();
        let project = Project {
            file,
            path: dir.join("corral.yaml"),
            name,
        };
        let resources = resources(&project, "ssh-ed25519 AAAA test").unwrap();
        let names: Vec<String> = resources
            .iter()
            .map(|r| format!("{}/{}", r.kind().as_str(), r.metadata().name))
            .collect();
        assert_eq!(
            names,
            [
                "Volume/shop-app",
                "Vm/shop-app",
                "Volume/shop-db",
                "Vm/shop-db"
            ]
        );
        let Resource::Volume(disk) = &resources[0] else {
            panic!()
        };
        assert_eq!(disk.spec.image.as_ref().unwrap(), "debian-12-redis");
        assert_eq!(
            disk.spec.size,
            Some(corral_contract::ByteSize::from_gib(10))
        );
        let Resource::Vm(app) = &resources[1] else {
            panic!()
        };
        assert_eq!(app.spec.cpus, 2);
        assert_eq!(app.spec.memory, DEFAULT_MEMORY);
        assert_eq!(
            app.spec.boot,
            Boot::Volume {
                volume: disk.metadata.name.clone()
            }
        );
        let forwards: Vec<(u16, Option<u16>)> = app.spec.networks[0]
            .forwards
            .iter()
            .map(|f| (f.guest_port, f.host_port))
            .collect();
        assert_eq!(
            forwards,
            [(6379, None), (8080, None), (22, Some(2222))],
            "the file's own forward of 22 replaces the default one"
        );
        let user_data = app
            .spec
            .cloud_init
            .as_ref()
            .unwrap()
            .user_data
            .as_ref()
            .unwrap();
        assert!(user_data.contains("ssh-ed25519 AAAA test"), "{user_data}");
        assert!(user_data.contains("hostname: \"shop-app\""), "{user_data}");
        assert_eq!(
            app.spec.shares[0].host_path, dir,
            "the project's folder by default"
        );
        assert!(
            user_data.contains("\"folder0\", \"/project\"]"),
            "{user_data}"
        );
        assert_eq!(
            app.metadata.annotations[PROJECT_FILE],
            "/home/u/shop/corral.yaml"
        );
    }
}
