//! Identities and roles against a live corrald on TLS: every REST route and every gRPC method
//! of the permission table is refused to an identity without its permission (a viewer
//! writing, an operator managing identities, a caller without the memory grant reading RAM, a
//! revoked token) and let through for one with it; refusals and changes are audited; a
//! revoked identity's open streams end.

use std::time::Duration;

use corral_client::{AuditFilter, Client, Endpoint};
use corral_contract::{Credential, Identity, IdentitySpec, Role};
use corral_daemon::api::{Permission, grpc_methods, routes};
use corral_testkit::Corrald;
use corral_testkit::http::{Api, TlsSetup, eventually};
use serde_json::Value;

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// A TLS corrald whose only callers are the identities the test makes, and an admin client
/// on its unix socket (the test runs as corrald's user).
struct Setup {
    tls: TlsSetup,
    d: Corrald,
    port: u16,
    admin: Client,
}

async fn setup() -> Setup {
    let tls = TlsSetup::new();
    std::fs::write(tls.token_file(), "# identities live in the store\n").unwrap();
    let (d, port) = tls.start(CORRALD);
    let admin = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    Setup {
        tls,
        d,
        port,
        admin,
    }
}

impl Setup {
    /// A new token identity; its token.
    async fn token(&self, name: &str, role: Role, memory: bool) -> String {
        self.issue(name, role, memory, vec![]).await
    }

    /// A new token identity working in `project` only; its token.
    async fn token_in(&self, name: &str, role: Role, project: &str) -> String {
        self.issue(name, role, false, vec![project.parse().unwrap()])
            .await
    }

    async fn issue(
        &self,
        name: &str,
        role: Role,
        memory: bool,
        projects: Vec<corral_contract::ResourceName>,
    ) -> String {
        let spec = IdentitySpec {
            role,
            memory,
            projects,
            credential: Credential::Token { blake3: None },
        };
        let (id, token) = self
            .admin
            .create_identity(&Identity::new(name.parse().unwrap(), spec))
            .await
            .unwrap();
        assert!(
            matches!(id.spec.credential, Credential::Token { blake3: Some(_) }),
            "{id:?}"
        );
        token.expect("the server made a token")
    }

    fn rest(&self, token: &str) -> Api {
        Api::tls(self.port, self.tls.ca())
            .token(Some(token))
            .headers_only()
    }

    fn grpc(&self, token: &str) -> Api {
        self.rest(token)
            .http2()
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.d.data_dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
            .collect()
    }
}

/// What a caller should get from an entry: let through, or refused with this HTTP status and
/// gRPC code.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Through,
    Refused { http: u16, grpc: &'static str },
}

const FORBIDDEN: Expect = Expect::Refused {
    http: 403,
    grpc: "7",
};
const UNAUTHENTICATED: Expect = Expect::Refused {
    http: 401,
    grpc: "16",
};

/// Whether a REST path or gRPC method acts on objects of a project (VMs and what they use).
fn in_project(path: &str) -> bool {
    let rest = [
        "/v1/vms",
        "/v1/images",
        "/v1/volumes",
        "/v1/snapshots",
        "/v1/networks",
        "/v1/sources",
        "/v1/apply",
    ];
    let grpc = [
        "Vm",
        "Image",
        "Volume",
        "Snapshot",
        "Network",
        "Console",
        "Memory",
        "Attestation",
        "Source",
        "Apply",
    ];
    rest.iter().any(|p| path.starts_with(p))
        || grpc
            .iter()
            .any(|k| path.starts_with(&format!("/corral.v1.{k}Service/")))
}

/// Walks the whole table as the holder of `token`; `expect` gets each entry's permission and
/// whether it acts in a project.
async fn walk(s: &Setup, who: &str, token: &str, expect: impl Fn(Permission, bool) -> Expect) {
    walk_in(s, who, token, None, expect).await
}

