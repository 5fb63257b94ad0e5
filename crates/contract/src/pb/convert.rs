//! Resource types to protobuf messages and back.
//!
//! Into protobuf is total. Out of protobuf validates through the resource types' own checks
//! (`ResourceName::new`, `ObjectMeta::validate`, `VmSpec::builder(…).build()`), so a message
//! and a manifest saying the same thing get the same answer, with the same JSON field path.
//! Status is output: reading it is lenient, unknown enum values become "not set".

use std::path::{Path, PathBuf};

use crate::error::one_of;
use crate::pb;
use crate::{
    Accel, Arch, Boot, ByteSize, Condition, DiskFormat, ExitInfo, ImageFormat, Machine,
    MigrationStatus, NetworkMode, NetworkPhase, ObjectMeta, Phase, Power, Protocol, ResourceName,
    RestartPolicy, Role, StoragePhase, ValidationError, Vm, VmSpec, VmStatus, VolumeKind,
};

/// A contract enum and its protobuf twin, whose zero value `*_UNSPECIFIED` has no counterpart.
pub(super) trait PbEnum: Copy + 'static {
    type Pb: TryFrom<i32> + From<Self> + Into<i32>;
    /// What the value is, for messages (`architecture`), as in [`crate::UnknownChoice`].
    const WHAT: &'static str;
    const ALL: &'static [Self];
    /// `None` for `*_UNSPECIFIED`.
    fn from_pb(value: Self::Pb) -> Option<Self>;
    fn pb_name(value: Self::Pb) -> &'static str;
}

/// Defines `From<Ours> for pb::Theirs` and the [`PbEnum`] mapping back.
macro_rules! pb_enums {
    ($($ours:ident <=> $theirs:ident ($what:literal) { $($ov:ident <=> $tv:ident,)+ })+) => {$(
        impl From<$ours> for pb::$theirs {
            fn from(value: $ours) -> Self {
                match value {
                    $($ours::$ov => pb::$theirs::$tv,)+
                }
            }
        }

        impl PbEnum for $ours {
            type Pb = pb::$theirs;
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = $ours::ALL;

            fn from_pb(value: pb::$theirs) -> Option<Self> {
                match value {
                    pb::$theirs::Unspecified => None,
                    $(pb::$theirs::$tv => Some($ours::$ov),)+
                }
            }

            fn pb_name(value: pb::$theirs) -> &'static str {
                value.as_str_name()
            }
        }
    )+};
}

pb_enums! {
    Arch <=> Arch ("architecture") {
        X86_64 <=> X8664,
        Aarch64 <=> Aarch64,
    }
    Machine <=> Machine ("machine") {
        Q35 <=> Q35,
        Microvm <=> Microvm,
        Virt <=> Virt,
    }
    Accel <=> Accel ("accelerator") {
        Auto <=> Auto,
        Kvm <=> Kvm,
        Hvf <=> Hvf,
        Tcg <=> Tcg,
    }
    Power <=> Power ("power state") {
        Running <=> Running,
        Stopped <=> Stopped,
        Paused <=> Paused,
    }
    RestartPolicy <=> RestartPolicy ("restart policy") {
        Never <=> Never,
        OnFailure <=> OnFailure,
        Always <=> Always,
    }
    DiskFormat <=> DiskFormat ("disk format") {
        Qcow2 <=> Qcow2,
        Raw <=> Raw,
    }
    StoragePhase <=> StoragePhase ("phase") {
        Pending <=> Pending,
        Ready <=> Ready,
        Failed <=> Failed,
    }
    ImageFormat <=> ImageFormat ("image format") {
        Qcow2 <=> Qcow2,
        Raw <=> Raw,
        Kernel <=> Kernel,
        Initrd <=> Initrd,
    }
    VolumeKind <=> VolumeKind ("volume kind") {
        Disk <=> Disk,
        Weights <=> Weights,
    }
    NetworkMode <=> NetworkMode ("network mode") {
        User <=> User,
        Bridge <=> Bridge,
        VmnetShared <=> VmnetShared,
        VmnetBridged <=> VmnetBridged,
    }
    Protocol <=> Protocol ("protocol") {
        Tcp <=> Tcp,
        Udp <=> Udp,
    }
    NetworkPhase <=> NetworkPhase ("network phase") {
        Pending <=> Pending,
        Ready <=> Ready,
        Failed <=> Failed,
    }
    Role <=> Role ("role") {
        Admin <=> Admin,
        Operator <=> Operator,
        Viewer <=> Viewer,
    }
    Phase <=> Phase ("phase") {
        Pending <=> Pending,
        Starting <=> Starting,
        Running <=> Running,
        Paused <=> Paused,
        Stopping <=> Stopping,
        Stopped <=> Stopped,
        Failed <=> Failed,
    }
}

