//! The command line: clap derive types, whose doc comments are the help text.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use corral_contract::{
    Accel, Arch, ByteSize, Machine, ResourceName, RestartPolicy, VmSpec, VolumeAttachment,
};

const EXIT_CODES: &str = "\
Exit codes: 0 ok; 1 failed (an invalid value, a request corrald refused, a VM that ended \
Failed, a timeout); 2 usage error; 3 not found.";

const CONNECTION: &str = "Connection";

/// Run virtual machines on QEMU, declared and kept that way by corrald.
#[derive(Debug, Parser)]
#[command(name = "corral", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Where corrald is. Flags beat the environment variables; with neither, the local daemon's
// default socket. The environment is read by `Endpoint::from_env_and_flags`, not by clap, so that a flag of
// one kind (`--socket`) beats a variable of the other (`CORRAL_SERVER`).
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// corrald's unix socket [env: CORRAL_SOCKET] [default: /run/corral/corral.sock for root,
    /// else $XDG_RUNTIME_DIR/corral/corral.sock]
    #[arg(long, global = true, value_name = "PATH", help_heading = CONNECTION)]
    pub socket: Option<PathBuf>,
    /// corrald on TCP with TLS, https://HOST:PORT [env: CORRAL_SERVER]
    #[arg(long, global = true, value_name = "URL", help_heading = CONNECTION)]
    pub server: Option<String>,
    /// Bearer token for --server; other users can read it in /proc, so prefer
    /// CORRAL_TOKEN or --token-file [env: CORRAL_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = CONNECTION)]
    pub token: Option<String>,
    /// File holding the bearer token for --server (its first line)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = CONNECTION,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for --server, instead of the system's
    /// [env: CORRAL_CA_FILE]
    #[arg(long, global = true, value_name = "FILE", help_heading = CONNECTION)]
    pub ca_file: Option<PathBuf>,
    /// The project to act in; left out, your only project, else `default`. For `auth`
    /// commands: a project the identity works in (repeat for more)
    #[arg(
        long,
        global = true,
        env = "CORRAL_PROJECT",
        value_name = "NAME",
        value_parser = parse_name,
        help_heading = CONNECTION
    )]
    pub project: Vec<corral_contract::ResourceName>,
    /// List and watch every project you work in (tables name objects PROJECT/NAME)
    #[arg(long, global = true, help_heading = CONNECTION)]
    pub all_projects: bool,
}

