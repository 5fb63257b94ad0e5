//! The web console's login against a live corrald: on TLS a bearer token becomes a session
//! cookie (HttpOnly, SameSite=Strict, Secure) that is the caller everywhere — its role and
//! projects unchanged — but only from the listener's own origin; `corral ui`'s link from the
//! unix socket logs a browser in once on the local listener; logging out ends the session.

mod common;

use std::sync::Arc;

use common::api;
use corral_testkit::http::TlsSetup;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn cookie(&self) -> String {
        self.headers
            .get("set-cookie")
            .expect("a Set-Cookie")
            .to_str()
            .unwrap()
            .to_owned()
    }
}

async fn send<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header(
        "host",
        headers
            .iter()
            .find(|(n, _)| *n == "host")
            .map_or("localhost", |(_, v)| v),
    );
    for (n, v) in headers.iter().filter(|(n, _)| *n != "host") {
        req = req.header(*n, *v);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let response = sender
        .send_request(
            req.body(http_body_util::Full::new(axum::body::Bytes::from(
                body.to_owned(),
            )))
            .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
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

/// `name=value` of a Set-Cookie line, for a Cookie header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_login_is_a_same_origin_session_of_that_caller() {
    let setup = TlsSetup::new();
    std::fs::write(setup.token_file(), "# identities live in the store\n").unwrap();
    let (d, port) = setup.start(CORRALD);
    let admin = api(&d);
    admin
        .post(
            "/v1/projects",
            &json!({"kind": "Project", "metadata": {"name": "red"}, "spec": {}}),
        )
        .await
        .expect(201);
    let created = admin
        .post(
            "/v1/identities",
            &json!({"kind": "Identity", "metadata": {"name": "op-red"},
                    "spec": {"role": "operator", "projects": ["red"],
                             "credential": {"type": "token"}}}),
        )
        .await
        .expect(201);
    let token = created["token"].as_str().unwrap().to_owned();
    let host = format!("localhost:{port}");
    let origin = format!("https://{host}");
    let ca = setup.ca().clone();
    let h = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![("host", host.clone())];
        v.extend(extra.iter().cloned());
        v
    };
    macro_rules! call {
        ($method:expr, $path:expr, $headers:expr, $body:expr) => {{
            let headers: Vec<(&str, String)> = $headers;
            let refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send(tls(port, &ca).await, $method, $path, &refs, $body).await
        }};
    }

    // The page loads for anyone; the API does not.
    let page = call!("GET", "/ui/", h(&[]), "");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert_eq!(call!("GET", "/v1/vms", h(&[]), "").status, 401);
    assert_eq!(call!("GET", "/ui/session", h(&[]), "").status, 401);

    // A wrong token is refused; so is a login another site's page sends.
    let login = json!({"token": token}).to_string();
    let wrong = call!(
        "POST",
        "/ui/session",
        h(&[("origin", origin.clone())]),
        r#"{"token":"crl_nope"}"#
    );
    assert_eq!(wrong.status, 401, "{}", wrong.message());
    let foreign = call!(
        "POST",
        "/ui/session",
        h(&[("origin", "https://evil.example".into())]),
        &login
    );
    assert_eq!(foreign.status, 403, "{}", foreign.message());

    let ok = call!(
        "POST",
        "/ui/session",
        h(&[("origin", origin.clone())]),
        &login
    );
    assert_eq!(ok.status, 200, "{}", ok.message());
    assert_eq!(ok.json()["name"], "identity:op-red");
    let set = ok.cookie();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = pair(&set);

    // The cookie is the operator of red: reads and writes there, nothing elsewhere.
    let c = || ("cookie", cookie.clone());
    let who = call!("GET", "/ui/session", h(&[c()]), "");
    assert_eq!(who.json()["role"], "operator");
    let list = call!("GET", "/v1/vms?project=red", h(&[c()]), "");
    assert_eq!(list.status, 200, "{}", list.message());
    let other = call!("GET", "/v1/vms?project=default", h(&[c()]), "");
    assert_eq!(other.status, 403, "{}", other.message());
    let net =
        json!({"kind": "Network", "metadata": {"name": "lab"}, "spec": {"cidr": "10.78.0.0/24"}})
            .to_string();
    let made = call!(
        "POST",
        "/v1/networks?project=red",
        h(&[c(), ("origin", origin.clone())]),
        &net
    );
    assert_eq!(made.status, 201, "{}", made.message());

    // Changes from elsewhere, or with no Origin at all, are not the session's.
    let forged = call!(
        "POST",
        "/v1/networks?project=red",
        h(&[c(), ("origin", "http://localhost:1".into())]),
        &net
    );
    assert_eq!(forged.status, 401, "{}", forged.message());
    assert!(
        forged.message().contains("origin") || forged.message().contains("Origin"),
        "{}",
        forged.message()
    );
    let bare = call!("DELETE", "/v1/networks/lab?project=red", h(&[c()]), "");
    assert_eq!(bare.status, 401, "{}", bare.message());
    assert!(bare.message().contains("Origin"), "{}", bare.message());

    // Logged out, the cookie is nobody.
    let out = call!(
        "DELETE",
        "/ui/session",
        h(&[c(), ("origin", origin.clone())]),
        ""
    );
    assert_eq!(out.status, 204);
    assert!(out.cookie().contains("Max-Age=0"));
    let after = call!("GET", "/v1/vms?project=red", h(&[c()]), "");
    assert_eq!(after.status, 401);
    assert!(
        after.message().contains("log in again"),
        "{}",
        after.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corral_ui_link_logs_in_once_on_the_local_listener() {
    let d = common::daemon();
    let link = api(&d).post("/v1/ui/links", &json!({})).await;
    let link = link.expect(201);
    let url = link["url"].as_str().unwrap().to_owned();
    let rest = url.strip_prefix("http://127.0.0.1:").expect("a local URL");
    let (port, path) = rest.split_once('/').unwrap();
    let port: u16 = port.parse().unwrap();
    let path = format!("/{path}");
    let host = format!("127.0.0.1:{port}");
    let local = || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap()
    };

    // Before the link is opened, the listener serves the page and refuses the API.
    assert_eq!(
        send(local().await, "GET", "/ui/", &[("host", &host)], "")
            .await
            .status,
        200
    );
    let refused = send(local().await, "GET", "/v1/vms", &[("host", &host)], "").await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.message().contains("corral ui"),
        "{}",
        refused.message()
    );

    let opened = send(local().await, "GET", &path, &[("host", &host)], "").await;
    assert_eq!(opened.status, 303);
    assert_eq!(opened.headers["location"], "/ui/");
    let set = opened.cookie();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = pair(&set);
    let again = send(local().await, "GET", &path, &[("host", &host)], "").await;
    assert_eq!(again.status, 401, "a link logs in once");

    let who = send(
        local().await,
        "GET",
        "/ui/session",
        &[("host", &host), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(
        who.json()["role"],
        "admin",
        "the session is the caller who asked for the link"
    );
    let vms = send(
        local().await,
        "GET",
        "/v1/vms",
        &[("host", &host), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(vms.status, 200, "{}", vms.message());
    let forged = send(
        local().await,
        "POST",
        "/v1/vms/x/start",
        &[
            ("host", &host),
            ("cookie", &cookie),
            ("origin", "http://127.0.0.1:9"),
        ],
        "",
    )
    .await;
    assert_eq!(forged.status, 401, "{}", forged.message());
}