/// The wire value of an optional enum field: `*_UNSPECIFIED` for `None`.
pub(super) fn enum_or_unspecified<T: PbEnum>(value: Option<T>) -> i32 {
    value.map_or(0, |v| T::Pb::from(v).into())
}

pub(super) fn enum_value<T: PbEnum>(value: T) -> i32 {
    T::Pb::from(value).into()
}

/// Reads an enum field of input: `None` for `*_UNSPECIFIED`, an error naming `field` for a
/// number the schema does not define (a newer client's value, or garbage).
pub(super) fn decode<T: PbEnum>(field: &str, value: i32) -> Result<Option<T>, ValidationError> {
    match T::Pb::try_from(value) {
        Ok(known) => Ok(T::from_pb(known)),
        Err(_) => {
            let names: Vec<_> = T::ALL.iter().map(|v| T::pb_name((*v).into())).collect();
            let message = format!("{value} is not a valid {}: use {}", T::WHAT, one_of(&names));
            Err(ValidationError::new(field, message))
        }
    }
}

/// Reads an enum field of output: anything unknown is "not set".
pub(super) fn decode_lenient<T: PbEnum>(value: i32) -> Option<T> {
    T::Pb::try_from(value).ok().and_then(T::from_pb)
}

pub(super) fn required(field: &str) -> ValidationError {
    ValidationError::new(field, "required")
}

fn boot_required() -> ValidationError {
    ValidationError::new("spec.boot", "required: set kernel, disk or volume")
}

/// proto3 strings cannot be absent: empty means "not set".
pub(super) fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

// The API carries paths as UTF-8 strings, as the JSON form does (serde refuses a non-UTF-8
// path). Only a spec built in Rust can hold one that is not; it is converted lossily.
pub(super) fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl From<&Vm> for pb::Vm {
    fn from(vm: &Vm) -> Self {
        pb::Vm {
            metadata: Some((&vm.metadata).into()),
            spec: Some((&vm.spec).into()),
            status: Some((&vm.status).into()),
        }
    }
}

impl From<Vm> for pb::Vm {
    fn from(vm: Vm) -> Self {
        pb::Vm::from(&vm)
    }
}

/// Checks metadata and spec as a manifest is checked; status is taken as it comes (a missing
/// one is the default, `Pending`).
impl TryFrom<pb::Vm> for Vm {
    type Error = ValidationError;

    fn try_from(vm: pb::Vm) -> Result<Self, Self::Error> {
        Ok(Vm {
            metadata: vm
                .metadata
                .ok_or_else(|| required("metadata"))?
                .try_into()?,
            spec: vm.spec.ok_or_else(|| required("spec"))?.try_into()?,
            status: vm.status.map(VmStatus::from).unwrap_or_default(),
        })
    }
}

impl From<&ObjectMeta> for pb::ObjectMeta {
    fn from(meta: &ObjectMeta) -> Self {
        pb::ObjectMeta {
            name: meta.name.to_string(),
            project: meta
                .project
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            uid: meta.uid.clone(),
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            resource_version: meta.resource_version,
            generation: meta.generation,
            created_at: meta.created_at.clone().unwrap_or_default(),
            deleting: meta.deleting,
        }
    }
}

