//! Moving a running VM's disks with it, the way libvirt does for non-shared storage: the
//! target QEMU (started `-incoming defer`, on files of the same size) exports its disks over
//! NBD; the source adds an NBD client node per disk and mirrors the disk into it with
//! `blockdev-mirror`; the RAM migration starts when every mirror is ready, and once it
//! completed the mirrors are cancelled without force, which copies the last dirty blocks.
//! TLS uses the migration's own `tls-creds-x509` object, so the disks travel under the same
//! cluster-CA certificates as the RAM.

use std::time::Duration;

use corral_hypervisor::{DiskExport, DiskMirror, DiskMirrorInfo, MirrorSync};
use corral_qmp::{BlockJobInfo, Qmp};
use serde_json::json;

use crate::migrate_setup::TLS_ID;

/// The block node, job and NBD export names of disk `i`: the export carries the disk's
/// node name, the source's client node and job are named after it.
fn disk_node(i: usize) -> String {
    format!("disk{i}")
}

fn export_id(i: usize) -> String {
    format!("mirror-export-{i}")
}

fn job_id(i: usize) -> String {
    format!("mirror-disk{i}")
}

const CLIENT_PREFIX: &str = "mirror-target";

fn client_node(i: usize) -> String {
    format!("{CLIENT_PREFIX}{i}")
}

/// The disk index of mirror job `id`, if it is one of ours.
fn disk_of_job(id: &str) -> Option<usize> {
    id.strip_prefix("mirror-disk")?.parse().ok()
}

/// Target: starts the NBD server and exports the disks; on failure stops it again.
pub(crate) async fn export(qmp: &Qmp, export: &DiskExport) -> Result<(), String> {
    check_disks(qmp, export.disks.iter().copied()).await?;
    // An earlier attempt's server goes first.
    let _ = qmp.nbd_server_stop().await;
    let tls = export.tls.then_some(TLS_ID);
    qmp.nbd_server_start(&export.host, export.port, tls)
        .await
        .map_err(|e| {
            format!(
                "starting the NBD server for the disks on {}:{}: {e}",
                export.host, export.port
            )
        })?;
    for &i in &export.disks {
        if let Err(e) = qmp
            .block_export_add_nbd(&export_id(i), &disk_node(i), &disk_node(i), true)
            .await
        {
            let _ = qmp.nbd_server_stop().await;
            return Err(format!("exporting disk {i} over NBD: {e}"));
        }
    }
    Ok(())
}

/// Fails naming the first of `disks` the VM does not have.
async fn check_disks(qmp: &Qmp, mut disks: impl Iterator<Item = usize>) -> Result<(), String> {
    let nodes = qmp
        .block_node_names()
        .await
        .map_err(|e| format!("listing the block nodes: {e}"))?;
    match disks.find(|&i| !nodes.contains(&disk_node(i))) {
        Some(i) => Err(format!("the VM has no disk {i}")),
        None => Ok(()),
    }
}

/// Target: stops the NBD server and its exports; nothing when none runs. Refused while the
/// incoming migration is still being read: QEMU activates the disks only at its end, and
/// libvirt too closes the export only after the target's migration has completed.
pub(crate) async fn unexport(qmp: &Qmp) -> Result<(), String> {
    match qmp.query_status().await {
        Ok(status) if status.status == corral_qmp::RunState::InMigrate => {
            return Err("the incoming migration has not completed yet".into());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("reading the run state: {e}")),
    }
    match qmp.nbd_server_stop().await {
        Ok(()) => Ok(()),
        Err(corral_qmp::Error::Qmp { desc, .. }) if desc.contains("not running") => Ok(()),
        Err(e) => Err(format!("stopping the NBD server: {e}")),
    }
}

