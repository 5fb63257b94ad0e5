//! corrald's settings: flags, `CORRAL_*` environment variables and a TOML file, in that order
//! of precedence, over defaults that suit one user or root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use corral_contract::ByteSize;
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
    /// Lets every caller name host files below DIR (image source paths, boot kernel, initrd
    /// and disk); they are opened beneath it, never through a symlink. Repeat for more.
    /// Without it only admins name host files.
    #[arg(
        long = "host-path-allow",
        env = "CORRAL_HOST_PATH_ALLOW",
        value_name = "DIR",
        value_delimiter = ','
    )]
    pub host_path_allow: Vec<PathBuf>,
    /// Lets URL imports reach this range even though it is loopback, private, link-local …
    /// (refused by default, for every caller). Repeat for more.
    #[arg(
        long = "import-allow-net",
        env = "CORRAL_IMPORT_ALLOW_NET",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub import_allow_net: Vec<ipnet::IpNet>,
    /// The proxy URL imports go through (the *_PROXY variables are ignored)
    #[arg(long, env = "CORRAL_IMPORT_PROXY", value_name = "URL")]
    pub import_proxy: Option<String>,
    /// How long one URL import may take, e.g. `2h` [default: 1h]
    #[arg(long, env = "CORRAL_IMPORT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub import_timeout: Option<std::time::Duration>,
    /// The most bytes one image import (URL or host path) may bring in [default: 50G]
    #[arg(long, env = "CORRAL_IMPORT_MAX_SIZE", value_name = "SIZE")]
    pub import_max_size: Option<corral_contract::ByteSize>,
    /// The user QEMU runs as when corrald runs as root: QEMU starts with that user's ids and
    /// groups under a seccomp sandbox, and the VM files it opens belong to it
    /// [default: corral-qemu when that user exists; else QEMU runs as corrald's user]
    #[arg(long, env = "CORRAL_QEMU_USER", value_name = "NAME")]
    pub qemu_user: Option<String>,
    /// Where declared state is kept: `sqlite`, an embedded database in the data directory
    /// (one host), or `etcd`, an etcd v3 cluster named by --etcd-endpoints [default: sqlite]
    #[arg(long, env = "CORRAL_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Client URLs of the etcd cluster for `--store etcd`, comma-separated, such as
    /// `http://10.0.0.1:2379,http://10.0.0.2:2379`; requests go to the members that answer
    #[arg(
        long = "etcd-endpoints",
        env = "CORRAL_ETCD_ENDPOINTS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// The etcd key prefix corrald keeps its objects under; two corrald installations may
    /// share a cluster with different prefixes [default: /corral/]
    #[arg(long, env = "CORRAL_ETCD_PREFIX", value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// PEM CA certificates that signed etcd's certificates: talk to etcd over TLS
    /// (`https://` endpoints)
    #[arg(long, env = "CORRAL_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for an etcd that asks for one (`--client-cert-auth`); needs
    /// --etcd-key
    #[arg(long, env = "CORRAL_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert
    #[arg(long, env = "CORRAL_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// How long corrald waits at start for etcd to answer before giving up, e.g. `5m`
    /// (etcd started at the same time may need a moment) [default: 60s]
    #[arg(long, env = "CORRAL_ETCD_WAIT", value_name = "DURATION", value_parser = parse_timeout)]
    pub etcd_wait: Option<Duration>,
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
    /// Most API connections open at once on each listener, TLS handshakes included; more
    /// are closed as soon as they are accepted [default: 1024]
    #[arg(long, env = "CORRAL_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// How long a client may take over its TLS handshake and over each request's headers,
    /// e.g. `10s` [default: 10s]
    #[arg(long, env = "CORRAL_HEADER_TIMEOUT", value_parser = parse_timeout)]
    pub header_timeout: Option<Duration>,
    /// How long a connection may stay open with no request in flight, e.g. `2m`
    /// [default: 2m]
    #[arg(long, env = "CORRAL_IDLE_TIMEOUT", value_parser = parse_timeout)]
    pub idle_timeout: Option<Duration>,
    /// Most bytes one image upload may send, e.g. `32G` [default: 32G]
    #[arg(long, env = "CORRAL_UPLOAD_MAX_SIZE", value_name = "SIZE")]
    pub upload_max_size: Option<ByteSize>,
    /// The Debian mirror `corral image build` installs packages from
    /// [default: http://deb.debian.org/debian]
    #[arg(long, env = "CORRAL_BUILD_MIRROR", value_name = "URL")]
    pub build_mirror: Option<String>,
    /// Keep built images here, keyed by their inputs, so that building the same again is
    /// a copy [default: none; a build's files go once the image is stored]
    #[arg(long, env = "CORRAL_BUILD_CACHE", value_name = "DIR")]
    pub build_cache: Option<PathBuf>,
    /// A storage pool volumes may be made in (`spec.pool`, `corral volume create --pool`):
    /// NAME=DIR, absolute. Add `:shared` when DIR is one filesystem mounted at that path on
    /// every node (NFS, CephFS …): the volumes in it then follow their VMs — placed, moved and
    /// restarted on any node with the pool — where a volume in the data directory pins its
    /// VMs to its node. Repeat for more.
    #[arg(
        long = "storage-pool",
        env = "CORRAL_STORAGE_POOL",
        value_name = "NAME=DIR[:shared]",
        value_delimiter = ','
    )]
    pub storage_pool: Vec<String>,
    /// What this corrald does: `all` (API, scheduler and this host's VMs — one host),
    /// `server` (API and scheduler only, no VMs; needs --store etcd; run several — one
    /// schedules at a time, by election), or `agent` (this host as a node of a cluster: joins
    /// the servers at --server with --join-token once, then reports to them with its node
    /// certificate; holds no etcd credentials) [default: all]
    #[arg(long, env = "CORRAL_ROLE", value_enum)]
    pub role: Option<Role>,
    /// This host's name as a node of the cluster (1-63 lowercase letters, digits and '-')
    /// [default: the host name, lowercased]
    #[arg(long, env = "CORRAL_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<corral_contract::ResourceName>,
    /// vCPUs the VMs of one node may have together, per vCPU of the node [default: 16: vCPUs
    /// are time-shared, and a developer's 2-core machine runs many small VMs]
    #[arg(long, env = "CORRAL_CPU_OVERCOMMIT", value_name = "RATIO", value_parser = parse_ratio)]
    pub cpu_overcommit: Option<f64>,
    /// Guest RAM the VMs of one node may have together, per byte of the node's RAM
    /// [default: 1.5]
    #[arg(long, env = "CORRAL_MEMORY_OVERCOMMIT", value_name = "RATIO", value_parser = parse_ratio)]
    pub memory_overcommit: Option<f64>,
    /// How the scheduler picks among nodes that fit: `spread` VMs over the least used
    /// nodes, or `pack` them onto the most used [default: spread]
    #[arg(long, env = "CORRAL_PLACEMENT", value_enum)]
    pub placement: Option<PlacementPolicy>,
    /// A node whose agent has not reported for this long is not Ready, e.g. `10s`
    /// [default: 10s]
    #[arg(long, env = "CORRAL_NODE_TTL", value_name = "DURATION", value_parser = parse_timeout)]
    pub node_ttl: Option<Duration>,
    /// Where the cluster CA is (`corrald cluster init` makes it), for servers that let agents
    /// join [default: <data-dir>/cluster]
    #[arg(long, env = "CORRAL_CLUSTER_DIR", value_name = "DIR")]
    pub cluster_dir: Option<PathBuf>,
    /// `--role agent`: the servers of the cluster, `https://host:port`; repeat the flag or
    /// separate them with commas. The agent talks to one at a time and moves on to the next
    /// when it cannot reach it, so a server that dies does not cut the node off (and fence
    /// its VMs) while another is up
    #[arg(long, env = "CORRAL_SERVER", value_name = "URL", value_delimiter = ',')]
    pub server: Vec<String>,
    /// `--role agent`: the token from `corral node join-token`, needed on the first start only
    /// (later starts use the node certificate kept in the data dir). Prefer the environment
    /// variable: command lines are visible to every user of the host.
    #[arg(
        long,
        env = "CORRAL_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// The address other nodes reach this one at to send it a migrating VM (QEMU listens on
    /// a free port there) [default: 127.0.0.1, which only serves nodes on this host]
    #[arg(long, env = "CORRAL_MIGRATION_ADDRESS", value_name = "IP")]
    pub migration_address: Option<std::net::IpAddr>,
    /// `--role agent`: where servers reach this node's own streams — the console, memory and
    /// attestations of the VMs it runs — over TLS on the node certificate, taking only the
    /// servers' certificate from the cluster CA. Reported in the node's status
    /// [default: the migration address, a free port]
    #[arg(long, env = "CORRAL_NODE_LISTEN", value_name = "IP:PORT")]
    pub node_listen: Option<std::net::SocketAddr>,
    /// Most a live migration from this node may send a second, e.g. `100M` (bytes)
    /// [default: QEMU's]
    #[arg(long, env = "CORRAL_MIGRATION_BANDWIDTH", value_name = "BYTES")]
    pub migration_bandwidth: Option<corral_contract::ByteSize>,
    /// Something to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What a corrald does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// API, scheduler and this host's VMs.
    All,
    /// API and scheduler; no VMs.
    Server,
    /// One node of a cluster, reporting to the servers.
    Agent,
}

