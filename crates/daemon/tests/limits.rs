//! What one client may hold of corrald, end to end: a connection flood on the TLS listener is
//! held to the cap, idle and half-sent connections are closed, over-size bodies and uploads
//! are refused naming the limit and leave nothing behind, `memory find` stops at its limit
//! and snapshots stream, at most two at once, on a real guest.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corral_client::{Client, Endpoint, SnapshotChunk, SnapshotMode};
use corral_contract::pb::{self, image_service_client::ImageServiceClient};
use corral_contract::{ByteSize, Image, ImageSource, ImageSpec, Phase};
use corral_testkit::http::{TlsSetup, eventually};
use corral_testkit::{Corrald, kit_vm, wait_console, wait_phase};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

mod common;
use common::{CORRALD, api, run_corrald, tls_api};

/// How long a test waits for the daemon to close a connection: a bound, never a timing claim
/// (every timeout these tests set is a few seconds).
const PATIENCE: Duration = Duration::from_secs(60);
const TOKEN: &str = "limits-t0ken";

/// corrald on TLS with `extra` flags, a token file accepting [`TOKEN`], and its port, once
/// the listener answers.
async fn tls_daemon(tls: &TlsSetup, extra: &[&str]) -> (Corrald, u16) {
    let (status, line, stderr) = run_corrald(&["hash-token"], TOKEN.as_bytes());
    assert!(status.success(), "{stderr}");
    std::fs::write(tls.token_file(), line).unwrap();
    let port = corral_testkit::http::free_port();
    let file = |name: &str| tls.dir().join(name).to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--listen".to_owned(),
        listen,
        "--tls-cert".to_owned(),
        file("cert.pem"),
        "--tls-key".to_owned(),
        file("key.pem"),
        "--token-file".to_owned(),
        file("tokens"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Corrald::start_with(CORRALD, &args).expect("corrald starts with TLS");
    healthy_over_tls(port, tls.ca()).await;
    (d, port)
}

/// Waits until a TLS client with the token is served.
async fn healthy_over_tls(port: u16, ca: &CertificateDer<'static>) {
    let reply = eventually("a TLS client to be served", || async {
        tls_api(port, ca, Some(TOKEN))
            .try_send("GET", "/healthz", None)
            .await
            .ok()
    })
    .await;
    assert_eq!(reply.status, 200);
}

fn connector(ca: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to corrald with its handshake done, or why not.
async fn tls_connect(
    port: u16,
    connector: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Reads until the daemon closes `conn` (end of stream, or a reset), within [`PATIENCE`];
/// returns what it sent before.
async fn closed_by_daemon(conn: &mut (impl AsyncReadExt + Unpin), what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got)).await {
        Ok(_) => got,
        Err(_) => panic!("corrald kept {what} open for {PATIENCE:?}"),
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A `kB` figure of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[tokio::test]
async fn a_connection_flood_is_held_to_the_cap_and_idle_connections_are_closed() {
    let tls = TlsSetup::new();
    let cap = 8;
    let (d, port) = tls_daemon(
        &tls,
        &[
            "--max-connections",
            &cap.to_string(),
            "--idle-timeout",
            "5s",
        ],
    )
    .await;
    let pid = d.pid().unwrap();
    let before = open_fds(pid);

    // Forty clients complete a handshake and then say nothing. The daemon keeps at most the
    // cap of them; it closes the others as soon as it accepts them.
    let connector = connector(tls.ca());
    let flood = (0..40).map(|_| tls_connect(port, &connector));
    let mut held: Vec<_> = futures_util::future::join_all(flood)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    assert!(
        !held.is_empty() && held.len() <= cap,
        "{} connections were kept open, the cap is {cap}",
        held.len()
    );
    let fds = open_fds(pid);
    assert!(
        fds <= before + cap,
        "corrald holds {fds} descriptors with the flood open, {before} before it (cap {cap})"
    );
    // The unix socket has places of its own: its clients are served all along.
    assert_eq!(api(&d).get("/healthz").await.status, 200);
    api(&d).get("/v1/vms").await.expect(200);

    // The flood sends no request: each of its connections is closed once idle, and so its
    // place is free for a client that has something to ask.
    for conn in &mut held {
        closed_by_daemon(conn, "an idle connection").await;
    }
    healthy_over_tls(port, tls.ca()).await;
    assert!(open_fds(pid) <= before + cap);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped_after_the_header_timeout() {
    let tls = TlsSetup::new();
    // The idle timeout stays at its default (minutes): only the header timeout can close
    // these connections within the test's patience.
    let (d, port) = tls_daemon(&tls, &["--header-timeout", "2s"]).await;
    let slow_request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";

    let mut slow = tls_connect(port, &connector(tls.ca())).await.unwrap();
    slow.write_all(slow_request).await.unwrap();
    slow.flush().await.unwrap();
    let mut slow_unix = UnixStream::connect(d.socket()).await.unwrap();
    slow_unix.write_all(slow_request).await.unwrap();
    // While both are stuck in their headers, others are served.
    healthy_over_tls(port, tls.ca()).await;
    assert_eq!(api(&d).get("/healthz").await.status, 200);

    let what = "a connection with unfinished headers";
    for (sent, listener) in [
        (closed_by_daemon(&mut slow, what).await, "TLS"),
        (closed_by_daemon(&mut slow_unix, what).await, "unix"),
    ] {
        let text = String::from_utf8_lossy(&sent);
        assert!(
            !text.contains("200 OK"),
            "{listener}: the half-sent request was answered: {text}"
        );
    }

    // The clock runs from a request's first byte: a keep-alive connection quiet for longer
    // than the header timeout between two requests still gets its second answer (clients
    // pool such connections; cutting them made a request that raced the cut see an EOF).
    let mut pooled = tls_connect(port, &connector(tls.ca())).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    for round in 0..2 {
        pooled.write_all(request.as_bytes()).await.unwrap();
        let head = read_response(&mut pooled).await;
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// One HTTP/1.1 response from `conn`: its head (the body, of `content-length`, is read and
/// dropped).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("the connection is still open");
        assert!(n > 0, "the daemon closed a kept-alive connection: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0usize);
            if body.len() >= length {
                return head.to_owned();
            }
        }
    }
}

/// The types of the HTTP/2 frames in `bytes` (a server's side of a connection).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn connections_that_ask_nothing_are_closed_once_idle_whatever_they_sent() {
    // The header timeout stays at its default: these connections never start a request
    // hyper could time, so only the idle timeout can close them.
    let d = Corrald::start_with(CORRALD, &["--idle-timeout", "2s"]).expect("corrald");
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut h2 = UnixStream::connect(d.socket()).await.unwrap();
    h2.write_all(&[PREFACE, EMPTY_SETTINGS].concat())
        .await
        .unwrap();
    let mut half_preface = UnixStream::connect(d.socket()).await.unwrap();
    half_preface.write_all(&PREFACE[..10]).await.unwrap();
    let mut silent = UnixStream::connect(d.socket()).await.unwrap();
    assert_eq!(api(&d).get("/healthz").await.status, 200);

    let sent = closed_by_daemon(&mut h2, "an idle HTTP/2 connection").await;
    const GOAWAY: u8 = 0x7;
    assert!(
        h2_frame_types(&sent).contains(&GOAWAY),
        "an idle HTTP/2 connection is told GOAWAY before it is closed: {sent:?}"
    );
    closed_by_daemon(&mut half_preface, "a connection with half a preface").await;
    closed_by_daemon(&mut silent, "a silent connection").await;
}

#[tokio::test]
async fn an_over_size_json_body_is_refused_with_413_naming_the_limit() {
    let d = common::daemon();
    let mut vm = common::manifest(&d, "big", json!({}));
    // Valid JSON of 5 MiB: a label value the size of a disk image.
    vm["metadata"]["annotations"] = json!({ "blob": "x".repeat(5 << 20) });
    let body = serde_json::to_vec(&vm).unwrap();
    let reply = api(&d).send("POST", "/v1/vms", Some(&body)).await;
    let message = reply.expect_error(413, "PayloadTooLarge");
    assert!(
        message.contains("4194304 bytes (4 MiB)"),
        "the error names the limit: {message}"
    );
    assert_eq!(api(&d).get("/v1/vms").await.expect(200)["items"], json!([]));
    // Just under the limit is read and judged on its content.
    vm["metadata"]["annotations"] = json!({ "blob": "x".repeat(3 << 20) });
    let body = serde_json::to_vec(&vm).unwrap();
    let reply = api(&d).send("POST", "/v1/vms", Some(&body)).await;
    assert_ne!(reply.status, 413, "{}", reply.text());
}

/// A gRPC client of `socket`'s image service that sends what the test says, as a client
/// other than Corral's own may (no declared size, or a false one).
async fn raw_images(socket: &Path) -> ImageServiceClient<tonic::transport::Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    ImageServiceClient::new(channel)
}

fn upload_image(name: &str) -> Image {
    Image::new(
        name.parse().unwrap(),
        ImageSpec {
            source: ImageSource::Upload { filename: None },
            format: Some(corral_contract::ImageFormat::Raw),
            shared: false,
            checksum: None,
        },
    )
}

/// The messages of an upload of `chunks` MiB of bytes, declaring `size`.
fn upload_messages(image: &Image, size: Option<u64>, chunks: usize) -> Vec<pb::UploadImageChunk> {
    let first = pb::UploadImageChunk {
        image: Some(image.into()),
        data: Vec::new(),
        size,
    };
    let data = (0..chunks).map(|i| pb::UploadImageChunk {
        image: None,
        data: vec![i as u8 + 1; 1 << 20],
        size: None,
    });
    std::iter::once(first).chain(data).collect()
}

/// Sends `head` on a new connection to `socket`, then (when `chunked`) that many bytes as
/// 64 KiB chunks from a task of their own — the server may answer and close before taking
/// them all — and returns what the server answered.
async fn raw_exchange(socket: &Path, head: &str, chunked: Option<usize>) -> String {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    if let Some(total) = chunked {
        tokio::spawn(async move {
            let chunk = vec![9u8; 64 << 10];
            let mut sent = 0;
            while sent < total {
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if write.write_all(&frame).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        });
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_rest_upload_streams_into_the_store_within_the_cap_and_a_refusal_leaves_nothing() {
    let d = Corrald::start_with(CORRALD, &["--upload-max-size", "2M"]).expect("corrald");
    let api = api(&d);
    let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let digest = blake3::hash(&bytes).to_hex().to_string();

    let stored = api
        .send(
            "PUT",
            "/v1/images/uploaded/upload?format=raw&filename=disk.raw",
            Some(&bytes),
        )
        .await
        .expect(201);
    assert_eq!(stored["status"]["phase"], "Ready", "{stored}");
    assert_eq!(stored["status"]["size"], 1 << 20);
    assert_eq!(stored["status"]["digest"], format!("blake3:{digest}"));
    assert_eq!(stored["spec"]["source"]["upload"]["filename"], "disk.raw");
    let stored_file = d.data_dir().join("images/blake3").join(&digest);
    assert_eq!(std::fs::read(&stored_file).unwrap(), bytes);

    // Over the cap, a wrong checksum, a bad format: refused, naming what, leaving nothing.
    // Declared over the cap: refused before a byte of it is read.
    let head =
        "PUT /v1/images/big/upload HTTP/1.1\r\nHost: corral\r\nContent-Length: 3145728\r\n\r\n";
    let refused = raw_exchange(&d.socket(), head, None).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("--upload-max-size"), "{refused}");
    // Streamed (chunked, no length) past the cap: refused once the third MiB arrives.
    let head =
        "PUT /v1/images/big/upload HTTP/1.1\r\nHost: corral\r\nTransfer-Encoding: chunked\r\n\r\n";
    let refused = raw_exchange(&d.socket(), head, Some(3 << 20)).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    let refused = api
        .send(
            "PUT",
            &format!("/v1/images/sum/upload?checksum=blake3:{}", "0".repeat(64)),
            Some(&bytes),
        )
        .await;
    let refused = refused.expect_error(400, "InvalidArgument");
    assert!(refused.contains("nothing was stored"), "{refused}");
    let refused = api
        .send("PUT", "/v1/images/fmt/upload?format=vmdk", Some(b"x"))
        .await
        .expect_error(400, "InvalidArgument");
    assert!(refused.starts_with("format: "), "{refused}");
    let images = api.get("/v1/images").await.expect(200);
    let names_of_images: Vec<_> = images["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names_of_images, ["uploaded"]);
    let tmp = std::fs::read_dir(d.data_dir().join("images/tmp"))
        .map(|e| e.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0, "a refused upload left a temp file");
}

#[tokio::test]
async fn an_upload_over_the_cap_is_refused_while_it_streams_and_leaves_nothing() {
    let d = Corrald::start_with(CORRALD, &["--upload-max-size", "2M"]).expect("corrald");
    let mut images = raw_images(&d.socket()).await;
    let leftovers = || {
        ["images/tmp", "images/blake3"]
            .iter()
            .map(|dir| {
                std::fs::read_dir(d.data_dir().join(dir))
                    .map(|entries| entries.count())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };

    // No size declared: refused once the third MiB arrives.
    let big = upload_image("big");
    let messages = upload_messages(&big, None, 3);
    let status = images
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("2M (2097152 bytes)")
            && status.message().contains("--upload-max-size"),
        "the error names the limit: {}",
        status.message()
    );
    // A declared size over the limit: refused before any byte.
    let messages = upload_messages(&big, Some(3 << 20), 0);
    let status = images
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        leftovers(),
        0,
        "a refused upload left files in the image store"
    );
    let client = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    assert!(client.list_images("").await.unwrap().is_empty());

    // At the limit it is stored.
    let fits = upload_image("fits");
    let messages = upload_messages(&fits, Some(2 << 20), 2);
    let stored = images
        .upload(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let stored = corral_contract::Image::try_from(stored).unwrap();
    assert_eq!(stored.status.size, Some(2 << 20));
}

#[tokio::test]
async fn memory_find_stops_at_its_limit_and_snapshots_stream_two_at_a_time() {
    let d = Corrald::start(CORRALD).expect("corrald");
    let client = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    let marker = format!("lim-{:x}", std::process::id() ^ 0x5eed);
    let ram = ByteSize::from_mib(256);
    let mut vm = kit_vm("lim", |b| b.introspection(true).memory(ram));
    if let corral_contract::Boot::Kernel { cmdline, .. } = &mut vm.spec.boot {
        let line = cmdline.get_or_insert_default();
        line.push_str(&format!(" corral.marker={marker}"));
    }
    client.create_vm(&vm).await.unwrap();
    wait_phase(&client, &d, "lim", Phase::Running)
        .await
        .unwrap();
    wait_console(&client, &d, "lim", &format!("CORRAL_MARKER {marker}"), 0)
        .await
        .unwrap();
    let pid = d.pid().unwrap();

    // Most of a fresh guest's RAM is zero: `00` matches at almost every byte. Collecting
    // every match first would take gigabytes in corrald; stopping at the limit takes nothing.
    let rss_before = status_bytes(pid, "VmRSS");
    let (addresses, truncated) = client.find_in_memory("lim", &[0, 0], 5).await.unwrap();
    assert_eq!(addresses.len(), 5, "{addresses:?}");
    assert!(truncated, "there are more than 5 zero pairs in a guest");
    let grown = status_bytes(pid, "VmRSS").saturating_sub(rss_before);
    assert!(
        grown < ram.as_u64() / 16,
        "corrald's RSS grew by {grown} bytes for a find of 5 matches in {ram} of RAM"
    );
    let err = client
        .find_in_memory("lim", &[0], 1_000_000)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("limit: must be 1 to 100000"),
        "{err}"
    );

    // Two snapshots stream at once; a third is refused while they do.
    let own_client = || async { Client::connect(Endpoint::Unix(d.socket())).await.unwrap() };
    let (first_client, second_client) = (own_client().await, own_client().await);
    let mut first = first_client
        .snapshot_memory("lim", SnapshotMode::Consistent)
        .await
        .unwrap();
    let second = second_client
        .snapshot_memory("lim", SnapshotMode::Consistent)
        .await
        .unwrap();
    assert_eq!(first.total_bytes, ram.as_u64());
    let refused = client
        .snapshot_memory("lim", SnapshotMode::Consistent)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("2 memory snapshots are already streaming"),
        "{refused}"
    );
    let message = api(&d)
        .get("/v1/vms/lim/memory/snapshot")
        .await
        .expect_error(429, "ResourceExhausted");
    assert!(message.contains("already streaming"), "{message}");

    // The first is read to its end: its bytes come from the mapping a piece at a time, so
    // corrald's own memory (anonymous; the guest's RAM it maps is the guest's) stays far
    // below the guest's RAM. The copy holds the guest's marker.
    let anon_before = status_bytes(pid, "RssAnon");
    let mut peak = anon_before;
    let (mut total, mut found) = (0u64, false);
    let mut tail = Vec::new();
    let report = loop {
        match first.next().await.unwrap() {
            SnapshotChunk::Data(data) => {
                total += data.len() as u64;
                tail.extend_from_slice(&data);
                found |= tail.windows(marker.len()).any(|w| w == marker.as_bytes());
                tail.drain(..tail.len().saturating_sub(marker.len()));
                peak = peak.max(status_bytes(pid, "RssAnon"));
            }
            SnapshotChunk::Done(report) => break report,
        }
    };
    assert_eq!(total, ram.as_u64());
    assert!(found, "the guest's marker {marker} is in its RAM snapshot");
    assert!(report.torn_pages.len() as u64 <= report.reread_pages);
    let grown = peak.saturating_sub(anon_before);
    assert!(
        grown < ram.as_u64() / 4,
        "corrald's anonymous memory grew by {grown} bytes streaming a {ram} snapshot"
    );

    // A finished snapshot and an abandoned one give their places back.
    drop(second);
    let third = eventually("a snapshot place to be free again", || async {
        match client.snapshot_memory("lim", SnapshotMode::Atomic).await {
            Ok(snap) => Some(snap),
            Err(e) if e.to_string().contains("already streaming") => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert_eq!(third.total_bytes, ram.as_u64());
    drop(third);

    // Over REST (HTTP/2 on the socket), the copy streams and its report comes in trailers.
    let (status, headers, bytes, trailers) = rest_snapshot(&d.socket(), "lim").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-corral-total-bytes"], ram.as_u64().to_string());
    assert_eq!(bytes, ram.as_u64());
    let torn: u64 = trailers["x-corral-torn-pages"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let reread: u64 = trailers["x-corral-reread-pages"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(torn <= reread, "torn {torn}, re-read {reread}");
    assert!(trailers.contains_key("x-corral-copy-us"));
    let audit = std::fs::read_to_string(d.data_dir().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("memory.snapshot") && l.contains("already streaming")),
        "the refusal is audited: {audit}"
    );
}

/// `GET /v1/vms/{vm}/memory/snapshot` over HTTP/2 on `socket`: status, headers, the number
/// of body bytes (counted as they arrive, not kept) and the trailers.
async fn rest_snapshot(
    socket: &Path,
    vm: &str,
) -> (u16, axum::http::HeaderMap, u64, axum::http::HeaderMap) {
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(UnixStream::connect(socket).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = axum::http::Request::get(format!("http://localhost/v1/vms/{vm}/memory/snapshot"))
        .body(http_body_util::Empty::<axum::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let (mut bytes, mut trailers) = (0u64, axum::http::HeaderMap::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        } else if let Ok(t) = frame.into_trailers() {
            trailers = t;
        }
    }
    (parts.status.as_u16(), parts.headers, bytes, trailers)
}