#[derive(Debug, Subcommand)]
// Parsed once per run: boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Create, inspect, start, stop and delete virtual machines
    #[command(subcommand)]
    Vm(VmCommand),
    /// Import, verify and delete content-addressed images
    #[command(subcommand)]
    Image(crate::storage::ImageCommand),
    /// Save a running VM (disk, RAM and device state) as a template that new VMs start from
    /// in a moment instead of booting: `vm create NAME --template T`
    #[command(subcommand)]
    Template(crate::template::TemplateCommand),
    /// Create, grow and delete volumes (disks and read-only weights)
    #[command(subcommand)]
    Volume(crate::storage::VolumeCommand),
    /// Snapshot VMs (disk-only or with memory) and restore them
    #[command(subcommand)]
    Snapshot(crate::storage::SnapshotCommand),
    /// Get and verify signed statements of what a VM runs
    #[command(subcommand)]
    Attestation(crate::storage::AttestationCommand),
    /// Create, list and delete networks VMs join
    #[command(subcommand)]
    Network(crate::network::NetworkCommand),
    /// The hosts that run VMs: list them, cordon, uncordon and drain one
    #[command(subcommand)]
    Node(crate::node::NodeCommand),
    /// Follow Git repositories of manifests: applied as their owner, pruned, drift corrected
    #[command(subcommand)]
    Source(crate::source::SourceCommand),
    /// Manage who may call corrald: tokens, client certificates, local users (admin only)
    #[command(subcommand)]
    Auth(crate::auth::AuthCommand),
    /// Read the audit log of changes, refusals and memory reads (admin only)
    Audit(crate::auth::AuditArgs),
    /// Projects and their limits (changing them is for admins)
    #[command(subcommand)]
    Project(crate::auth::ProjectCommand),
    /// Create or update the resources of manifests; unchanged ones are left alone. With
    /// --owner they are that owner's, and --prune deletes what the owner no longer declares
    Apply(ApplyArgs),
    /// Show what `apply` would do, computed by corrald as a dry run: per resource create,
    /// change (field by field) or prune. Exit 0: nothing would change; 2: something would;
    /// 1: an error
    Diff(DiffArgs),
    /// Delete the resources of a manifest
    Delete(ManifestArgs),
    /// Open the web console in a browser, logged in as you (--no-browser prints the link)
    Ui(crate::ui::UiArgs),
    /// Write a corral.yaml for this project folder, its preset chosen from the project's
    /// files (Cargo.toml: rust, package.json: node, pyproject.toml or requirements.txt:
    /// python, go.mod: go)
    Init(crate::devenv::InitArgs),
    /// Create and start the VMs corral.yaml declares, and provision them; again, it changes
    /// what changed in the file (VMs dropped from it are deleted)
    Up(crate::devenv::UpArgs),
    /// Show the VMs of corral.yaml: phase, ssh and forwarded ports, provisioned or not
    Status(crate::devenv::StatusArgs),
    /// Log in to a VM of corral.yaml (or run a command after --)
    Ssh(crate::devenv::SshArgs),
    /// Stop the VMs of corral.yaml; their disks stay for the next `up`
    Down(crate::devenv::DownArgs),
    /// Delete the VMs of corral.yaml and their disks
    Destroy(crate::devenv::DestroyArgs),
    /// Start a throwaway VM and open a shell in it (or run a command after --); the VM is
    /// deleted when the shell ends, or by corrald at its --ttl
    Temp(crate::devenv::TempArgs),
    /// Print the JSON Schema of corral.yaml (for editors: yaml-language-server and others)
    Schema,
    /// Print the client's version and, if it is reachable, corrald's
    Version(VersionArgs),
    /// Print a shell completion script, e.g. `corral completion bash > /etc/bash_completion.d/corral`
    Completion(CompletionArgs),
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum VmCommand {
    /// Create a VM (and start it, unless --no-start)
    Create(CreateArgs),
    /// List VMs
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one VM
    Get(GetArgs),
    /// Start a VM (declare it running)
    Start(ActionArgs),
    /// Stop a VM: ask the guest to shut down, or kill it with --force
    Stop(StopArgs),
    /// Pause a VM's vCPUs
    Pause(ActionArgs),
    /// Resume a paused VM
    Resume(ActionArgs),
    /// Restart a VM in a new QEMU process
    Restart(ActionArgs),
    /// Move a running VM to another node without stopping it (live migration)
    Migrate(MigrateArgs),
    /// Delete a VM: stop it, remove its files, then the object
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Attach to a VM's serial console (Ctrl-] detaches), or print its log with --log
    Console(ConsoleArgs),
    /// Read a running guest's RAM: read, find, dump, map (VMs created with --introspection)
    #[command(subcommand)]
    Memory(crate::memory::MemoryCommand),
    /// Log in to a VM with ssh (or run a command after --), through its forwarded port 22
    /// (through corrald when the VM runs on another host of a cluster)
    Ssh(crate::ssh::SshArgs),
    /// Connect standard input and output to a TCP port the VM forwards, wherever it runs,
    /// e.g. `ssh -o ProxyCommand='corral vm tunnel web 22' root@web`
    Tunnel(crate::ssh::TunnelArgs),
}

