//! `corral.v1.TunnelService`: a bidirectional stream over a tunnel.

use std::pin::Pin;

use corral_contract::pb::{self, tunnel_service_server::TunnelService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::Scope;
use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::state::Shared;

/// What each method needs: a tunnel reaches into the guest, like typing on its console.
pub const METHODS: &[GrpcMethod] = &[GrpcMethod::new(
    "/corral.v1.TunnelService/Open",
    Permission::Write,
)];

/// `corral.v1.TunnelService` over the tunnel service.
#[derive(Debug, Clone)]
pub struct TunnelGrpc(pub Shared);

type DataStream = Pin<Box<dyn Stream<Item = Result<pb::TunnelResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TunnelService for TunnelGrpc {
    type OpenStream = DataStream;

    async fn open(
        &self,
        req: Request<Streaming<pb::TunnelRequest>>,
    ) -> Result<Response<DataStream>, Status> {
        let scope = Scope::of(req.extensions());
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first message must be open"))??;
        let Some(pb::tunnel_request::Msg::Open(open)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be open"));
        };
        let port = u16::try_from(open.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument("port: must be 1 to 65535"))?;
        let stream = self
            .0
            .tunnels
            .open(&scope.key(&open.name), port)
            .await
            .map_err(status)?;
        let (mut from_guest, mut to_guest) = tokio::io::split(stream);
        // The client's bytes, until its stream ends (then the guest's side is told).
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if let Some(pb::tunnel_request::Msg::Data(data)) = msg.msg {
                    if to_guest.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            let _ = to_guest.shutdown().await;
        });
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::TunnelResponse, Status>>(16);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match from_guest.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let msg = pb::TunnelResponse {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
