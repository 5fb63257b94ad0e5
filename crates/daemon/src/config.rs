//! corrald's settings: flags, `CORRAL_*` environment variables and a TOML file, in that order
//! of precedence, over defaults that suit one user or root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use serde::Deserialize;

/// corrald runs VMs on this host and keeps them the way they were declared.
///
/// By default it serves its API on a unix socket only its user can open (mode 0600), keeps
/// state in an embedded SQLite database, and runs every VM as a QEMU process that outlives the
/// daemon. TCP is served only with TLS and a bearer token.
#[derive(Debug, Parser)]
#[command(name = "corrald", version)]
pub struct Args {
    /// State directory (database, images, keys) [default: /var/lib/corral as root, else
    /// $XDG_DATA_HOME/corral]
    #[arg(long, env = "CORRAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Runtime directory (API socket, VM sockets and logs) [default: /run/corral as root, else
    /// $XDG_RUNTIME_DIR/corral]. Keep it short: socket paths must fit in 107 bytes.
    #[arg(long, env = "CORRAL_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Unix socket to serve the API on [default: <run-dir>/corral.sock]
    #[arg(long, env = "CORRAL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also serve the API on this TCP address (needs --tls-cert, --tls-key and --token-file)
    #[arg(long, env = "CORRAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for --listen
    #[arg(long, env = "CORRAL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --listen
    #[arg(long, env = "CORRAL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// File of accepted bearer tokens, stored hashed: one `blake3:<hex> [scopes=vms,memory,admin]`
    /// line per token (make lines with `corrald hash-token`). Identities made with
    /// `corral auth` need no file.
    #[arg(long, env = "CORRAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates for --listen: clients may present a certificate one of them signed
    /// (mTLS); its SHA-256 fingerprint names an identity (`corral auth cert add`)
    #[arg(long, env = "CORRAL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Members of this group are admins on the unix socket, as corrald's own user and root
    /// are; other local users need an identity (`corral auth unix add`)
    #[arg(long, env = "CORRAL_ADMIN_GROUP")]
    pub admin_group: Option<String>,
    /// Rotate the audit log before it grows past this size, e.g. `64M` [default: 16M]
    #[arg(long, env = "CORRAL_AUDIT_MAX_SIZE")]
    pub audit_max_size: Option<corral_contract::ByteSize>,
    /// How many rotated audit logs to keep (audit.log.1 …) [default: 4]
    #[arg(long, env = "CORRAL_AUDIT_KEEP")]
    pub audit_keep: Option<usize>,
    /// The qemu-img program for images and volumes: a path, or a name looked up in PATH
    /// [default: qemu-img]
    #[arg(long, env = "CORRAL_QEMU_IMG")]
    pub qemu_img: Option<PathBuf>,
    /// TOML file with any of these settings (snake_case keys); flags and environment win
    #[arg(long, env = "CORRAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `corral=debug` (RUST_LOG syntax)
    #[arg(long, env = "CORRAL_LOG")]
    pub log: Option<String>,
    /// Host ports that VM port forwards get when they name none, FIRST-LAST
    /// [default: 20000-29999]
    #[arg(long, env = "CORRAL_PORT_RANGE", value_name = "FIRST-LAST")]
    pub port_range: Option<corral_service::PortRange>,
    /// Something to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read a token on stdin and print the line to put in the token file
    HashToken {
        /// What the token may do besides VM operations: `memory` lets it read guest RAM
        /// (`corrald hash-token --scope memory`), `admin` makes it an admin. Repeat or separate
        /// with commas.
        #[arg(long = "scope", value_delimiter = ',', value_parser = ["vms", "memory", "admin"])]
        scopes: Vec<String>,
    },
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    data_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    admin_group: Option<String>,
    audit_max_size: Option<corral_contract::ByteSize>,
    audit_keep: Option<usize>,
    qemu_img: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log: Option<String>,
    port_range: Option<String>,
}

/// TCP serving, all three pieces present.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificate chain.
    pub tls_cert: PathBuf,
    /// Private key.
    pub tls_key: PathBuf,
    /// Hashed tokens, if any besides the store's identities.
    pub token_file: Option<PathBuf>,
    /// CA certificates of client certificates (mTLS).
    pub tls_client_ca: Option<PathBuf>,
}

/// Settings after merging every source.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory.
    pub data_dir: PathBuf,
    /// Runtime directory.
    pub run_dir: PathBuf,
    /// API unix socket.
    pub socket: PathBuf,
    /// TCP serving, if asked for.
    pub tcp: Option<TcpConfig>,
    /// The qemu-img program.
    pub qemu_img: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log: String,
    /// Host ports for forwards that name none.
    pub port_range: corral_service::PortRange,
    /// Local group whose members are admins.
    pub admin_group: Option<String>,
    /// When the audit log rotates.
    pub audit: corral_service::AuditRotation,
}

