use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_qmp::Qmp;
use serde_json::Value;

use crate::{Error, GuestRam, MemoryLayout};

/// A file-backed RAM backend of a running QEMU (`-object memory-backend-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBackend {
    /// The backend's id (`ram0` for Corral VMs).
    pub id: String,
    /// The file holding the RAM.
    pub mem_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Whether QEMU maps the file shared, so the file shows live guest RAM.
    pub share: bool,
}

fn qmp_err(command: String) -> impl FnOnce(corral_qmp::Error) -> Error {
    move |source| Error::Qmp { command, source }
}

/// The file-backed RAM backends of the QEMU behind `qmp`, found with `qom-list /objects`
/// and `qom-get` of `mem-path`, `size` and `share`.
pub async fn discover(qmp: &Qmp) -> Result<Vec<RamBackend>, Error> {
    let objects = qmp
        .qom_list("/objects")
        .await
        .map_err(qmp_err("qom-list /objects".into()))?;
    let mut backends = Vec::new();
    for object in objects {
        if object.type_ != "child<memory-backend-file>" {
            continue;
        }
        let path = format!("/objects/{}", object.name);
        let value = qom_get(qmp, &path, "mem-path").await?;
        let mem_path = PathBuf::from(
            value
                .as_str()
                .ok_or_else(|| bad(&path, "mem-path", &value))?,
        );
        let value = qom_get(qmp, &path, "size").await?;
        let size = value.as_u64().ok_or_else(|| bad(&path, "size", &value))?;
        let value = qom_get(qmp, &path, "share").await?;
        let share = value.as_bool().ok_or_else(|| bad(&path, "share", &value))?;
        backends.push(RamBackend {
            id: object.name,
            mem_path,
            size,
            share,
        });
    }
    Ok(backends)
}

async fn qom_get(qmp: &Qmp, path: &str, property: &str) -> Result<Value, Error> {
    qmp.qom_get(path, property)
        .await
        .map_err(qmp_err(format!("qom-get {path} {property}")))
}

fn bad(object: &str, property: &str, value: &Value) -> Error {
    Error::BadProperty {
        object: object.to_owned(),
        property: property.to_owned(),
        value: value.to_string(),
    }
}

/// The guest-physical layout of `backend`'s RAM from HMP `info mtree -f`, or `fallback`
/// applied to its size if the memory tree does not show it.
pub async fn discover_layout(
    qmp: &Qmp,
    backend: &RamBackend,
    fallback: impl FnOnce(u64) -> MemoryLayout,
) -> Result<MemoryLayout, Error> {
    let mtree = qmp
        .human_monitor_command("info mtree -f")
        .await
        .map_err(qmp_err("human-monitor-command info mtree -f".into()))?;
    Ok(MemoryLayout::from_mtree(&mtree, &backend.id).unwrap_or_else(|| fallback(backend.size)))
}

/// Opens the RAM of the QEMU behind `qmp`: its first file-backed backend, placed by the
/// memory tree (or `fallback`, such as [`MemoryLayout::x86_q35`]).
pub async fn open_discovered(
    qmp: &Qmp,
    fallback: impl FnOnce(u64) -> MemoryLayout,
) -> Result<GuestRam, Error> {
    let backend = discover(qmp)
        .await?
        .into_iter()
        .next()
        .ok_or(Error::NoFileBackend)?;
    if !backend.share {
        return Err(Error::NotShared { id: backend.id });
    }
    let layout = discover_layout(qmp, &backend, fallback).await?;
    GuestRam::open(&backend.mem_path, layout)
}

impl GuestRam {
    /// A copy of all RAM taken with the guest's vCPUs stopped (QMP `stop`, copy, `cont`),
    /// and how long the guest was paused. A guest that was already paused stays paused.
    pub async fn snapshot_atomic(&self, qmp: &Qmp) -> Result<(Vec<u8>, Duration), Error> {
        let status = qmp
            .query_status()
            .await
            .map_err(qmp_err("query-status".into()))?;
        // Faulted in before the guest stops, so the pause covers the copy alone.
        let mut data = self.snapshot_buffer();
        let start = Instant::now();
        if status.running {
            qmp.stop().await.map_err(qmp_err("stop".into()))?;
        }
        self.snapshot_into(&mut data);
        if status.running {
            qmp.cont().await.map_err(qmp_err("cont".into()))?;
        }
        Ok((data, start.elapsed()))
    }
}
