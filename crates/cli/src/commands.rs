//! What each command does, through the typed client.

use std::io::{Read, Write};
use std::time::SystemTime;

use clap::CommandFactory;
use corral_client::{Client, ClientError, Endpoint};
use corral_contract::{Resource, ResourceName, Vm};

use crate::args::{
    ActionArgs, Cli, Command, CompletionArgs, ConnectionArgs, Format, ManifestArgs, Shell,
    VersionArgs, VmCommand, WaitArgs,
};
use crate::storage::AttestationCommand;
use crate::wait::{Goal, wait};
use crate::{CliError, create, output, storage};
use corral_contract::manifest;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let mut connection = cli.connection;
    crate::output::ALL_PROJECTS.store(
        connection.all_projects,
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.command {
        Command::Vm(command) => vm(&connection, command).await,
        Command::Image(command) => storage::image(connect(&connection).await?, command).await,
        Command::Template(command) => {
            crate::template::template(connect(&connection).await?, command).await
        }
        Command::Volume(command) => storage::volume(connect(&connection).await?, command).await,
        Command::Snapshot(command) => storage::snapshot(connect(&connection).await?, command).await,
        Command::Attestation(AttestationCommand::Verify(args)) => {
            storage::attestation_verify(&args)
        }
        Command::Attestation(AttestationCommand::Get(args)) => {
            storage::attestation_get(connect(&connection).await?, args).await
        }
        Command::Network(command) => {
            crate::network::network(&connect(&connection).await?, command).await
        }
        Command::Node(command) => crate::node::node(&connect(&connection).await?, command).await,
        Command::Source(command) => {
            crate::source::source(&connect(&connection).await?, command).await
        }
        Command::Auth(command) => {
            // Here --project names the identity's projects, not where the request acts.
            let projects = std::mem::take(&mut connection.project);
            crate::auth::auth(&connect(&connection).await?, command, &projects).await
        }
        Command::Audit(args) => {
            // Here --project filters the log: the audit log is no project's object.
            let projects = std::mem::take(&mut connection.project);
            if projects.len() > 1 {
                return Err(CliError::Usage(
                    "--project: the audit log is read for one project at a time".into(),
                ));
            }
            let client = connect(&connection).await?;
            crate::auth::audit(&client, args, projects.first()).await
        }
        Command::Project(command) => {
            crate::auth::project(&connect(&connection).await?, command).await
        }
        Command::Apply(args) => crate::declare::apply(&connection, &args).await,
        Command::Diff(args) => crate::declare::diff(&connection, &args).await,
        Command::Delete(args) => delete(&connection, &args).await,
        Command::Ui(args) => crate::ui::ui(&connection, &args).await,
        Command::Init(args) => crate::devenv::init(&args),
        Command::Up(args) => crate::devenv::up(&connection, &args).await,
        Command::Status(args) => crate::devenv::status(&connection, &args).await,
        Command::Ssh(args) => crate::devenv::ssh(&connection, &args).await,
        Command::Down(args) => crate::devenv::down(&connection, &args).await,
        Command::Destroy(args) => crate::devenv::destroy(&connection, &args).await,
        Command::Temp(args) => crate::devenv::temp(&connect(&connection).await?, &args).await,
        Command::Schema => crate::devenv::print_schema(),
        Command::Version(args) => version(&connection, &args).await,
        Command::Completion(args) => completion(&args),
    }
}

pub fn endpoint(connection: &ConnectionArgs) -> Result<Endpoint, CliError> {
    Ok(Endpoint::from_env_and_flags(
        connection.socket.clone(),
        connection.server.clone(),
        token(connection)?,
        connection.ca_file.clone(),
    )?)
}

/// The token of `--token-file` or `--token` (which warns: a command line is readable by
/// every user in /proc); `None` leaves it to CORRAL_TOKEN.
fn token(connection: &ConnectionArgs) -> Result<Option<String>, CliError> {
    if let Some(token) = &connection.token {
        eprintln!(
            "warning: --token is visible to every user of this host in /proc/{}/cmdline; \
             use CORRAL_TOKEN or --token-file instead",
            std::process::id()
        );
        return Ok(Some(token.clone()));
    }
    let Some(path) = &connection.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Failed(format!("--token-file {}: {e}", path.display())))?;
    match text.lines().next().map(str::trim).filter(|t| !t.is_empty()) {
        Some(token) => Ok(Some(token.to_owned())),
        None => Err(CliError::Failed(format!(
            "--token-file {}: the first line holds no token",
            path.display()
        ))),
    }
}