// `vm create`: the flags that make a VM's spec.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("boot").required(true).args(["kernel", "disk", "boot_volume", "image", "template"])))]
pub struct CreateArgs {
    /// The VM's name: 1-63 lowercase letters, digits and '-'
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Number of vCPUs, 1-256 [default: 1]
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<u32>,
    /// Guest RAM in binary units, e.g. 512M or 2G [default: 512M]
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<ByteSize>,
    /// Boot this kernel directly (relative paths are from the current directory)
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel
    #[arg(
        long,
        value_name = "PATH",
        requires = "kernel",
        conflicts_with = "disk"
    )]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel, e.g. "console=ttyS0"
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        conflicts_with = "disk",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,
    /// Boot this disk image with firmware instead of a kernel
    #[arg(long, value_name = "PATH")]
    pub disk: Option<PathBuf>,
    /// Boot this Volume with firmware (it becomes the first disk)
    #[arg(long, value_name = "VOLUME", value_parser = parse_name, conflicts_with_all = ["disk", "kernel"])]
    pub boot_volume: Option<ResourceName>,
    /// Boot a copy of this Image (e.g. one `corral image build debian-12` made): a volume named
    /// like the VM is cloned from it, and deleted with the VM
    #[arg(long, value_name = "IMAGE", value_parser = parse_name, conflicts_with_all = ["disk", "kernel", "boot_volume"])]
    pub image: Option<ResourceName>,
    /// Start from this template (`corral template create`) instead of booting: the VM gets
    /// the template VM's hardware, networks and cloud-init, and a copy of its disk (deleted
    /// with the VM); its guest runs on from where the template was saved, in about the time
    /// it takes to read the saved RAM
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_name,
          conflicts_with_all = ["disk", "kernel", "boot_volume", "image", "cpus", "memory",
                                "machine", "arch", "introspection", "volumes"])]
    pub template: Option<ResourceName>,
    /// With --image: the volume's size [default: the image's]; the guest grows its root
    /// file system to it at boot
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "image")]
    pub disk_size: Option<ByteSize>,
    /// Delete the VM this long after creating it, e.g. 30m or 2h (corrald does it, also
    /// after a restart; the time is in the annotation corral.dev/expires-at)
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Attach a Volume as a virtio-blk disk: NAME, NAME:ro, NAME:serial=ID or
    /// NAME:ro:serial=ID; repeat for more, in order
    #[arg(long = "volume", value_name = "NAME[:ro][:serial=ID]", value_parser = parse_attachment)]
    pub volumes: Vec<VolumeAttachment>,
    /// Machine type [default: q35 on x86_64, virt on aarch64]
    #[arg(long, value_parser = choice(Machine::ALL, Machine::as_str))]
    pub machine: Option<Machine>,
    /// Guest architecture [default: x86_64]
    #[arg(long, value_parser = choice(Arch::ALL, Arch::as_str))]
    pub arch: Option<Arch>,
    /// Accelerator [default: auto: kvm if usable, else tcg]
    #[arg(long, value_parser = choice(Accel::ALL, Accel::as_str))]
    pub accel: Option<Accel>,
    /// What to do when the guest stops on its own [default: never]
    #[arg(long = "restart", value_name = "POLICY",
          value_parser = choice(RestartPolicy::ALL, RestartPolicy::as_str))]
    pub restart_policy: Option<RestartPolicy>,
    /// Back guest RAM with a shared file so that the host can read it live
    #[arg(long)]
    pub introspection: bool,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Create the VM stopped (spec.power = stopped)
    #[arg(long)]
    pub no_start: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten, next_help_heading = "Guest access")]
    pub network: crate::network::NetworkArgs,
}

// `--wait` and `--timeout`, shared by the commands that change a VM.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the VM gets there (Running, Stopped, Paused, or gone for delete); fail if
    /// it ends Failed
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits: seconds, or with a unit (90s, 2m)
    #[arg(long, value_name = "S", default_value = "120", value_parser = parse_timeout,
          requires = "wait")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only VMs with this label, KEY=VALUE; repeat to require several
    #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format; json and yaml print {kind, metadata, spec, status}, as manifests
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        default_value_t
    )]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for people
    #[default]
    Table,
    /// JSON
    Json,
    /// YAML, one document per resource
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The node to move it to [default: the scheduler picks among the other nodes]
    #[arg(long, value_name = "NODE", value_parser = parse_name, conflicts_with = "cancel")]
    pub to: Option<ResourceName>,
    /// Cancel the VM's migration instead: one not yet switched over stops, and the VM runs on
    /// where it is
    #[arg(long)]
    pub cancel: bool,
    /// Let QEMU slow the guest's vCPUs down when the guest dirties its RAM faster than the
    /// migration sends it (auto-converge)
    #[arg(long, conflicts_with = "cancel")]
    pub auto_converge: bool,
    /// Post-copy: once the first pass of RAM is sent, the rest follows on demand, so the
    /// migration ends whatever the guest dirties. The guest stays paused until all of its RAM
    /// is on the target, and a failure then loses it: use it for guests that never converge
    #[arg(long, conflicts_with = "cancel")]
    pub postcopy: bool,
    /// At most SIZE a second for this move (e.g. 100M), RAM and disks alike; the source
    /// node's own --migration-bandwidth still applies when lower
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "cancel")]
    pub bandwidth: Option<ByteSize>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Do not wait for the guest to shut down: QEMU is told to quit at once
    #[arg(long, conflicts_with = "grace")]
    pub force: bool,
    /// How long the guest gets to shut down before QEMU is told to quit, e.g. 30s, 2m
    /// (at most 1h) [default: corrald's, 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    pub grace: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A grace period in whole seconds, from `30s`, `2m` or `1h`.
