//! `corral auth …` (who may call corrald), `corral audit` (what they did) and `corral
//! project …` (what owns objects, within which limits).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use corral_client::{AuditFilter, AuditRecord, Client};
use corral_contract::{
    Credential, Identity, IdentitySpec, Project, ProjectLimits, ProjectSpec, Resource,
    ResourceName, Role,
};

use crate::CliError;
use crate::args::{Format, OutputArgs, parse_name};
use crate::commands::print;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Bearer tokens for TCP clients
    #[command(subcommand)]
    Token(TokenCommand),
    /// TLS client certificates (mTLS; corrald --tls-client-ca)
    #[command(subcommand)]
    Cert(CertCommand),
    /// Local users on the unix socket, besides corrald's own user, root and --admin-group
    #[command(subcommand)]
    Unix(UnixCommand),
    /// List identities
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Revoke an identity: its requests are refused and its open streams closed
    Revoke(RevokeArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for a new identity and print it once (only its hash is kept)
    Create(CreateArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Add an identity named by a client certificate's SHA-256 fingerprint
    Add(CertArgs),
}

#[derive(Debug, Subcommand)]
pub enum UnixCommand {
    /// Add an identity for a local user id
    Add(UnixArgs),
}

/// What every identity is given.
#[derive(Debug, Clone, Args)]
pub struct Rights {
    /// The identity's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// What it may do: admin, operator (change objects in its projects) or viewer (read)
    #[arg(long)]
    pub role: Role,
    /// Also let it read guest memory
    #[arg(long)]
    pub memory: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub rights: Rights,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    #[command(flatten)]
    pub rights: Rights,
    /// The client's certificate, PEM (the first certificate in the file is its own)
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UnixArgs {
    #[command(flatten)]
    pub rights: Rights,
    /// The local user id
    #[arg(long)]
    pub uid: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The identity's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only records since this time: RFC 3339, or a duration back from now (90s, 1h, 2days)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only this caller's records, as the log names it (identity:ci, token:0123abcd,
    /// unix:uid=1000)
    #[arg(long)]
    pub identity: Option<String>,
    /// At most this many of the newest records [default: the server's cap, 10000]
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// An identity with `rights`, working in `projects` (the `--project` flags).
fn identity(rights: &Rights, projects: &[ResourceName], credential: Credential) -> Identity {
    Identity::new(
        rights.name.clone(),
        IdentitySpec {
            role: rights.role,
            memory: rights.memory,
            projects: projects.to_vec(),
            credential,
        },
    )
}

/// `auth …`.
pub async fn auth(
    client: &Client,
    command: AuthCommand,
    projects: &[ResourceName],
) -> Result<(), CliError> {
    match command {
        AuthCommand::Token(TokenCommand::Create(args)) => {
            let id = identity(&args.rights, projects, Credential::Token { blake3: None });
            let (id, token) = client.create_identity(&id).await?;
            let token = token
                .ok_or_else(|| CliError::Failed("corrald made no token for the identity".into()))?;
            match args.output.format {
                Format::Table => {
                    eprintln!(
                        "identity/{} created; its token is shown only now (use it as \
                         CORRAL_TOKEN or in a --token-file):",
                        id.metadata.name
                    );
                    print(&format!("{token}\n"))
                }
                _ => {
                    let out = serde_json::json!({"identity": Resource::from(id), "token": token});
                    print(&(serde_json::to_string_pretty(&out)? + "\n"))
                }
            }
        }
        AuthCommand::Cert(CertCommand::Add(args)) => {
            let sha256 = fingerprint(&args.cert)?;
            let id = identity(&args.rights, projects, Credential::Cert { sha256 });
            let (id, _) = client.create_identity(&id).await?;
            created(&id, args.output.format)
        }
        AuthCommand::Unix(UnixCommand::Add(args)) => {
            let id = identity(&args.rights, projects, Credential::Unix { uid: args.uid });
            let (id, _) = client.create_identity(&id).await?;
            created(&id, args.output.format)
        }
        AuthCommand::List(args) => {
            print_identities(&client.list_identities().await?, args.output.format)
        }
        AuthCommand::Revoke(args) => {
            let id = client.revoke_identity(args.name.as_str()).await?;
            print(&format!("identity/{} revoked\n", id.metadata.name))
        }
    }
}

fn created(id: &Identity, format: Format) -> Result<(), CliError> {
    match format {
        Format::Table => print(&format!("identity/{} created\n", id.metadata.name)),
        f => print(&render(std::slice::from_ref(id), f, false)?),
    }
}

/// The SHA-256 of the first certificate in a PEM file, as corrald names client certificates.
fn fingerprint(path: &std::path::Path) -> Result<String, CliError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| CliError::Failed(format!("--cert {}: {e}", path.display())))?
        .next()
        .ok_or_else(|| {
            CliError::Failed(format!(
                "--cert {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ))
        })?
        .map_err(|e| CliError::Failed(format!("--cert {}: {e}", path.display())))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn print_identities(ids: &[Identity], format: Format) -> Result<(), CliError> {
    print(&render(ids, format, true)?)
}

fn render(ids: &[Identity], format: Format, list: bool) -> Result<String, CliError> {
    let resources: Vec<Resource> = ids.iter().cloned().map(Into::into).collect();
    Ok(match format {
        Format::Json if list => {
            serde_json::to_string_pretty(&serde_json::json!({"items": resources}))? + "\n"
        }
        Format::Json => serde_json::to_string_pretty(&resources[0])? + "\n",
        Format::Yaml => resources.iter().map(crate::output::yaml).collect(),
        Format::Table => {
            let mut out = format!(
                "{:<20} {:<9} {:<7} {:<20} {}\n",
                "NAME", "ROLE", "MEMORY", "PROJECTS", "CREDENTIAL"
            );
            for id in ids {
                let credential = match &id.spec.credential {
                    Credential::Token { blake3 } => format!(
                        "token blake3:{}…",
                        blake3
                            .as_deref()
                            .unwrap_or_default()
                            .get(..12)
                            .unwrap_or_default()
                    ),
                    Credential::Cert { sha256 } => {
                        format!("cert sha256:{}…", sha256.get(..12).unwrap_or_default())
                    }
                    Credential::Unix { uid } => format!("unix uid {uid}"),
                };
                out += &format!(
                    "{:<20} {:<9} {:<7} {:<20} {}\n",
                    id.metadata.name,
                    id.spec.role,
                    if id.spec.memory { "yes" } else { "no" },
                    id.spec.projects().join(","),
                    credential
                );
            }
            out
        }
    })
}

/// `audit …`.
/// `project` (the `--project` flag) keeps only that project's records.
pub async fn audit(
    client: &Client,
    args: AuditArgs,
    project: Option<&ResourceName>,
) -> Result<(), CliError> {
    let filter = AuditFilter {
        since: args.since.unwrap_or_default(),
        identity: args.identity.unwrap_or_default(),
        project: project.map(ToString::to_string).unwrap_or_default(),
        limit: args.limit.unwrap_or(0),
    };
    let records = client.audit(&filter).await?;
    let text = match args.output.format {
        Format::Json => {
            let items: Vec<_> = records.iter().map(record_json).collect();
            serde_json::to_string_pretty(&serde_json::json!({ "items": items }))? + "\n"
        }
        Format::Yaml => records
            .iter()
            .map(|r| crate::output::yaml(&record_json(r)))
            .collect(),
        Format::Table => {
            let mut out = format!(
                "{:<24} {:<28} {:<10} {:<16} {:<24} {:<7} {}\n",
                "TIME", "IDENTITY", "PROJECT", "VERB", "OBJECT", "OUTCOME", "REASON"
            );
            for r in &records {
                let object = match (r.kind.as_str(), r.name.as_str()) {
                    ("", name) => name.to_owned(),
                    (kind, "") => kind.to_lowercase(),
                    (kind, name) => format!("{}/{name}", kind.to_lowercase()),
                };
                out += &format!(
                    "{:<24} {:<28} {:<10} {:<16} {:<24} {:<7} {}\n",
                    r.time, r.identity, r.project, r.verb, object, r.outcome, r.reason
                );
            }
            out
        }
    };
    print(&text)
}

fn record_json(r: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "time": r.time,
        "identity": r.identity,
        "project": r.project,
        "verb": r.verb,
        "kind": r.kind,
        "name": r.name,
        "outcome": r.outcome,
        "reason": r.reason,
    })
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project, with limits its objects must stay within
    Create(ProjectArgs),
    /// Change a project's limits (the ones given replace all)
    Update(ProjectArgs),
    /// List projects
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one project
    Get(ProjectGetArgs),
    /// Delete a project
    #[command(visible_alias = "rm")]
    Delete(RevokeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// The project's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Limits, e.g. vms=20,cpus=16,memory=32G,disk=200G,images=50G (any of them); none: no
    /// limit
    #[arg(long, value_name = "KEY=VALUE,…", value_parser = parse_limits)]
    pub limit: Option<ProjectLimits>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectGetArgs {
    /// The project's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_limits(s: &str) -> Result<ProjectLimits, String> {
    s.parse::<ProjectLimits>().map_err(|e| e.to_string())
}

/// `project …`.
pub async fn project(client: &Client, command: ProjectCommand) -> Result<(), CliError> {
    let spec = |args: &ProjectArgs| ProjectSpec {
        limits: args.limit.unwrap_or_default(),
    };
    match command {
        ProjectCommand::Create(args) => {
            let p = client
                .create_project(&Project::new(args.name.clone(), spec(&args)))
                .await?;
            show_projects(&[p], args.output.format, false, "created")
        }
        ProjectCommand::Update(args) => {
            let mut p = client.get_project(args.name.as_str()).await?;
            p.spec = spec(&args);
            let p = client.update_project(&p).await?;
            show_projects(&[p], args.output.format, false, "updated")
        }
        ProjectCommand::List(args) => {
            show_projects(&client.list_projects().await?, args.output.format, true, "")
        }
        ProjectCommand::Get(args) => {
            let p = client.get_project(args.name.as_str()).await?;
            show_projects(&[p], args.output.format, false, "")
        }
        ProjectCommand::Delete(args) => {
            let p = client.delete_project(args.name.as_str()).await?;
            print(&format!("project/{} deleted\n", p.metadata.name))
        }
    }
}

fn show_projects(ps: &[Project], format: Format, list: bool, done: &str) -> Result<(), CliError> {
    let resources: Vec<Resource> = ps.iter().cloned().map(Into::into).collect();
    let text = match format {
        Format::Table if !done.is_empty() => {
            format!("project/{} {done}\n", ps[0].metadata.name)
        }
        Format::Table => {
            let mut out = format!("{:<20} {}\n", "NAME", "LIMITS");
            for p in ps {
                let limits = p.spec.limits.to_string();
                let limits = if limits.is_empty() {
                    "none".into()
                } else {
                    limits
                };
                out += &format!("{:<20} {limits}\n", p.metadata.name);
            }
            out
        }
        Format::Json if list => {
            serde_json::to_string_pretty(&serde_json::json!({"items": resources}))? + "\n"
        }
        Format::Json => serde_json::to_string_pretty(&resources[0])? + "\n",
        Format::Yaml => resources.iter().map(crate::output::yaml).collect(),
    };
    print(&text)
}
