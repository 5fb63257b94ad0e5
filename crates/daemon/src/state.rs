//! What every transport shares: the service layer, the backend and the metrics.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use corral_qemu::QemuBackend;
use corral_service::{ServiceError, StorageService, VmService};

use crate::config::Config;
use crate::metrics::Metrics;

/// The running daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    /// Settings.
    pub config: Config,
    /// The service layer.
    pub vms: VmService,
    /// Guest memory: permission, audit and access.
    pub memory: crate::memory::MemoryBridge,
    /// Images, volumes and snapshots.
    pub storage: StorageService,
    /// The node's attestation key.
    pub node_key: corral_storage::attest::NodeKey,
    /// The QEMU backend (for serial logs and process figures).
    pub backend: Arc<QemuBackend>,
    /// This node's name.
    pub node: String,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Networks and console sessions.
    pub access: crate::access::Access,
}

/// The most a console-log request returns at once.
const MAX_LOG: u64 = 4 << 20;

impl Daemon {
    /// The end of a VM's serial log (`tail` bytes; 0 for as much as is kept, up to 4 MiB).
    pub async fn console_log(&self, name: &str, tail: u64) -> Result<Vec<u8>, ServiceError> {
        let vm = self.vms.get(name).await?;
        let path = self.backend.paths(&vm.metadata.uid).serial_log;
        let want = if tail == 0 {
            MAX_LOG
        } else {
            tail.min(MAX_LOG)
        };
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(want)))?;
            let mut data = Vec::with_capacity(want.min(len) as usize);
            file.read_to_end(&mut data)?;
            Ok(data)
        })
        .await
        .map_err(|source| ServiceError::Task {
            what: "reading the console log",
            source,
        })?
        .map_err(|source| ServiceError::Io {
            context: format!("reading the console log of {name}"),
            source,
        })
    }
}

/// A handle transports hold.
pub type Shared = Arc<Daemon>;
