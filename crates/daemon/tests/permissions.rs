//! The one authorization table: every REST route and every gRPC method declares a permission,
//! and the memory permission is enforced — and its refusals audited — on every memory route
//! and method, over REST and gRPC alike.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_client::{Client, Endpoint, SnapshotMode};
use corral_daemon::api::{Permission, grpc_methods, routes};
use corral_testkit::Corrald;
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// `/package.Service/Method` of every method in a descriptor set.
fn methods_of(descriptor_set: &[u8]) -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set).expect("a descriptor set");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

#[test]
fn every_grpc_method_and_rest_route_declares_a_permission() {
    let declared: HashMap<&str, Permission> = grpc_methods()
        .iter()
        .map(|m| (m.path, m.permission))
        .collect();
    assert_eq!(
        declared.len(),
        grpc_methods().len(),
        "a method declared twice"
    );
    let served: BTreeSet<String> = [
        corral_contract::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .flat_map(methods_of)
    .collect();
    assert!(served.len() > 40, "{served:?}");
    let undeclared: Vec<_> = served
        .iter()
        .filter(|m| !declared.contains_key(m.as_str()))
        .collect();
    assert!(
        undeclared.is_empty(),
        "no permission declared for {undeclared:?}"
    );
    let stale: Vec<_> = declared.keys().filter(|m| !served.contains(**m)).collect();
    assert!(stale.is_empty(), "declared but not in any proto: {stale:?}");
    for path in &served {
        let memory = path.starts_with("/corral.v1.MemoryService/");
        assert_eq!(
            declared[path.as_str()] == Permission::Memory,
            memory,
            "{path}"
        );
    }
    assert_eq!(declared["/grpc.health.v1.Health/Check"], Permission::Open);

    let routes = routes();
    let mut seen = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for r in &routes {
        assert!(seen.insert((r.method.to_string(), r.path)), "{r:?} twice");
        assert!(
            ids.insert(r.operation_id),
            "operation id {} twice",
            r.operation_id
        );
        let id = r.operation_id;
        assert!(
            id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{id} is not camelCase"
        );
        let memory = r.path.starts_with("/v1/vms/{name}/memory");
        assert_eq!(r.permission == Permission::Memory, memory, "{r:?}");
    }
    let open: Vec<_> = routes
        .iter()
        .filter(|r| r.permission == Permission::Open)
        .map(|r| r.path)
        .collect();
    // Besides health and the document: the web console's page, assets and login, which
    // must load before anyone has logged in and show no object; and agents' join, whose join
    // token in the body is the credential.
    assert_eq!(
        open,
        [
            "/healthz",
            "/openapi.json",
            "/ui",
            "/ui/",
            "/ui/assets/{file}",
            "/ui/login",
            "/ui/session",
            "/ui/session",
            "/v1/nodes/join",
        ]
    );
}

/// Every route of the table is served by the router: none answers "no such endpoint".
#[tokio::test]
async fn the_router_serves_every_route_of_the_table() {
    let d = Corrald::start(CORRALD).expect("corrald starts");
    for r in routes() {
        let path = r.path.replace("{name}", "absent");
        let stream = tokio::net::UnixStream::connect(d.socket()).await.unwrap();
        let (status, body) = exchange(stream, r.method.as_str(), &path, None).await;
        assert!(
            !body.contains("no such endpoint") && status != 405,
            "{} {path}: {status} {body}",
            r.method
        );
    }
}

struct Tls {
    keys: tempfile::TempDir,
    ca: rustls_pki_types::CertificateDer<'static>,
}

impl Tls {
    fn new(tokens: &[(&str, &str)]) -> Tls {
        let keys = tempfile::Builder::new()
            .prefix("crp")
            .tempdir_in("/tmp")
            .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(keys.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            keys.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )
        .unwrap();
        let lines: String = tokens
            .iter()
            .map(|(token, scopes)| {
                format!(
                    "blake3:{} scopes={scopes}\n",
                    blake3::hash(token.as_bytes())
                )
            })
            .collect();
        std::fs::write(keys.path().join("tokens"), lines).unwrap();
        Tls {
            ca: certified.cert.der().clone(),
            keys,
        }
    }

    fn path(&self, name: &str) -> String {
        self.keys.path().join(name).to_str().unwrap().to_owned()
    }

    async fn request(&self, port: u16, path: &str, token: &str) -> (u16, String) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        exchange(tls, "GET", path, Some(token)).await
    }
}

