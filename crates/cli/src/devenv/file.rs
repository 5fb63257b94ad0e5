//! `corral.yaml`: a project's development VMs, as a user writes them. A client-side file,
//! like a Vagrantfile: `corral up` turns it into ordinary VMs and volumes applied with the
//! project as their owner. Its JSON Schema is generated from these types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_contract::{ByteSize, PortForward, ResourceName, VmSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::CliError;

/// The file `corral init` writes and the other project commands look for.
pub const FILE_NAME: &str = "corral.yaml";

/// A project's development environment: the VMs `corral up` creates and keeps as declared.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "corral.yaml")]
pub struct ProjectFile {
    /// The project's name: its VMs are named NAME-VM, and `up` applies them as owner NAME
    /// (1-63 lowercase letters, digits and '-') [default: the folder's name, made valid]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        with = "Option<String>",
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<ResourceName>,
    /// The VMs, by name (1-63 lowercase letters, digits and '-'); at least one
    #[schemars(with = "BTreeMap<String, VmDecl>", length(min = 1))]
    pub vms: BTreeMap<ResourceName, VmDecl>,
}

/// One VM of the project.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDecl {
    /// The Image its disk is cloned from [default: the preset's image, else debian-12]. A
    /// missing `debian-12` (or preset image) is built by `up`; others must be built or pulled
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub image: Option<ResourceName>,
    /// A preset: rust, node, python or go, or your own in ~/.config/corral/presets/NAME.yaml
    /// (packages, provision, env); its packages go in the image `up` builds
    /// (`debian-12-PRESET`), its steps run before the VM's own
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub preset: Option<ResourceName>,
    /// The preset, resolved when the file was read.
    #[serde(skip)]
    #[schemars(skip)]
    pub resolved: Option<super::presets::PresetDef>,
    /// Number of vCPUs, 1-256 [default: 1]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub cpus: Option<u32>,
    /// Guest RAM in binary units, e.g. 2G [default: 1G]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+[KMGT]?$"))]
    pub memory: Option<ByteSize>,
    /// The disk's size, e.g. 10G; the guest grows its root file system to it [default: the
    /// image's]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", regex(pattern = r"^[0-9]+[KMGT]?$"))]
    pub disk: Option<ByteSize>,
    /// Guest ports reachable from the host: GUEST, or GUEST:HOST, optionally /udp (e.g. 8080
    /// or "5432:15432"); a host port left out is picked by corrald. Port 22 is always
    /// forwarded for `corral ssh`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<PortSchema>")]
    pub ports: Vec<Port>,
    /// Shell steps run as root over ssh at the first `up`, in order; a step runs again (with
    /// all after it) only when it or one before it changes. A failing step fails `up`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provision: Vec<String>,
    /// Services installed in the VM's image and started, their port forwarded; `up` prints
    /// the URL to reach each from the host
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Environment variables of the guest's logins and provision steps (written to
    /// /etc/environment)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Host folders the guest mounts (virtiofs), read-write unless read_only; the guest's
    /// root is the folder's owner [default: the project's folder at /project; [] for none]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folders: Option<Vec<super::folders::Folder>>,
}

/// A port as the schema shows it: a number or a "GUEST[:HOST][/udp]" string.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum PortSchema {
    Guest(#[schemars(range(min = 1, max = 65535))] u16),
    Spec(#[schemars(regex(pattern = r"^[0-9]+(:[0-9]+)?(/(tcp|udp))?$"))] String),
}

/// A forwarded port: `8080`, `"80:8080"`, `"53/udp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port(pub PortForward);

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = &self.0;
        let mut text = f.guest_port.to_string();
        if let Some(host) = f.host_port {
            text += &format!(":{host}");
        }
        if f.protocol != corral_contract::Protocol::Tcp {
            text += &format!("/{}", f.protocol);
        }
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Port;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port: GUEST or \"GUEST:HOST\", optionally /udp, e.g. 8080")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                crate::network::parse_forward(v)
                    .map(Port)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A language preset: an image with the language's Debian packages, built once on corrald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// cargo, rustc, build-essential, pkg-config
    Rust,
    /// nodejs, npm
    Node,
    /// python3, pip, venv
    Python,
    /// the Go toolchain
    Go,
}

