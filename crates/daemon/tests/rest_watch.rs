//! REST watch (`GET /v1/<kind>?watch=true`) against a live corrald: Server-Sent Events read
//! as a browser's `EventSource` reads them. A watch resumed from a revision (query or
//! `Last-Event-ID`) misses nothing that happened while it was away; a tenant's watch shows its
//! projects only, over TLS with its own token; every kind answers; bad input is refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{api, manifest, tls_api};
use corral_testkit::http::{Api, TlsSetup};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");
const PATIENCE: Duration = Duration::from_secs(30);

/// One server-sent event: its `id:` (if any) and its JSON data.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    data: Value,
}

impl Sse {
    fn kind(&self) -> &str {
        self.data["type"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.data["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    }

    fn project(&self) -> &str {
        self.data["object"]["metadata"]["project"]
            .as_str()
            .unwrap_or_default()
    }

    fn revision(&self) -> u64 {
        self.data["revision"].as_u64().expect("a revision")
    }
}

/// An open event stream.
struct Events {
    body: hyper::body::Incoming,
    buffer: String,
}

impl Events {
    /// `GET path` with `headers` on `stream`; panics unless the answer is a 200 event stream.
    async fn open<S>(stream: S, path: &str, headers: &[(&str, &str)]) -> Events
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (status, content_type, body) = request(stream, path, headers).await;
        assert_eq!(status, 200, "GET {path}");
        assert!(
            content_type.starts_with("text/event-stream"),
            "GET {path}: {content_type}"
        );
        Events {
            body,
            buffer: String::new(),
        }
    }

    /// The next event (comment lines — heartbeats — skipped).
    async fn next(&mut self) -> Sse {
        let read = async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut data) = (None, String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().parse().expect("a numeric id"));
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let data = serde_json::from_str(&data).expect("JSON data");
                    return Sse { id, data };
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream stays open")
                    .expect("a frame");
                if let Ok(bytes) = frame.into_data() {
                    self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("an event in time")
    }

    /// Events until one satisfies `stop` (included).
    async fn until(&mut self, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let last = stop(&e);
            seen.push(e);
            if last {
                return seen;
            }
        }
    }
}

/// One HTTP/1.1 request; its status, content type and (unread) body.
async fn request<S>(
    stream: S,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, hyper::body::Incoming)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", "localhost");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = sender
        .send_request(
            req.body(http_body_util::Empty::<axum::body::Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("an answer");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        response.status().as_u16(),
        content_type,
        response.into_body(),
    )
}

async fn unix(d: &corral_testkit::Corrald) -> tokio::net::UnixStream {
    tokio::net::UnixStream::connect(d.socket()).await.unwrap()
}

async fn tls(
    port: u16,
    ca: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn in_project(mut vm: Value, project: &str) -> Value {
    vm["metadata"]["project"] = json!(project);
    vm
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_resume_without_loss_and_show_only_the_callers_projects() {
    let setup = TlsSetup::new();
    std::fs::write(setup.token_file(), "# identities live in the store\n").unwrap();
    let (d, port) = setup.start(CORRALD);
    let admin = api(&d);
    for p in ["red", "blue"] {
        admin
            .post(
                "/v1/projects",
                &json!({"kind": "Project", "metadata": {"name": p}, "spec": {}}),
            )
            .await
            .expect(201);
    }
    let created = admin
        .post(
            "/v1/identities",
            &json!({"kind": "Identity", "metadata": {"name": "op-red"},
                    "spec": {"role": "operator", "projects": ["red"],
                             "credential": {"type": "token"}}}),
        )
        .await
        .expect(201);
    let token = created["token"].as_str().expect("a token").to_owned();
    let bearer = format!("Bearer {token}");

    // The tenant's watch, from now: it starts with the current objects and a bookmark.
    let mut red = Events::open(
        tls(port, setup.ca()).await,
        "/v1/vms?watch=true&all_projects=true",
        &[("authorization", &bearer)],
    )
    .await;
    let bookmark = red.next().await;
    assert_eq!(bookmark.kind(), "BOOKMARK", "{:?}", bookmark.data);
    assert_eq!(bookmark.id, Some(bookmark.revision()));
    let start = bookmark.revision();

    // And the admin's, over the socket, of every project.
    let mut all = Events::open(
        unix(&d).await,
        &format!("/v1/vms?watch=true&all_projects=true&resourceVersion={start}"),
        &[],
    )
    .await;

    let vm = |name: &str, project: &str| in_project(manifest(&d, name, json!({})), project);
    admin
        .post("/v1/vms?project=red", &vm("a", "red"))
        .await
        .expect(201);
    admin
        .post("/v1/vms?project=blue", &vm("b", "blue"))
        .await
        .expect(201);
    admin
        .post("/v1/vms?project=red", &vm("c", "red"))
        .await
        .expect(201);

    let seen = red.until(|e| e.kind() == "ADDED" && e.name() == "c").await;
    let added: Vec<_> = seen
        .iter()
        .filter(|e| e.kind() == "ADDED")
        .map(|e| e.name())
        .collect();
    assert_eq!(added, ["a", "c"], "the tenant sees its project's VMs");
    assert!(
        seen.iter().all(|e| e.project() == "red"),
        "nothing of blue reaches red's operator: {seen:?}"
    );
    for e in &seen {
        assert_eq!(e.id, Some(e.revision()), "each event's id is its revision");
    }

    // The admin saw everything, in revision order.
    let everything = all.until(|e| e.kind() == "ADDED" && e.name() == "c").await;
    let names: Vec<_> = everything
        .iter()
        .filter(|e| e.kind() == "ADDED")
        .map(|e| (e.project(), e.name()))
        .collect();
    assert_eq!(names, [("red", "a"), ("blue", "b"), ("red", "c")]);
    let revisions: Vec<u64> = everything.iter().map(Sse::revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert!(revisions[0] > start);

    // Resumed after the first event — by query, and by Last-Event-ID as an EventSource
    // reconnects — a watch replays exactly what came after it: nothing missed, nothing twice.
    let first = everything[0].revision();
    let after_first: Vec<u64> = everything[1..].iter().map(Sse::revision).collect();
    let by_query = format!("/v1/vms?watch=true&all_projects=true&resourceVersion={first}");
    let mut resumed = Events::open(unix(&d).await, &by_query, &[]).await;
    let mut replayed = Vec::new();
    for _ in &after_first {
        replayed.push(resumed.next().await.revision());
    }
    assert_eq!(replayed, after_first, "resumed by resourceVersion");
    let last_id = first.to_string();
    let mut reconnected = Events::open(
        unix(&d).await,
        &format!("/v1/vms?watch=true&all_projects=true&resourceVersion={start}"),
        &[("last-event-id", &last_id)],
    )
    .await;
    let mut replayed = Vec::new();
    for _ in &after_first {
        replayed.push(reconnected.next().await.revision());
    }
    assert_eq!(
        replayed, after_first,
        "Last-Event-ID wins over resourceVersion"
    );

    // A change while watching is a MODIFIED of that object.
    let mut a = admin.get("/v1/vms/a?project=red").await.expect(200);
    a["metadata"]["labels"] = json!({"tier": "web"});
    admin.put("/v1/vms/a?project=red", &a).await.expect(200);
    let modified = red
        .until(|e| {
            e.kind() == "MODIFIED" && e.data["object"]["metadata"]["labels"]["tier"] == "web"
        })
        .await;
    assert_eq!(modified.last().unwrap().name(), "a");

    // The tenant may not watch blue at all.
    let refused = tls_api(port, setup.ca(), Some(&token))
        .get("/v1/vms?watch=true&project=blue")
        .await;
    let message = refused.expect_error(403, "PermissionDenied");
    assert!(message.contains("blue"), "{message}");

    // A deletion ends the object's story with DELETED.
    admin
        .delete("/v1/vms/c?project=red&force=true")
        .await
        .expect(202);
    red.until(|e| e.kind() == "DELETED" && e.name() == "c")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_watches_and_bad_input_is_named() {
    let d = common::daemon();
    for path in [
        "/v1/vms",
        "/v1/images",
        "/v1/volumes",
        "/v1/snapshots",
        "/v1/networks",
        "/v1/sources",
        "/v1/projects",
        "/v1/identities",
    ] {
        let mut events = Events::open(unix(&d).await, &format!("{path}?watch=true"), &[]).await;
        let until_bookmark = events.until(|e| e.kind() == "BOOKMARK").await;
        if path == "/v1/networks" {
            assert!(
                until_bookmark
                    .iter()
                    .any(|e| e.kind() == "ADDED" && e.name() == "default"),
                "the current objects come first: {until_bookmark:?}"
            );
        }
        // A list carries the revision to watch from.
        let list = Api::of(&d).get(path).await.expect(200);
        assert!(
            list["revision"].is_u64() || path == "/v1/snapshots",
            "{path}: {list}"
        );
    }
    // A network made now reaches a watch from the list's revision.
    let list = api(&d).get("/v1/networks").await.expect(200);
    let revision = list["revision"].as_u64().unwrap();
    let mut events = Events::open(
        unix(&d).await,
        &format!("/v1/networks?watch=true&resourceVersion={revision}"),
        &[],
    )
    .await;
    api(&d)
        .post(
            "/v1/networks",
            &json!({"kind": "Network", "metadata": {"name": "lab"},
                    "spec": {"cidr": "10.77.0.0/24"}}),
        )
        .await
        .expect(201);
    let e = events.until(|e| e.name() == "lab").await.pop().unwrap();
    assert_eq!(e.kind(), "ADDED");
    assert!(e.revision() > revision);

    let api = api(&d);
    let cases = [
        ("/v1/vms?watch=maybe", "watch"),
        ("/v1/vms?watch=true&resourceVersion=-1", "resourceVersion"),
        ("/v1/vms?watch=true&labelSelector=a%3Db", "labelSelector"),
        ("/v1/snapshots?watch=true&vm=x", "vm"),
    ];
    for (path, field) in cases {
        let message = api.get(path).await.expect_error(400, "InvalidArgument");
        assert!(message.contains(field), "{path}: {message}");
    }
    let message = Api::of(&d)
        .header("last-event-id", "yesterday")
        .get("/v1/vms?watch=true")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.contains("Last-Event-ID"), "{message}");
    let message = Api::of(&d)
        .header("last-event-id", "-1")
        .get("/v1/snapshots")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.contains("Last-Event-ID"), "{message}");
}