/// One HTTP/1.1 request; the status and the body as text.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn audit_lines(d: &Corrald) -> Vec<Value> {
    std::fs::read_to_string(d.data_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
        .collect()
}

#[tokio::test]
async fn a_token_without_memory_is_refused_on_every_memory_route_and_method_and_audited() {
    let tls = Tls::new(&[("ops", "vms"), ("peek", "memory")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let d = Corrald::start_with(
        CORRALD,
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &tls.path("cert.pem"),
            "--tls-key",
            &tls.path("key.pem"),
            "--token-file",
            &tls.path("tokens"),
        ],
    )
    .expect("corrald starts with TLS");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the TLS listener never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The ops token (an operator) reads VMs; so does the memory-only one (a viewer with the
    // memory grant), and it may read the audit log no more than ops.
    assert_eq!(tls.request(port, "/v1/vms", "ops").await.0, 200);
    assert_eq!(tls.request(port, "/v1/vms", "peek").await.0, 200);

    let memory_routes: Vec<_> = routes()
        .into_iter()
        .filter(|r| r.permission == Permission::Memory)
        .collect();
    assert_eq!(memory_routes.len(), 5);
    for r in &memory_routes {
        let path = r.path.replace("{name}", "g") + "?addr=0x1000&len=16";
        let (status, body) = tls.request(port, &path, "ops").await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("PermissionDenied") && body.contains("`memory` grant"),
            "{body}"
        );
    }

    let ops = Client::connect(Endpoint::Https {
        url: format!("https://localhost:{port}"),
        token: Some("ops".into()),
        ca_file: Some(tls.path("cert.pem").into()),
    })
    .await
    .expect("a TLS client");
    let refused = |r: Result<(), corral_client::ClientError>| {
        let e = r.expect_err("refused").to_string();
        assert!(e.contains("`memory` grant"), "{e}");
    };
    refused(ops.read_memory("g", 0x1000, 16).await.map(drop));
    refused(ops.find_in_memory("g", b"x", 0).await.map(drop));
    refused(ops.map_memory("g", 64).await.map(drop));
    let snapshot = ops.snapshot_memory("g", SnapshotMode::Atomic).await;
    refused(match snapshot {
        Ok(mut s) => s.next().await.map(drop),
        Err(e) => Err(e),
    });

    // Every refusal — five routes, four methods — is one audit line naming who, what and where.
    let audit = audit_lines(&d);
    assert_eq!(audit.len(), 9, "{audit:#?}");
    let ops_id = format!("token:{}", &blake3::hash(b"ops").to_hex()[..8]);
    for line in &audit {
        assert_eq!(line["outcome"], "denied", "{line}");
        assert_eq!(line["identity"], ops_id.as_str(), "{line}");
        assert_eq!(line["name"], "g", "{line}");
        assert!(line.get("uid").is_none(), "nothing was opened: {line}");
    }
    let ops_seen: BTreeSet<&str> = audit.iter().filter_map(|l| l["verb"].as_str()).collect();
    assert_eq!(
        ops_seen,
        BTreeSet::from([
            "memory.find",
            "memory.map",
            "memory.read",
            "memory.snapshot",
            "memory.stream"
        ])
    );
    let reads: Vec<_> = audit
        .iter()
        .filter(|l| l["verb"] == "memory.read")
        .collect();
    assert_eq!(reads.len(), 2);
    assert!(
        reads.iter().all(|l| l["addr"] == 0x1000 && l["len"] == 16),
        "{reads:?}"
    );
}
