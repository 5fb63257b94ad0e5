use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::de::field_paths;
use crate::error::one_of;
use crate::network::attach::validate_attachments;
use crate::{
    Accel, Arch, ByteSize, CloudInit, DiskFormat, Machine, NetworkAttachment, Placement, Power,
    ResourceName, RestartPolicy, Share, ValidationError,
};

/// What the user wants a VM to be. Valid by construction: deserialising and
/// [`VmSpecBuilder::build`] both check it.
///
/// The fields are public for reading; code that changes them should call
/// [`VmSpec::validate`] before handing the spec on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "VmSpecInput", deny_unknown_fields)]
pub struct VmSpec {
    /// Number of vCPUs, 1–256 (default 1).
    #[schema(schema_with = cpus_schema, required = false)]
    pub cpus: u32,
    /// Guest RAM, 16M–1T (default 512M).
    #[schema(schema_with = memory_schema, required = false)]
    pub memory: ByteSize,
    /// Guest architecture (default x86_64).
    #[schema(nullable, required = false)]
    pub arch: Arch,
    /// Machine type; `None` means the architecture's default, see [`VmSpec::machine`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Accelerator (default auto).
    #[schema(nullable, required = false)]
    pub accel: Accel,
    /// What the guest boots.
    pub boot: Boot,
    /// Wanted power state (default running); starting a VM is setting this.
    #[schema(nullable, required = false)]
    pub power: Power,
    /// Back guest RAM with a shared file so that the host can read it live (default false).
    #[schema(nullable, required = false)]
    pub introspection: bool,
    /// What to do when the guest stops on its own (default never).
    #[schema(nullable, required = false)]
    pub restart_policy: RestartPolicy,
    /// Volumes attached as virtio-blk disks, in order after a boot volume (`/dev/vda`, …).
    /// Changed only while the VM is stopped.
    #[serde(default)]
    pub volumes: Vec<VolumeAttachment>,
    /// Networks the VM joins, one NIC each, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub networks: Vec<NetworkAttachment>,
    /// A cloud-init NoCloud seed to attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// Where the scheduler may put the VM and what it keeps apart.
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    /// Host directories the guest mounts (virtiofs), at most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub shares: Vec<Share>,
    /// A template (an Image made by `corral template create`) whose saved RAM and device
    /// state the VM starts from the first time, instead of booting: the guest runs on where
    /// the template's VM was saved, in about the time it takes to read that state. Its
    /// hardware (cpus, memory, machine, boot, devices) must be the template's VM's, as
    /// `corral vm create --template` makes it; later starts boot from its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ResourceName>,
}

/// A volume attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttachment {
    /// The Volume's name.
    pub volume: ResourceName,
    /// Attach read-only (weights volumes always are).
    #[serde(default)]
    pub readonly: bool,
    /// Serial number the guest sees (`/dev/disk/by-id/virtio-<serial>`): 1-20 letters,
    /// digits, '-', '_' or '.'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 20, pattern = "^[-A-Za-z0-9_.]{1,20}$")]
    pub serial: Option<String>,
}

impl VolumeAttachment {
    /// The longest serial virtio-blk carries.
    pub const MAX_SERIAL: usize = 20;
}

/// What a VM boots.
///
/// In a manifest: `{"kernel": {"kernel": "/k/vmlinuz", "initrd": …, "cmdline": …}}` or
/// `{"disk": {"path": "/img/disk.qcow2", "format": "qcow2"}}`. Paths are host paths and must be
/// absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel, no firmware or bootloader.
    Kernel {
        /// The kernel image.
        kernel: PathBuf,
        /// An initial ramdisk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        /// The kernel command line (at most 4096 bytes, one line).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
    /// Firmware boots a disk image.
    Disk {
        /// The image file.
        path: PathBuf,
        /// Its format; when left out, it is decided from the file before boot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<DiskFormat>,
    },
    /// Firmware boots a Volume: it becomes the first disk, before `spec.volumes`.
    Volume {
        /// The Volume's name.
        volume: ResourceName,
    },
}