/// Checks the name, label and annotation keys (`metadata.name`, `metadata.labels`, …).
impl TryFrom<pb::ObjectMeta> for ObjectMeta {
    type Error = ValidationError;

    fn try_from(meta: pb::ObjectMeta) -> Result<Self, Self::Error> {
        let name =
            ResourceName::new(meta.name).map_err(|e| ValidationError::new("metadata.name", e))?;
        let project = non_empty(meta.project)
            .map(ResourceName::new)
            .transpose()
            .map_err(|e| ValidationError::new("metadata.project", e))?;
        let meta = ObjectMeta {
            name,
            project,
            uid: meta.uid,
            labels: meta.labels,
            annotations: meta.annotations,
            resource_version: meta.resource_version,
            generation: meta.generation,
            created_at: non_empty(meta.created_at),
            deleting: meta.deleting,
        };
        meta.validate()?;
        Ok(meta)
    }
}

/// Sets every field, defaults included, so that the message says what the VM gets; only an
/// unnamed machine stays `MACHINE_UNSPECIFIED` (the architecture's default).
impl From<&VmSpec> for pb::VmSpec {
    fn from(spec: &VmSpec) -> Self {
        pb::VmSpec {
            cpus: Some(spec.cpus),
            memory_bytes: Some(spec.memory.as_u64()),
            arch: enum_value(spec.arch),
            machine: enum_or_unspecified(spec.machine),
            accel: enum_value(spec.accel),
            boot: Some((&spec.boot).into()),
            power: enum_value(spec.power),
            introspection: spec.introspection,
            restart_policy: enum_value(spec.restart_policy),
            volumes: spec
                .volumes
                .iter()
                .map(|a| pb::VolumeAttachment {
                    volume: a.volume.to_string(),
                    readonly: a.readonly,
                    serial: a.serial.clone(),
                })
                .collect(),
            networks: spec.networks.iter().map(Into::into).collect(),
            cloud_init: spec.cloud_init.as_ref().map(Into::into),
            placement: (!spec.placement.is_empty()).then(|| pb::Placement {
                node_selector: spec.placement.node_selector.clone().into_iter().collect(),
                anti_affinity: spec.placement.anti_affinity.clone(),
            }),
            shares: spec
                .shares
                .iter()
                .map(|s| pb::Share {
                    host_path: s.host_path.display().to_string(),
                    tag: s.tag.clone(),
                    read_only: s.read_only,
                })
                .collect(),
            template: spec.template.as_ref().map(ToString::to_string),
        }
    }
}

/// Fills in the defaults for absent fields and `*_UNSPECIFIED` enums, then validates through
/// [`VmSpec::builder`]. An explicit `cpus: 0` or `memory_bytes: 0` is refused, not defaulted.
impl TryFrom<pb::VmSpec> for VmSpec {
    type Error = ValidationError;