/// [`walk`], naming `project` (the `corral-project` header) on every request.
async fn walk_in(
    s: &Setup,
    who: &str,
    token: &str,
    project: Option<&str>,
    expect: impl Fn(Permission, bool) -> Expect,
) {
    let scoped = |api: Api| match project {
        Some(p) => api.header("corral-project", p),
        None => api,
    };
    let rest = scoped(s.rest(token));
    for r in routes() {
        if r.permission == Permission::Open {
            continue;
        }
        let path = r.path.replace("{name}", "absent");
        let body = matches!(r.method.as_str(), "POST" | "PUT").then_some(&b"{}"[..]);
        let reply = rest.send(r.method.as_str(), &path, body).await;
        match expect(r.permission, in_project(r.path)) {
            Expect::Through => assert!(
                ![401, 403].contains(&reply.status),
                "{who}: {} {path} ({}) refused: {}",
                r.method,
                r.permission,
                reply.status
            ),
            Expect::Refused { http, .. } => assert_eq!(
                reply.status, http,
                "{who}: {} {path} ({}) not refused",
                r.method, r.permission
            ),
        }
    }
    let grpc = scoped(s.grpc(token));
    // One empty message: the compression flag, a zero length.
    let empty = [0u8; 5];
    for m in grpc_methods() {
        if m.permission == Permission::Open {
            continue;
        }
        let reply = grpc.send("POST", m.path, Some(&empty)).await;
        assert_eq!(
            reply.status, 200,
            "{who}: {} answered {}",
            m.path, reply.status
        );
        // A refusal is a trailers-only answer: its code is in the head.
        let code = reply.header("grpc-status").unwrap_or("none");
        match expect(m.permission, in_project(m.path)) {
            Expect::Through => assert!(
                !["7", "16"].contains(&code),
                "{who}: {} ({}) refused: {code} {:?}",
                m.path,
                m.permission,
                reply.header("grpc-message")
            ),
            Expect::Refused { grpc, .. } => assert_eq!(
                code, grpc,
                "{who}: {} ({}) not refused",
                m.path, m.permission
            ),
        }
    }
}

#[tokio::test]
async fn every_route_and_method_is_refused_without_its_permission_and_audited() {
    let s = setup().await;
    let viewer = s.token("viewer", Role::Viewer, false).await;
    let operator = s.token("operator", Role::Operator, false).await;
    let peeker = s.token("peeker", Role::Viewer, true).await;
    let boss = s.token("boss", Role::Admin, false).await;
    let elsewhere = s.token_in("elsewhere", Role::Operator, "web").await;
    let gone = s.token("gone", Role::Admin, true).await;
    s.admin.revoke_identity("gone").await.unwrap();

    walk(&s, "viewer", &viewer, |p, _| match p {
        Permission::Read => Expect::Through,
        _ => FORBIDDEN,
    })
    .await;
    walk(&s, "operator", &operator, |p, _| match p {
        Permission::Read | Permission::Write => Expect::Through,
        _ => FORBIDDEN,
    })
    .await;
    walk(&s, "peeker", &peeker, |p, _| match p {
        Permission::Read | Permission::Memory => Expect::Through,
        _ => FORBIDDEN,
    })
    .await;
    // An operator of another project touches nothing of `default`…
    walk_in(
        &s,
        "elsewhere",
        &elsewhere,
        Some("default"),
        |p, scoped| match p {
            Permission::Read | Permission::Write if !scoped => Expect::Through,
            _ => FORBIDDEN,
        },
    )
    .await;
    // … and works in its own, which its requests mean when they name none.
    walk(&s, "elsewhere", &elsewhere, |p, _| match p {
        Permission::Read | Permission::Write => Expect::Through,
        _ => FORBIDDEN,
    })
    .await;
    walk(&s, "boss", &boss, |_, _| Expect::Through).await;
    walk(&s, "gone", &gone, |_, _| UNAUTHENTICATED).await;
    walk(&s, "a stranger", "never-issued", |_, _| UNAUTHENTICATED).await;

    // Every refusal is audited with who, what and why.
    let audit = s.audit();
    let denied = |who: &str, verb: &str, kind: &str| {
        audit.iter().any(|l| {
            l["identity"] == who
                && l["verb"] == verb
                && l["kind"] == kind
                && l["outcome"] == "denied"
        })
    };
    assert!(denied("identity:viewer", "create", "Vm"), "{audit:#?}");
    assert!(denied("identity:viewer", "delete", "Network"));
    assert!(denied("identity:operator", "revoke", "Identity"));
    assert!(denied("identity:operator", "list", "Audit"));
    assert!(denied("identity:elsewhere", "create", "Vm"));
    let outside = audit
        .iter()
        .find(|l| l["identity"] == "identity:elsewhere" && l["verb"] == "get")
        .unwrap();
    assert!(
        outside["reason"]
            .as_str()
            .unwrap()
            .contains("not in \"default\""),
        "{outside}"
    );
    // On TCP, an unidentified caller is refused before any route is chosen.
    assert!(audit.iter().any(|l| {
        l["identity"] == "identity:gone"
            && l["outcome"] == "denied"
            && l["reason"].as_str().unwrap().contains("revoked")
    }));
    assert!(
        audit
            .iter()
            .any(|l| l["identity"] == "token:unknown" && l["outcome"] == "denied")
    );
    let refusal = audit
        .iter()
        .find(|l| l["identity"] == "identity:viewer" && l["verb"] == "delete")
        .unwrap();
    assert!(
        refusal["reason"].as_str().unwrap().contains("role viewer"),
        "{refusal}"
    );
    assert_eq!(refusal["name"], "absent");
    assert_eq!(refusal["project"], "default");
    // Memory refusals keep their own line, with the range asked for.
    assert!(audit.iter().any(|l| {
        l["identity"] == "identity:operator"
            && l["verb"] == "memory.read"
            && l["outcome"] == "denied"
    }));

    // A change is audited with its outcome, over REST and gRPC alike.
    let net = serde_json::json!({"kind": "Network", "metadata": {"name": "audited"}, "spec": {}});
    let reply = Api::tls(s.port, s.tls.ca())
        .token(Some(&operator))
        .post("/v1/networks", &net)
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    s.admin.delete_network("audited").await.unwrap();
    let audit = s.audit();
    let made = audit
        .iter()
        .find(|l| l["verb"] == "create" && l["name"] == "audited")
        .expect("the create is audited");
    assert_eq!(made["identity"], "identity:operator");
    assert_eq!(made["outcome"], "ok");
    let deleted = audit
        .iter()
        .find(|l| l["verb"] == "delete" && l["kind"] == "Network" && l["name"] == "audited")
        .expect("the gRPC delete is audited with its name");
    assert!(
        deleted["identity"]
            .as_str()
            .unwrap()
            .starts_with("unix:uid="),
        "{deleted}"
    );

    // The log is read back through the admin-only API, filtered.
    let filter = AuditFilter {
        identity: "identity:viewer".into(),
        ..AuditFilter::default()
    };
    let records = s.admin.audit(&filter).await.unwrap();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r.identity == "identity:viewer"));
    let future = AuditFilter {
        since: "2999-01-01T00:00:00Z".into(),
        ..AuditFilter::default()
    };
    assert!(s.admin.audit(&future).await.unwrap().is_empty());
    let bad = AuditFilter {
        since: "yesterday-ish".into(),
        ..AuditFilter::default()
    };
    let err = s.admin.audit(&bad).await.unwrap_err().to_string();
    assert!(err.contains("since"), "{err}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_and_its_open_watch_ends() {
    let s = setup().await;
    let token = s.token("watcher", Role::Viewer, false).await;
    let client = Client::connect(Endpoint::Https {
        url: format!("https://localhost:{}", s.port),
        token: Some(token.clone()),
        ca_file: Some(s.tls.ca_file()),
    })
    .await
    .unwrap();
    assert!(client.list_vms("").await.is_ok());
    let mut watch = client.watch_vms(None, 0).await.unwrap();
    // Another identity of the same role is not touched: revocation is per identity.
    let other = s.token("other", Role::Viewer, false).await;
    let other_client = Client::connect(Endpoint::Https {
        url: format!("https://localhost:{}", s.port),
        token: Some(other),
        ca_file: Some(s.tls.ca_file()),
    })
    .await
    .unwrap();

    s.admin.revoke_identity("watcher").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the revoked identity's watch ends");
    let err = ended.expect("it ends with an error").to_string();
    assert!(err.contains("revoked"), "{err}");
    let err = client.list_vms("").await.unwrap_err().to_string();
    assert!(err.contains("unknown bearer token"), "{err}");
    assert!(other_client.list_vms("").await.is_ok());
}

