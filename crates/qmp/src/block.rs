//! Block commands for moving a running VM's disks to another QEMU: an NBD server exporting
//! the target's disks, NBD client nodes and `blockdev-mirror` jobs on the source.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Error, Qmp};

impl Qmp {
    /// `nbd-server-start` on `host`:`port` (TCP), with TLS from the `tls-creds-x509` object
    /// `tls_creds` (endpoint `server`) when given.
    pub async fn nbd_server_start(
        &self,
        host: &str,
        port: u16,
        tls_creds: Option<&str>,
    ) -> Result<(), Error> {
        let mut args = json!({
            "addr": { "type": "inet", "data": { "host": host, "port": port.to_string() } },
        });
        if let Some(creds) = tls_creds {
            args["tls-creds"] = json!(creds);
        }
        self.execute("nbd-server-start", Some(args)).await.map(drop)
    }

    /// `nbd-server-stop`: closes the NBD server and every export it carries.
    pub async fn nbd_server_stop(&self) -> Result<(), Error> {
        self.execute("nbd-server-stop", None).await.map(drop)
    }

    /// `block-export-add` of type `nbd`: exports block node `node_name` as `name` on the
    /// running NBD server, writable or not.
    pub async fn block_export_add_nbd(
        &self,
        id: &str,
        node_name: &str,
        name: &str,
        writable: bool,
    ) -> Result<(), Error> {
        let args = json!({
            "type": "nbd", "id": id, "node-name": node_name, "name": name, "writable": writable,
        });
        self.execute("block-export-add", Some(args)).await.map(drop)
    }

    /// `blockdev-add` with `options` as QEMU's `BlockdevOptions` (`driver`, `node-name` …).
    pub async fn blockdev_add(&self, options: Value) -> Result<(), Error> {
        self.execute("blockdev-add", Some(options)).await.map(drop)
    }

    /// `blockdev-del`: removes the block node `node_name` (no job or device may use it).
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), Error> {
        self.execute("blockdev-del", Some(json!({ "node-name": node_name })))
            .await
            .map(drop)
    }

    /// `blockdev-mirror`: job `job_id` copies node `device` into node `target` (`sync`:
    /// `full` or `top`) and then keeps mirroring new writes until it is completed or
    /// cancelled. The job stays listed after it ends (`auto-dismiss` off) so that its error
    /// can be read; [`Qmp::job_dismiss`] removes it. `speed` caps it in bytes a second.
    pub async fn blockdev_mirror(
        &self,
        job_id: &str,
        device: &str,
        target: &str,
        sync: &str,
        speed: Option<u64>,
    ) -> Result<(), Error> {
        let mut args = json!({
            "job-id": job_id, "device": device, "target": target, "sync": sync,
            "auto-dismiss": false,
        });
        if let Some(speed) = speed {
            args["speed"] = json!(speed);
        }
        self.execute("blockdev-mirror", Some(args)).await.map(drop)
    }

    /// `query-block-jobs`: the block jobs and where they stand.
    pub async fn query_block_jobs(&self) -> Result<Vec<BlockJobInfo>, Error> {
        let value = self.execute("query-block-jobs", None).await?;
        serde_json::from_value(value).map_err(|err| Error::Protocol {
            reason: format!("unexpected reply to 'query-block-jobs': {err}"),
        })
    }

    /// `block-job-cancel`: ends job `job_id`. A mirror that is `ready` and not `force`d first
    /// copies what is still dirty, so its target ends as a consistent copy of the source.
    pub async fn block_job_cancel(&self, job_id: &str, force: bool) -> Result<(), Error> {
        let args = json!({ "device": job_id, "force": force });
        self.execute("block-job-cancel", Some(args)).await.map(drop)
    }

    /// `query-named-block-nodes` (flat): the names of every block node.
    pub async fn block_node_names(&self) -> Result<Vec<String>, Error> {
        let nodes = self
            .execute("query-named-block-nodes", Some(json!({ "flat": true })))
            .await?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| node["node-name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `job-dismiss`: removes the concluded job `job_id` from the job list.
    pub async fn job_dismiss(&self, job_id: &str) -> Result<(), Error> {
        self.execute("job-dismiss", Some(json!({ "id": job_id })))
            .await
            .map(drop)
    }
}

/// One entry of `query-block-jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockJobInfo {
    /// The job's id (QEMU calls it `device` for history's sake).
    #[serde(rename = "device")]
    pub id: String,
    /// `mirror`, `commit`, `stream`, `backup` …
    #[serde(rename = "type")]
    pub kind: String,
    /// `created`, `running`, `ready`, `standby`, `waiting`, `pending`, `aborting`,
    /// `concluded` …
    pub status: String,
    /// Bytes the job has done so far.
    pub offset: u64,
    /// Bytes it expects to do in all (grows while the guest writes).
    pub len: u64,
    /// A mirror copied everything once and now follows the guest's writes.
    #[serde(default)]
    pub ready: bool,
    /// Why the job failed, once it concluded.
    #[serde(default)]
    pub error: Option<String>,
}