    fn try_from(spec: pb::VmSpec) -> Result<Self, Self::Error> {
        let arch = decode::<Arch>("spec.arch", spec.arch)?;
        let machine = decode::<Machine>("spec.machine", spec.machine)?;
        let accel = decode::<Accel>("spec.accel", spec.accel)?;
        let power = decode::<Power>("spec.power", spec.power)?;
        let restart_policy = decode::<RestartPolicy>("spec.restart_policy", spec.restart_policy)?;
        let boot = boot_from_pb(spec.boot.ok_or_else(boot_required)?)?;

        let networks = super::network::attachments_from_pb(spec.networks)?;
        let mut builder = VmSpec::builder(boot).introspection(spec.introspection);
        for attachment in networks {
            builder = builder.network(attachment);
        }
        if let Some(cloud_init) = spec.cloud_init {
            builder = builder.cloud_init(cloud_init.into());
        }
        if let Some(cpus) = spec.cpus {
            builder = builder.cpus(cpus);
        }
        if let Some(placement) = spec.placement {
            builder = builder.placement(crate::Placement {
                node_selector: placement.node_selector.into_iter().collect(),
                anti_affinity: placement.anti_affinity,
            });
        }
        for share in spec.shares {
            builder = builder.share(crate::Share {
                host_path: share.host_path.into(),
                tag: share.tag,
                read_only: share.read_only,
            });
        }
        if let Some(bytes) = spec.memory_bytes {
            builder = builder.memory(ByteSize::new(bytes));
        }
        if let Some(template) = spec.template {
            let template = template
                .parse()
                .map_err(|e| ValidationError::new("spec.template", e))?;
            builder = builder.template(template);
        }
        if let Some(arch) = arch {
            builder = builder.arch(arch);
        }
        if let Some(machine) = machine {
            builder = builder.machine(machine);
        }
        if let Some(accel) = accel {
            builder = builder.accel(accel);
        }
        if let Some(power) = power {
            builder = builder.power(power);
        }
        if let Some(restart_policy) = restart_policy {
            builder = builder.restart_policy(restart_policy);
        }
        for (i, a) in spec.volumes.into_iter().enumerate() {
            let volume = ResourceName::new(a.volume)
                .map_err(|e| ValidationError::new(format!("spec.volumes[{i}].volume"), e))?;
            builder = builder.volume(crate::VolumeAttachment {
                volume,
                readonly: a.readonly,
                serial: a.serial,
            });
        }
        builder.build()
    }
}

impl From<&Boot> for pb::Boot {
    fn from(boot: &Boot) -> Self {
        let source = match boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => pb::boot::Source::Kernel(pb::KernelBoot {
                kernel: path_string(kernel),
                initrd: initrd.as_deref().map(path_string),
                cmdline: cmdline.clone(),
            }),
            Boot::Disk { path, format } => pb::boot::Source::Disk(pb::DiskBoot {
                path: path_string(path),
                format: enum_or_unspecified(*format),
            }),
            Boot::Volume { volume } => pb::boot::Source::Volume(pb::VolumeBoot {
                volume: volume.to_string(),
            }),
        };
        pb::Boot {
            source: Some(source),
        }
    }
}

/// Converts and checks paths and command line, with errors named as in a spec
/// (`spec.boot.kernel.kernel`).
impl TryFrom<pb::Boot> for Boot {
    type Error = ValidationError;

    fn try_from(boot: pb::Boot) -> Result<Self, Self::Error> {
        let boot = boot_from_pb(boot)?;
        boot.validate()?;
        Ok(boot)
    }
}

/// The boot source without checking its paths: [`VmSpecBuilder::build`](crate::VmSpecBuilder)
/// does, after the fields a manifest's spec checks first.
fn boot_from_pb(boot: pb::Boot) -> Result<Boot, ValidationError> {
    match boot.source {
        Some(pb::boot::Source::Kernel(kernel)) => Ok(Boot::Kernel {
            kernel: PathBuf::from(kernel.kernel),
            initrd: kernel.initrd.map(PathBuf::from),
            cmdline: kernel.cmdline,
        }),
        Some(pb::boot::Source::Disk(disk)) => Ok(Boot::Disk {
            path: PathBuf::from(disk.path),
            format: decode("spec.boot.disk.format", disk.format)?,
        }),
        Some(pb::boot::Source::Volume(v)) => Ok(Boot::Volume {
            volume: ResourceName::new(v.volume)
                .map_err(|e| ValidationError::new("spec.boot.volume.volume", e))?,
        }),
        None => Err(boot_required()),
    }
}

