//! After the storm: wait for corrald to settle, then compare what it says with what is true on
//! the host, and what a watcher saw with what a list says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_client::Client;
use corral_contract::{
    Boot, Image, Phase, Power, RestartPolicy, Snapshot, StoragePhase, Vm, Volume,
};

use crate::follow::Followed;
use crate::procs;

/// Everything the API says, read at one moment.
#[derive(Debug, Clone)]
pub struct Seen {
    /// VMs.
    pub vms: Vec<Vm>,
    /// Images.
    pub images: Vec<Image>,
    /// Volumes.
    pub volumes: Vec<Volume>,
    /// Snapshots.
    pub snapshots: Vec<Snapshot>,
}

impl Seen {
    async fn read(c: &Client) -> anyhow::Result<Seen> {
        Ok(Seen {
            vms: c.list_vms("").await?,
            images: c.list_images("").await?,
            volumes: c.list_volumes("").await?,
            snapshots: c.list_snapshots(None).await?,
        })
    }

    // What changes when anything changes.
    fn versions(&self) -> Vec<(String, u64)> {
        let vms = self.vms.iter().map(|v| &v.metadata);
        let images = self.images.iter().map(|v| &v.metadata);
        let volumes = self.volumes.iter().map(|v| &v.metadata);
        let snapshots = self.snapshots.iter().map(|v| &v.metadata);
        vms.chain(images)
            .chain(volumes)
            .chain(snapshots)
            .map(|m| (m.uid.clone(), m.resource_version))
            .collect()
    }

    fn busy(&self) -> Vec<String> {
        let mut busy = Vec::new();
        for vm in &self.vms {
            let m = &vm.metadata;
            if m.deleting
                || vm.status.observed_generation != m.generation
                || matches!(vm.status.phase, Phase::Starting | Phase::Stopping)
            {
                busy.push(format!("vm/{} {}", m.name, vm.status.phase));
            }
        }
        let storage = self
            .images
            .iter()
            .map(|i| (&i.metadata, i.status.phase))
            .chain(self.volumes.iter().map(|v| (&v.metadata, v.status.phase)))
            .chain(self.snapshots.iter().map(|s| (&s.metadata, s.status.phase)));
        for (m, phase) in storage {
            if m.deleting {
                busy.push(format!("{} being deleted ({phase})", m.name));
            }
        }
        busy
    }
}

/// Waits until nothing changes for a few seconds and no VM is between states (at most
/// `limit`); returns what it last saw and whether it settled.
pub async fn settle(c: &Client, limit: Duration) -> anyhow::Result<(Seen, bool)> {
    let deadline = Instant::now() + limit;
    let mut last = Seen::read(c).await?;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = match Seen::read(c).await {
            Ok(seen) => seen,
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => return Err(e),
        };
        quiet = if now.versions() == last.versions() && now.busy().is_empty() {
            quiet + 1
        } else {
            0
        };
        last = now;
        if quiet >= 3 {
            return Ok((last, true));
        }
        if Instant::now() > deadline {
            return Ok((last, false));
        }
    }
}

/// Paths the checks read.
#[derive(Debug)]
pub struct Dirs<'a> {
    /// corrald's run directory.
    pub run: &'a Path,
    /// corrald's data directory.
    pub data: &'a Path,
}

/// One broken promise, in words.
pub type Violation = String;