fn parse_grace(text: &str) -> Result<u32, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration (e.g. 30s, 2m): {e}"))?;
    u32::try_from(duration.as_secs())
        .ok()
        .filter(|s| *s <= 3600)
        .ok_or_else(|| format!("{text:?} is longer than the 1h allowed"))
}

#[derive(Debug, Clone, Args)]
pub struct StopArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Kill QEMU at once instead of asking the guest to shut down
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Print the serial console log and exit instead of attaching
    #[arg(long)]
    pub log: bool,
    /// Attach without typing (a VM's console has one writer at a time; readers are unlimited)
    #[arg(long, conflicts_with = "log")]
    pub read_only: bool,
    /// Do not print what the guest printed before the attach
    #[arg(long, conflicts_with = "log")]
    pub no_scrollback: bool,
    /// Print at most this much of the log's end, e.g. 64K [default: all that is kept]
    #[arg(long, value_name = "SIZE", requires = "log", value_parser = parse_size)]
    pub tail: Option<ByteSize>,
}

#[derive(Debug, Clone, Args)]
pub struct ManifestArgs {
    /// The manifest: YAML documents separated by `---`, each {kind, metadata, spec}; `-` reads
    /// standard input
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// (apply) Wait until every resource is where it was declared — VMs in their power
    /// state, the rest Ready — printing each change; fail naming each that failed or timed out
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits: seconds, or with a unit (90s, 5m)
    #[arg(long, value_name = "S", default_value = "300", value_parser = parse_timeout,
          requires = "wait")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Manifests: files of YAML documents ({kind, metadata, spec}, separated by `---`),
    /// directories of them (.yaml, .yml and .json, recursively), or `-` for standard input;
    /// repeat for more
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// Apply as this owner (a source's name): every resource gets the label
    /// corral.dev/owner=NAME, and a resource another owner declared is refused
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub owner: Option<ResourceName>,
    /// Delete the owner's resources the manifests no longer declare (VMs first, then what
    /// they used)
    #[arg(long, requires = "owner")]
    pub prune: bool,
    /// Let --prune remove more than half, or all, of the owner's resources (refused otherwise,
    /// so that an emptied manifest does not delete everything)
    #[arg(long, requires = "prune")]
    pub allow_mass_prune: bool,
    /// Wait until every applied resource is where it was declared — VMs in their power
    /// state, the rest Ready — printing each change; fail naming each that failed or timed out
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits: seconds, or with a unit (90s, 5m)
    #[arg(long, value_name = "S", default_value = "300", value_parser = parse_timeout,
          requires = "wait")]
    pub timeout: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Manifests, as for apply: files, directories, or `-`; repeat for more
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    pub files: Vec<PathBuf>,
    /// Compare as this owner, as `apply --owner`
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub owner: Option<ResourceName>,
    /// Show what `apply --prune` would delete too
    #[arg(long, requires = "owner")]
    pub prune: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash
    Bash,
    /// Zsh
    Zsh,
    /// Fish
    Fish,
}

/// A parser for one of the contract's closed sets of words, listing them in help and
/// completions.
fn choice<T>(all: &'static [T], word: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Copy + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(all.iter().map(move |v| word(*v))).try_map(|s| s.parse::<T>())
}

pub fn parse_name(s: &str) -> Result<ResourceName, String> {
    ResourceName::new(s).map_err(|e| e.to_string())
}

pub fn parse_cpus(s: &str) -> Result<u32, String> {
    let cpus: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of vCPUs: use a whole number"))?;
    if !(VmSpec::MIN_CPUS..=VmSpec::MAX_CPUS).contains(&cpus) {
        return Err(format!(
            "must be between {} and {} (got {cpus})",
            VmSpec::MIN_CPUS,
            VmSpec::MAX_CPUS
        ));
    }
    Ok(cpus)
}

pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.parse::<ByteSize>().map_err(|e| e.to_string())
}

pub fn parse_memory(s: &str) -> Result<ByteSize, String> {
    let size = parse_size(s)?;
    if !(VmSpec::MIN_MEMORY..=VmSpec::MAX_MEMORY).contains(&size) {
        return Err(format!(
            "must be between {} and {} (got {size})",
            VmSpec::MIN_MEMORY,
            VmSpec::MAX_MEMORY
        ));
    }
    Ok(size)
}