/// Upgrades to the WebSocket at `path` over TLS as the holder of `token`.
async fn websocket(
    s: &Setup,
    path: &str,
    token: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.tls.ca().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut ws = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nAuthorization: Bearer {token}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    ws.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ws.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws
}

/// Waits for the WebSocket `ws` (the `what` of a revoked identity) to be closed with code
/// 1008 and a reason that says it was revoked.
async fn closed_as_revoked<S: tokio::io::AsyncRead + Unpin>(ws: &mut S, what: &str) {
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match next_frame(ws).await {
                Ok((0x8, payload)) => return Some(payload),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the {what} is closed after the revocation"))
    .expect("with a close frame");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1008);
    assert!(String::from_utf8_lossy(&close[2..]).contains("revoked"));
}

/// The next server frame: its opcode and payload.
async fn next_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr).await?;
    let len = match hdr[1] & 0x7f {
        126 => u64::from(s.read_u16().await?),
        127 => s.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    s.read_exact(&mut payload).await?;
    Ok((hdr[0] & 0x0f, payload))
}

#[tokio::test]
async fn a_revoked_tokens_console_websocket_is_closed() {
    use corral_contract::Phase;
    let s = setup().await;
    s.admin
        .create_vm(&corral_testkit::kit_vm("rv", |b| b))
        .await
        .unwrap();
    corral_testkit::wait_phase(&s.admin, &s.d, "rv", Phase::Running)
        .await
        .unwrap();
    let token = s.token("console", Role::Operator, false).await;
    let mut ws = websocket(&s, "/v1/vms/rv/console/ws", &token).await;
    // The session is live: the guest's boot marker comes through it.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        while !String::from_utf8_lossy(&seen).contains(corral_testkit::BOOT_MARKER) {
            let (_, payload) = next_frame(&mut ws).await.unwrap();
            seen.extend(payload);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no boot marker: {}", String::from_utf8_lossy(&seen)));

    s.admin.revoke_identity("console").await.unwrap();
    closed_as_revoked(&mut ws, "socket").await;
    s.admin.delete_vm("rv").await.unwrap();
    s.admin
        .wait_for("rv", |vm| vm.is_none(), Duration::from_secs(120))
        .await
        .unwrap();
}