// Written out rather than derived: utoipa leaves the variants' objects open, and serde reads
// each of them with `deny_unknown_fields`.
impl utoipa::PartialSchema for Boot {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::schema::object;
        use utoipa::openapi::schema::Ref;
        let volume = object([("volume", crate::schema::name().into(), true)]);
        let named = |name: &str| Ref::from_schema_name(name).into();
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(object([("kernel", named("KernelBoot"), true)]))
            .item(object([("disk", named("DiskBoot"), true)]))
            .item(object([("volume", volume.into(), true)]))
            .description(Some(
                "Exactly one of: kernel (direct kernel boot), disk (firmware boots an image \
                 file), volume (firmware boots a Volume)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Boot {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use crate::schema::{absolute_path, absolute_path_or_null, object, or_null, string};
        let cmdline = string()
            .max_length(Some(VmSpec::MAX_CMDLINE_BYTES))
            .pattern(Some(CMDLINE_PATTERN))
            .description(Some("The kernel command line: one line of printable ASCII"));
        let kernel = object([
            ("kernel", absolute_path(), true),
            ("initrd", absolute_path_or_null(), false),
            ("cmdline", or_null(cmdline), false),
        ])
        .description(Some(
            "Direct kernel boot: QEMU loads the kernel, no firmware",
        ));
        let disk = object([
            ("path", absolute_path(), true),
            (
                "format",
                or_null(<DiskFormat as utoipa::PartialSchema>::schema()),
                false,
            ),
        ])
        .description(Some("Firmware boots a disk image file"));
        schemas.push(("KernelBoot".to_owned(), kernel.into()));
        schemas.push(("DiskBoot".to_owned(), disk.into()));
    }
}

/// A kernel command line: one line of printable ASCII (and tabs).
const CMDLINE_PATTERN: &str = "^[ -~\t]*$";

impl Boot {
    /// Direct boot of `kernel`, without initrd or command line.
    pub fn kernel(kernel: impl Into<PathBuf>) -> Self {
        Boot::Kernel {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
        }
    }

    /// Firmware boot from the disk image at `path`, format decided later.
    pub fn disk(path: impl Into<PathBuf>) -> Self {
        Boot::Disk {
            path: path.into(),
            format: None,
        }
    }

    /// Checks paths (absolute, no NUL) and the command line (≤ 4096 bytes, one line of printable
    /// ASCII).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                check_path("spec.boot.kernel.kernel", kernel)?;
                if let Some(initrd) = initrd {
                    check_path("spec.boot.kernel.initrd", initrd)?;
                }
                match cmdline {
                    Some(cmdline) => check_cmdline(cmdline),
                    None => Ok(()),
                }
            }
            Boot::Disk { path, format: _ } => check_path("spec.boot.disk.path", path),
            Boot::Volume { .. } => Ok(()),
        }
    }
}

pub(super) fn check_path(field: &str, path: &Path) -> Result<(), ValidationError> {
    let message = if path.as_os_str().is_empty() {
        "must not be empty: give an absolute path".to_owned()
    } else if path.as_os_str().as_encoded_bytes().contains(&0) {
        "must not contain a NUL byte".to_owned()
    } else if !path.is_absolute() {
        format!(
            "must be an absolute path (got {:?})",
            path.display().to_string()
        )
    } else {
        return Ok(());
    };
    Err(ValidationError::new(field, message))
}

fn check_cmdline(cmdline: &str) -> Result<(), ValidationError> {
    let message = if cmdline.len() > VmSpec::MAX_CMDLINE_BYTES {
        format!(
            "is {} bytes long: the limit is {}",
            cmdline.len(),
            VmSpec::MAX_CMDLINE_BYTES
        )
    } else if cmdline.contains(['\n', '\r']) {
        "must be a single line: remove the line break".to_owned()
    } else if let Some(c) = cmdline
        .chars()
        .find(|&c| c != '\t' && !(' '..='~').contains(&c))
    {
        // Kernels read the command line as bytes in a fixed buffer; ASCII keeps bytes and
        // characters the same, so the limit means the same to every client.
        format!("must be printable ASCII: remove {c:?}")
    } else {
        return Ok(());
    };
    Err(ValidationError::new("spec.boot.kernel.cmdline", message))
}

impl VmSpec {
    /// The fewest vCPUs.
    pub const MIN_CPUS: u32 = 1;
    /// The most vCPUs.
    pub const MAX_CPUS: u32 = 256;
    /// vCPUs when the spec names none.
    pub const DEFAULT_CPUS: u32 = 1;
    /// The least guest RAM.
    pub const MIN_MEMORY: ByteSize = ByteSize::from_mib(16);
    /// The most guest RAM.
    pub const MAX_MEMORY: ByteSize = ByteSize::from_tib(1);
    /// Guest RAM when the spec names none.
    pub const DEFAULT_MEMORY: ByteSize = ByteSize::from_mib(512);
    /// The longest kernel command line, in bytes.
    pub const MAX_CMDLINE_BYTES: usize = 4096;