/// How the scheduler picks among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPolicy {
    /// The least used node first.
    Spread,
    /// The most used node first.
    Pack,
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.1..=100.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{text:?} is not a ratio between 0.1 and 100, e.g. 1.5"
        )),
    }
}

/// This host as a node, and how the scheduler places VMs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// What this corrald does.
    pub role: Role,
    /// This host's node name (a server's name in the scheduler election).
    pub node_name: corral_contract::ResourceName,
    /// How nodes are weighed.
    pub placement: corral_controller::ScheduleConfig,
    /// A node silent for this long is not Ready.
    pub node_ttl: Duration,
    /// `--role agent`: the server, and the join token if one was given.
    pub agent: Option<AgentConfig>,
    /// Where the cluster CA is kept.
    pub cluster_dir: PathBuf,
    /// Where this node receives migrating VMs.
    pub migration_address: std::net::IpAddr,
    /// Most bytes a second a migration from this node sends.
    pub migration_bandwidth: Option<u64>,
    /// Where an agent serves its node-local streams to servers.
    pub node_listen: std::net::SocketAddr,
}

/// Where an agent reports, and how it joins.
#[derive(Clone)]
pub struct AgentConfig {
    /// `https://host:port` of each server, in the order given: the first is tried first.
    pub servers: Vec<String>,
    /// The join token, for the first start.
    pub join_token: Option<String>,
}

