//! `corral source …`: Git repositories of manifests corrald follows and applies as their
//! owner.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use corral_client::Client;
use corral_contract::{DriftPolicy, ResourceName, Source, SourceSpec};

use crate::CliError;
use crate::args::{Format, OutputArgs, parse_name, parse_timeout};
use crate::commands::print;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Follow a Git repository: its manifests under --path are applied as owner NAME
    Create(SourceCreateArgs),
    /// List sources: the commit applied, what it declares, drift and errors
    #[command(visible_alias = "ls")]
    List(SourceListArgs),
    /// Show one source
    Get(SourceNameArgs),
    /// Stop following a repository (what it applied stays)
    #[command(visible_alias = "rm")]
    Delete(SourceNameArgs),
    /// Fetch and apply now
    Reconcile(SourceNameArgs),
    /// Let the next reconcile prune past the mass-prune guard (more than half, or all, of
    /// the source's resources), and run it now
    Approve(SourceNameArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SourceCreateArgs {
    /// The source's name: the owner of what it applies (label corral.dev/owner)
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The repository, git://HOST[:PORT]/PATH (only an admin's source may name a loopback,
    /// private or link-local address)
    #[arg(long, value_name = "URL")]
    pub git: String,
    /// A branch, a tag or a full commit id
    #[arg(long = "ref", value_name = "REF", default_value = "main")]
    pub reference: String,
    /// The manifests' directory in the repository [default: its root]
    #[arg(long, value_name = "DIR", default_value = "")]
    pub path: String,
    /// How often to fetch: seconds, or with a unit (30s, 5m)
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_timeout)]
    pub interval: Duration,
    /// Delete resources of this source that a commit no longer declares
    #[arg(long)]
    pub prune: bool,
    /// Resources changed out of band: correct (put back), warn (only list) or ignore. A
    /// resource's own annotation `corral.dev/drift: warn` (in its manifest) overrides it
    #[arg(long, default_value = "correct")]
    pub drift: DriftPolicy,
    /// A source that must have applied a commit without errors first (repeat for more)
    #[arg(long, value_name = "SOURCE", value_parser = parse_name)]
    pub depends_on: Vec<ResourceName>,
    /// Apply only commits signed (SSH signature, `git commit -S` with gpg.format=ssh) by a
    /// key in FILE: a .pub file or authorized_keys-style lines; repeat for more files
    #[arg(long, value_name = "FILE")]
    pub verify_key: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The public key lines of `files` (blank lines and `#` comments skipped).
fn verify_keys(files: &[PathBuf]) -> Result<Vec<String>, CliError> {
    let mut keys = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Failed(format!("--verify-key {}: {e}", file.display())))?;
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let before = keys.len();
        keys.extend(lines.map(str::to_owned));
        if keys.len() == before {
            return Err(CliError::Failed(format!(
                "--verify-key {}: no public key in it",
                file.display()
            )));
        }
    }
    Ok(keys)
}

#[derive(Debug, Clone, Args)]
pub struct SourceListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SourceNameArgs {
    /// The source's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `source …`.
pub async fn source(client: &Client, command: SourceCommand) -> Result<(), CliError> {
    match command {
        SourceCommand::Create(args) => {
            let spec = SourceSpec {
                git: args.git,
                reference: args.reference,
                path: args.path,
                prune: args.prune,
                drift: args.drift,
                interval_seconds: Some(args.interval.as_secs().max(1)),
                depends_on: args.depends_on,
                verify_keys: verify_keys(&args.verify_key)?,
            };
            spec.validate()
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let s = client.create_source(&Source::new(args.name, spec)).await?;
            said(&s, "created", args.output.format)
        }
        SourceCommand::List(args) => show(&client.list_sources("").await?, args.output.format),
        SourceCommand::Get(args) => show(
            &[client.get_source(args.name.as_str()).await?],
            args.output.format,
        ),
        SourceCommand::Delete(args) => {
            let s = client.delete_source(args.name.as_str()).await?;
            said(&s, "deleted", args.output.format)
        }
        SourceCommand::Reconcile(args) => {
            let s = client.reconcile_source(args.name.as_str()).await?;
            said(&s, "reconcile requested", args.output.format)
        }
        SourceCommand::Approve(args) => {
            let s = client.approve_source(args.name.as_str()).await?;
            said(
                &s,
                "prune approved, reconcile requested",
                args.output.format,
            )
        }
    }
}

/// One source: a sentence for people, or the object as the API has it.
fn said(s: &Source, what: &str, format: Format) -> Result<(), CliError> {
    let resource = corral_contract::Resource::from(s.clone());
    match format {
        Format::Table => print(&format!("source/{} {what}\n", s.metadata.name)),
        Format::Json => print(&(serde_json::to_string_pretty(&resource)? + "\n")),
        Format::Yaml => print(&output::yaml(&resource)),
    }
}

fn show(sources: &[Source], format: Format) -> Result<(), CliError> {
    let resources: Vec<corral_contract::Resource> =
        sources.iter().cloned().map(Into::into).collect();
    match format {
        Format::Json => return print(&(serde_json::to_string_pretty(&resources)? + "\n")),
        Format::Yaml => return print(&output::yaml(&resources)),
        Format::Table => {}
    }
    let mut text = format!(
        "{:<20} {:<12} {:<24} {:<8} {}\n",
        "NAME", "COMMIT", "APPLIED", "DRIFT", "ERRORS / WAITING"
    );
    for s in sources {
        let commit = s
            .status
            .commit
            .as_deref()
            .map_or("-", |c| &c[..c.len().min(12)]);
        let applied = s
            .status
            .applied
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        text += &format!(
            "{:<20} {:<12} {:<24} {:<8} {}\n",
            s.metadata.name,
            commit,
            if applied.is_empty() {
                "-".into()
            } else {
                applied
            },
            s.status.drift.len(),
            s.status
                .errors
                .first()
                .or(s.status.waiting.as_ref())
                .map_or("-", String::as_str)
        );
    }
    print(&text)
}
