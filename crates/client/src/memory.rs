//! Guest memory calls: read, find, snapshot and map the RAM of an introspectable VM.

use std::time::Duration;

use crate::{Client, ClientError};
use corral_contract::pb::{self, snapshot_part::Part};

/// How to copy all of a guest's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// While the guest runs; pages that kept changing are reported torn.
    Consistent,
    /// With the guest paused for the copy.
    Atomic,
}

/// How a snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Guest-physical addresses of pages that may mix old and new bytes.
    pub torn_pages: Vec<u64>,
    /// Pages re-read because they changed during the copy.
    pub reread_pages: u64,
    /// How long the guest was paused (atomic mode).
    pub paused: Duration,
    /// How long the copy took on the server.
    pub copy: Duration,
}

/// A snapshot arriving from the server.
#[derive(Debug)]
pub struct MemorySnapshot {
    /// Bytes of RAM the snapshot holds.
    pub total_bytes: u64,
    /// `(guest-physical base, len)` of each stretch of the data, in order.
    pub regions: Vec<(u64, u64)>,
    stream: tonic::Streaming<pb::SnapshotPart>,
    client: Client,
}

impl MemorySnapshot {
    /// The next chunk of data, or the report once all data has come.
    pub async fn next(&mut self) -> Result<SnapshotChunk, ClientError> {
        match self.stream.message().await {
            Ok(Some(pb::SnapshotPart {
                part: Some(Part::Data(data)),
            })) => Ok(SnapshotChunk::Data(data)),
            Ok(Some(pb::SnapshotPart {
                part: Some(Part::Report(r)),
            })) => Ok(SnapshotChunk::Done(SnapshotReport {
                torn_pages: r.torn_pages,
                reread_pages: r.reread_pages,
                paused: Duration::from_micros(r.pause_micros),
                copy: Duration::from_micros(r.copy_micros),
            })),
            Ok(Some(_)) => Err(ClientError::Other {
                message: "corrald sent a snapshot part out of order".into(),
            }),
            Err(status) => Err(self.client.status(status)),
            Ok(None) => Err(ClientError::Other {
                message: "the snapshot stream ended before its report".into(),
            }),
        }
    }
}

/// A piece of a [`MemorySnapshot`].
#[derive(Debug)]
pub enum SnapshotChunk {
    /// The next bytes.
    Data(Vec<u8>),
    /// All data came; how it was taken.
    Done(SnapshotReport),
}

impl Client {
    /// `len` bytes of VM `name`'s RAM at guest-physical `addr`.
    pub async fn read_memory(
        &self,
        name: &str,
        addr: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let request = pb::ReadMemoryRequest {
            name: name.into(),
            addr,
            len,
        };
        let mut stream = self
            .memory
            .clone()
            .read(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        while let Some(chunk) = stream.message().await.map_err(|s| self.status(s))? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Guest-physical addresses of `pattern` in VM `name`'s RAM (at most `limit`; 0 for the
    /// server's default of 1000), and whether there were more.
    pub async fn find_in_memory(
        &self,
        name: &str,
        pattern: &[u8],
        limit: u32,
    ) -> Result<(Vec<u64>, bool), ClientError> {
        let request = pb::FindMemoryRequest {
            name: name.into(),
            pattern: pattern.to_vec(),
            limit,
        };
        let reply = self
            .memory
            .clone()
            .find(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        Ok((reply.addresses, reply.truncated))
    }

    /// Starts a snapshot of all of VM `name`'s RAM; read it with [`MemorySnapshot::next`].
    pub async fn snapshot_memory(
        &self,
        name: &str,
        mode: SnapshotMode,
    ) -> Result<MemorySnapshot, ClientError> {
        let request = pb::SnapshotMemoryRequest {
            name: name.into(),
            mode: match mode {
                SnapshotMode::Consistent => pb::SnapshotMode::Consistent,
                SnapshotMode::Atomic => pb::SnapshotMode::Atomic,
            } as i32,
        };
        let mut stream = self
            .memory
            .clone()
            .snapshot(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let info = match stream.message().await {
            Ok(Some(pb::SnapshotPart {
                part: Some(Part::Info(info)),
            })) => info,
            Err(status) => return Err(self.status(status)),
            _ => {
                return Err(ClientError::Other {
                    message: "the snapshot stream did not start with its description".into(),
                });
            }
        };
        Ok(MemorySnapshot {
            total_bytes: info.total_bytes,
            regions: info
                .regions
                .iter()
                .map(|r| (r.guest_phys_base, r.len))
                .collect(),
            stream,
            client: self.clone(),
        })
    }

    /// A Hilbert-curve map of VM `name`'s RAM as PNG, `side` pixels square (0 for 512).
    pub async fn map_memory(&self, name: &str, side: u32) -> Result<Vec<u8>, ClientError> {
        let request = pb::MapMemoryRequest {
            name: name.into(),
            side,
        };
        Ok(self
            .memory
            .clone()
            .map(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner()
            .png)
    }
}