impl Preset {
    /// The presets, in the order `init` tries them.
    pub const ALL: [Preset; 4] = [Preset::Rust, Preset::Node, Preset::Python, Preset::Go];

    /// Its word in corral.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Rust => "rust",
            Preset::Node => "node",
            Preset::Python => "python",
            Preset::Go => "go",
        }
    }

    /// The Debian packages its image adds to the base system.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Preset::Rust => &["cargo", "rustc", "build-essential", "pkg-config"],
            Preset::Node => &["nodejs", "npm"],
            Preset::Python => &["python3", "python3-pip", "python3-venv"],
            Preset::Go => &["golang-go"],
        }
    }

    /// The files at a project's root that say it is written in this language.
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            Preset::Rust => &["Cargo.toml"],
            Preset::Node => &["package.json"],
            Preset::Python => &["pyproject.toml", "requirements.txt", "setup.py"],
            Preset::Go => &["go.mod"],
        }
    }
}

/// A service in the guest, reachable from the host through a forwarded port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// PostgreSQL: role and database `corral`, password `corral`
    Postgres,
    /// Redis
    Redis,
}

impl Service {
    /// Its word in corral.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Postgres => "postgres",
            Service::Redis => "redis",
        }
    }

    /// The Debian packages the VM's image gets for it.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Service::Postgres => &["postgresql"],
            Service::Redis => &["redis-server"],
        }
    }

    /// The guest port it listens on.
    pub fn port(self) -> u16 {
        match self {
            Service::Postgres => 5432,
            Service::Redis => 6379,
        }
    }

    /// The URL that reaches it from the host through forwarded port `host_port`.
    pub fn url(self, host: std::net::Ipv4Addr, host_port: u16) -> String {
        match self {
            Service::Postgres => format!("postgres://corral:corral@{host}:{host_port}/corral"),
            Service::Redis => format!("redis://{host}:{host_port}"),
        }
    }

    /// The script `up` runs in the guest (as root) to make it listen beyond the guest's
    /// loopback (only the host's forward reaches it) and to give it a user.
    pub fn setup(self) -> &'static str {
        match self {
            Service::Postgres => {
                r##"command -v pg_lsclusters >/dev/null || { echo "postgresql is not in this VM's image: build the image with it, or leave out image: so that up builds one"; exit 1; }
conf=$(ls -d /etc/postgresql/*/main | head -n1)
grep -q "^listen_addresses = '\*'" "$conf/postgresql.conf" || echo "listen_addresses = '*'" >> "$conf/postgresql.conf"
grep -q "# corral$" "$conf/pg_hba.conf" || echo "host all all 0.0.0.0/0 scram-sha-256 # corral" >> "$conf/pg_hba.conf"
systemctl enable postgresql
systemctl restart postgresql
cd /tmp
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_roles WHERE rolname='corral'" | grep -q 1 || runuser -u postgres -- psql -qc "CREATE ROLE corral LOGIN SUPERUSER PASSWORD 'corral'"
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname='corral'" | grep -q 1 || runuser -u postgres -- createdb -O corral corral
echo "postgresql $(runuser -u postgres -- psql -qtAc 'SHOW server_version') listening on 5432""##
            }
            Service::Redis => {
                r##"command -v redis-server >/dev/null || { echo "redis-server is not in this VM's image: build the image with it, or leave out image: so that up builds one"; exit 1; }
sed -i -e 's/^bind .*/bind 0.0.0.0 -::/' -e 's/^protected-mode yes/protected-mode no/' /etc/redis/redis.conf
systemctl enable redis-server
systemctl restart redis-server
echo "redis $(redis-server --version | cut -d' ' -f3) listening on 6379""##
            }
        }
    }
}

/// The image a VM boots when it names none and no preset.
pub const DEFAULT_IMAGE: &str = "debian-12";
/// Guest RAM when the file gives none: a Debian guest with a toolchain needs more than the
/// API's 512M default.
pub const DEFAULT_MEMORY: ByteSize = ByteSize::from_gib(1);

impl VmDecl {
    /// The image it boots: the one named, else `debian-12` with the preset and services in
    /// its name (`debian-12-rust-postgres`), which `up` builds when it is missing.
    pub fn image(&self) -> ResourceName {
        // Checked when the file was read.
        ResourceName::new(self.image_text()).expect("a valid name")
    }