/// `NAME[:ro][:serial=ID]`.
pub fn parse_attachment(s: &str) -> Result<VolumeAttachment, String> {
    let mut parts = s.split(':');
    let volume = parse_name(parts.next().unwrap_or_default())?;
    let mut attachment = VolumeAttachment {
        volume,
        readonly: false,
        serial: None,
    };
    for part in parts {
        match part.split_once('=') {
            None if part == "ro" => attachment.readonly = true,
            Some(("serial", id)) => attachment.serial = Some(id.to_owned()),
            _ => {
                return Err(format!(
                    "{part:?} is not an attachment option: use ro or serial=ID (e.g. data:ro:serial=d1)"
                ));
            }
        }
    }
    Ok(attachment)
}

/// `KEY=VALUE`; the key and value rules are checked with the rest of the metadata.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "{s:?} is not a label: use KEY=VALUE, e.g. tier=web"
        )),
    }
}

/// Seconds (`30`, `1.5`) or a duration with units (`90s`, `2m`, `1h 30m`).
/// A time to live: a duration with a unit, from one second to ten years.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(10 * 365 * 86400) => Ok(d),
        _ => Err(format!(
            "{s:?} is not a time to live: use a duration from 1s to 10years, e.g. 30m or 2h"
        )),
    }
}

pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let parsed = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
        Ok(_) => None,
        Err(_) => humantime::parse_duration(s).ok(),
    };
    parsed.ok_or_else(|| format!("{s:?} is not a timeout: use seconds, e.g. 60, or 90s or 2m"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("corral").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kernel_and_disk_exclude_each_other_and_one_is_required() {
        let err = parse(&["vm", "create", "a", "--kernel", "k", "--disk", "d"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["vm", "create", "a"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["vm", "create", "a", "--disk", "d", "--initrd", "i"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let err = parse(&["vm", "create", "a", "--disk", "d", "--cmdline", "quiet"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(parse(&["vm", "create", "a", "--disk", "d.qcow2"]).is_ok());
    }

    #[test]
    fn bad_values_name_the_flag_and_say_why() {
        let err = parse(&["vm", "create", "a", "--kernel", "k", "--memory", "lots"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        let text = err.to_string();
        assert!(text.contains("'--memory <SIZE>'"), "{text}");
        assert!(
            text.contains(r#""lots" is not a size: use bytes or a number with K, M, G or T"#),
            "{text}"
        );

        let err = parse(&["vm", "create", "a", "--kernel", "k", "--cpus", "0"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(
            err.to_string()
                .contains("'--cpus <N>': must be between 1 and 256 (got 0)")
        );

        let err = parse(&["vm", "create", "Bad_Name", "--kernel", "k"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(
            err.to_string()
                .contains(r#""Bad_Name" is not a valid name"#),
            "{err}"
        );

        let err = parse(&["vm", "create", "a", "--kernel", "k", "--memory", "8M"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("must be between 16M and 1T (got 8M)"),
            "{err}"
        );
        let err = parse(&["vm", "create", "a", "--kernel", "k", "--memory", "1GB"]).unwrap_err();
        assert!(err.to_string().contains("decimal unit GB"), "{err}");

        let err = parse(&["vm", "create", "a", "--kernel", "k", "--machine", "pc"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
        assert!(err.to_string().contains("q35, microvm, virt"), "{err}");
    }

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!(
            parse_label("tier=web").unwrap(),
            ("tier".into(), "web".into())
        );
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(
            parse_label("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        for bad in ["tier", "=web", ""] {
            let err = parse_label(bad).unwrap_err();
            assert!(err.contains("use KEY=VALUE"), "{err}");
        }
        let cli = parse(&[
            "vm",
            "list",
            "-l",
            "tier=web",
            "--selector",
            "env=prod",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Vm(VmCommand::List(list)) = cli.command else {
            panic!("not a list")
        };
        assert_eq!(list.selector.len(), 2);
        assert_eq!(list.output.format, Format::Json);
    }

    #[test]
    fn timeouts_take_seconds_or_units() {
        assert_eq!(parse_timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("-1").is_err());
        let err = parse(&["vm", "start", "a", "--timeout", "5"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn connection_flags_are_global() {
        let cli = parse(&["vm", "list", "--socket", "/tmp/c.sock"]).unwrap();
        assert_eq!(cli.connection.socket, Some(PathBuf::from("/tmp/c.sock")));
        let cli = parse(&["--server", "https://h:1", "--token", "t", "version"]).unwrap();
        assert_eq!(cli.connection.server.as_deref(), Some("https://h:1"));
    }
}
