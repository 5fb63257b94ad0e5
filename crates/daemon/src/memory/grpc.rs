//! `corral.v1.MemoryService`: decode, call the memory service, encode.

use std::pin::Pin;

use corral_contract::pb::{self, memory_service_server::MemoryService, snapshot_part::Part};
use corral_service::{MemoryAccess, MemoryOp, SnapshotMode, SnapshotPiece};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::api::GrpcMethod;
use crate::api::Scope;
use crate::api::error::memory_status as status;
use crate::auth::Caller;
use crate::state::Shared;

/// Every method needs the `memory` permission; a refusal is audited with what the request
/// asked for.
pub const METHODS: &[GrpcMethod] = &[
    GrpcMethod::memory("/corral.v1.MemoryService/Read", |body| {
        let r = pb::ReadMemoryRequest::decode(body).unwrap_or_default();
        access(MemoryOp::Read, r.name, Some((r.addr, r.len)))
    }),
    GrpcMethod::memory("/corral.v1.MemoryService/Find", |body| {
        let r = pb::FindMemoryRequest::decode(body).unwrap_or_default();
        access(MemoryOp::Find, r.name, None)
    }),
    GrpcMethod::memory("/corral.v1.MemoryService/Snapshot", |body| {
        let r = pb::SnapshotMemoryRequest::decode(body).unwrap_or_default();
        access(MemoryOp::Snapshot, r.name, None)
    }),
    GrpcMethod::memory("/corral.v1.MemoryService/Map", |body| {
        let r = pb::MapMemoryRequest::decode(body).unwrap_or_default();
        access(MemoryOp::Map, r.name, None)
    }),
];

fn access(op: MemoryOp, vm: String, range: Option<(u64, u64)>) -> MemoryAccess {
    MemoryAccess { op, vm, range }
}

/// The gRPC face of guest memory.
#[derive(Debug, Clone)]
pub struct MemoryGrpc(pub Shared);

/// The caller as the audit log names it (the authorization layer has let it through).
fn who<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl MemoryService for MemoryGrpc {
    type ReadStream = Streamed<pb::MemoryChunk>;
    type SnapshotStream = Streamed<pb::SnapshotPart>;

    async fn read(
        &self,
        req: Request<pb::ReadMemoryRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let scope = Scope::of(req.extensions());
        let who = who(&req);
        let r = req.into_inner();
        let chunks = self
            .0
            .memory
            .read(&who, &scope.key(&r.name), r.addr, r.len, None)
            .await
            .map_err(status)?;
        let stream = chunks.map(|chunk| {
            chunk
                .map(|(addr, data)| pb::MemoryChunk { addr, data })
                .map_err(status)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn find(
        &self,
        req: Request<pb::FindMemoryRequest>,
    ) -> Result<Response<pb::FindMemoryResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let who = who(&req);
        let r = req.into_inner();
        let (addresses, truncated) = self
            .0
            .memory
            .find(&who, &scope.key(&r.name), r.pattern, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FindMemoryResponse {
            addresses,
            truncated,
        }))
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotMemoryRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let scope = Scope::of(req.extensions());
        let who = who(&req);
        let r = req.into_inner();
        let mode = match pb::SnapshotMode::try_from(r.mode) {
            Ok(pb::SnapshotMode::Atomic) => SnapshotMode::Atomic,
            Ok(pb::SnapshotMode::Consistent | pb::SnapshotMode::Unspecified) => {
                SnapshotMode::Consistent
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not a snapshot mode; use CONSISTENT or ATOMIC",
                    r.mode
                )));
            }
        };
        let snap = self
            .0
            .memory
            .snapshot(&who, &scope.key(&r.name), mode)
            .await
            .map_err(status)?;
        let info = pb::SnapshotInfo {
            total_bytes: snap.total_bytes,
            regions: snap
                .regions
                .iter()
                .map(|&(guest_phys_base, len)| pb::MemoryRegion {
                    guest_phys_base,
                    len,
                })
                .collect(),
        };
        let mode = match snap.mode {
            SnapshotMode::Consistent => pb::SnapshotMode::Consistent,
            SnapshotMode::Atomic => pb::SnapshotMode::Atomic,
        } as i32;
        let pieces = ReceiverStream::new(snap.into_pieces()).map(move |piece| match piece {
            SnapshotPiece::Data(data) => Part::Data(data),
            SnapshotPiece::Done(report) => Part::Report(pb::SnapshotReport {
                mode,
                torn_pages: report.torn_pages,
                reread_pages: report.reread_pages,
                pause_micros: report.paused.as_micros() as u64,
                copy_micros: report.copy.as_micros() as u64,
            }),
        });
        let parts = tokio_stream::once(Part::Info(info))
            .chain(pieces)
            .map(|part| Ok(pb::SnapshotPart { part: Some(part) }));
        Ok(Response::new(Box::pin(parts)))
    }

    async fn map(
        &self,
        req: Request<pb::MapMemoryRequest>,
    ) -> Result<Response<pb::MapMemoryResponse>, Status> {
        let scope = Scope::of(req.extensions());
        let who = who(&req);
        let r = req.into_inner();
        let png = self
            .0
            .memory
            .map(&who, &scope.key(&r.name), r.side)
            .await
            .map_err(status)?;
        let side = if r.side == 0 { 512 } else { r.side };
        Ok(Response::new(pb::MapMemoryResponse { png, side }))
    }
}