    /// A builder starting from the defaults, booting `boot`.
    ///
    /// ```
    /// use corral_contract::{Boot, ByteSize, Machine, VmSpec};
    ///
    /// let spec = VmSpec::builder(Boot::kernel("/boot/vmlinuz"))
    ///     .cpus(2)
    ///     .memory(ByteSize::from_gib(1))
    ///     .machine(Machine::Microvm)
    ///     .build()?;
    /// assert_eq!(spec.machine(), Machine::Microvm);
    /// assert!(VmSpec::builder(Boot::kernel("vmlinuz")).build().is_err());
    /// # Ok::<(), corral_contract::ValidationError>(())
    /// ```
    pub fn builder(boot: Boot) -> VmSpecBuilder {
        VmSpecBuilder {
            spec: VmSpec {
                cpus: Self::DEFAULT_CPUS,
                memory: Self::DEFAULT_MEMORY,
                arch: Arch::default(),
                machine: None,
                accel: Accel::default(),
                boot,
                power: Power::default(),
                introspection: false,
                restart_policy: RestartPolicy::default(),
                volumes: Vec::new(),
                networks: Vec::new(),
                cloud_init: None,
                placement: Placement::default(),
                shares: Vec::new(),
                template: None,
            },
        }
    }

    /// The machine type in effect: the one named, else the architecture's default.
    pub fn machine(&self) -> Machine {
        self.machine.unwrap_or(Machine::default_for(self.arch))
    }

    /// Checks every field; the error names the first field that is not allowed.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(Self::MIN_CPUS..=Self::MAX_CPUS).contains(&self.cpus) {
            return Err(ValidationError::new(
                "spec.cpus",
                format!(
                    "must be between {} and {} (got {})",
                    Self::MIN_CPUS,
                    Self::MAX_CPUS,
                    self.cpus
                ),
            ));
        }
        if !(Self::MIN_MEMORY..=Self::MAX_MEMORY).contains(&self.memory) {
            return Err(ValidationError::new(
                "spec.memory",
                format!(
                    "must be between {} and {} (got {})",
                    Self::MIN_MEMORY,
                    Self::MAX_MEMORY,
                    self.memory
                ),
            ));
        }
        match self.machine {
            Some(machine) if machine.arch() != self.arch => {
                return Err(ValidationError::new(
                    "spec.machine",
                    format!(
                        "{machine} is not available on {}: use {}",
                        self.arch,
                        one_of(self.arch.machines())
                    ),
                ));
            }
            _ => {}
        }
        self.boot.validate()?;
        self.validate_volumes()?;
        validate_attachments(&self.networks)?;
        self.placement.validate()?;
        super::share::validate_shares(&self.shares)?;
        match &self.cloud_init {
            Some(cloud_init) => cloud_init.validate(),
            None => Ok(()),
        }
    }

    /// The names of every volume the VM uses, boot volume first.
    pub fn volume_names(&self) -> impl Iterator<Item = &ResourceName> {
        let boot = match &self.boot {
            Boot::Volume { volume } => Some(volume),
            _ => None,
        };
        boot.into_iter()
            .chain(self.volumes.iter().map(|a| &a.volume))
    }

    fn validate_volumes(&self) -> Result<(), ValidationError> {
        let mut seen = std::collections::BTreeSet::new();
        if let Boot::Volume { volume } = &self.boot {
            seen.insert(volume);
        }
        for (i, a) in self.volumes.iter().enumerate() {
            if !seen.insert(&a.volume) {
                return Err(ValidationError::new(
                    format!("spec.volumes[{i}].volume"),
                    format!("volume {} is attached twice", a.volume),
                ));
            }
            if let Some(serial) = &a.serial {
                let ok = !serial.is_empty()
                    && serial.len() <= VolumeAttachment::MAX_SERIAL
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(ValidationError::new(
                        format!("spec.volumes[{i}].serial"),
                        format!(
                            "{serial:?}: use 1-{} letters, digits, '-', '_' or '.'",
                            VolumeAttachment::MAX_SERIAL
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Builds a [`VmSpec`] from the defaults; [`VmSpecBuilder::build`] validates it.
#[derive(Debug, Clone)]
#[must_use]
pub struct VmSpecBuilder {
    spec: VmSpec,
}

impl VmSpecBuilder {
    /// Sets the number of vCPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.spec.cpus = cpus;
        self
    }

    /// Sets the guest RAM.
    pub fn memory(mut self, memory: ByteSize) -> Self {
        self.spec.memory = memory;
        self
    }

    /// Sets the architecture.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.spec.arch = arch;
        self
    }

    /// Sets the machine type (default: the architecture's).
    pub fn machine(mut self, machine: Machine) -> Self {
        self.spec.machine = Some(machine);
        self
    }

    /// Sets the accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.spec.accel = accel;
        self
    }

    /// Sets the wanted power state.
    pub fn power(mut self, power: Power) -> Self {
        self.spec.power = power;
        self
    }

    /// Sets whether guest RAM is readable from the host.
    pub fn introspection(mut self, introspection: bool) -> Self {
        self.spec.introspection = introspection;
        self
    }

    /// Attaches a volume.
    pub fn volume(mut self, attachment: VolumeAttachment) -> Self {
        self.spec.volumes.push(attachment);
        self
    }

    /// Sets the restart policy.
    pub fn restart_policy(mut self, restart_policy: RestartPolicy) -> Self {
        self.spec.restart_policy = restart_policy;
        self
    }

    /// Adds a network to join.
    pub fn network(mut self, attachment: NetworkAttachment) -> Self {
        self.spec.networks.push(attachment);
        self
    }

    /// Sets the cloud-init seed.
    pub fn cloud_init(mut self, cloud_init: CloudInit) -> Self {
        self.spec.cloud_init = Some(cloud_init);
        self
    }

    /// Sets where the scheduler may place the VM.
    pub fn placement(mut self, placement: Placement) -> Self {
        self.spec.placement = placement;
        self
    }

    /// Shares a host directory with the guest.
    pub fn share(mut self, share: Share) -> Self {
        self.spec.shares.push(share);
        self
    }

    /// Starts the VM the first time from template `template`'s saved state.
    pub fn template(mut self, template: ResourceName) -> Self {
        self.spec.template = Some(template);
        self
    }

    /// The spec, if valid.
    pub fn build(self) -> Result<VmSpec, ValidationError> {
        self.spec.validate()?;
        Ok(self.spec)
    }
}

fn cpus_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let (min, max) = (VmSpec::MIN_CPUS, VmSpec::MAX_CPUS);
    crate::schema::or_null(crate::schema::integer(min.into(), max.into()))
}

fn memory_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let (min, max) = (VmSpec::MIN_MEMORY.as_u64(), VmSpec::MAX_MEMORY.as_u64());
    crate::schema::or_null(crate::schema::byte_size(min, max, None))
}

/// A spec as written, before defaults and validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSpecInput {
    #[serde(default, deserialize_with = "de_cpus")]
    cpus: Option<u32>,
    #[serde(default, deserialize_with = "de_memory")]
    memory: Option<ByteSize>,
    #[serde(default, deserialize_with = "de_arch")]
    arch: Option<Arch>,
    #[serde(default, deserialize_with = "de_machine")]
    machine: Option<Machine>,
    #[serde(default, deserialize_with = "de_accel")]
    accel: Option<Accel>,
    #[serde(deserialize_with = "de_boot")]
    boot: Boot,
    #[serde(default, deserialize_with = "de_power")]
    power: Option<Power>,
    #[serde(default, deserialize_with = "de_introspection")]
    introspection: Option<bool>,
    #[serde(default, deserialize_with = "de_restart_policy")]
    restart_policy: Option<RestartPolicy>,
    #[serde(default, deserialize_with = "de_volumes")]
    volumes: Vec<VolumeAttachment>,
    #[serde(default, deserialize_with = "de_networks")]
    networks: Vec<NetworkAttachment>,
    #[serde(default, deserialize_with = "de_cloud_init")]
    cloud_init: Option<CloudInit>,
    #[serde(default, deserialize_with = "de_placement")]
    placement: Placement,
    #[serde(default, deserialize_with = "de_shares")]
    shares: Vec<Share>,
    #[serde(default, deserialize_with = "de_template")]
    template: Option<ResourceName>,
}