/// A setting that makes no sense; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Merges flags/environment (already in `args`) over the config file over defaults.
    pub fn resolve(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let root = nix::unistd::geteuid().is_root();
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| default_data_dir(root));
        let run_dir = args
            .run_dir
            .clone()
            .or(file.run_dir)
            .unwrap_or_else(|| default_run_dir(root));
        let socket = args
            .socket
            .clone()
            .or(file.socket)
            .unwrap_or_else(|| run_dir.join("corral.sock"));
        let listen = args.listen.or(file.listen);
        let tls_cert = args.tls_cert.clone().or(file.tls_cert);
        let tls_key = args.tls_key.clone().or(file.tls_key);
        let token_file = args.token_file.clone().or(file.token_file);
        let tcp = match listen {
            None => None,
            Some(listen) => {
                let missing: Vec<&str> = [
                    ("--tls-cert", tls_cert.is_none()),
                    ("--tls-key", tls_key.is_none()),
                ]
                .iter()
                .filter(|(_, missing)| *missing)
                .map(|(flag, _)| *flag)
                .collect();
                if !missing.is_empty() {
                    return Err(ConfigError(format!(
                        "refusing to serve on TCP {listen} without {}: the API starts and stops VMs and \
                         reads their memory, so over a network it needs TLS",
                        missing.join(", ")
                    )));
                }
                Some(TcpConfig {
                    listen,
                    tls_cert: tls_cert.unwrap_or_default(),
                    tls_key: tls_key.unwrap_or_default(),
                    token_file,
                    tls_client_ca: args.tls_client_ca.clone().or(file.tls_client_ca),
                })
            }
        };
        let port_range = match (&args.port_range, &file.port_range) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r
                .parse()
                .map_err(|e| ConfigError(format!("config file: port_range: {e}")))?,
            (None, None) => corral_service::PortRange::default(),
        };
        let defaults = corral_service::AuditRotation::default();
        let audit = corral_service::AuditRotation {
            max_size: args
                .audit_max_size
                .or(file.audit_max_size)
                .map_or(defaults.max_size, |s| s.as_u64()),
            keep: args.audit_keep.or(file.audit_keep).unwrap_or(defaults.keep),
        };
        if audit.max_size < 4096 {
            return Err(ConfigError(format!(
                "--audit-max-size {} is too small to hold audit lines: give at least 4K",
                audit.max_size
            )));
        }
        Ok(Config {
            admin_group: args.admin_group.clone().or(file.admin_group),
            audit,
            port_range,
            data_dir,
            run_dir,
            socket,
            tcp,
            qemu_img: args
                .qemu_img
                .clone()
                .or(file.qemu_img)
                .unwrap_or_else(|| PathBuf::from("qemu-img")),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            log: args
                .log
                .clone()
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

fn default_data_dir(root: bool) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/corral");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("corral")
}

fn default_run_dir(root: bool) -> PathBuf {
    if root {
        return PathBuf::from("/run/corral");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("corral"),
        None => std::env::temp_dir().join(format!("corral-{}", nix::unistd::geteuid())),
    }
}

/// The default API socket path, as clients compute it.
pub fn default_socket() -> PathBuf {
    default_run_dir(nix::unistd::geteuid().is_root()).join("corral.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("corrald").chain(extra.iter().copied()))
    }

    #[test]
    fn tcp_without_tls_and_token_is_refused_with_the_reason() {
        let err = Config::resolve(&args(&[
            "--listen",
            "127.0.0.1:7443",
            "--tls-cert",
            "c.pem",
        ]))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("--tls-key") && msg.contains("it needs TLS"),
            "{msg}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nrun_dir = \"/run/file\"\n",
        )
        .unwrap();
        let cfg = Config::resolve(&args(&[
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            "/from/flag",
        ]))
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.run_dir, PathBuf::from("/run/file"));
        assert_eq!(cfg.socket, PathBuf::from("/run/file/corral.sock"));
    }

    #[test]
    fn audit_rotation_and_admin_group_come_from_flags_or_the_file() {
        let cfg =
            Config::resolve(&args(&["--audit-max-size", "64M", "--audit-keep", "2"])).unwrap();
        assert_eq!((cfg.audit.max_size, cfg.audit.keep), (64 << 20, 2));
        let err = Config::resolve(&args(&["--audit-max-size", "1K"])).unwrap_err();
        assert!(err.to_string().contains("at least 4K"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(&file, "admin_group = \"wheel\"\naudit_keep = 9\n").unwrap();
        let cfg = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(cfg.admin_group.as_deref(), Some("wheel"));
        assert_eq!(cfg.audit.keep, 9);
        assert_eq!(cfg.audit.max_size, 16 << 20);
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(&file, "datadir = \"/x\"\n").unwrap();
        let err = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("unknown field `datadir`"), "{err}");
    }
}