impl From<&VmStatus> for pb::VmStatus {
    fn from(status: &VmStatus) -> Self {
        pb::VmStatus {
            phase: enum_value(status.phase),
            conditions: status.conditions.iter().map(pb::Condition::from).collect(),
            observed_generation: status.observed_generation,
            pid: status.pid,
            accelerator: enum_or_unspecified(status.accelerator),
            started_at: status.started_at.clone(),
            boot_time_ms: status.boot_time_ms,
            exit: status.exit.as_ref().map(pb::ExitInfo::from),
            qemu_version: status.qemu_version.clone(),
            restarted_for: status.restarted_for.clone(),
            message: status.message.clone(),
            networks: status.networks.iter().map(Into::into).collect(),
            expires_at: status.expires_at.clone(),
            node: status.node.clone(),
            migration: status.migration.as_ref().map(|m| pb::MigrationStatus {
                request: m.request.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                phase: m.phase.as_str().to_owned(),
                address: m.address.clone(),
                transferred_bytes: m.transferred_bytes,
                remaining_bytes: m.remaining_bytes,
                total_bytes: m.total_bytes,
                dirty_pages_rate: m.dirty_pages_rate,
                expected_downtime_ms: m.expected_downtime_ms,
                downtime_ms: m.downtime_ms,
                total_time_ms: m.total_time_ms,
                message: m.message.clone(),
                tls: m.tls,
                auto_converge: m.auto_converge,
                postcopy: m.postcopy,
                bandwidth: m.bandwidth,
                disk_address: m.disk_address.clone(),
                disk_copied_bytes: m.disk_copied_bytes,
                disk_total_bytes: m.disk_total_bytes,
                disks_ready: m.disks_ready,
            }),
            restored_from: status.restored_from.clone(),
        }
    }
}

/// Lenient, as status is output: an unknown or unspecified phase reads as `Pending`, an
/// unknown accelerator as not known.
impl From<pb::VmStatus> for VmStatus {
    fn from(status: pb::VmStatus) -> Self {
        VmStatus {
            phase: decode_lenient(status.phase).unwrap_or_default(),
            conditions: status.conditions.into_iter().map(Condition::from).collect(),
            observed_generation: status.observed_generation,
            pid: status.pid,
            accelerator: decode_lenient(status.accelerator),
            started_at: status.started_at,
            boot_time_ms: status.boot_time_ms,
            exit: status.exit.map(ExitInfo::from),
            qemu_version: status.qemu_version,
            restarted_for: status.restarted_for,
            message: status.message,
            networks: status.networks.into_iter().map(Into::into).collect(),
            expires_at: status.expires_at,
            node: status.node,
            migration: status.migration.map(|m| MigrationStatus {
                request: m.request,
                source: m.source,
                target: m.target,
                phase: m.phase.parse().unwrap_or_default(),
                address: m.address,
                transferred_bytes: m.transferred_bytes,
                remaining_bytes: m.remaining_bytes,
                total_bytes: m.total_bytes,
                dirty_pages_rate: m.dirty_pages_rate,
                expected_downtime_ms: m.expected_downtime_ms,
                downtime_ms: m.downtime_ms,
                total_time_ms: m.total_time_ms,
                message: m.message,
                tls: m.tls,
                auto_converge: m.auto_converge,
                postcopy: m.postcopy,
                bandwidth: m.bandwidth,
                disk_address: m.disk_address,
                disk_copied_bytes: m.disk_copied_bytes,
                disk_total_bytes: m.disk_total_bytes,
                disks_ready: m.disks_ready,
            }),
            restored_from: status.restored_from,
        }
    }
}

impl From<&Condition> for pb::Condition {
    fn from(condition: &Condition) -> Self {
        pb::Condition {
            r#type: condition.type_.clone(),
            status: condition.status,
            reason: condition.reason.clone(),
            message: condition.message.clone(),
            last_transition: condition.last_transition.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::Condition> for Condition {
    fn from(condition: pb::Condition) -> Self {
        Condition {
            type_: condition.r#type,
            status: condition.status,
            reason: condition.reason,
            message: condition.message,
            last_transition: non_empty(condition.last_transition),
        }
    }
}

impl From<&ExitInfo> for pb::ExitInfo {
    fn from(exit: &ExitInfo) -> Self {
        pb::ExitInfo {
            code: exit.code,
            signal: exit.signal,
            reason: exit.reason.clone(),
        }
    }
}

impl From<pb::ExitInfo> for ExitInfo {
    fn from(exit: pb::ExitInfo) -> Self {
        ExitInfo {
            code: exit.code,
            signal: exit.signal,
            reason: exit.reason,
        }
    }
}