field_paths! {
    de_cpus => "spec.cpus",
    de_memory => "spec.memory",
    de_arch => "spec.arch",
    de_machine => "spec.machine",
    de_accel => "spec.accel",
    de_boot => "spec.boot",
    de_power => "spec.power",
    de_introspection => "spec.introspection",
    de_restart_policy => "spec.restart_policy",
    de_volumes => "spec.volumes",
    de_networks => "spec.networks",
    de_cloud_init => "spec.cloud_init",
    de_placement => "spec.placement",
    de_shares => "spec.shares",
    de_template => "spec.template",
}

impl TryFrom<VmSpecInput> for VmSpec {
    type Error = ValidationError;

    fn try_from(input: VmSpecInput) -> Result<Self, Self::Error> {
        let spec = VmSpec {
            cpus: input.cpus.unwrap_or(Self::DEFAULT_CPUS),
            memory: input.memory.unwrap_or(Self::DEFAULT_MEMORY),
            arch: input.arch.unwrap_or_default(),
            machine: input.machine,
            accel: input.accel.unwrap_or_default(),
            boot: input.boot,
            power: input.power.unwrap_or_default(),
            introspection: input.introspection.unwrap_or_default(),
            restart_policy: input.restart_policy.unwrap_or_default(),
            volumes: input.volumes,
            networks: input.networks,
            cloud_init: input.cloud_init,
            placement: input.placement,
            shares: input.shares,
            template: input.template,
        };
        spec.validate()?;
        Ok(spec)
    }
}
