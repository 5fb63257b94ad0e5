//! `corral image|volume|snapshot|attestation`: arguments and what they do.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::{ArgGroup, Args, Subcommand};
use corral_client::{Client, ClientError};
use corral_contract::{
    ByteSize, DiskFormat, Distribution, Image, ImageBuild, ImageFormat, ImageSource, ImageSpec,
    ObjectMeta, Resource, ResourceName, Snapshot, SnapshotSpec, StoragePhase, Volume, VolumeKind,
    VolumeSpec,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CliError;
use crate::args::{Format, OutputArgs, parse_label, parse_name, parse_size, parse_timeout};
use crate::output::{age, yaml};

/// Images: bytes stored once by their BLAKE3 digest.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image: upload a local FILE, or have corrald read --path or download --url
    Import(ImportArgs),
    /// Build a bootable disk image from distribution packages on corrald's host (minutes;
    /// the package list with versions lands in the image's status.packages)
    ///
    /// The image holds a kernel booted by syslinux, systemd, cloud-init (hostname, users and
    /// ssh keys come from the VM's cloud-init), openssh-server and qemu-guest-agent, plus
    /// --packages. Example: corral image build debian-12 --packages git,build-essential
    Build(BuildArgs),
    /// Import an image by its name in a catalogue: corrald downloads its URL and checks its
    /// checksum (a mismatch stores nothing)
    ///
    /// The catalogue is a YAML file (--catalogue, $CORRAL_CATALOGUE, or
    /// ~/.config/corral/catalogue.yaml):
    ///
    ///   images:
    ///     debian-12-cloud:
    ///       url: https://cloud.debian.org/images/cloud/bookworm/…/debian-12-genericcloud-amd64-….qcow2
    ///       checksum: sha512:<hex>   # or sha256:, blake3:
    ///       format: qcow2            # optional
    Pull(PullArgs),
    /// List images
    #[command(visible_alias = "ls")]
    List(StorageListArgs),
    /// Show one image
    Get(NameOutput),
    /// Recompute an image's digest; exit 1 if its bytes changed
    Verify(NameOutput),
    /// Delete an image (refused while a volume or VM uses it)
    #[command(visible_alias = "rm")]
    Delete(Name),
}

/// Volumes: disks and read-only weights for VMs.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (--size) or clone an image (--image)
    Create(VolumeCreateArgs),
    /// List volumes
    #[command(visible_alias = "ls")]
    List(StorageListArgs),
    /// Show one volume
    Get(NameOutput),
    /// Grow a volume (online when its VM runs)
    Resize(ResizeArgs),
    /// Delete a volume (refused while a VM uses it)
    #[command(visible_alias = "rm")]
    Delete(NameWait),
}

/// Snapshots of VMs (qcow2 internal snapshots in the VM's volumes).
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a VM: disk-only while it is stopped, or --memory while it runs
    Create(SnapshotCreateArgs),
    /// List snapshots, all or one VM's
    #[command(visible_alias = "ls")]
    List(SnapshotListArgs),
    /// Show one snapshot
    Get(NameOutput),
    /// Put the VM back to a snapshot
    Restore(NameWait),
    /// Delete a snapshot (the volumes and images stay)
    #[command(visible_alias = "rm")]
    Delete(NameWait),
}

/// Signed statements of what a VM runs (in-toto in DSSE, Ed25519).
#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Get a VM's attestation from corrald and write it to a file
    Get(AttestationGetArgs),
    /// Verify an attestation file with the node's public key (offline: no corrald needed)
    Verify(AttestationVerifyArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["file", "path", "url"])))]