/// A client certificate the CA `issuer` signed, and its key.
fn client_cert(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    name: &str,
) -> (rustls_pki_types::CertificateDer<'static>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key)
}

/// One HTTP/1.1 request over TLS, presenting `client` if given; the status.
async fn mtls_request(
    port: u16,
    ca: &rustls_pki_types::CertificateDer<'static>,
    client: Option<(&rustls_pki_types::CertificateDer<'static>, &rcgen::KeyPair)>,
    method: &str,
    path: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert.clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let body = if method == "POST" {
        r#"{"kind":"Network","metadata":{"name":"by-cert"},"spec":{}}"#
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

#[tokio::test]
async fn a_client_certificate_names_its_identity() {
    let tls = TlsSetup::new();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(tls.dir().join("clients.pem"), ca.pem()).unwrap();
    let port = corral_testkit::http::free_port();
    let path = |name: &str| tls.dir().join(name).to_str().unwrap().to_owned();
    let d = Corrald::start_with(
        CORRALD,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.pem"),
            "--tls-client-ca",
            &path("clients.pem"),
        ],
    )
    .expect("corrald starts with mTLS and no token file");
    eventually("the TLS listener", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await;
    let (known, known_key) = client_cert(&ca, "ci");
    let (stranger, stranger_key) = client_cert(&ca, "stranger");
    let sha256: String = ring::digest::digest(&ring::digest::SHA256, known.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let admin = Client::connect(Endpoint::Unix(d.socket())).await.unwrap();
    let spec = IdentitySpec {
        role: Role::Viewer,
        memory: false,
        projects: vec![],
        credential: Credential::Cert { sha256 },
    };
    admin
        .create_identity(&Identity::new("ci".parse().unwrap(), spec))
        .await
        .unwrap();

    let ca_cert = tls.ca();
    let known = Some((&known, &known_key));
    assert_eq!(
        mtls_request(port, ca_cert, known, "GET", "/v1/vms").await,
        200
    );
    assert_eq!(
        mtls_request(port, ca_cert, known, "POST", "/v1/networks").await,
        403,
        "a viewer's certificate may not write"
    );
    let stranger = Some((&stranger, &stranger_key));
    assert_eq!(
        mtls_request(port, ca_cert, stranger, "GET", "/v1/vms").await,
        401
    );
    assert_eq!(
        mtls_request(port, ca_cert, None, "GET", "/v1/vms").await,
        401
    );
    admin.revoke_identity("ci").await.unwrap();
    assert_eq!(
        mtls_request(port, ca_cert, known, "GET", "/v1/vms").await,
        401
    );
}

#[tokio::test]
async fn a_revoked_identitys_memory_stream_is_closed() {
    use corral_contract::Phase;
    let s = setup().await;
    s.admin
        .create_vm(&corral_testkit::kit_vm("mem", |b| b.introspection(true)))
        .await
        .unwrap();
    corral_testkit::wait_phase(&s.admin, &s.d, "mem", Phase::Running)
        .await
        .unwrap();
    let token = s.token("ram", Role::Viewer, true).await;
    let mut ws = websocket(&s, "/v1/vms/mem/memory/stream?side=16&fps=5", &token).await;
    // A header, then frames of the guest's RAM: 16 x 16 RGB pixels each.
    let (op, header) = next_frame(&mut ws).await.unwrap();
    assert_eq!(op, 0x1, "{}", String::from_utf8_lossy(&header));
    let (op, frame) = next_frame(&mut ws).await.unwrap();
    assert_eq!((op, frame.len()), (0x2, 16 * 16 * 3));

    s.admin.revoke_identity("ram").await.unwrap();
    closed_as_revoked(&mut ws, "stream").await;
    s.admin.delete_vm("mem").await.unwrap();
    s.admin
        .wait_for("mem", |vm| vm.is_none(), Duration::from_secs(120))
        .await
        .unwrap();
}
