//! The console WebSocket (`/v1/vms/{name}/console/ws`) against a real guest, spoken by hand
//! (RFC 6455 framing over the unix socket): a command typed as a binary frame, its answer read
//! from the frames the server sends; a second writer refused; a read-only session welcome.

use std::time::Duration;

use corral_client::{Client, Endpoint};
use corral_contract::Phase;
use corral_testkit::{Corrald, kit_vm, wait_phase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const WAIT: Duration = Duration::from_secs(120);

/// Sends the upgrade request; returns the stream and the status line.
async fn upgrade(d: &Corrald, path: &str) -> (UnixStream, String, Vec<u8>) {
    let mut s = UnixStream::connect(d.socket()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: corral\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let mut body = Vec::new();
    if !status.contains(" 101 ") {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut body)).await;
    }
    (s, status, body)
}

/// A masked binary frame (clients must mask), payload < 126 bytes.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x82, 0x80 | payload.len() as u8];
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The payload of the next server frame (unmasked).
async fn next_frame(s: &mut UnixStream) -> Vec<u8> {
    next_frame_of(s).await.1
}

/// The opcode (1 text, 2 binary) and payload of the next server frame.
async fn next_frame_of(s: &mut UnixStream) -> (u8, Vec<u8>) {
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).await.unwrap();
    let len = match hdr[1] & 0x7f {
        126 => u64::from(s.read_u16().await.unwrap()),
        127 => s.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.unwrap();
    (hdr[0] & 0x0f, payload)
}

/// The next `writer_events` message, skipping console output.
async fn next_writer_event(s: &mut UnixStream) -> serde_json::Value {
    loop {
        let (op, payload) = tokio::time::timeout(WAIT, next_frame_of(s)).await.unwrap();
        if op == 1 {
            return serde_json::from_slice(&payload).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_console_types_and_reads_one_writer_many_readers() {
    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald")).expect("corrald");
    let client = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    client.create_vm(&kit_vm("ws", |b| b)).await.unwrap();
    wait_phase(&client, &d, "ws", Phase::Running).await.unwrap();

    let (mut writer, status, _) = upgrade(&d, "/v1/vms/ws/console/ws?write=true").await;
    assert!(status.contains(" 101 "), "{status}");
    // A second writer is refused with a JSON error before any upgrade.
    let (_, status, body) = upgrade(&d, "/v1/vms/ws/console/ws?write=true").await;
    assert!(status.contains(" 412 "), "{status}");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("already has a writer (unix:uid="), "{body}");
    // A session with writer_events is told who holds the writer, and when that changes.
    let (mut watcher, status, _) = upgrade(
        &d,
        "/v1/vms/ws/console/ws?writer_events=true&scrollback=false",
    )
    .await;
    assert!(status.contains(" 101 "), "{status}");
    let event = next_writer_event(&mut watcher).await;
    assert_eq!(event["type"], "writer", "{event}");
    assert_eq!(event["you"], false, "{event}");
    assert!(
        event["holder"].as_str().unwrap().starts_with("unix:uid="),
        "{event}"
    );
    // A reader is welcome, and gets the scrollback first.
    let (mut reader, status, _) = upgrade(&d, "/v1/vms/ws/console/ws").await;
    assert!(status.contains(" 101 "), "{status}");

    let mut seen = Vec::new();
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            writer
                .write_all(&frame(b"echo ws-$((6*7))-ok\n"))
                .await
                .unwrap();
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while let Ok(payload) = tokio::time::timeout_at(until, next_frame(&mut writer)).await {
                seen.extend(payload);
                if String::from_utf8_lossy(&seen).contains("ws-42-ok") {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "no answer: {}",
        String::from_utf8_lossy(&seen)
    );
    let mut read = Vec::new();
    let got = tokio::time::timeout(WAIT, async {
        loop {
            read.extend(next_frame(&mut reader).await);
            let text = String::from_utf8_lossy(&read);
            if text.contains("CORRAL_BOOT_OK") && text.contains("ws-42-ok") {
                return;
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "the reader saw: {}",
        String::from_utf8_lossy(&read)
    );
    // The writer leaves; the watcher hears it, and another may take its place.
    drop(writer);
    let event = next_writer_event(&mut watcher).await;
    assert!(event["holder"].is_null(), "{event}");
    let mut status = String::new();
    for _ in 0..50 {
        let (_, s, _) = upgrade(&d, "/v1/vms/ws/console/ws?write=true").await;
        status = s;
        if status.contains(" 101 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.contains(" 101 "), "{status}");
    client.delete_vm("ws").await.unwrap();
    client
        .wait_for("ws", |vm| vm.is_none(), WAIT)
        .await
        .unwrap();
}
