//! `corral.v1.ConsoleService`: a bidirectional stream over a console session.

use std::pin::Pin;

use corral_contract::pb::{self, console_service_server::ConsoleService};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::api::Scope;
use crate::api::error::status;
use crate::api::{GrpcMethod, Permission};
use crate::auth::Caller;
use crate::state::Shared;

/// What each method needs: attaching may type on the guest's console.
pub const METHODS: &[GrpcMethod] = &[GrpcMethod::new(
    "/corral.v1.ConsoleService/Attach",
    Permission::Write,
)];

/// `corral.v1.ConsoleService` over the console service.
#[derive(Debug, Clone)]
pub struct ConsoleGrpc(pub Shared);

type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::ConsoleResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConsoleService for ConsoleGrpc {
    type AttachStream = OutputStream;

    async fn attach(
        &self,
        req: Request<Streaming<pb::ConsoleRequest>>,
    ) -> Result<Response<OutputStream>, Status> {
        let scope = Scope::of(req.extensions());
        let who = req
            .extensions()
            .get::<Caller>()
            .map_or_else(|| "unknown".to_owned(), |c| c.name.clone());
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the first message must be attach"))??;
        let Some(pb::console_request::Msg::Attach(attach)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be attach"));
        };
        let session = self
            .0
            .consoles
            .attach(&scope.key(&attach.name), attach.write, &who)
            .await
            .map_err(status)?;
        let (scrollback, mut rx) = session.subscribe();
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::ConsoleResponse, Status>>(64);
        if attach.scrollback && !scrollback.is_empty() {
            let _ = tx
                .send(Ok(pb::ConsoleResponse { output: scrollback }))
                .await;
        }
        let err_tx = tx.clone();
        // Input: keystrokes to the guest; the session (and its write side) lives as long as
        // the client's stream.
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                if let Some(pb::console_request::Msg::Input(data)) = msg.msg {
                    if let Err(e) = session.write(&data).await {
                        if !session.can_write() {
                            let _ = err_tx.send(Err(status(e))).await;
                        }
                        break;
                    }
                }
            }
        });
        // Output: everything the guest prints, until the client goes or QEMU does.
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(data) => {
                        let msg = pb::ConsoleResponse {
                            output: data.to_vec(),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "console reader lagged");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
