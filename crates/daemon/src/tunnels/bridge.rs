//! One relay between a byte stream and a WebSocket, for both WebSocket libraries the daemon
//! speaks (axum's on the serving side, tungstenite's when a server calls an agent).
//!
//! WebSocket has no half-close, so an empty binary message says "no more from me" (a client
//! that sent its request and awaits the answer, as HTTP/1.0 does); the socket closes once both
//! sides said so, or either went away.

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// What a received WebSocket message means to the relay.
pub(crate) enum Frame {
    /// Bytes for the stream (never empty).
    Data(Vec<u8>),
    /// The other side sends no more: an empty binary message, a close, or an error.
    Done,
    /// Nothing for the stream (a ping, a text message).
    Skip,
}

/// Carries `stream`'s bytes over `socket` both ways until both sides are done. `binary` makes
/// a binary message, `close` a close message, and `frame` reads a received one.
pub(crate) async fn bridge<M, E, S>(
    socket: S,
    stream: DuplexStream,
    binary: impl Fn(Vec<u8>) -> M,
    close: M,
    frame: impl Fn(M) -> Frame,
) where
    S: Sink<M> + Stream<Item = Result<M, E>> + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let (mut from, mut to) = tokio::io::split(stream);
    let inbound = async {
        while let Some(Ok(msg)) = rx.next().await {
            match frame(msg) {
                Frame::Data(data) if to.write_all(&data).await.is_err() => break,
                Frame::Data(_) | Frame::Skip => {}
                Frame::Done => break,
            }
        }
        let _ = to.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(binary(buf[..n].to_vec())).await.is_err() {
                        return tx;
                    }
                }
            }
        }
        let _ = tx.send(binary(Vec::new())).await;
        tx
    };
    let ((), mut tx) = tokio::join!(inbound, outbound);
    let _ = tx.send(close).await;
}