// By hand, so that the token never lands in a log.
impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("servers", &self.servers)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The servers an agent reports to: each an `https://` URL, without a trailing '/', none twice.
fn server_urls(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut servers: Vec<String> = Vec::new();
    for server in given.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if !server.starts_with("https://") {
            return Err(ConfigError(format!(
                "--server {server:?}: give the server's https:// URL, e.g. https://10.0.0.1:7443"
            )));
        }
        let server = server.trim_end_matches('/').to_owned();
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    if servers.is_empty() {
        return Err(ConfigError(
            "--role agent needs --server https://HOST:PORT (a server of the cluster; repeat \
             the flag or separate URLs with commas to give several)"
                .into(),
        ));
    }
    Ok(servers)
}

/// The host name as a node name: lowercased, anything but letters, digits and '-' made '-';
/// `local` if nothing usable is left.
fn host_node_name() -> corral_contract::ResourceName {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    name.trim_matches('-')
        .parse()
        .unwrap_or_else(|_| "local".parse().expect("a valid name"))
}

/// Subcommands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read a token on stdin and print the line to put in the token file
    HashToken {
        /// What the token may do besides VM operations: `memory` lets it read guest RAM
        /// (`corrald hash-token --scope memory`), `admin` makes it an admin (identities, the
        /// audit log, host resources). Repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',', value_parser = ["vms", "memory", "admin"])]
        scopes: Vec<String>,
    },
    /// Set up a cluster's certificates
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Watch this node's VMs and kill them once corrald's fence deadline passes (corrald
    /// starts this itself in a cluster; there is no need to run it by hand)
    ///
    /// QEMU outlives corrald. In a cluster, a node whose corrald stops reporting (killed,
    /// frozen, cut off) has its VMs started elsewhere once the node TTL plus a margin has
    /// passed; its old QEMUs must be gone by then, or a VM would run twice. corrald writes a
    /// deadline — when its last successful report was sent, plus the node TTL — to
    /// <run-dir>/fence/deadline after every report; this guard SIGKILLs every QEMU of
    /// <run-dir> once that deadline passes, logs it to <run-dir>/fence/guard.log and records
    /// it in <run-dir>/fence/fenced for corrald. It kills only QEMUs the QEMU backend
    /// launched from <run-dir> (exact command line, held by pidfd), never another process.
    /// One guard runs per run directory (a lock on <run-dir>/fence/guard.lock); it exits
    /// when that file goes, e.g. when a corrald without a cluster starts on the directory.
    FenceGuard,
}

/// `corrald cluster …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Make the cluster CA in <data-dir>/cluster (ca.crt; ca.key, mode 0600) and a serving
    /// certificate for the servers signed by it (server.crt, server.key): start servers with
    /// that data dir (or a copy of cluster/) and `--tls-cert/--tls-key` those files; agents
    /// join with tokens from `corral node join-token`, which pin this CA
    Init {
        /// The data dir of the server [default: as for serving]
        #[arg(long, env = "CORRAL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// A name agents reach the servers by (DNS name or IP address); repeat for several
        /// [default: localhost, 127.0.0.1 and the host name]
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
    },
}

/// Which store backend keeps declared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// An embedded SQLite database in the data directory: one host.
    Sqlite,
    /// An etcd v3 cluster (`--etcd-endpoints`).
    Etcd,
}

/// The store backend, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `<data-dir>/state.db`.
    Sqlite,
    /// An etcd cluster.
    Etcd {
        /// Client URLs, checked.
        endpoints: Vec<String>,
        /// Key prefix, checked.
        prefix: String,
        /// How long to wait at start for etcd to answer.
        wait: Duration,
        /// TLS to etcd.
        tls: Option<EtcdTlsFiles>,
    },
}