    fn image_text(&self) -> String {
        if let Some(image) = &self.image {
            return image.to_string();
        }
        let mut name = DEFAULT_IMAGE.to_owned();
        if let Some(preset) = &self.resolved {
            name = format!("{name}-{}", preset.image_word);
        }
        for service in self.services() {
            name = format!("{name}-{}", service.as_str());
        }
        name
    }

    /// Its services, in order, each once.
    pub fn services(&self) -> impl Iterator<Item = Service> {
        let set: std::collections::BTreeSet<Service> = self.services.iter().copied().collect();
        set.into_iter()
    }

    /// The packages the image `up` builds for it adds: its preset's and its services'.
    pub fn packages(&self) -> Vec<String> {
        let preset = self
            .resolved
            .iter()
            .flat_map(|p| p.packages.iter().cloned());
        preset
            .chain(
                self.services()
                    .flat_map(Service::packages)
                    .map(|p| (*p).to_owned()),
            )
            .collect()
    }

    /// Its environment: the preset's, under its own.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = self
            .resolved
            .as_ref()
            .map(|p| p.env.clone())
            .unwrap_or_default();
        env.extend(self.env.clone());
        env
    }

    /// Its folders: the ones declared, else the project's own at /project.
    pub fn folders(&self) -> Vec<super::folders::Folder> {
        self.folders
            .clone()
            .unwrap_or_else(|| vec![super::folders::Folder::project_default()])
    }

    /// Its provision steps: the preset's, then its own.
    pub fn steps(&self) -> impl Iterator<Item = &String> {
        self.resolved
            .iter()
            .flat_map(|p| p.provision.iter())
            .chain(&self.provision)
    }
}

/// A project file as read: what it declares, where it is, and the project's name.
#[derive(Debug, Clone)]
pub struct Project {
    /// Its contents.
    pub file: ProjectFile,
    /// The file, as found.
    pub path: PathBuf,
    /// The project's name (the file's `name`, else its folder's).
    pub name: ResourceName,
}

impl Project {
    /// The name of the VM declared as `vm`: `PROJECT-VM`.
    pub fn vm_name(&self, vm: &ResourceName) -> ResourceName {
        ResourceName::new(format!("{}-{vm}", self.name)).expect("checked when the file was read")
    }
}

/// Finds `corral.yaml` in `dir` or the nearest folder above it.
pub fn find(dir: &Path) -> Result<PathBuf, CliError> {
    for d in dir.ancestors() {
        let path = d.join(FILE_NAME);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(CliError::Failed(format!(
        "no {FILE_NAME} in {} or a folder above it: write one with `corral init`",
        dir.display()
    )))
}

/// Reads and checks a project file. Errors read `FILE:LINE:COLUMN: FIELD: what is wrong`.
pub fn load(path: &Path) -> Result<Project, CliError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Failed(format!("cannot read {source}: {e}")))?;
    let dir = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let (file, name) = parse(&source, &text, &dir, &super::presets::dir())?;
    Ok(Project {
        file,
        path: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        name,
    })
}