pub struct ImportArgs {
    /// The image's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// A local file to upload to corrald, with a progress bar
    pub file: Option<PathBuf>,
    /// An absolute path on corrald's host, read there
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// An http:// or https:// URL corrald downloads
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// What the file is [default: detected, qcow2 or raw]; kernels and initrds must be declared
    #[arg(id = "image_format", long = "format", value_parser = parse_image_format)]
    pub format: Option<ImageFormat>,
    /// What the bytes must hash to: sha256:<hex>, sha512:<hex> or blake3:<hex>; a mismatch
    /// stores nothing
    #[arg(long, value_name = "ALGO:HEX")]
    pub checksum: Option<String>,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Let volumes of every project clone it (admins only; images of project `default`)
    #[arg(long)]
    pub shared: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image's name in the catalogue (and the Image's name, unless --name)
    #[arg(value_parser = parse_name)]
    pub entry: ResourceName,
    /// Name the Image this instead
    #[arg(long, value_parser = parse_name)]
    pub name: Option<ResourceName>,
    /// The catalogue file [default: $CORRAL_CATALOGUE, else ~/.config/corral/catalogue.yaml]
    #[arg(long, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A catalogue of images by name: where each is and what it must hash to.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Catalogue {
    images: std::collections::BTreeMap<String, CatalogueEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueEntry {
    url: String,
    checksum: String,
    #[serde(default)]
    format: Option<ImageFormat>,
}

fn catalogue_path(given: Option<&PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os("CORRAL_CATALOGUE") {
        return Ok(PathBuf::from(path));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| CliError::Usage("no catalogue: give --catalogue FILE".into()))?;
    Ok(config.join("corral/catalogue.yaml"))
}