/// Every invariant, on a settled system.
pub fn invariants(seen: &Seen, dirs: &Dirs<'_>, max_qemus_per_vm: usize) -> Vec<Violation> {
    let mut bad = Vec::new();
    let qemus = procs::qemus(dirs.run);
    if max_qemus_per_vm > 1 {
        bad.push(format!(
            "at some sampled instant one VM had {max_qemus_per_vm} QEMU processes"
        ));
    }
    let uids: BTreeSet<&str> = seen.vms.iter().map(|v| v.metadata.uid.as_str()).collect();
    let volumes: BTreeMap<&str, &Volume> = seen
        .volumes
        .iter()
        .map(|v| (v.metadata.name.as_str(), v))
        .collect();

    for vm in &seen.vms {
        let name = vm.metadata.name.as_str();
        let uid = vm.metadata.uid.as_str();
        let pids = qemus.get(uid).cloned().unwrap_or_default();
        let phase = vm.status.phase;
        if pids.len() > 1 {
            bad.push(format!("vm/{name}: {} QEMU processes {pids:?}", pids.len()));
        }
        match phase {
            Phase::Running | Phase::Paused => {
                if pids.is_empty() {
                    bad.push(format!("vm/{name} is {phase} but no QEMU runs for it"));
                } else if !vm.status.pid.is_some_and(|p| pids.contains(&p)) {
                    bad.push(format!(
                        "vm/{name} is {phase} with pid {:?}, but its QEMU is {pids:?}",
                        vm.status.pid
                    ));
                }
            }
            _ if !pids.is_empty() => bad.push(format!(
                "vm/{name} is {phase} but QEMU {pids:?} runs for it"
            )),
            _ => {}
        }
        // A VM whose dependencies are all Ready must be where it was declared, unless its
        // policy lets it stay down after a crash.
        let deps_ready = match &vm.spec.boot {
            Boot::Volume { volume } => volumes
                .get(volume.as_str())
                .is_some_and(|v| v.status.phase == StoragePhase::Ready),
            _ => true,
        } && vm.spec.volumes.iter().all(|a| {
            volumes
                .get(a.volume.as_str())
                .is_some_and(|v| v.status.phase == StoragePhase::Ready)
        });
        let want = match vm.spec.power {
            Power::Running => Phase::Running,
            Power::Paused => Phase::Paused,
            Power::Stopped => Phase::Stopped,
        };
        let may_stay_down = vm.spec.restart_policy == RestartPolicy::Never
            && matches!(phase, Phase::Failed | Phase::Stopped);
        if deps_ready && phase != want && !may_stay_down {
            bad.push(format!(
                "vm/{name} is declared {} (policy {}) but is {phase}: {}",
                vm.spec.power,
                vm.spec.restart_policy,
                vm.status.message.as_deref().unwrap_or("no message")
            ));
        }
        let ram = corral_testkit::guest_ram_file(vm);
        if ram.exists() && pids.is_empty() {
            bad.push(format!(
                "vm/{name}: guest RAM file {} without a QEMU",
                ram.display()
            ));
        }
    }

    for (uid, pids) in &qemus {
        if !uids.contains(uid.as_str()) {
            bad.push(format!(
                "QEMU {pids:?} runs for uid {uid}, which no VM object has"
            ));
        }
    }
    for dir in dir_names(&dirs.run.join("vms")) {
        if !uids.contains(dir.as_str()) {
            bad.push(format!("run directory vms/{dir} without its VM object"));
            let ram = Path::new("/dev/shm").join(format!("corral-{dir}"));
            if ram.exists() {
                bad.push(format!(
                    "guest RAM file {} without its VM object",
                    ram.display()
                ));
            }
        }
    }
    for seed in procs::files(&dirs.data.join("seeds")) {
        let uid = seed.trim_end_matches(".iso");
        if !uids.contains(uid) {
            bad.push(format!(
                "cloud-init seed seeds/{seed} without its VM object"
            ));
        }
    }

    let volume_uids: BTreeSet<&str> = seen
        .volumes
        .iter()
        .map(|v| v.metadata.uid.as_str())
        .collect();
    for file in procs::files(&dirs.data.join("volumes")) {
        let stem = file.split('.').next().unwrap_or_default();
        if !volume_uids.contains(stem) {
            bad.push(format!(
                "volume file volumes/{file} without its Volume object"
            ));
        }
    }
    for v in &seen.volumes {
        if v.status.phase == StoragePhase::Ready {
            match &v.status.path {
                Some(path) if Path::new(path).is_file() => {}
                other => bad.push(format!(
                    "volume/{} is Ready but its file {other:?} is missing",
                    v.metadata.name
                )),
            }
        }
    }
    for file in procs::files(&dirs.data.join("images/tmp")) {
        bad.push(format!("image temp file images/tmp/{file} left behind"));
    }
    for image in &seen.images {
        if image.status.phase != StoragePhase::Ready {
            continue;
        }
        let hex = image
            .status
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("blake3:"))
            .unwrap_or_default();
        if !dirs.data.join("images/blake3").join(hex).is_file() {
            bad.push(format!(
                "image/{} is Ready but its blob {hex} is missing",
                image.metadata.name
            ));
        }
    }
    bad
}

/// The watcher's reconstruction against the list: the same VMs at the same versions, once
/// the watcher has caught up (it may lag the list by a moment, never for good).
pub async fn watch_agrees(followed: &Arc<Mutex<Followed>>, seen: &Seen) -> Vec<Violation> {
    let listed: BTreeMap<String, u64> = seen
        .vms
        .iter()
        .map(|v| (v.metadata.name.to_string(), v.metadata.resource_version))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = followed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let agrees = f.vms == listed;
        if agrees || Instant::now() > deadline {
            let mut bad = Vec::new();
            if !agrees {
                bad.push(format!(
                    "the watch reconstructs {:?} but the list says {listed:?}",
                    f.vms
                ));
            }
            if f.out_of_order > 0 {
                bad.push(format!(
                    "{} watch events went back in revision",
                    f.out_of_order
                ));
            }
            return bad;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}
