//! Tunnels: a byte stream to a TCP port a VM forwards, wherever in the cluster it runs.

use corral_contract::pb;
use corral_contract::pb::tunnel_service_client::TunnelServiceClient;
use tokio::sync::mpsc;

use crate::{Client, ClientError};

/// An open tunnel: bytes for the guest's port go to `input`, its bytes arrive on `output`.
/// Dropping `input` closes the client's side; `output` ends when the guest's side closes.
#[derive(Debug)]
pub struct Tunnel {
    /// Bytes for the guest's port.
    pub input: mpsc::Sender<Vec<u8>>,
    /// Bytes from the guest's port; an error ends it.
    pub output: mpsc::Receiver<Result<Vec<u8>, ClientError>>,
}

impl Client {
    /// Opens a tunnel to guest TCP port `port` of VM `name` (which must forward it).
    pub async fn tunnel(&self, name: &str, port: u16) -> Result<Tunnel, ClientError> {
        let (input_tx, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let (req_tx, req_rx) = mpsc::channel::<pb::TunnelRequest>(64);
        let open = pb::TunnelRequest {
            msg: Some(pb::tunnel_request::Msg::Open(pb::TunnelOpen {
                name: name.into(),
                port: port.into(),
            })),
        };
        req_tx.send(open).await.map_err(|_| ClientError::Other {
            message: "tunnel request stream closed".into(),
        })?;
        tokio::spawn(async move {
            while let Some(data) = input_rx.recv().await {
                let msg = pb::TunnelRequest {
                    msg: Some(pb::tunnel_request::Msg::Data(data)),
                };
                if req_tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let mut stream = TunnelServiceClient::new(self.transport.clone())
            .open(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let (out_tx, out_rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        if out_tx.send(Ok(msg.data)).await.is_err() {
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
        Ok(Tunnel {
            input: input_tx,
            output: out_rx,
        })
    }
}
