//! The interactive serial console.

use corral_contract::pb;
use corral_contract::pb::console_service_client::ConsoleServiceClient;
use tokio::sync::mpsc;

use crate::{Client, ClientError};

/// An attached console: bytes the guest prints arrive on `output`; keystrokes go to `input`
/// (only when attached for writing). Dropping both ends detaches.
#[derive(Debug)]
pub struct ConsoleSession {
    /// Keystrokes for the guest.
    pub input: mpsc::Sender<Vec<u8>>,
    /// Guest output, raw; ends when the VM's process does or the server goes. An error ends it
    /// too (e.g. typing on a read-only session).
    pub output: mpsc::Receiver<Result<Vec<u8>, ClientError>>,
}

impl Client {
    /// Attaches to a VM's serial console; with `write`, as its one writer. `scrollback` sends
    /// what the guest printed before first.
    pub async fn attach_console(
        &self,
        name: &str,
        write: bool,
        scrollback: bool,
    ) -> Result<ConsoleSession, ClientError> {
        let (input_tx, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let (req_tx, req_rx) = mpsc::channel::<pb::ConsoleRequest>(64);
        let attach = pb::ConsoleRequest {
            msg: Some(pb::console_request::Msg::Attach(pb::ConsoleAttach {
                name: name.into(),
                write,
                scrollback,
            })),
        };
        req_tx.send(attach).await.map_err(|_| ClientError::Other {
            message: "console request stream closed".into(),
        })?;
        tokio::spawn(async move {
            while let Some(data) = input_rx.recv().await {
                let msg = pb::ConsoleRequest {
                    msg: Some(pb::console_request::Msg::Input(data)),
                };
                if req_tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let mut stream = ConsoleServiceClient::new(self.transport.clone())
            .attach(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let (out_tx, out_rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        if out_tx.send(Ok(msg.output)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = out_tx.send(Err(this.status(s))).await;
                        return;
                    }
                }
            }
        });
        Ok(ConsoleSession {
            input: input_tx,
            output: out_rx,
        })
    }
}