/// The catalogue entry `name` as an Image spec; errors name the file and the entry.
fn catalogue_spec(path: &std::path::Path, name: &str) -> Result<ImageSpec, CliError> {
    let fail = |m: String| CliError::Failed(format!("{}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let catalogue: Catalogue = serde_yaml_ng::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let Some(entry) = catalogue.images.get(name) else {
        let known: Vec<&str> = catalogue.images.keys().map(String::as_str).collect();
        return Err(fail(format!(
            "no image {name:?} (it has: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    };
    let spec = ImageSpec {
        source: ImageSource::Url(entry.url.clone()),
        format: entry.format,
        checksum: Some(entry.checksum.clone()),
        shared: false,
    };
    spec.validate().map_err(|e| {
        let field = e
            .field
            .replace("spec.source.url", "url")
            .replace("spec.checksum", "checksum");
        fail(format!("images.{name}.{field}: {}", e.message))
    })?;
    Ok(spec)
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The distribution release to build: debian-12
    #[arg(value_parser = parse_distribution)]
    pub distribution: Distribution,
    /// The image's name [default: the distribution, e.g. debian-12]
    #[arg(long, value_parser = parse_name)]
    pub name: Option<ResourceName>,
    /// Extra packages, comma-separated Debian names, e.g. git,postgresql
    #[arg(long, value_delimiter = ',', value_name = "P,...")]
    pub packages: Vec<String>,
    /// The disk's size, at least 1G (a VM's volume may be larger; the root grows at boot)
    #[arg(long, value_parser = parse_size, default_value = "4G")]
    pub size: ByteSize,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    s.parse()
        .map_err(|e: corral_contract::UnknownChoice| e.to_string())
}

#[derive(Debug, Args)]
pub struct StorageListArgs {
    /// Only those with this label, KEY=VALUE; repeat to require several
    #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct NameOutput {
    /// The name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct Name {
    /// The name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
}

#[derive(Debug, Clone, Args)]
pub struct StorageWait {
    /// Wait until the controller has done it; fail if it ends Failed
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits: seconds, or with a unit (90s, 2m)
    #[arg(long, value_name = "S", default_value = "300", value_parser = parse_timeout,
          requires = "wait")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct NameWait {
    /// The name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub wait: StorageWait,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["size", "image"])))]
pub struct VolumeCreateArgs {
    /// The volume's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Size the guest sees, e.g. 10G (for a clone: at least the image's)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<ByteSize>,
    /// Clone this image: a thin qcow2 on it (disk), or an exact copy (weights)
    #[arg(long, value_parser = parse_name)]
    pub image: Option<ResourceName>,
    /// disk, or weights (read-only, digest-checked before every VM start)
    #[arg(long, default_value = "disk", value_parser = parse_volume_kind)]
    pub kind: VolumeKind,
    /// File format [default: qcow2]
    #[arg(long, value_parser = parse_disk_format)]
    pub format: Option<DiskFormat>,
    /// Make it in this storage pool (`corrald --storage-pool NAME=DIR[:shared]`; `corral node
    /// list` shows each node's, shared ones marked *). A volume in a shared pool lets its VM
    /// move and restart on any node with the pool [default: the node's data directory, which
    /// keeps its VMs on that node]
    #[arg(long, value_parser = parse_name)]
    pub pool: Option<ResourceName>,
    /// Add a label, KEY=VALUE; repeat for more
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub wait: StorageWait,
}

#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The volume's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The new size, e.g. 20G; volumes only grow
    #[arg(value_parser = parse_size)]
    pub size: ByteSize,
    #[command(flatten)]
    pub wait: StorageWait,
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// The snapshot's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The VM to snapshot
    #[arg(long, value_parser = parse_name)]
    pub vm: ResourceName,
    /// Also save RAM and device state (the VM must be running); restoring resumes the guest
    /// where it was
    #[arg(long)]
    pub memory: bool,
    #[command(flatten)]
    pub wait: StorageWait,
}

#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// Only this VM's snapshots
    #[arg(long, value_parser = parse_name)]
    pub vm: Option<ResourceName>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct AttestationGetArgs {
    /// The VM
    #[arg(value_parser = parse_name)]
    pub vm: ResourceName,
    /// Where to write the DSSE envelope
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also write the node's public key (PEM) here
    #[arg(long, value_name = "FILE")]
    pub key_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AttestationVerifyArgs {
    /// The attestation file (DSSE envelope)
    pub file: PathBuf,
    /// The node's public key, PEM (corrald's <data-dir>/keys/node.pub)
    #[arg(long, value_name = "PUBKEY")]
    pub key: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_image_format(s: &str) -> Result<ImageFormat, String> {
    s.parse()
        .map_err(|e: corral_contract::UnknownChoice| e.to_string())
}

fn parse_volume_kind(s: &str) -> Result<VolumeKind, String> {
    s.parse()
        .map_err(|e: corral_contract::UnknownChoice| e.to_string())
}

fn parse_disk_format(s: &str) -> Result<DiskFormat, String> {
    s.parse()
        .map_err(|e: corral_contract::UnknownChoice| e.to_string())
}

fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub(crate) fn meta(name: &ResourceName, labels: &[(String, String)]) -> ObjectMeta {
    let mut m = ObjectMeta::new(name.clone());
    m.labels = labels.iter().cloned().collect();
    m
}

fn selector(labels: &[(String, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resources in `format`: a table with `columns` and `row`, or the manifest schema.
pub(crate) fn render<T: Clone + Into<Resource>, const N: usize>(
    items: &[T],
    format: Format,
    single: bool,
    columns: [&str; N],
    row: impl Fn(&T) -> [String; N],
) -> Result<String, CliError> {
    Ok(match format {
        Format::Json if single && items.len() == 1 => {
            serde_json::to_string_pretty(&items[0].clone().into())? + "\n"
        }
        Format::Json => {
            let all: Vec<Resource> = items.iter().cloned().map(Into::into).collect();
            serde_json::to_string_pretty(&all)? + "\n"
        }
        Format::Yaml => items
            .iter()
            .map(|i| yaml(&i.clone().into()))
            .collect::<Vec<_>>()
            .join("---\n"),
        Format::Table => {
            let rows: Vec<[String; N]> = items.iter().map(row).collect();
            let mut widths = columns.map(str::len);
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let mut out = String::new();
            for r in std::iter::once(&columns.map(str::to_owned)).chain(&rows) {
                let line: Vec<String> = r
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
            out
        }
    })
}

pub(crate) fn ago(created: &Option<String>) -> String {
    created
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map_or_else(|| "-".into(), |t| age(SystemTime::now(), t))
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

fn short_digest(d: &Option<String>) -> String {
    d.as_deref()
        .map_or_else(|| "-".into(), |d| d.chars().take(19).collect())
}

fn images(items: &[Image], format: Format, single: bool) -> Result<String, CliError> {
    render(
        items,
        format,
        single,
        ["NAME", "FORMAT", "SIZE", "DIGEST", "PHASE", "AGE"],
        |i| {
            [
                crate::output::row_name(&i.metadata),
                opt(&i.status.format),
                opt(&i.status.size.map(ByteSize::new)),
                short_digest(&i.status.digest),
                i.status.phase.to_string(),
                ago(&i.metadata.created_at),
            ]
        },
    )
}

fn volumes(items: &[Volume], format: Format, single: bool) -> Result<String, CliError> {
    render(
        items,
        format,
        single,
        [
            "NAME", "KIND", "FORMAT", "SIZE", "IMAGE", "POOL", "NODE", "PHASE", "AGE",
        ],
        |v| {
            let phase = if v.metadata.deleting {
                "Deleting".into()
            } else {
                v.status.phase.to_string()
            };
            [
                crate::output::row_name(&v.metadata),
                v.spec.kind.to_string(),
                v.status.format.unwrap_or(v.spec.format()).to_string(),
                opt(&v.status.size.map(ByteSize::new)),
                opt(&v.spec.image),
                opt(&v.spec.pool),
                opt(&v.status.node),
                phase,
                ago(&v.metadata.created_at),
            ]
        },
    )
}

fn snapshots(items: &[Snapshot], format: Format, single: bool) -> Result<String, CliError> {
    render(
        items,
        format,
        single,
        ["NAME", "VM", "MEMORY", "PHASE", "AGE"],
        |s| {
            [
                crate::output::row_name(&s.metadata),
                s.spec.vm.to_string(),
                s.spec.memory.to_string(),
                s.status.phase.to_string(),
                ago(&s.metadata.created_at),
            ]
        },
    )
}

pub(crate) fn bar(len: Option<u64>, message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match len {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(message.to_owned());
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_message(message.to_owned());
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }
    }
}

pub async fn image(client: Client, command: ImageCommand) -> Result<(), CliError> {
    match command {
        ImageCommand::Import(args) => {
            let source = match (&args.file, &args.path, &args.url) {
                (Some(file), _, _) => ImageSource::Upload {
                    filename: file.file_name().map(|n| n.to_string_lossy().into_owned()),
                },
                (_, Some(path), _) => ImageSource::Path(path.clone()),
                (_, _, Some(url)) => ImageSource::Url(url.clone()),
                _ => return Err(CliError::Usage("give FILE, --path or --url".into())),
            };
            let image = Image {
                metadata: meta(&args.name, &args.labels),
                spec: ImageSpec {
                    source,
                    format: args.format,
                    shared: args.shared,
                    checksum: args.checksum.clone(),
                },
                status: Default::default(),
            };
            image
                .spec
                .validate()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let t0 = Instant::now();
            let stored = match &args.file {
                Some(file) => {
                    let len = std::fs::metadata(file)
                        .map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?
                        .len();
                    let progress = bar(Some(len), &format!("uploading {}", file.display()));
                    let p = progress.clone();
                    let result = client
                        .upload_image(&image, file, move |n| p.set_position(n))
                        .await;
                    progress.finish_and_clear();
                    result?
                }
                None => {
                    let progress = bar(None, "importing on corrald");
                    let result = client.create_image(&image).await;
                    progress.finish_and_clear();
                    result?
                }
            };
            if args.output.format == Format::Table {
                let size = stored.status.size.unwrap_or(0);
                let secs = t0.elapsed().as_secs_f64().max(1e-3);
                print(&format!(
                    "image/{} imported: {} {} {} ({:.0} MiB/s)\n",
                    stored.metadata.name,
                    opt(&stored.status.format),
                    ByteSize::new(size),
                    opt(&stored.status.digest),
                    size as f64 / secs / (1 << 20) as f64
                ))
            } else {
                print(&images(&[stored], args.output.format, true)?)
            }
        }
        ImageCommand::Build(args) => {
            let name = args
                .name
                .clone()
                .map_or_else(|| parse_name(args.distribution.as_str()), Ok)
                .map_err(CliError::Usage)?;
            let image = Image {
                metadata: meta(&name, &args.labels),
                spec: ImageSpec {
                    source: ImageSource::Build(ImageBuild {
                        distribution: args.distribution,
                        packages: args.packages.clone(),
                        size: Some(args.size),
                    }),
                    format: None,
                    checksum: None,
                    shared: false,
                },
                status: Default::default(),
            };
            image
                .spec
                .validate()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let t0 = Instant::now();
            let progress = bar(
                None,
                &format!("building {} on corrald (minutes)", args.distribution),
            );
            let result = client.create_image(&image).await;
            progress.finish_and_clear();
            let stored = result?;
            if args.output.format == Format::Table {
                print(&format!(
                    "image/{} built in {:.0}s: {} packages, {} {}\n",
                    stored.metadata.name,
                    t0.elapsed().as_secs_f64(),
                    stored.status.packages.len(),
                    ByteSize::new(stored.status.virtual_size.unwrap_or(0)),
                    opt(&stored.status.digest),
                ))
            } else {
                print(&images(&[stored], args.output.format, true)?)
            }
        }
        ImageCommand::Pull(args) => {
            let path = catalogue_path(args.catalogue.as_ref())?;
            let spec = catalogue_spec(&path, args.entry.as_str())?;
            let name = args.name.clone().unwrap_or_else(|| args.entry.clone());
            let image = Image {
                metadata: meta(&name, &args.labels),
                spec,
                status: Default::default(),
            };
            let progress = bar(None, &format!("pulling {} on corrald", args.entry));
            let result = client.create_image(&image).await;
            progress.finish_and_clear();
            let stored = result?;
            if args.output.format == Format::Table {
                print(&format!(
                    "image/{} pulled: {} {} {}\n",
                    stored.metadata.name,
                    opt(&stored.status.format),
                    ByteSize::new(stored.status.size.unwrap_or(0)),
                    opt(&stored.status.digest),
                ))
            } else {
                print(&images(&[stored], args.output.format, true)?)
            }
        }
        ImageCommand::List(args) => {
            let items = client.list_images(&selector(&args.selector)).await?;
            print(&images(&items, args.output.format, false)?)
        }
        ImageCommand::Get(args) => {
            let image = client.get_image(args.name.as_str()).await?;
            print(&images(&[image], args.output.format, true)?)
        }
        ImageCommand::Verify(args) => {
            let (image, ok) = client.verify_image(args.name.as_str()).await?;
            if args.output.format != Format::Table {
                print(&images(
                    std::slice::from_ref(&image),
                    args.output.format,
                    true,
                )?)?;
            }
            if ok {
                if args.output.format == Format::Table {
                    print(&format!(
                        "image/{} ok: {}\n",
                        image.metadata.name,
                        opt(&image.status.digest)
                    ))?;
                }
                Ok(())
            } else {
                Err(CliError::Failed(format!(
                    "image/{}: {}",
                    image.metadata.name,
                    image.status.message.unwrap_or_default()
                )))
            }
        }
        ImageCommand::Delete(args) => {
            let image = client.delete_image(args.name.as_str()).await?;
            print(&format!("image/{} deleted\n", image.metadata.name))
        }
    }
}

/// Polls `get` until `done` says the object got there (Some(true)), failed (Some(false)) or is
/// gone (Err NotFound with `gone_ok`).
async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    gone_ok: bool,
    mut get: F,
    done: impl Fn(&T) -> Option<Result<(), String>>,
) -> Result<(), CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let spinner = bar(None, &format!("waiting for {what}"));
    let deadline = Instant::now() + timeout;
    let result = loop {
        match get().await {
            Ok(obj) => match done(&obj) {
                Some(Ok(())) => break Ok(()),
                Some(Err(message)) => break Err(CliError::Failed(format!("{what}: {message}"))),
                None => {}
            },
            Err(ClientError::NotFound { .. }) if gone_ok => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        if Instant::now() >= deadline {
            break Err(CliError::Failed(format!(
                "{what}: timed out after {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    spinner.finish_and_clear();
    result
}

fn settled(phase: StoragePhase, message: &Option<String>) -> Option<Result<(), String>> {
    match phase {
        StoragePhase::Pending => None,
        StoragePhase::Ready => Some(Ok(())),
        StoragePhase::Failed => Some(Err(message.clone().unwrap_or_else(|| "failed".into()))),
    }
}

pub async fn volume(client: Client, command: VolumeCommand) -> Result<(), CliError> {
    match command {
        VolumeCommand::Create(args) => {
            let spec = VolumeSpec {
                kind: args.kind,
                format: args.format,
                size: args.size,
                image: args.image.clone(),
                pool: args.pool.clone(),
            };
            spec.validate()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let volume = Volume {
                metadata: meta(&args.name, &args.labels),
                spec,
                status: Default::default(),
            };
            let created = client.create_volume(&volume).await?;
            print(&format!("volume/{} created\n", created.metadata.name))?;
            if args.wait.wait {
                let name = created.metadata.name.to_string();
                wait_for(
                    &format!("volume/{name}"),
                    args.wait.timeout,
                    false,
                    || client.get_volume(&name),
                    |v: &Volume| settled(v.status.phase, &v.status.message),
                )
                .await?;
                print(&format!("volume/{name} Ready\n"))?;
            }
            Ok(())
        }
        VolumeCommand::List(args) => {
            let items = client.list_volumes(&selector(&args.selector)).await?;
            print(&volumes(&items, args.output.format, false)?)
        }
        VolumeCommand::Get(args) => {
            let v = client.get_volume(args.name.as_str()).await?;
            print(&volumes(&[v], args.output.format, true)?)
        }
        VolumeCommand::Resize(args) => {
            let v = client.resize_volume(args.name.as_str(), args.size).await?;
            print(&format!(
                "volume/{} resizing to {}\n",
                v.metadata.name, args.size
            ))?;
            if args.wait.wait {
                let (name, want, generation) = (
                    v.metadata.name.to_string(),
                    args.size.as_u64(),
                    v.metadata.generation,
                );
                wait_for(
                    &format!("volume/{name}"),
                    args.wait.timeout,
                    false,
                    || client.get_volume(&name),
                    |v: &Volume| {
                        if v.status.observed_generation < generation {
                            return None;
                        }
                        match &v.status.message {
                            Some(m) => Some(Err(m.clone())),
                            None if v.status.size >= Some(want) => Some(Ok(())),
                            None => None,
                        }
                    },
                )
                .await?;
                print(&format!("volume/{name} {}\n", args.size))?;
            }
            Ok(())
        }
        VolumeCommand::Delete(args) => {
            let v = client.delete_volume(args.name.as_str()).await?;
            print(&format!("volume/{} deleting\n", v.metadata.name))?;
            if args.wait.wait {
                let name = v.metadata.name.to_string();
                wait_for(
                    &format!("volume/{name}"),
                    args.wait.timeout,
                    true,
                    || client.get_volume(&name),
                    |_: &Volume| None,
                )
                .await?;
                print(&format!("volume/{name} deleted\n"))?;
            }
            Ok(())
        }
    }
}

pub async fn snapshot(client: Client, command: SnapshotCommand) -> Result<(), CliError> {
    match command {
        SnapshotCommand::Create(args) => {
            let snap = Snapshot::new(
                args.name.clone(),
                SnapshotSpec {
                    vm: args.vm.clone(),
                    memory: args.memory,
                },
            );
            let created = client.create_snapshot(&snap).await?;
            print(&format!("snapshot/{} created\n", created.metadata.name))?;
            if args.wait.wait {
                let name = created.metadata.name.to_string();
                wait_for(
                    &format!("snapshot/{name}"),
                    args.wait.timeout,
                    false,
                    || client.get_snapshot(&name),
                    |s: &Snapshot| settled(s.status.phase, &s.status.message),
                )
                .await?;
                print(&format!("snapshot/{name} Ready\n"))?;
            }
            Ok(())
        }
        SnapshotCommand::List(args) => {
            let items = client
                .list_snapshots(args.vm.as_ref().map(ResourceName::as_str))
                .await?;
            print(&snapshots(&items, args.output.format, false)?)
        }
        SnapshotCommand::Get(args) => {
            let s = client.get_snapshot(args.name.as_str()).await?;
            print(&snapshots(&[s], args.output.format, true)?)
        }
        SnapshotCommand::Restore(args) => {
            let s = client.restore_snapshot(args.name.as_str()).await?;
            print(&format!("snapshot/{} restoring\n", s.metadata.name))?;
            if args.wait.wait {
                let name = s.metadata.name.to_string();
                let asked = s
                    .metadata
                    .annotations
                    .get(corral_contract::names::annotations::RESTORE_REQUESTED_AT)
                    .cloned();
                wait_for(
                    &format!("snapshot/{name}"),
                    args.wait.timeout,
                    false,
                    || client.get_snapshot(&name),
                    |s: &Snapshot| {
                        if s.status.restored_for != asked {
                            return None;
                        }
                        match s.status.message.as_deref() {
                            Some(m) if m.starts_with("restore failed") => Some(Err(m.to_owned())),
                            _ => Some(Ok(())),
                        }
                    },
                )
                .await?;
                print(&format!("snapshot/{name} restored\n"))?;
            }
            Ok(())
        }
        SnapshotCommand::Delete(args) => {
            let s = client.delete_snapshot(args.name.as_str()).await?;
            print(&format!("snapshot/{} deleting\n", s.metadata.name))?;
            if args.wait.wait {
                let name = s.metadata.name.to_string();
                wait_for(
                    &format!("snapshot/{name}"),
                    args.wait.timeout,
                    true,
                    || client.get_snapshot(&name),
                    |_: &Snapshot| None,
                )
                .await?;
                print(&format!("snapshot/{name} deleted\n"))?;
            }
            Ok(())
        }
    }
}

pub async fn attestation_get(client: Client, args: AttestationGetArgs) -> Result<(), CliError> {
    let (envelope, key) = client.attestation(args.vm.as_str()).await?;
    let write = |path: &PathBuf, data: &[u8]| {
        std::fs::write(path, data)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))
    };
    write(&args.out, &envelope)?;
    if let Some(key_out) = &args.key_out {
        write(key_out, key.as_bytes())?;
    }
    print(&format!(
        "attestation of vm/{} written to {}\n",
        args.vm,
        args.out.display()
    ))
}

/// Offline: reads the file and the key, checks the signature, prints the statement.
pub fn attestation_verify(args: &AttestationVerifyArgs) -> Result<(), CliError> {
    let key = corral_storage::attest::read_public_key(&args.key)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let bytes = std::fs::read(&args.file)
        .map_err(|e| CliError::Failed(format!("cannot read {}: {e}", args.file.display())))?;
    let statement = corral_storage::attest::verify(&bytes, &key)
        .map_err(|e| CliError::Failed(format!("{}: {e}", args.file.display())))?;
    match args.output.format {
        Format::Table => {
            let p = &statement.predicate;
            let mut out = format!(
                "verified: vm/{} on node {} at {} (qemu {}, {})\nspec {}\n",
                p.vm,
                p.node_id,
                p.time,
                p.qemu_version.as_deref().unwrap_or("-"),
                p.accelerator.as_deref().unwrap_or("-"),
                p.spec_hash
            );
            for s in &statement.subject {
                let digest: Vec<String> =
                    s.digest.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                out += &format!("{}  {}\n", s.name, digest.join(" "));
            }
            print(&out)
        }
        Format::Json => print(&(serde_json::to_string_pretty(&statement)? + "\n")),
        Format::Yaml => print(&yaml(&statement)),
    }
}

/// Deletes a resource named in a manifest.
pub async fn delete(client: &Client, resource: &Resource) -> Result<(), ClientError> {
    let name = resource.metadata().name.as_str();
    match resource {
        Resource::Image(_) => client.delete_image(name).await.map(drop),
        Resource::Volume(_) => client.delete_volume(name).await.map(drop),
        Resource::Snapshot(_) => client.delete_snapshot(name).await.map(drop),
        Resource::Vm(_) => client.delete_vm(name).await.map(drop),
        Resource::Network(_) => client.delete_network(name).await.map(drop),
        Resource::Identity(_) => client.revoke_identity(name).await.map(drop),
        Resource::Project(_) => client.delete_project(name).await.map(drop),
        // Manifests never hold sources or nodes (the parser refuses them).
        Resource::Source(_) | Resource::Node(_) => Err(ClientError::Other {
            message: "sources are deleted with the REST API (DELETE /v1/sources/NAME)".into(),
        }),
    }
}
