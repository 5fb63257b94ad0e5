//! Typed wrappers for the commands Corral uses.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Error, Memdev, ObjectProperty, Qmp, StatusInfo};

/// QEMU's default `max-bandwidth` for a migration, 128 MiB/s: what a migration without a
/// limit of its own runs at.
pub const QEMU_MAX_BANDWIDTH: u64 = 128 << 20;

impl Qmp {
    /// `query-status`: whether the vCPUs run, and QEMU's run state.
    pub async fn query_status(&self) -> Result<StatusInfo, Error> {
        self.execute_typed("query-status", None).await
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), Error> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes the vCPUs (also starts a machine created with `-S`).
    pub async fn cont(&self) -> Result<(), Error> {
        self.execute("cont", None).await.map(drop)
    }

    /// `migrate-incoming`: a VM started with `-incoming defer` listens at `uri`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), Error> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate-set-parameters` then `migrate`: sends the VM to `uri` with at most
    /// `downtime_ms` of downtime at the switch and at most `bandwidth` bytes a second
    /// (`None`: QEMU's own default, [`QEMU_MAX_BANDWIDTH`]).
    pub async fn migrate(
        &self,
        uri: &str,
        downtime_ms: u64,
        bandwidth: Option<u64>,
    ) -> Result<(), Error> {
        // Both every time: QEMU keeps parameters from one migration to the next, and a move
        // without a limit must not inherit the limit of an earlier (cancelled) one.
        let parameters = json!({
            "downtime-limit": downtime_ms,
            "max-bandwidth": bandwidth.unwrap_or(QEMU_MAX_BANDWIDTH),
        });
        self.execute("migrate-set-parameters", Some(parameters))
            .await?;
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate-set-parameters` with `parameters` (`{"tls-creds": …, "downtime-limit": …}`).
    pub async fn migrate_set_parameters(&self, parameters: Value) -> Result<(), Error> {
        self.execute("migrate-set-parameters", Some(parameters))
            .await
            .map(drop)
    }

    /// `query-migrate-parameters`: the parameters the next migration uses.
    pub async fn query_migrate_parameters(&self) -> Result<Value, Error> {
        self.execute("query-migrate-parameters", None).await
    }

    /// `migrate-set-capabilities`: turns migration capabilities (`auto-converge`,
    /// `postcopy-ram` …) on or off.
    pub async fn migrate_set_capabilities(
        &self,
        capabilities: &[(&str, bool)],
    ) -> Result<(), Error> {
        let list: Vec<Value> = capabilities
            .iter()
            .map(|(name, on)| json!({ "capability": name, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await
        .map(drop)
    }

    /// `query-migrate-capabilities`: `[{"capability": …, "state": …}, …]`.
    pub async fn query_migrate_capabilities(&self) -> Result<Value, Error> {
        self.execute("query-migrate-capabilities", None).await
    }

    /// `migrate-start-postcopy`: the outgoing migration switches to post-copy.
    pub async fn migrate_start_postcopy(&self) -> Result<(), Error> {
        self.execute("migrate-start-postcopy", None).await.map(drop)
    }

    /// `object-add` of `qom_type` with id `id` and `properties`.
    pub async fn object_add(
        &self,
        qom_type: &str,
        id: &str,
        properties: Value,
    ) -> Result<(), Error> {
        let mut args = json!({ "qom-type": qom_type, "id": id });
        if let (Some(args), Value::Object(properties)) = (args.as_object_mut(), properties) {
            args.extend(properties);
        }
        self.execute("object-add", Some(args)).await.map(drop)
    }

    /// `object-del`: removes the object `id`.
    pub async fn object_del(&self, id: &str) -> Result<(), Error> {
        self.execute("object-del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `query-migrate`: where the outgoing migration stands (`Value` as QEMU sends it).
    pub async fn query_migrate(&self) -> Result<Value, Error> {
        self.execute("query-migrate", None).await
    }

    /// `migrate_cancel`: ends the outgoing migration; the VM runs on here.
    pub async fn migrate_cancel(&self) -> Result<(), Error> {
        self.execute("migrate_cancel", None).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button; the guest decides what to do.
    pub async fn system_powerdown(&self) -> Result<(), Error> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `system_reset`: resets the machine.
    pub async fn system_reset(&self) -> Result<(), Error> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// `quit`: makes QEMU exit.
    ///
    /// QEMU may close the socket before its reply reaches us, so the connection closing
    /// while this command waits counts as success. If the connection was already closed
    /// before the command was sent, this returns [`Error::Closed`].
    pub async fn quit(&self) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        match self.execute("quit", None).await {
            Ok(_) | Err(Error::Closed) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// `query-memdev`: the memory backends.
    pub async fn query_memdev(&self) -> Result<Vec<Memdev>, Error> {
        self.execute_typed("query-memdev", None).await
    }

    /// `qom-list`: the properties of the QOM object at `path` (such as `/objects`).
    pub async fn qom_list(&self, path: &str) -> Result<Vec<ObjectProperty>, Error> {
        self.execute_typed("qom-list", Some(json!({ "path": path })))
            .await
    }

    /// `qom-get`: one property of the QOM object at `path`.
    pub async fn qom_get(&self, path: &str, property: &str) -> Result<Value, Error> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
        .await
    }

    /// `human-monitor-command`: runs an HMP command line and returns its output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String, Error> {
        let args = json!({ "command-line": command_line });
        self.execute_typed("human-monitor-command", Some(args))
            .await
    }

    /// `block_resize`: grows the block node `node_name` to `size` bytes while the guest runs.
    pub async fn block_resize(&self, node_name: &str, size: u64) -> Result<(), Error> {
        let args = json!({ "node-name": node_name, "size": size });
        self.execute("block_resize", Some(args)).await.map(drop)
    }

    /// `snapshot-save`, `snapshot-load` or `snapshot-delete` (QEMU ≥ 6.0): runs the job
    /// `job_id` on internal qcow2 snapshot `tag` of the block nodes `devices` (with the VM
    /// state in node `vmstate` for save and load), waits for it to conclude and dismisses it.
    /// A job that fails comes back as [`Error::Command`] with QEMU's message.
    pub async fn snapshot_job(
        &self,
        op: SnapshotJob,
        job_id: &str,
        tag: &str,
        vmstate: Option<&str>,
        devices: &[String],
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        let mut args = json!({ "job-id": job_id, "tag": tag, "devices": devices });
        if let (Some(vmstate), SnapshotJob::Save | SnapshotJob::Load) = (vmstate, op) {
            args["vmstate"] = json!(vmstate);
        }
        let command = match op {
            SnapshotJob::Save => "snapshot-save",
            SnapshotJob::Load => "snapshot-load",
            SnapshotJob::Delete => "snapshot-delete",
        };
        self.execute(command, Some(args)).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let jobs: Vec<JobInfo> = self.execute_typed("query-jobs", None).await?;
            let job = jobs.into_iter().find(|j| j.id == job_id);
            match job {
                Some(job) if job.status == "concluded" || job.status == "null" => {
                    let _ = self
                        .execute("job-dismiss", Some(json!({ "id": job_id })))
                        .await;
                    return match job.error {
                        None => Ok(()),
                        Some(desc) => Err(Error::Qmp {
                            command: command.into(),
                            class: "GenericError".into(),
                            desc,
                        }),
                    };
                }
                None => return Ok(()),
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    let _ = self
                        .execute("job-cancel", Some(json!({ "id": job_id })))
                        .await;
                    return Err(Error::Timeout {
                        command: command.into(),
                        after: timeout,
                    });
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    async fn execute_typed<T: DeserializeOwned>(
        &self,
        command: &str,
        args: Option<Value>,
    ) -> Result<T, Error> {
        let value = self.execute(command, args).await?;
        serde_json::from_value(value).map_err(|err| Error::Protocol {
            reason: format!("unexpected reply to '{command}': {err}"),
        })
    }
}

/// Which internal-snapshot job [`Qmp::snapshot_job`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotJob {
    /// `snapshot-save`.
    Save,
    /// `snapshot-load`.
    Load,
    /// `snapshot-delete`.
    Delete,
}

/// One entry of `query-jobs`.
#[derive(Debug, serde::Deserialize)]
struct JobInfo {
    id: String,
    status: String,
    #[serde(default)]
    error: Option<String>,
}