/// Parses the text of a project file in folder `dir`; returns it with the project's name.
pub fn parse(
    source: &str,
    text: &str,
    dir: &Path,
    presets: &Path,
) -> Result<(ProjectFile, ResourceName), CliError> {
    let fail = |at: String, message: String| CliError::Failed(format!("{source}:{at}{message}"));
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let mut file: ProjectFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .location()
            .map_or_else(String::new, |l| format!("{}:{}: ", l.line(), l.column()));
        // serde_yaml_ng repeats the position at the end of its message; it is in front now.
        let message = inner.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_owned();
        // serde_yaml_ng names the field itself where it knows it.
        let named = message.starts_with(path.split(['.', '[']).next().unwrap_or_default());
        let field = if path == "." || named {
            String::new()
        } else {
            format!("{path}: ")
        };
        fail(at, format!("{field}{message}"))
    })?;
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(needle))
            .map_or_else(String::new, |i| format!("{}: ", i + 1))
    };
    let name = match &file.name {
        Some(name) => name.clone(),
        None => folder_name(dir).map_err(|m| fail(String::new(), m))?,
    };
    if file.vms.is_empty() {
        return Err(fail(line_of("vms:"), "vms: declare at least one VM".into()));
    }
    for (vm, decl) in &mut file.vms {
        let at = line_of(&format!("{vm}:"));
        if let Some(preset) = &decl.preset {
            let def = super::presets::resolve(preset.as_str(), presets)
                .map_err(|m| fail(at.clone(), format!("vms.{vm}.preset: {m}")))?;
            decl.resolved = Some(def);
        }
        let full = format!("{name}-{vm}");
        if full.len() > ResourceName::MAX_LEN {
            return Err(fail(
                at,
                format!(
                    "vms.{vm}: the VM's name {full:?} is longer than {} characters: \
                     shorten the VM's or the project's name",
                    ResourceName::MAX_LEN
                ),
            ));
        }
        let field = |f: &str, m: String| fail(at.clone(), format!("vms.{vm}.{f}: {m}"));
        if let Some(cpus) = decl.cpus {
            if !(VmSpec::MIN_CPUS..=VmSpec::MAX_CPUS).contains(&cpus) {
                return Err(field(
                    "cpus",
                    format!(
                        "must be between {} and {} (got {cpus})",
                        VmSpec::MIN_CPUS,
                        VmSpec::MAX_CPUS
                    ),
                ));
            }
        }
        if let Some(memory) = decl.memory {
            crate::args::parse_memory(&memory.to_string()).map_err(|m| field("memory", m))?;
        }
        if ResourceName::new(decl.image().as_str()).is_err() {
            return Err(fail(
                at.clone(),
                format!("vms.{vm}: the image name is too long"),
            ));
        }
        for (key, value) in &decl.env() {
            check_env(key, value).map_err(|m| field(&format!("env.{key}"), m))?;
        }
        let folders = decl.folders();
        if folders.len() > corral_contract::Share::MAX_SHARES {
            return Err(field(
                "folders",
                format!("at most {} folders", corral_contract::Share::MAX_SHARES),
            ));
        }
        let mut guests = std::collections::BTreeSet::new();
        for (i, folder) in folders.iter().enumerate() {
            super::folders::check_guest(&folder.guest)
                .map_err(|m| field(&format!("folders[{i}].guest"), m))?;
            if !guests.insert(folder.guest.trim_end_matches('/')) {
                return Err(field(
                    &format!("folders[{i}].guest"),
                    format!("{} is mounted twice", folder.guest),
                ));
            }
        }
        for (i, step) in decl.provision.iter().enumerate() {
            if step.trim().is_empty() {
                return Err(field(&format!("provision[{i}]"), "is empty".into()));
            }
        }
    }
    Ok((file, name))
}

/// A variable /etc/environment can hold: a shell name, and a value of one line without
/// quotes or backslashes (pam_env reads the file without a shell's escapes).
fn check_env(key: &str, value: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let name_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err("a variable name is letters, digits and '_', not starting with a digit".into());
    }
    if value.contains(['\n', '\r', '"', '\\', '\0']) {
        return Err("the value must be one line without '\"' or '\\'".into());
    }
    Ok(())
}

/// The project name a folder gives: its name in lowercase, other characters as '-'.
pub fn folder_name(dir: &Path) -> Result<ResourceName, String> {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    // Room for "-VM" after it.
    name.truncate(40);
    let name = name.trim_end_matches('-');
    ResourceName::new(name).map_err(|_| {
        format!(
            "the folder {} gives no usable project name: set `name:` in {FILE_NAME}",
            dir.display()
        )
    })
}