/// The PEM files for TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    /// `--etcd-ca-file`.
    pub ca: PathBuf,
    /// `--etcd-cert` and `--etcd-key`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Config {
    /// Where the store is, for `corral version`: `sqlite:<file>` or
    /// `etcd:<endpoints><prefix>`.
    pub fn store_description(&self) -> String {
        match &self.store {
            StoreConfig::Sqlite => format!("sqlite:{}", self.data_dir.join("state.db").display()),
            StoreConfig::Etcd {
                endpoints, prefix, ..
            } => {
                format!("etcd:{}{prefix}", endpoints.join(","))
            }
        }
    }
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
    qemu_user: Option<String>,
    log_format: Option<LogFormat>,
    log: Option<String>,
    store: Option<StoreKind>,
    #[serde(default)]
    etcd_endpoints: Vec<String>,
    etcd_prefix: Option<String>,
    etcd_wait: Option<String>,
    etcd_ca_file: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    port_range: Option<String>,
    #[serde(default)]
    host_path_allow: Vec<PathBuf>,
    #[serde(default)]
    import_allow_net: Vec<ipnet::IpNet>,
    import_proxy: Option<String>,
    import_timeout: Option<String>,
    import_max_size: Option<String>,
    max_connections: Option<u32>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    upload_max_size: Option<String>,
    build_mirror: Option<String>,
    build_cache: Option<PathBuf>,
    #[serde(default)]
    storage_pool: Vec<String>,
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
    /// Whether the run directory is the `/tmp/corral-<uid>` fallback (no `$XDG_RUNTIME_DIR`),
    /// which must be exactly private.
    pub run_dir_fallback: bool,
    /// Who QEMU runs as, when not corrald's own user.
    pub qemu_user: Option<QemuUser>,
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
    /// Directories below which every caller may name host files.
    pub host_path_allow: Vec<PathBuf>,
    /// How URL imports may reach out, and how large an import may be.
    pub import: corral_service::ImportPolicy,
    /// What one API client may hold of the daemon, and for how long.
    pub limits: ConnLimits,
    /// Most bytes one image upload may send.
    pub upload_max_size: ByteSize,
    /// How `corral image build` builds.
    pub build: corral_service::BuildConfig,
    /// Storage pools besides the data directory, by name.
    pub storage_pools: BTreeMap<String, corral_service::PoolConfig>,
    /// Local group whose members are admins.
    pub admin_group: Option<String>,
    /// When the audit log rotates.
    pub audit: corral_service::AuditRotation,
    /// Where declared state is kept.
    pub store: StoreConfig,
    /// This host as a node; scheduling.
    pub cluster: ClusterConfig,
}

/// What one API client may hold of the daemon, and for how long; the same for every
/// listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once per listener (TLS handshakes included); more are closed at
    /// once rather than queued.
    pub max_connections: u32,
    /// For a TLS handshake, and for each HTTP/1 request's headers.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The default of `--etcd-wait`.
pub const DEFAULT_ETCD_WAIT: Duration = Duration::from_secs(60);

/// The default of `--upload-max-size`.
pub const DEFAULT_UPLOAD_MAX_SIZE: ByteSize = ByteSize::from_gib(32);

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; write e.g. `10s` or `2m`")),
    }
}

/// The unprivileged user QEMU runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuUser {
    /// Its name, for messages.
    pub name: String,
    /// Its ids: QEMU runs with them and owns the VM files it opens.
    pub owner: corral_hypervisor::FileOwner,
}

/// The user QEMU runs as by default, created by `scripts/setup.sh`.
pub const DEFAULT_QEMU_USER: &str = "corral-qemu";

