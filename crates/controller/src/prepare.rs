//! What a VM needs from the host before QEMU starts: its NICs, resolved from the networks it
//! joins, and its cloud-init seed; and their removal after.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use corral_contract::{
    CloudInit, ForwardStatus, Network, NetworkAttachmentStatus, NetworkMode, NetworkPhase, Vm,
};
use corral_hypervisor::{FileOwner, HostForward, NetBackend, NicConfig};
use corral_service::{NetworkService, ServiceError, Stored, VmService, resolve};

use crate::ControllerError;
use crate::error::NicProblem;

/// NICs, their status as it will be once QEMU runs, and the seed image.
pub(crate) struct Prepared {
    pub nics: Vec<NicConfig>,
    pub networks: Vec<NetworkAttachmentStatus>,
    pub seed: Option<PathBuf>,
}

/// Resolves `vm.spec.networks` to NICs and builds its cloud-init seed into `seed_dir`; the
/// seed is given to `owner`, the user QEMU runs as. The error's message is
/// a sentence for `status.message`.
pub(crate) async fn prepare(
    svc: &VmService,
    seed_dir: &Path,
    owner: Option<FileOwner>,
    vm: &Vm,
) -> Result<Prepared, ControllerError> {
    let nets = NetworkService::new(svc.store().clone());
    let mut nics = Vec::new();
    let mut networks = Vec::new();
    for (index, att) in vm.spec.networks.iter().enumerate() {
        let name = att.network.as_str();
        let net = resolve::<Network>(&**nets.store(), vm.metadata.project(), name)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: corral_contract::Network::NOUN,
                name: name.to_owned(),
            })?;
        if net.status.phase != NetworkPhase::Ready {
            return Err(ServiceError::NotReady {
                kind: corral_contract::Network::NOUN,
                name: name.to_owned(),
                phase: net.status.phase.to_string(),
                message: net.status.message,
            }
            .into());
        }
        let nic = |problem| ControllerError::Nic {
            network: name.to_owned(),
            problem,
        };
        // The service always fills these in on create; a spec without them was written
        // around it.
        let mac = att
            .mac
            .ok_or_else(|| nic(NicProblem::NotAllocated("MAC address".into())))?;
        let mut forwards = Vec::new();
        for f in &att.forwards {
            let host_port = f.host_port.ok_or_else(|| {
                nic(NicProblem::NotAllocated(format!(
                    "host port for guest port {}",
                    f.guest_port
                )))
            })?;
            forwards.push(HostForward {
                protocol: f.protocol,
                host_address: f.host_address(),
                host_port,
                guest_port: f.guest_port,
            });
        }
        let backend = match net.spec.mode {
            NetworkMode::User => NetBackend::User {
                cidr: net.spec.cidr,
                gateway: net.spec.gateway(),
                dns: net.spec.dns(),
                hostname: Some(vm.metadata.name.to_string()),
                forwards: forwards.clone(),
                host_access: net.spec.host_access,
            },
            NetworkMode::Bridge => {
                if !forwards.is_empty() {
                    return Err(nic(NicProblem::ForwardsOnBridge));
                }
                let ifname = crate::bridge::tap_name(&vm.metadata.uid, index);
                crate::bridge::ensure_tap(&net, &ifname)
                    .await
                    .map_err(|e| nic(NicProblem::Tap(Box::new(e))))?;
                NetBackend::Tap { ifname }
            }
            mode => {
                return Err(nic(NicProblem::ModeUnavailable(mode)));
            }
        };
        networks.push(NetworkAttachmentStatus {
            network: name.to_owned(),
            mode: Some(net.spec.mode),
            mac: Some(mac),
            forwards: forwards
                .iter()
                .map(|f| ForwardStatus {
                    guest_port: f.guest_port,
                    host_port: f.host_port,
                    protocol: f.protocol,
                    host_address: Some(f.host_address),
                })
                .collect(),
        });
        nics.push(NicConfig { mac, backend });
    }
    let seed = match &vm.spec.cloud_init {
        Some(ci) => Some(
            build_seed(
                seed_dir,
                &vm.metadata.uid,
                vm.metadata.name.as_str(),
                ci,
                owner,
            )
            .await
            .map_err(ControllerError::Seed)?,
        ),
        None => None,
    };
    Ok(Prepared {
        nics,
        networks,
        seed,
    })
}

/// Removes the TAP devices of a VM's bridge NICs.
pub(crate) async fn release(vm: &Vm) {
    for (index, _) in vm.spec.networks.iter().enumerate() {
        crate::bridge::remove_tap(&crate::bridge::tap_name(&vm.metadata.uid, index)).await;
    }
}

/// Where a VM's seed image lives.
pub(crate) fn seed_path(seed_dir: &Path, uid: &str) -> PathBuf {
    seed_dir.join(format!("{uid}.iso"))
}

/// Writes the NoCloud documents and packs them into an ISO 9660 image labelled `cidata` with
/// `genisoimage` (arguments as a vector, never a shell). Replaces an older seed atomically.
/// User data can hold secrets: every file is created 0600 (the work directory 0700), and the
/// seed is given to `owner`, the user QEMU runs as, before it is moved into place.
pub(crate) async fn build_seed(
    seed_dir: &Path,
    uid: &str,
    name: &str,
    ci: &CloudInit,
    owner: Option<FileOwner>,
) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(seed_dir)?;
    let work = tempfile_dir(seed_dir, uid)?;
    let meta = ci
        .meta_data
        .clone()
        .unwrap_or_else(|| format!("instance-id: {uid}\nlocal-hostname: {name}\n"));
    let user = ci
        .user_data
        .clone()
        .unwrap_or_else(|| "#cloud-config\n{}\n".to_owned());
    let mut files = vec![("user-data", user), ("meta-data", meta)];
    if let Some(net) = &ci.network_config {
        files.push(("network-config", net.clone()));
    }
    let mut args: Vec<std::ffi::OsString> = ["-quiet", "-output"].iter().map(Into::into).collect();
    let tmp = seed_dir.join(format!(".{uid}.iso.tmp"));
    // genisoimage truncates an existing output and keeps its mode.
    private_file(&tmp)?;
    args.push(tmp.clone().into());
    for a in ["-volid", "cidata", "-joliet", "-rock"] {
        args.push(a.into());
    }
    for (file, body) in &files {
        let path = work.join(file);
        private_file(&path)?.write_all(body.as_bytes())?;
        args.push(path.into());
    }
    let out = tokio::process::Command::new("genisoimage")
        .args(&args)
        .output()
        .await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    let out = out.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        std::io::Error::new(
            e.kind(),
            format!("running genisoimage: {e} (install it: apt-get install genisoimage)"),
        )
    })?;
    if !out.status.success() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(std::io::Error::other(format!(
            "genisoimage failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if let Some(owner) = owner {
        std::os::unix::fs::chown(&tmp, Some(owner.uid), Some(owner.gid))?;
    }
    let path = seed_path(seed_dir, uid);
    tokio::fs::rename(&tmp, &path).await?;
    Ok(path)
}

/// Creates `path` empty with mode 0600, replacing whatever was there.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn tempfile_dir(parent: &Path, uid: &str) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!(".{uid}.d"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}