/// corral.yaml's JSON Schema, as published in the repository.
pub fn schema() -> String {
    let schema = schemars::schema_for!(ProjectFile);
    serde_json::to_string_pretty(&schema).expect("a schema encodes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> (ProjectFile, ResourceName) {
        parse(
            "corral.yaml",
            text,
            Path::new("/home/u/My_App"),
            Path::new("/nonexistent"),
        )
        .unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(
            "corral.yaml",
            text,
            Path::new("/home/u/app"),
            Path::new("/nonexistent"),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn a_full_file_reads_and_the_folder_names_the_project() {
        let (file, name) = parse_ok(
            "vms:\n  dev:\n    preset: rust\n    cpus: 2\n    memory: 2G\n    disk: 10G\n    \
             ports: [8080, \"5432:15432\", 53/udp]\n    provision:\n      - apt-get update\n    \
             env:\n      RUST_LOG: debug\n",
        );
        assert_eq!(name, "my-app");
        let dev = &file.vms[&ResourceName::new("dev").unwrap()];
        assert_eq!(dev.image(), "debian-12-rust");
        assert_eq!(dev.memory, Some(ByteSize::from_gib(2)));
        assert_eq!(dev.ports.len(), 3);
        assert_eq!(dev.ports[1].0.host_port, Some(15432));
        assert_eq!(dev.ports[2].0.protocol, corral_contract::Protocol::Udp);
        let (file, _) =
            parse_ok("vms:\n  db:\n    preset: go\n    services: [redis, postgres, redis]\n");
        let db = file.vms.values().next().unwrap();
        assert_eq!(db.image(), "debian-12-go-postgres-redis");
        assert_eq!(db.packages(), ["golang-go", "postgresql", "redis-server"]);
        let (file, name) = parse_ok("name: shop\nvms:\n  db: {image: pg}\n");
        assert_eq!(name, "shop");
        assert_eq!(file.vms.values().next().unwrap().image(), "pg");
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let err = parse_err("vms:\n  dev:\n    cpus: 2\n    memroy: 1G\n");
        assert!(err.starts_with("corral.yaml:4:"), "{err}");
        assert!(err.contains("vms.dev: unknown field `memroy`"), "{err}");
        let err = parse_err("vms:\n  dev:\n    memory: lots\n");
        assert!(err.starts_with("corral.yaml:3:"), "{err}");
        assert!(
            err.contains("vms.dev.memory: \"lots\" is not a size"),
            "{err}"
        );
        let err = parse_err("vms:\n  dev:\n    ports: [0]\n");
        assert!(err.contains("vms.dev.ports[0]: "), "{err}");
        assert!(err.contains("ports are 1-65535"), "{err}");
        let err = parse_err("vms:\n  Dev_1: {}\n");
        assert!(err.contains("not a valid name"), "{err}");
        let err = parse_err("vms:\n  dev:\n    preset: cobol\n");
        assert!(
            err.contains("corral.yaml:2: vms.dev.preset: no preset \"cobol\""),
            "{err}"
        );
        let err = parse_err("vms:\n  dev:\n    cpus: 0\n");
        assert_eq!(
            err,
            "corral.yaml:2: vms.dev.cpus: must be between 1 and 256 (got 0)"
        );
        let err = parse_err("vms:\n  dev:\n    env: {\"A B\": x}\n");
        assert!(err.contains("vms.dev.env.A B: a variable name"), "{err}");
        let err = parse_err("vms:\n  dev:\n    folders: [{guest: /etc}]\n");
        assert!(
            err.contains("vms.dev.folders[0].guest: \"/etc\" is a system folder"),
            "{err}"
        );
        let err = parse_err(
            "vms:\n  dev:\n    folders: [{host: ., guest: /p}, {host: /x, guest: /p/}]\n",
        );
        assert!(
            err.contains("vms.dev.folders[1].guest: /p/ is mounted twice"),
            "{err}"
        );
        let err = parse_err("vms: {}\n");
        assert!(err.contains("vms: declare at least one VM"), "{err}");
        let err = parse_err(&format!("name: {}\nvms:\n  dev: {{}}\n", "a".repeat(60)));
        assert!(err.contains("longer than 63"), "{err}");
    }

    #[test]
    fn folder_names_become_resource_names() {
        let name = |d: &str| folder_name(Path::new(d)).map(|n| n.to_string());
        assert_eq!(name("/x/My Project").unwrap(), "my-project");
        assert_eq!(name("/x/__init__").unwrap(), "init");
        assert!(name("/x/___").unwrap_err().contains("set `name:`"));
    }

    #[test]
    fn the_published_schema_is_the_one_the_types_make() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corral.schema.json");
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        if published != schema() {
            if std::env::var_os("CORRAL_WRITE_SCHEMA").is_some() {
                std::fs::write(&path, schema()).unwrap();
                return;
            }
            panic!(
                "{} is stale: run CORRAL_WRITE_SCHEMA=1 cargo test -p corral-cli schema",
                path.display()
            );
        }
    }
}