/// Source: one NBD client node and one mirror job per disk. A failure on the way undoes
/// what was made.
pub(crate) async fn start(qmp: &Qmp, mirror: &DiskMirror) -> Result<(), String> {
    check_disks(qmp, mirror.disks.iter().map(|(i, _)| *i)).await?;
    // What an earlier attempt left goes first.
    abort(qmp).await?;
    // QEMU limits each job on its own: the node's limit is shared among them.
    let speed = mirror
        .bandwidth
        .map(|b| (b / mirror.disks.len().max(1) as u64).max(1));
    for &(i, sync) in &mirror.disks {
        let mut options = json!({
            "driver": "nbd",
            "node-name": client_node(i),
            "server": { "type": "inet", "host": mirror.host, "port": mirror.port.to_string() },
            "export": disk_node(i),
        });
        if let Some(hostname) = &mirror.tls_hostname {
            options["tls-creds"] = json!(TLS_ID);
            options["tls-hostname"] = json!(hostname);
        }
        let sync = match sync {
            MirrorSync::Full => "full",
            MirrorSync::Top => "top",
        };
        let started = match qmp.blockdev_add(options).await {
            Err(e) => Err(format!(
                "connecting disk {i} to the target's export at {}:{}: {e}",
                mirror.host, mirror.port
            )),
            Ok(()) => qmp
                .blockdev_mirror(&job_id(i), &disk_node(i), &client_node(i), sync, speed)
                .await
                .map_err(|e| format!("starting the mirror of disk {i}: {e}")),
        };
        if let Err(e) = started {
            let _ = abort(qmp).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Source: where every mirror job stands.
pub(crate) async fn status(qmp: &Qmp) -> Result<Vec<DiskMirrorInfo>, String> {
    let jobs = jobs(qmp).await?;
    Ok(jobs
        .into_iter()
        .filter_map(|job| {
            Some(DiskMirrorInfo {
                disk: disk_of_job(&job.id)?,
                copied: job.offset,
                total: job.len,
                ready: job.ready,
                error: job.error,
            })
        })
        .collect())
}

async fn jobs(qmp: &Qmp) -> Result<Vec<BlockJobInfo>, String> {
    let jobs = qmp
        .query_block_jobs()
        .await
        .map_err(|e| format!("reading the disk mirrors: {e}"))?;
    Ok(jobs
        .into_iter()
        .filter(|job| disk_of_job(&job.id).is_some())
        .collect())
}

/// Source, after the RAM migration: cancels every ready mirror without force (the last dirty
/// blocks are copied first), waits for each to conclude, and removes the client nodes.
pub(crate) async fn complete(qmp: &Qmp) -> Result<(), String> {
    let jobs = jobs(qmp).await?;
    if let Some(job) = jobs.iter().find(|j| !j.ready || j.error.is_some()) {
        let why = job.error.as_deref().unwrap_or("it is not ready");
        return Err(format!(
            "the mirror of disk {} cannot complete: {why}",
            disk_of_job(&job.id).unwrap_or_default()
        ));
    }
    for job in &jobs {
        qmp.block_job_cancel(&job.id, false)
            .await
            .map_err(|e| format!("completing the mirror {}: {e}", job.id))?;
    }
    let errors = conclude(qmp, &jobs).await?;
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(())
}

/// Source: force-cancels every mirror, waits for each to end, and removes the client nodes.
pub(crate) async fn abort(qmp: &Qmp) -> Result<(), String> {
    let jobs = jobs(qmp).await?;
    for job in jobs.iter().filter(|j| j.status != "concluded") {
        // A job that ended meanwhile refuses the cancel; `conclude` sees it.
        let _ = qmp.block_job_cancel(&job.id, true).await;
    }
    conclude(qmp, &jobs).await?;
    // A client node left by an attempt whose job never started.
    let nodes = qmp
        .block_node_names()
        .await
        .map_err(|e| format!("listing the block nodes: {e}"))?;
    for node in nodes.iter().filter(|n| n.starts_with(CLIENT_PREFIX)) {
        qmp.blockdev_del(node)
            .await
            .map_err(|e| format!("removing the NBD client node {node}: {e}"))?;
    }
    Ok(())
}

/// Waits for `jobs` to conclude, dismisses them and removes their client nodes; the errors
/// they ended with.
async fn conclude(qmp: &Qmp, jobs: &[BlockJobInfo]) -> Result<Vec<String>, String> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut errors = Vec::new();
    for job in jobs {
        loop {
            let now = qmp
                .query_block_jobs()
                .await
                .map_err(|e| format!("reading the disk mirrors: {e}"))?
                .into_iter()
                .find(|j| j.id == job.id);
            match now {
                None => break,
                Some(now) if now.status == "concluded" => {
                    if let Some(e) = now.error {
                        errors.push(format!(
                            "the mirror of disk {}: {e}",
                            disk_of_job(&job.id).unwrap_or_default()
                        ));
                    }
                    qmp.job_dismiss(&job.id)
                        .await
                        .map_err(|e| format!("dismissing the mirror {}: {e}", job.id))?;
                    break;
                }
                Some(now) if tokio::time::Instant::now() >= deadline => {
                    return Err(format!(
                        "the mirror {} did not end within {PATIENCE:?} (it is {})",
                        job.id, now.status
                    ));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if let Some(i) = disk_of_job(&job.id) {
            let _ = qmp.blockdev_del(&client_node(i)).await;
        }
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_jobs_name_a_disk() {
        assert_eq!(disk_of_job(&job_id(3)), Some(3));
        assert_eq!(disk_of_job("snapshot-save"), None);
        assert_eq!(disk_of_job("mirror-diskx"), None);
    }
}