async fn connect(connection: &ConnectionArgs) -> Result<Client, CliError> {
    connect_to(endpoint(connection)?, connection).await
}

/// Connects to `endpoint`, acting in the project the flags or CORRAL_PROJECT name.
pub(crate) async fn connect_to(
    endpoint: corral_client::Endpoint,
    connection: &ConnectionArgs,
) -> Result<Client, CliError> {
    let project = match connection.project.as_slice() {
        [] => None,
        [one] => Some(one.as_str()),
        _ => {
            return Err(CliError::Usage(
                "--project: a command acts in one project; give it once".into(),
            ));
        }
    };
    let client = Client::connect(endpoint).await?;
    Ok(client.in_project(project, connection.all_projects)?)
}

pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn vm(connection: &ConnectionArgs, command: VmCommand) -> Result<(), CliError> {
    match command {
        VmCommand::Create(args) => {
            let endpoint = endpoint(connection)?;
            let local = endpoint.is_local();
            let client = connect_to(endpoint, connection).await?;
            let vm = match &args.template {
                Some(template) => {
                    crate::template::vm_from_template(&client, &args, template).await?
                }
                None => {
                    let cwd = std::env::current_dir().map_err(|e| {
                        CliError::Failed(format!("cannot read the current directory: {e}"))
                    })?;
                    let mut vm = create::vm_from_flags(&args, &cwd)?;
                    crate::network::apply_flags(&args.network, &mut vm)?;
                    if local {
                        create::check_boot_files(&vm)?;
                    }
                    vm
                }
            };
            let created = client.create_vm(&vm).await?;
            if let Some(image) = args.image.as_ref().or(args.template.as_ref()) {
                // The VM waits in Pending for its volume, which names the VM as its owner.
                if let Err(e) = create::owned_volume(&client, &created, image, args.disk_size).await
                {
                    let _ = client.delete_vm(created.metadata.name.as_str()).await;
                    return Err(e);
                }
            }
            print(&format!("vm/{} created\n", created.metadata.name))?;
            let goal = Goal::for_power(created.spec.power);
            finish(&client, &created, goal, &args.wait).await?;
            if args.network.wait_ssh {
                crate::ssh::wait_ssh(
                    &client,
                    created.metadata.name.as_str(),
                    args.network.ssh_timeout,
                )
                .await?;
            }
            Ok(())
        }
        VmCommand::Ssh(args) => {
            crate::ssh::ssh(&connect(connection).await?, connection, &args).await
        }
        VmCommand::Tunnel(args) => crate::ssh::tunnel(&connect(connection).await?, &args).await,
        VmCommand::List(args) => {
            let client = connect(connection).await?;
            let selector: Vec<String> = args
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let vms = client.list_vms(&selector.join(",")).await?;
            print(&output::vms(&vms, args.output.format, SystemTime::now())?)
        }
        VmCommand::Get(args) => {
            let client = connect(connection).await?;
            let vm = client.get_vm(args.name.as_str()).await?;
            print(&output::vm(&vm, args.output.format, SystemTime::now())?)
        }
        VmCommand::Start(args) => {
            action(connection, args, "starting", |c, n| Box::pin(c.start_vm(n))).await
        }
        VmCommand::Pause(args) => {
            action(connection, args, "pausing", |c, n| Box::pin(c.pause_vm(n))).await
        }
        VmCommand::Resume(args) => {
            action(connection, args, "resuming", |c, n| {
                Box::pin(c.resume_vm(n))
            })
            .await
        }
        VmCommand::Stop(args) => {
            let client = connect(connection).await?;
            let vm = client.stop_vm(args.name.as_str(), args.force).await?;
            print(&format!("vm/{} stopping\n", vm.metadata.name))?;
            finish(&client, &vm, Goal::for_power(vm.spec.power), &args.wait).await
        }
        VmCommand::Restart(args) => {
            let client = connect(connection).await?;
            let vm = client.restart_vm(args.name.as_str()).await?;
            print(&format!("vm/{} restarting\n", vm.metadata.name))?;
            finish(&client, &vm, Goal::Restarted(vm.status.pid), &args.wait).await
        }
        VmCommand::Migrate(args) => {
            let client = connect(connection).await?;
            let name = args.name.as_str();
            if args.cancel {
                client.cancel_vm_migration(name).await?;
                return print(&format!("vm/{name} migration cancelled\n"));
            }
            let options = corral_contract::MigrationOptions {
                auto_converge: args.auto_converge,
                postcopy: args.postcopy,
                bandwidth: args.bandwidth.map(|b| b.as_u64()).filter(|b| *b > 0),
            };
            let vm = client
                .migrate_vm_with(name, args.to.as_ref().map(ResourceName::as_str), options)
                .await?;
            print(&match &args.to {
                Some(to) => format!("vm/{name} migrating to node {to}\n"),
                None => format!("vm/{name} migrating (the scheduler picks the node)\n"),
            })?;
            if !args.wait.wait {
                return Ok(());
            }
            let vm = wait(&client, name, Goal::Migrated, args.wait.timeout)
                .await?
                .unwrap_or(vm);
            let m = vm.status.migration.unwrap_or_default();
            print(&format!(
                "vm/{name} {} on node {} (downtime {} ms, total {} ms, {} sent)\n",
                vm.status.phase,
                m.target,
                m.downtime_ms.unwrap_or_default(),
                m.total_time_ms.unwrap_or_default(),
                corral_contract::ByteSize::new(m.transferred_bytes)
            ))
        }
        VmCommand::Delete(args) => {
            let client = connect(connection).await?;
            let grace = if args.force { Some(0) } else { args.grace };
            let vm = client.delete_vm_with(args.name.as_str(), grace).await?;
            print(&format!("vm/{} deleting\n", vm.metadata.name))?;
            finish(&client, &vm, Goal::Gone, &args.wait).await
        }
        VmCommand::Memory(command) => crate::memory::run(connect(connection).await?, command).await,
        VmCommand::Console(args) => {
            if !args.log {
                let client = connect(connection).await?;
                return crate::console::console(
                    &client,
                    args.name.as_str(),
                    args.read_only,
                    !args.no_scrollback,
                )
                .await;
            }
            let client = connect(connection).await?;
            let tail = args.tail.map_or(0, |size| size.as_u64());
            let log = client.console_log(args.name.as_str(), tail).await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&log)?;
            out.flush()?;
            Ok(())
        }
    }
}

