//! Names that are part of the API: annotation keys users and controllers write, condition
//! types and reasons clients match on, and the prefix Corral reserves for its own keys. Every
//! crate uses these constants; no other crate spells the strings.

/// The prefix of every annotation and label key Corral itself sets.
pub const PREFIX: &str = "corral.dev/";

/// Label keys Corral writes on objects.
pub mod labels {
    /// What declared an object: the source (a Git source, `corral apply --owner NAME`, a
    /// project file) whose prune may remove it. Objects of one owner are never changed by
    /// another.
    pub const OWNER: &str = "corral.dev/owner";
}

/// Annotation keys Corral reads or writes on objects.
pub mod annotations {
    /// On a VM: a new value (a time) asks for a restart with the current spec.
    pub const RESTART_REQUESTED_AT: &str = "corral.dev/restart-requested-at";
    /// On a VM: asks for a live migration, as `NODE@TIME` (a new value is a new request; the
    /// annotation removed while it runs cancels it). `status.migration` follows it.
    pub const MIGRATE_TO: &str = "corral.dev/migrate-to";
    /// On a VM, beside [`MIGRATE_TO`]: the request's options, comma-separated
    /// (`auto-converge`, `postcopy`); see [`crate::MigrationOptions`].
    pub const MIGRATE_OPTIONS: &str = "corral.dev/migrate-options";
    /// In a [`MIGRATE_TO`] value after the `@`: a drain asked for the move, so a VM that
    /// cannot move live is stopped and placed again instead (`@drain:TIME`).
    pub const MIGRATE_DRAIN: &str = "drain:";
    /// On a VM whose `spec.power` is `stopped`: [`STOP_MODE_FORCE`] stops it without waiting
    /// for the guest to shut down.
    pub const STOP_MODE: &str = "corral.dev/stop-mode";
    /// The value of [`STOP_MODE`] that asks for a forced stop.
    pub const STOP_MODE_FORCE: &str = "force";
    /// On a VM being deleted: how long its guest gets to shut down before QEMU is told to
    /// quit, in whole seconds (`0`: no graceful stop at all). Set by `delete --grace/--force`.
    pub const DELETE_GRACE_SECONDS: &str = "corral.dev/delete-grace-seconds";
    /// On a source: set by corrald (any value a caller sends is replaced) to `admin` when an
    /// admin created or last changed it: its fetches may reach any address.
    pub const FETCH_ACCESS: &str = "corral.dev/fetch-access";
    /// The value of [`FETCH_ACCESS`] for an admin's source.
    pub const FETCH_ACCESS_ADMIN: &str = "admin";
    /// On a source: a new value (a time) asks for a reconcile now.
    pub const RECONCILE_REQUESTED_AT: &str = "corral.dev/reconcile-requested-at";
    /// On a source: a new value (a time) lets the next reconcile prune past the mass-prune
    /// guard (`corral source approve`).
    pub const PRUNE_APPROVED_AT: &str = "corral.dev/prune-approved-at";
    /// On a snapshot: a new value (a time) asks for its VM to be put back to it.
    pub const RESTORE_REQUESTED_AT: &str = "corral.dev/restore-requested-at";
    /// On a volume: the uid of the VM it was made for (`vm create --image`); the volume is
    /// deleted with that VM.
    pub const OWNER_VM: &str = "corral.dev/owner-vm";
    /// On a resource a source declares: its own drift policy (`correct`, `warn` or `ignore`),
    /// in place of the source's `spec.drift`.
    pub const DRIFT: &str = "corral.dev/drift";
    /// On a VM: when the daemon deletes it, in RFC 3339 (`vm create --ttl 2h` sets it).
    pub const EXPIRES_AT: &str = "corral.dev/expires-at";
    /// On a VM of a project file: the provision steps `corral up` ran there, as short hashes
    /// in order (the guest's environment first), so that only changed steps run again.
    pub const PROVISIONED: &str = "corral.dev/provisioned";
    /// On a VM of a project file: the file's absolute path on the machine that ran `corral
    /// up`, so that another folder's file of the same project name is refused, not applied
    /// over it.
    pub const PROJECT_FILE: &str = "corral.dev/project-file";
}

/// Condition types and the reasons controllers give, as in `status.conditions`.
pub mod conditions {
    /// The VM runs as declared.
    pub const READY: &str = "Ready";
    /// The guest's SSH server answered with its banner through the VM's forward.
    pub const SSH_READY: &str = "SshReady";
    /// A guest started from a template was told its own hostname and MACs by its agent.
    pub const GUEST_IDENTITY: &str = "GuestIdentity";

    /// Reasons of the [`READY`] and [`SSH_READY`] conditions.
    pub mod reasons {
        /// The guest runs.
        pub const RUNNING: &str = "Running";
        /// The guest is paused.
        pub const PAUSED: &str = "Paused";
        /// QEMU is not running, as declared.
        pub const STOPPED: &str = "Stopped";
        /// QEMU ended in a way the restart policy does not restart.
        pub const FAILED: &str = "Failed";
        /// QEMU could not be started.
        pub const START_FAILED: &str = "StartFailed";
        /// Waiting: for a condition not known yet, or for dependencies that are missing or not
        /// Ready (the message names each).
        pub const WAITING: &str = "Waiting";
        /// A dependency failed; the message carries its own.
        pub const DEPENDENCY_FAILED: &str = "DependencyFailed";
        /// The guest's SSH banner was seen.
        pub const BANNER_SEEN: &str = "BannerSeen";
        /// The guest agent set the guest's hostname and MACs.
        pub const IDENTITY_SET: &str = "IdentitySet";
        /// No guest agent answered: the guest keeps the template VM's hostname and MACs.
        pub const NO_GUEST_AGENT: &str = "NoGuestAgent";
    }
}
