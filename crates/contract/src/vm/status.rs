use serde::{Deserialize, Serialize};

use crate::choice::choice;
use crate::{Accel, Condition, NetworkAttachmentStatus, set_condition};

choice! {
    /// Where a VM is in its life, as controllers last saw it.
    #[derive(Default)]
    pub enum Phase ("phase") {
        /// Accepted, not acted on yet (the default).
        #[default]
        Pending => "Pending",
        /// QEMU is being started.
        Starting => "Starting",
        /// The guest's vCPUs run.
        Running => "Running",
        /// QEMU runs with the vCPUs paused.
        Paused => "Paused",
        /// The guest is being shut down.
        Stopping => "Stopping",
        /// No QEMU process.
        Stopped => "Stopped",
        /// QEMU could not start or died unexpectedly; see `status.exit` and `status.message`.
        Failed => "Failed",
    }
}

choice! {
    /// Where a live migration stands.
    #[derive(Default)]
    pub enum MigrationPhase ("status.migration.phase") {
        /// Asked for; the target node prepares to receive the VM (the default).
        #[default]
        Pending => "Pending",
        /// The target's QEMU waits for the VM at `address`.
        Listening => "Listening",
        /// The source sends RAM and device state.
        Migrating => "Migrating",
        /// The VM runs on the target; `status.node` names it.
        Completed => "Completed",
        /// It did not move and runs on where it was; `message` says why.
        Failed => "Failed",
        /// Cancelled before the switch; it runs on where it was.
        Cancelled => "Cancelled",
    }
}

impl MigrationPhase {
    /// The migration is over, one way or the other.
    pub fn ended(self) -> bool {
        matches!(
            self,
            MigrationPhase::Completed | MigrationPhase::Failed | MigrationPhase::Cancelled
        )
    }
}

/// How a live migration may go, as asked for with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationOptions {
    /// QEMU slows the guest's vCPUs down when the migration does not converge.
    pub auto_converge: bool,
    /// Post-copy: after the first pass of RAM the rest follows on demand, so the migration
    /// ends whatever the guest dirties.
    pub postcopy: bool,
    /// At most this many bytes a second for this move (RAM, and disks first if any); the
    /// source node's own limit (`--migration-bandwidth`) still applies when lower.
    pub bandwidth: Option<u64>,
}

impl MigrationOptions {
    const AUTO_CONVERGE: &'static str = "auto-converge";
    const POSTCOPY: &'static str = "postcopy";
    const BANDWIDTH: &'static str = "bandwidth=";

    /// The options as the `corral.dev/migrate-options` annotation holds them
    /// (`auto-converge,postcopy,bandwidth=BYTES`); `None` for none.
    pub fn to_annotation(self) -> Option<String> {
        let mut names: Vec<String> = [
            (self.auto_converge, Self::AUTO_CONVERGE),
            (self.postcopy, Self::POSTCOPY),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect();
        if let Some(bytes) = self.bandwidth {
            names.push(format!("{}{bytes}", Self::BANDWIDTH));
        }
        (!names.is_empty()).then(|| names.join(","))
    }

    /// The options an annotation value names; names it does not know are left out (the
    /// annotation is written by the server, and a newer one may know more).
    pub fn from_annotation(value: &str) -> MigrationOptions {
        let has = |name: &str| value.split(',').any(|v| v.trim() == name);
        MigrationOptions {
            auto_converge: has(Self::AUTO_CONVERGE),
            postcopy: has(Self::POSTCOPY),
            bandwidth: value
                .split(',')
                .find_map(|v| v.trim().strip_prefix(Self::BANDWIDTH)?.parse().ok())
                .filter(|b| *b > 0),
        }
    }
}

/// A VM's last live migration, as the nodes carrying it out report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct MigrationStatus {
    /// The request it carries out (the `corral.dev/migrate-to` annotation's value).
    pub request: String,
    /// The node it leaves.
    pub source: String,
    /// The node it goes to.
    pub target: String,
    /// Where it stands.
    pub phase: MigrationPhase,
    /// Where the target's QEMU listens (`tcp:HOST:PORT`), once it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// RAM bytes sent so far.
    pub transferred_bytes: u64,
    /// RAM bytes still to send.
    pub remaining_bytes: u64,
    /// Guest RAM in bytes.
    pub total_bytes: u64,
    /// Pages the guest dirties a second.
    pub dirty_pages_rate: u64,
    /// Downtime QEMU expects at the current rates, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_downtime_ms: Option<u64>,
    /// How long the guest was stopped for the switch, in milliseconds (once completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// How long the whole migration took, in milliseconds (once completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time_ms: Option<u64>,
    /// A sentence for people: why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The stream is TLS, both QEMUs holding their node's certificate from the cluster CA
    /// (the target writes it when it listens).
    pub tls: bool,
    /// QEMU slows the guest's vCPUs down when the migration does not converge.
    pub auto_converge: bool,
    /// Post-copy: once the first pass of RAM is sent, the guest moves to the target and the
    /// rest of its RAM follows on demand, so that a migration ends whatever the guest dirties.
    pub postcopy: bool,
    /// The bandwidth asked for this move, in bytes a second (the source node's own
    /// `--migration-bandwidth` applies too, when lower).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Where the target exports the files it made for the VM's node-local volumes (NBD,
    /// `HOST:PORT`), for the source to mirror the disks into before the RAM moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_address: Option<String>,
    /// Disk bytes mirrored so far.
    pub disk_copied_bytes: u64,
    /// Disk bytes to mirror in all (grows while the guest writes).
    pub disk_total_bytes: u64,
    /// Every disk is copied and follows the guest's writes: the RAM moves next.
    pub disks_ready: bool,
}

