//! What a node serves of a VM it runs, beside its lifecycle: where its shared RAM is and how
//! it is laid out (for guest-memory reads), and its serial log.

use std::io::{Read, Seek, SeekFrom};

use corral_contract::Arch;
use corral_guestmem::{MemoryLayout, discover, discover_layout};
use corral_hypervisor::{Error, GuestRamMap, RamRegion};

use crate::backend::{LaunchRecord, QemuBackend};

impl QemuBackend {
    /// The RAM file QEMU maps shared for VM `uid` and its guest-physical layout, asked of the
    /// monitor (`qom-get`, `info mtree -f`; QEMU's fixed rules when the tree does not say).
    pub(crate) async fn shared_ram(&self, uid: &str) -> Result<GuestRamMap, Error> {
        const OP: &str = "share its RAM";
        let rt = self.live_runtime(uid, OP).await?;
        let launch = self.paths(uid).launch;
        let record: LaunchRecord = std::fs::read(&launch)
            .map_err(|e| Error::io(format!("reading {}", launch.display()), e))
            .and_then(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    Error::io(
                        format!("reading {}", launch.display()),
                        std::io::Error::other(e),
                    )
                })
            })?;
        let Some(expected) = record.config.memory_file else {
            return Err(Error::InvalidState {
                uid: uid.to_owned(),
                op: OP,
                state: "running without its RAM in a shared file".into(),
            });
        };
        let guestmem = |e: corral_guestmem::Error| Error::Monitor {
            uid: uid.to_owned(),
            message: chain(&e),
        };
        let backend = discover(&rt.qmp)
            .await
            .map_err(guestmem)?
            .into_iter()
            .find(|b| b.mem_path == expected && b.share)
            .ok_or_else(|| Error::InvalidState {
                uid: uid.to_owned(),
                op: OP,
                state: format!("running without its RAM shared in {}", expected.display()),
            })?;
        let fallback = match record.config.arch {
            Arch::X86_64 => MemoryLayout::x86_q35,
            Arch::Aarch64 => MemoryLayout::aarch64_virt,
        };
        let layout = discover_layout(&rt.qmp, &backend, fallback)
            .await
            .map_err(guestmem)?;
        Ok(GuestRamMap {
            path: backend.mem_path,
            regions: layout
                .regions()
                .iter()
                .map(|r| RamRegion {
                    guest_phys_base: r.guest_phys_base,
                    file_offset: r.file_offset,
                    len: r.len,
                })
                .collect(),
        })
    }

    /// The last `max` bytes of VM `uid`'s serial log; empty when there is none.
    pub(crate) async fn serial_tail(&self, uid: &str, max: u64) -> Result<Vec<u8>, Error> {
        let path = self.paths(uid).serial_log;
        let context = format!("reading {}", path.display());
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
            let mut data = Vec::with_capacity(max.min(len) as usize);
            file.read_to_end(&mut data)?;
            Ok(data)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|read| read)
        .map_err(|e| Error::io(context, e))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