type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vm, ClientError>> + 'a>>;

/// start, pause, resume: a power change, then perhaps a wait for the phase it leads to.
async fn action(
    connection: &ConnectionArgs,
    args: ActionArgs,
    doing: &str,
    call: impl for<'a> FnOnce(&'a Client, &'a str) -> Call<'a>,
) -> Result<(), CliError> {
    let client = connect(connection).await?;
    let vm = call(&client, args.name.as_str()).await?;
    print(&format!("vm/{} {doing}\n", vm.metadata.name))?;
    finish(&client, &vm, Goal::for_power(vm.spec.power), &args.wait).await
}

/// With `--wait`, waits for `goal` and says where the VM got.
async fn finish(client: &Client, vm: &Vm, goal: Goal, args: &WaitArgs) -> Result<(), CliError> {
    if !args.wait {
        return Ok(());
    }
    let name = vm.metadata.name.as_str();
    let last = wait(client, name, goal, args.timeout).await?;
    let line = match last {
        None => format!("vm/{name} deleted\n"),
        Some(vm) => match vm.status.pid {
            Some(pid) => format!("vm/{name} {} (pid {pid})\n", vm.status.phase),
            None => format!("vm/{name} {}\n", vm.status.phase),
        },
    };
    print(&line)
}

/// Reads a manifest from a file, or standard input for `-`, and parses all of it.
fn read_manifest(args: &ManifestArgs) -> Result<Vec<Resource>, CliError> {
    let (source, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Failed(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_owned(), text)
    } else {
        let source = args.file.display().to_string();
        let text = std::fs::read_to_string(&args.file)
            .map_err(|e| CliError::Failed(format!("cannot read {source}: {e}")))?;
        (source, text)
    };
    Ok(manifest::parse(&source, &text)?)
}