/// What is true of a VM now. Written only by controllers.
///
/// Every field has a default, and unknown fields are accepted: status is output, and a reader
/// must cope with a status written by a newer server. (Input types deny unknown fields.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct VmStatus {
    /// Where the VM is in its life.
    #[schema(required = true)]
    pub phase: Phase,
    /// Observed aspects of its state, one per type.
    #[schema(required = true)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` of the spec this status reflects.
    #[schema(required = true)]
    pub observed_generation: u64,
    /// Host pid of the QEMU process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The accelerator in use (never `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accel>,
    /// When the current QEMU process started, in RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Milliseconds from process start to the guest's first sign of life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_time_ms: Option<u64>,
    /// How the last QEMU process ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// Version of the QEMU running the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// The restart request (the `corral.dev/restart-requested-at` annotation's value) a
    /// controller has carried out, so each request restarts the VM once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted_for: Option<String>,
    /// A sentence for people about the current state, e.g. why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The networks the running QEMU process has, with the host ports actually forwarded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentStatus>,
    /// When corrald deletes the VM, in RFC 3339: the `corral.dev/expires-at` annotation as a
    /// controller read it (`vm create --ttl`, `corral temp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The node the scheduler bound the VM to (a compare-and-swap write, so never two);
    /// absent while it is not placed. Only that node's agent runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The VM's last live migration (`corral vm migrate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// The template state the VM started from, `IMAGE@blake3:<hex>`: set by its first start,
    /// so that later starts boot from its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

impl VmStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Adds or replaces a condition (see [`set_condition`]).
    pub fn set_condition(&mut self, condition: Condition) {
        set_condition(&mut self.conditions, condition);
    }
}

/// How a QEMU process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number, if it was killed by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why, as a short phrase, e.g. `guest shut down` or `guest panicked`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_options_round_trip_through_their_annotation() {
        let both = MigrationOptions {
            auto_converge: true,
            postcopy: true,
            bandwidth: None,
        };
        assert_eq!(
            both.to_annotation().as_deref(),
            Some("auto-converge,postcopy")
        );
        assert_eq!(
            MigrationOptions::from_annotation("auto-converge,postcopy"),
            both
        );
        let slow = MigrationOptions {
            bandwidth: Some(4 << 20),
            ..MigrationOptions::default()
        };
        assert_eq!(slow.to_annotation().as_deref(), Some("bandwidth=4194304"));
        assert_eq!(MigrationOptions::from_annotation("bandwidth=4194304"), slow);
        assert_eq!(
            MigrationOptions::from_annotation("bandwidth=0,bandwidth=x"),
            MigrationOptions::default(),
            "no bandwidth of its own"
        );
        assert_eq!(MigrationOptions::default().to_annotation(), None);
        assert_eq!(
            MigrationOptions::from_annotation("postcopy,future-thing"),
            MigrationOptions {
                postcopy: true,
                ..MigrationOptions::default()
            }
        );
    }

    #[test]
    fn phases_are_pascal_case() {
        let words: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            words,
            [
                "Pending", "Starting", "Running", "Paused", "Stopping", "Stopped", "Failed"
            ]
        );
        assert_eq!(serde_json::to_value(Phase::Running).unwrap(), "Running");
    }

    #[test]
    fn empty_status_is_pending() {
        let status: VmStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(status, VmStatus::default());
        assert_eq!(status.phase, Phase::Pending);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"phase": "Pending", "conditions": [], "observed_generation": 0})
        );
    }

    #[test]
    fn full_status_round_trips_and_tolerates_new_fields() {
        let mut status = VmStatus {
            phase: Phase::Failed,
            observed_generation: 3,
            pid: Some(4242),
            accelerator: Some(Accel::Tcg),
            started_at: Some("2025-01-02T03:04:05Z".into()),
            boot_time_ms: Some(850),
            exit: Some(ExitInfo {
                code: None,
                signal: Some(9),
                reason: "killed".into(),
            }),
            qemu_version: Some("10.0.0".into()),
            message: Some("QEMU was killed by signal 9".into()),
            ..VmStatus::default()
        };
        status.set_condition(Condition::new("Ready", false, "QemuExited", "killed"));
        let mut json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            serde_json::from_value::<VmStatus>(json.clone()).unwrap(),
            status
        );
        json["from_the_future"] = true.into();
        assert_eq!(serde_json::from_value::<VmStatus>(json).unwrap(), status);
        assert!(!status.condition("Ready").unwrap().status);
        assert!(status.condition("Paused").is_none());
    }
}