/// The pools of `--storage-pool NAME=DIR[:shared]` (or the file's `storage_pool` list).
fn storage_pools(
    specs: &[String],
) -> Result<BTreeMap<String, corral_service::PoolConfig>, ConfigError> {
    let mut pools = BTreeMap::new();
    for spec in specs {
        let bad = |why: String| ConfigError(format!("--storage-pool {spec:?}: {why}"));
        let (name, dir) = spec
            .split_once('=')
            .ok_or_else(|| bad("give NAME=DIR, with :shared after DIR for a shared pool".into()))?;
        corral_contract::ResourceName::new(name.to_owned())
            .map_err(|e| bad(format!("the pool's name: {e}")))?;
        let (dir, shared) = match dir.strip_suffix(":shared") {
            Some(dir) => (dir, true),
            None => (dir, false),
        };
        let path = PathBuf::from(dir);
        if !path.is_absolute() || dir.contains('\0') {
            return Err(bad("give an absolute directory".into()));
        }
        let pool = corral_service::PoolConfig { path, shared };
        if pools.insert(name.to_owned(), pool).is_some() {
            return Err(bad(format!("pool {name} is given twice")));
        }
    }
    Ok(pools)
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
        let chosen_run_dir = args.run_dir.clone().or(file.run_dir);
        let run_dir_fallback = chosen_run_dir.is_none() && !root && run_dir_is_fallback();
        let run_dir = chosen_run_dir.unwrap_or_else(|| default_run_dir(root));
        let qemu_user = resolve_qemu_user(args.qemu_user.clone().or(file.qemu_user), root)?;
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
        let host_path_allow = if args.host_path_allow.is_empty() {
            file.host_path_allow
        } else {
            args.host_path_allow.clone()
        };
        if let Some(dir) = host_path_allow.iter().find(|d| !d.is_absolute()) {
            return Err(ConfigError(format!(
                "--host-path-allow {}: give an absolute directory",
                dir.display()
            )));
        }
        let mut import = corral_service::ImportPolicy {
            allow_nets: if args.import_allow_net.is_empty() {
                file.import_allow_net
            } else {
                args.import_allow_net.clone()
            },
            proxy: args.import_proxy.clone().or(file.import_proxy),
            ..Default::default()
        };
        match (&args.import_timeout, &file.import_timeout) {
            (Some(t), _) => import.timeout = *t,
            (None, Some(text)) => {
                import.timeout = humantime::parse_duration(text)
                    .map_err(|e| ConfigError(format!("config file: import_timeout: {e}")))?;
            }
            (None, None) => {}
        }
        match (&args.import_max_size, &file.import_max_size) {
            (Some(size), _) => import.max_size = size.as_u64(),
            (None, Some(text)) => {
                import.max_size = text
                    .parse::<corral_contract::ByteSize>()
                    .map_err(|e| ConfigError(format!("config file: import_max_size: {e}")))?
                    .as_u64();
            }
            (None, None) => {}
        }
        let defaults = ConnLimits::default();
        let timeout =
            |flag: Option<Duration>, file: Option<String>, key: &str, default| match (flag, file) {
                (Some(d), _) => Ok(d),
                (None, Some(text)) => parse_timeout(&text)
                    .map_err(|e| ConfigError(format!("config file: {key}: {text:?}: {e}"))),
                (None, None) => Ok(default),
            };
        let limits = ConnLimits {
            max_connections: match args.max_connections.or(file.max_connections) {
                Some(0) => {
                    return Err(ConfigError(
                        "config file: max_connections: must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => defaults.max_connections,
            },
            header_timeout: timeout(
                args.header_timeout,
                file.header_timeout,
                "header_timeout",
                defaults.header_timeout,
            )?,
            idle_timeout: timeout(
                args.idle_timeout,
                file.idle_timeout,
                "idle_timeout",
                defaults.idle_timeout,
            )?,
        };
        let upload_max_size = match (args.upload_max_size, file.upload_max_size) {
            (Some(size), _) => size,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| ConfigError(format!("config file: upload_max_size: {e}")))?,
            (None, None) => DEFAULT_UPLOAD_MAX_SIZE,
        };
        let audit_defaults = corral_service::AuditRotation::default();
        let audit = corral_service::AuditRotation {
            max_size: args
                .audit_max_size
                .or(file.audit_max_size)
                .map_or(audit_defaults.max_size, |s| s.as_u64()),
            keep: args
                .audit_keep
                .or(file.audit_keep)
                .unwrap_or(audit_defaults.keep),
        };
        if audit.max_size < 4096 {
            return Err(ConfigError(format!(
                "--audit-max-size {} is too small to hold audit lines: give at least 4K",
                audit.max_size
            )));
        }
        let endpoints = if args.etcd_endpoints.is_empty() {
            file.etcd_endpoints
        } else {
            args.etcd_endpoints.clone()
        };
        let prefix = args.etcd_prefix.clone().or(file.etcd_prefix);
        let wait = match (args.etcd_wait, &file.etcd_wait) {
            (Some(wait), _) => Some(wait),
            (None, Some(text)) => Some(
                parse_timeout(text)
                    .map_err(|e| ConfigError(format!("config file: etcd_wait: {text:?}: {e}")))?,
            ),
            (None, None) => None,
        };
        let ca = args.etcd_ca_file.clone().or(file.etcd_ca_file);
        let cert = args.etcd_cert.clone().or(file.etcd_cert);
        let key = args.etcd_key.clone().or(file.etcd_key);
        let tls = match (ca, cert, key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(EtcdTlsFiles { ca, identity: None }),
            (Some(ca), Some(cert), Some(key)) => Some(EtcdTlsFiles {
                ca,
                identity: Some((cert, key)),
            }),
            (None, _, _) => {
                return Err(ConfigError(
                    "--etcd-cert and --etcd-key need --etcd-ca-file (the CA that signed \
                     etcd's certificates)"
                        .into(),
                ));
            }
            (Some(_), _, _) => {
                return Err(ConfigError(
                    "--etcd-cert and --etcd-key go together: give both or neither".into(),
                ));
            }
        };
        let store = match args.store.or(file.store).unwrap_or(StoreKind::Sqlite) {
            StoreKind::Sqlite => {
                if !endpoints.is_empty() || prefix.is_some() || wait.is_some() || tls.is_some() {
                    return Err(ConfigError(
                        "--etcd-endpoints, --etcd-prefix, --etcd-wait and the --etcd TLS \
                         files need --store etcd (the store is sqlite by default)"
                            .into(),
                    ));
                }
                StoreConfig::Sqlite
            }
            StoreKind::Etcd => {
                let mut etcd = corral_store::EtcdConfig::new(endpoints);
                if let Some(prefix) = prefix {
                    etcd.prefix = prefix;
                }
                // The files are read at start; here only whether there is TLS matters.
                etcd.tls = tls.as_ref().map(|_| corral_store::EtcdTls {
                    ca: String::new(),
                    identity: None,
                });
                etcd.validate().map_err(|e| {
                    ConfigError(format!(
                        "--store etcd: {e} (set --etcd-endpoints, --etcd-prefix)"
                    ))
                })?;
                StoreConfig::Etcd {
                    endpoints: etcd.endpoints,
                    prefix: etcd.prefix,
                    wait: wait.unwrap_or(DEFAULT_ETCD_WAIT),
                    tls,
                }
            }
        };
        let mut build = corral_service::BuildConfig::default();
        if let Some(mirror) = args.build_mirror.clone().or(file.build_mirror) {
            let ok = (mirror.starts_with("http://") || mirror.starts_with("https://"))
                && mirror.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(ConfigError(format!(
                    "--build-mirror {mirror:?}: give an http:// or https:// URL"
                )));
            }
            build.mirror = mirror;
        }
        build.cache = args.build_cache.clone().or(file.build_cache);
        if build.cache.as_deref().is_some_and(|p| !p.is_absolute()) {
            return Err(ConfigError(
                "--build-cache: give an absolute directory".to_owned(),
            ));
        }
        let storage_pools = storage_pools(if args.storage_pool.is_empty() {
            &file.storage_pool
        } else {
            &args.storage_pool
        })?;
        let role = args.role.unwrap_or(Role::All);
        if role == Role::Server && !matches!(store, StoreConfig::Etcd { .. }) {
            return Err(ConfigError(
                "--role server needs --store etcd: servers share their state there".into(),
            ));
        }
        if role == Role::Agent && !matches!(store, StoreConfig::Sqlite) {
            return Err(ConfigError(
                "--role agent keeps no cluster state: agents reach the store only through a \
                 server (--server); leave out --store etcd"
                    .into(),
            ));
        }
        if role == Role::Agent && tcp.is_some() {
            return Err(ConfigError(
                "--role agent serves no API: leave out --listen (users and tools talk to the \
                 servers; the agent reaches them with its node certificate)"
                    .into(),
            ));
        }
        let agent = match role {
            Role::Agent => Some(AgentConfig {
                servers: server_urls(&args.server)?,
                join_token: args.join_token.clone(),
            }),
            _ if !args.server.is_empty() || args.join_token.is_some() => {
                return Err(ConfigError(
                    "--server and --join-token are for --role agent".into(),
                ));
            }
            _ => None,
        };
        let cluster = ClusterConfig {
            role,
            node_name: args.node_name.clone().unwrap_or_else(host_node_name),
            placement: corral_controller::ScheduleConfig {
                cpu_overcommit: args
                    .cpu_overcommit
                    .unwrap_or(corral_controller::ScheduleConfig::default().cpu_overcommit),
                memory_overcommit: args
                    .memory_overcommit
                    .unwrap_or(corral_controller::ScheduleConfig::default().memory_overcommit),
                spread: args.placement != Some(PlacementPolicy::Pack),
            },
            node_ttl: args.node_ttl.unwrap_or(Duration::from_secs(10)),
            agent,
            cluster_dir: args
                .cluster_dir
                .clone()
                .unwrap_or_else(|| corral_service::ClusterCa::dir(&data_dir)),
            migration_address: args
                .migration_address
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            migration_bandwidth: args.migration_bandwidth.map(|b| b.as_u64()),
            node_listen: args.node_listen.unwrap_or_else(|| {
                std::net::SocketAddr::new(
                    args.migration_address
                        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                    0,
                )
            }),
        };
        Ok(Config {
            cluster,
            store,
            host_path_allow,
            import,
            limits,
            upload_max_size,
            build,
            storage_pools,
            admin_group: args.admin_group.clone().or(file.admin_group),
            audit,
            port_range,
            data_dir,
            run_dir,
            run_dir_fallback,
            qemu_user,
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

/// `--qemu-user`: a named user must exist; as root the default is `corral-qemu` when it
/// exists. Only root can start QEMU as someone else.
fn resolve_qemu_user(name: Option<String>, root: bool) -> Result<Option<QemuUser>, ConfigError> {
    let explicit = name.is_some();
    let name = name.unwrap_or_else(|| DEFAULT_QEMU_USER.to_owned());
    let user = nix::unistd::User::from_name(&name)
        .map_err(|e| ConfigError(format!("--qemu-user {name}: looking the user up: {e}")))?;
    let Some(user) = user else {
        if explicit {
            return Err(ConfigError(format!(
                "--qemu-user {name}: no such user; create it (scripts/setup.sh does: \
                 useradd --system --no-create-home --shell /usr/sbin/nologin {name})"
            )));
        }
        return Ok(None);
    };
    let me = nix::unistd::geteuid();
    if user.uid == me {
        return Ok(None);
    }
    if !root {
        if explicit {
            return Err(ConfigError(format!(
                "--qemu-user {name}: only root can run QEMU as another user (corrald runs as uid {me})"
            )));
        }
        return Ok(None);
    }
    Ok(Some(QemuUser {
        name,
        owner: corral_hypervisor::FileOwner {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        },
    }))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
}

/// The data dir corrald uses when none is given, for the user running it.
pub fn default_data_dir_for_me() -> PathBuf {
    default_data_dir(nix::unistd::geteuid().is_root())
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

fn run_dir_is_fallback() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR").is_none()
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

/// The run dir corrald uses when none is given, for the user running it.
pub fn default_run_dir_for_me() -> PathBuf {
    default_run_dir(nix::unistd::geteuid().is_root())
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
    fn host_and_import_settings_are_read_and_checked() {
        let cfg = Config::resolve(&args(&[
            "--host-path-allow",
            "/srv/images",
            "--import-allow-net",
            "127.0.0.0/8",
            "--import-allow-net",
            "fd00::/8",
            "--import-max-size",
            "1G",
            "--import-timeout",
            "2h",
        ]))
        .unwrap();
        assert_eq!(cfg.import.timeout, std::time::Duration::from_secs(7200));
        assert_eq!(cfg.host_path_allow, [PathBuf::from("/srv/images")]);
        assert_eq!(cfg.import.allow_nets.len(), 2);
        assert_eq!(cfg.import.max_size, 1 << 30);
        assert!(cfg.import.proxy.is_none());
        let err = Config::resolve(&args(&["--host-path-allow", "images"])).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert!(Args::try_parse_from(["corrald", "--import-allow-net", "localhost"]).is_err());
    }

    #[test]
    fn storage_pools_come_from_flags_or_the_file_and_bad_ones_say_what_to_give() {
        let cfg = Config::resolve(&args(&[
            "--storage-pool",
            "fast=/srv/fast",
            "--storage-pool",
            "nfs=/mnt/nfs:shared",
        ]))
        .unwrap();
        let pool = |path: &str, shared| corral_service::PoolConfig {
            path: path.into(),
            shared,
        };
        assert_eq!(
            cfg.storage_pools,
            BTreeMap::from([
                ("fast".to_owned(), pool("/srv/fast", false)),
                ("nfs".to_owned(), pool("/mnt/nfs", true)),
            ])
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(&file, "storage_pool = [\"shared=/srv/pool:shared\"]\n").unwrap();
        let cfg = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(cfg.storage_pools["shared"], pool("/srv/pool", true));
        assert!(
            Config::resolve(&args(&[]))
                .unwrap()
                .storage_pools
                .is_empty()
        );
        for (bad, says) in [
            ("fast", "NAME=DIR"),
            ("Fast=/srv", "the pool's name"),
            ("fast=srv/fast", "absolute"),
            ("fast=/a,fast=/b", "given twice"),
        ] {
            let err = Config::resolve(&args(&["--storage-pool", bad])).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with("--storage-pool") && msg.contains(says),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn a_qemu_user_that_does_not_exist_is_named_with_the_fix() {
        let err = Config::resolve(&args(&["--qemu-user", "corral-no-such-user"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("--qemu-user corral-no-such-user: no such user")
                && msg.contains("useradd --system"),
            "{msg}"
        );
    }

    #[test]
    fn limits_come_from_flags_or_the_file_and_bad_ones_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(
            &file,
            "idle_timeout = \"30s\"\nupload_max_size = \"1G\"\nmax_connections = 8\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let cfg = Config::resolve(&args(&["--config", path, "--header-timeout", "2s"])).unwrap();
        assert_eq!(
            cfg.limits,
            ConnLimits {
                max_connections: 8,
                header_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(30),
            }
        );
        assert_eq!(cfg.upload_max_size, ByteSize::from_gib(1));
        let cfg = Config::resolve(&args(&[])).unwrap();
        assert_eq!(
            (cfg.limits, cfg.upload_max_size),
            (ConnLimits::default(), DEFAULT_UPLOAD_MAX_SIZE)
        );
        for bad in [
            &["--header-timeout", "0s"][..],
            &["--idle-timeout", "soon"],
            &["--max-connections", "0"],
            &["--upload-max-size", "1GB"],
        ] {
            let argv = std::iter::once("corrald").chain(bad.iter().copied());
            let err = Args::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(bad[0]), "{bad:?}: {err}");
        }
        std::fs::write(&file, "idle_timeout = \"forever\"\n").unwrap();
        let err = Config::resolve(&args(&["--config", path])).unwrap_err();
        assert!(err.to_string().contains("idle_timeout"), "{err}");
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

    #[test]
    fn the_store_is_sqlite_unless_etcd_is_named_with_its_endpoints() {
        assert_eq!(
            Config::resolve(&args(&[])).unwrap().store,
            StoreConfig::Sqlite
        );
        let cfg = Config::resolve(&args(&[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://10.0.0.1:2379,http://etcd-2.lan:2379",
        ]))
        .unwrap();
        assert_eq!(
            cfg.store,
            StoreConfig::Etcd {
                endpoints: vec![
                    "http://10.0.0.1:2379".into(),
                    "http://etcd-2.lan:2379".into()
                ],
                prefix: "/corral/".into(),
                wait: DEFAULT_ETCD_WAIT,
                tls: None,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corrald.toml");
        std::fs::write(
            &file,
            "store = \"etcd\"\netcd_endpoints = [\"http://[::1]:2379\"]\netcd_prefix = \"/c2/\"\netcd_wait = \"5m\"\n",
        )
        .unwrap();
        let cfg = Config::resolve(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(
            cfg.store,
            StoreConfig::Etcd {
                endpoints: vec!["http://[::1]:2379".into()],
                prefix: "/c2/".into(),
                wait: Duration::from_secs(300),
                tls: None,
            }
        );
    }

    #[test]
    fn bad_store_settings_name_the_flag_and_what_is_allowed() {
        let cases: &[(&[&str], &str)] = &[
            (&["--store", "etcd"], "at least one client URL"),
            (&["--role", "server"], "--role server needs --store etcd"),
            (&["--etcd-endpoints", "http://a:2379"], "need --store etcd"),
            (
                &["--store", "etcd", "--etcd-endpoints", "10.0.0.1:2379"],
                "http://HOST:PORT",
            ),
            (
                &["--store", "etcd", "--etcd-endpoints", "http://a"],
                "name the port",
            ),
            (
                &["--store", "etcd", "--etcd-endpoints", "http://a:99999"],
                "not a TCP port",
            ),
            (
                &["--store", "etcd", "--etcd-endpoints", "http://u@h/x:1"],
                "neither an IP address nor a DNS name",
            ),
            (
                &["--store", "etcd", "--etcd-endpoints", "https://a:2379"],
                "--etcd-ca-file",
            ),
            (
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    "http://a:2379",
                    "--etcd-ca-file",
                    "/ca.pem",
                ],
                "https://HOST:PORT",
            ),
            (
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    "https://a:2379",
                    "--etcd-cert",
                    "/c.pem",
                    "--etcd-key",
                    "/k.pem",
                ],
                "need --etcd-ca-file",
            ),
            (
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    "https://a:2379",
                    "--etcd-ca-file",
                    "/ca.pem",
                    "--etcd-cert",
                    "/c.pem",
                ],
                "--etcd-cert and --etcd-key go together",
            ),
            (
                &[
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    "http://a:2379",
                    "--etcd-prefix",
                    "corral",
                ],
                "must start and end with '/'",
            ),
        ];
        for (flags, expected) in cases {
            let err = Config::resolve(&args(flags)).unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
            assert!(err.contains("etcd"), "{flags:?}: {err}");
        }
    }

    #[test]
    fn bad_agent_settings_say_what_an_agent_needs() {
        let cases: &[(&[&str], &str)] = &[
            (&["--role", "agent"], "--role agent needs --server https://"),
            (
                &["--role", "agent", "--server", "http://10.0.0.1:7443"],
                "give the server's https:// URL",
            ),
            (&["--server", "https://a:7443"], "are for --role agent"),
            (&["--join-token", "crj.x"], "are for --role agent"),
            (
                &[
                    "--role",
                    "agent",
                    "--server",
                    "https://a:1",
                    "--store",
                    "etcd",
                    "--etcd-endpoints",
                    "http://e:2379",
                ],
                "agents reach the store only through a server",
            ),
            (
                &[
                    "--role",
                    "agent",
                    "--server",
                    "https://a:1",
                    "--listen",
                    "127.0.0.1:1",
                    "--tls-cert",
                    "/c.pem",
                    "--tls-key",
                    "/k.pem",
                ],
                "serves no API",
            ),
        ];
        for (flags, expected) in cases {
            let err = Config::resolve(&args(flags)).unwrap_err().to_string();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
        let ok = Config::resolve(&args(&["--role", "agent", "--server", "https://a:1/"])).unwrap();
        assert_eq!(ok.cluster.agent.unwrap().servers, ["https://a:1"]);
        let several = Config::resolve(&args(&[
            "--role",
            "agent",
            "--server",
            "https://a:1,https://b:2/",
            "--server",
            "https://a:1",
        ]))
        .unwrap();
        assert_eq!(
            several.cluster.agent.unwrap().servers,
            ["https://a:1", "https://b:2"]
        );
    }
}
