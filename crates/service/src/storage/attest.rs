use std::collections::BTreeMap;
use std::path::PathBuf;

use corral_contract::{Boot, ValidationError, Volume, VolumeKind};
use corral_storage::attest::{
    NodeKey, PREDICATE_TYPE, STATEMENT_TYPE, Statement, Subject, VmPredicate,
};
use corral_storage::{HostAccess, hash_file, hash_reader};

use super::{StorageService, blocking};
use crate::resources::now;
use crate::{ServiceError, Stored};

fn subject(name: String, digest: &str) -> Subject {
    let hex = digest.strip_prefix("blake3:").unwrap_or(digest).to_owned();
    Subject {
        name,
        digest: BTreeMap::from([("blake3".to_owned(), hex)]),
    }
}

impl StorageService {
    /// Issues a signed statement of what VM `name` runs: the digests of its boot files, the
    /// images its volumes came from and the volumes themselves (a disk volume's digest is of
    /// its file now, and changes as the guest writes), the hash of its spec, and the QEMU
    /// version and accelerator of its process. Returns the DSSE envelope's bytes.
    pub async fn attest(
        &self,
        name: &str,
        key: &NodeKey,
        node_id: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let vm = self.vms.get(name).await?;
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut host_files: Vec<(String, PathBuf)> = Vec::new();
        let mut subjects = Vec::new();
        match &vm.spec.boot {
            Boot::Kernel { kernel, initrd, .. } => {
                host_files.push(("kernel".into(), kernel.clone()));
                if let Some(initrd) = initrd {
                    host_files.push(("initrd".into(), initrd.clone()));
                }
            }
            Boot::Disk { path, .. } => host_files.push(("disk".into(), path.clone())),
            Boot::Volume { .. } => {}
        }
        for volume in vm.spec.volume_names() {
            let v = self.volumes.get(&vm.metadata.key_of(volume)).await?;
            if let (Some(image), Some(digest)) = (&v.spec.image, &v.status.image_digest) {
                subjects.push(subject(format!("image/{image}"), digest));
            }
            match (&v.spec.kind, &v.status.digest, &v.status.path) {
                (VolumeKind::Weights, Some(digest), _) => {
                    subjects.push(subject(format!("volume/{volume}"), digest));
                }
                (_, _, Some(_)) => {
                    files.push((format!("volume/{volume}"), self.config.volume_file(&v)?))
                }
                _ => {
                    return Err(ServiceError::NotReady {
                        kind: Volume::NOUN,
                        name: volume.to_string(),
                        phase: v.status.phase.to_string(),
                        message: v.status.message.clone(),
                    });
                }
            }
        }
        let rules = self.config.host_paths.clone();
        let hashed = blocking(move || {
            // Boot files are host paths: read under the same rules as when the VM starts, so
            // a file swapped for a symlink is not followed here either.
            let mut hashed = Vec::new();
            for (name, path) in host_files {
                let field = match name.as_str() {
                    "disk" => "spec.boot.disk.path",
                    "initrd" => "spec.boot.kernel.initrd",
                    _ => "spec.boot.kernel.kernel",
                };
                let file = rules
                    .open(&path, HostAccess::Admin)
                    .map_err(|e| ValidationError::new(field, e.to_string()))?;
                let (digest, _) = hash_reader(file.file).map_err(|source| ServiceError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                })?;
                hashed.push((name, digest.to_string()));
            }
            for (name, path) in files {
                let (digest, _) = hash_file(&path)?;
                hashed.push((name, digest.to_string()));
            }
            Ok(hashed)
        })
        .await?;
        subjects.extend(hashed.into_iter().map(|(n, d)| subject(n, &d)));
        let spec_json = serde_json::to_vec(&vm.spec).unwrap_or_default();
        let statement = Statement {
            type_: STATEMENT_TYPE.into(),
            subject: subjects,
            predicate_type: PREDICATE_TYPE.into(),
            predicate: VmPredicate {
                vm: name.to_owned(),
                vm_uid: vm.metadata.uid.clone(),
                spec_hash: format!("blake3:{}", blake3::hash(&spec_json).to_hex()),
                qemu_version: vm.status.qemu_version.clone(),
                accelerator: vm.status.accelerator.map(|a| a.to_string()),
                node_id: node_id.to_owned(),
                time: now(),
            },
        };
        Ok(key.sign(&statement))
    }
}