async fn delete(connection: &ConnectionArgs, args: &ManifestArgs) -> Result<(), CliError> {
    let resources = read_manifest(args)?;
    let client = connect(connection).await?;
    let mut failures = Failures::default();
    // The reverse: VMs before the snapshots, volumes, images and networks they use.
    let mut resources = resources;
    resources.sort_by_key(|r| match r {
        Resource::Vm(_) => 0,
        Resource::Snapshot(_) => 1,
        Resource::Volume(_) => 2,
        Resource::Image(_) => 3,
        Resource::Network(_) => 4,
        Resource::Identity(_) | Resource::Project(_) | Resource::Source(_) | Resource::Node(_) => 5,
    });
    for resource in resources {
        let what = format!(
            "{}/{}",
            resource.kind().as_str().to_lowercase(),
            resource.metadata().name
        );
        let client = match &resource.metadata().project {
            Some(p) => client.clone().in_project(Some(p.as_str()), false)?,
            None => client.clone(),
        };
        match storage::delete(&client, &resource).await {
            Ok(()) => print(&format!("{what} deleting\n"))?,
            Err(e) => failures.report(&what, &e),
        }
    }
    failures.into_result()
}

/// Errors of a command that goes on past them (one per manifest resource).
#[derive(Debug, Default)]
struct Failures {
    code: Option<u8>,
}

impl Failures {
    fn report(&mut self, what: &str, err: &ClientError) {
        eprintln!("error: {what}: {err}");
        let code = u8::try_from(err.exit_code()).unwrap_or(1);
        // Any failure other than "not found" makes the whole command a failure (1).
        self.code = Some(match self.code {
            None => code,
            Some(previous) if previous == code => code,
            Some(_) => 1,
        });
    }

    fn into_result(self) -> Result<(), CliError> {
        match self.code {
            None => Ok(()),
            Some(code) => Err(CliError::Reported(code)),
        }
    }
}

async fn version(connection: &ConnectionArgs, args: &VersionArgs) -> Result<(), CliError> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = match connect(connection).await {
        Ok(client) => client.version().await.map_err(CliError::from),
        Err(e) => Err(e),
    };
    match args.output.format {
        Format::Table => {
            let mut text = format!("Client: corral {client_version}\n");
            match &server {
                Ok(v) => {
                    let commit = v
                        .git_commit
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default();
                    text += &format!(
                        "Server: corrald {}{commit}, store {}, node {}\n",
                        v.version, v.store, v.node
                    );
                }
                Err(e) => text += &format!("Server: not reachable: {e}\n"),
            }
            print(&text)
        }
        format => {
            let server_json = match &server {
                Ok(v) => serde_json::json!({
                    "version": v.version, "git_commit": v.git_commit, "store": v.store, "node": v.node,
                }),
                Err(_) => serde_json::Value::Null,
            };
            let mut value = serde_json::json!({
                "client": {"version": client_version},
                "server": server_json,
            });
            if let Err(e) = &server {
                value["server_error"] = e.to_string().into();
            }
            let text = match format {
                Format::Yaml => output::yaml(&value),
                _ => serde_json::to_string_pretty(&value)? + "\n",
            };
            print(&text)
        }
    }
}

fn completion(args: &CompletionArgs) -> Result<(), CliError> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut command, "corral", &mut out);
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_not_found_apart() {
        let not_found = ClientError::NotFound {
            message: "x".into(),
        };
        let other = ClientError::Other {
            message: "y".into(),
        };
        let mut failures = Failures::default();
        failures.report("vm/a", &not_found);
        assert!(matches!(failures.into_result(), Err(CliError::Reported(3))));
        let mut failures = Failures::default();
        failures.report("vm/a", &not_found);
        failures.report("vm/b", &other);
        assert!(matches!(failures.into_result(), Err(CliError::Reported(1))));
        assert!(Failures::default().into_result().is_ok());
    }
}
