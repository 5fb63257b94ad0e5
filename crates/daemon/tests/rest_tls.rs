//! corrald over TCP: refused without TLS and a token, served with both only; the `memory`
//! scope of a token, and audited refusals.

use corral_testkit::http::{TlsSetup, eventually};
use serde_json::{Value, json};

mod common;
use common::{CORRALD, api, run_corrald, tls_api};

#[test]
fn tcp_without_tls_and_a_token_is_refused_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("crl")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("d");
    let run = dir.path().join("r");
    let (status, _, stderr) = run_corrald(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
    );
    assert!(
        !status.success(),
        "corrald served TCP without TLS: {stderr}"
    );
    assert!(
        stderr.contains("needs TLS"),
        "the refusal says why: {stderr}"
    );
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("--tls-key"),
        "{stderr}"
    );
    assert!(!run.join("corral.sock").exists(), "nothing was served");
}

#[tokio::test]
async fn tcp_serves_with_tls_and_a_bearer_token_only() {
    let tls = TlsSetup::new();
    let ca = tls.ca().clone();

    let token = "s3cret-t0ken";
    let (status, line, stderr) = run_corrald(&["hash-token"], format!("{token}\n").as_bytes());
    assert!(status.success(), "{stderr}");
    assert!(line.starts_with("blake3:"), "{line}");
    assert!(!line.contains(token));
    let token_file = tls.token_file();
    std::fs::write(&token_file, format!("# test\n{line}")).unwrap();

    let (d, port) = tls.start(CORRALD);
    let ok = eventually("the TLS listener", || async {
        tls_api(port, &ca, Some(token))
            .try_send("GET", "/v1/vms", None)
            .await
            .ok()
    })
    .await;
    let list = ok.expect(200);
    assert_eq!(list["items"], json!([]));

    for (path, token) in [
        ("/v1/vms", None),
        ("/v1/vms", Some("wrong")),
        ("/v1/vms", Some("")),
        ("/healthz", None),
        ("/openapi.json", None),
        ("/metrics", None),
    ] {
        let reply = tls_api(port, &ca, token)
            .try_send("GET", path, None)
            .await
            .unwrap();
        let message = reply.expect_error(401, "Unauthenticated");
        assert!(message.contains("bearer token"), "{message}");
    }
    let health = tls_api(port, &ca, Some(token))
        .try_send("GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    tls_api(port, &ca, Some(token))
        .try_send("GET", "/v1/vms/absent", None)
        .await
        .unwrap()
        .expect_error(404, "NotFound");

    // A client that does not trust the certificate gets no answer at all.
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    assert!(
        tls_api(port, stranger.cert.der(), Some(token))
            .try_send("GET", "/healthz", None)
            .await
            .is_err()
    );

    // A client that connects and never starts its handshake does not hold up anyone else: a
    // real request is answered while the silent connection is still open (the server only
    // drops it after its handshake timeout, so it must not have seen EOF yet).
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let health = tls_api(port, &ca, Some(token))
        .try_send("GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let mut byte = [0u8; 1];
    match silent.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the silent connection was closed before others were served: {other:?}"),
    }

    // The unix socket still needs no token.
    api(&d).get("/v1/vms").await.expect(200);
}

#[tokio::test]
async fn memory_needs_the_memory_scope_and_refusals_are_audited() {
    let tls = TlsSetup::new();
    let ca = tls.ca().clone();
    let line = |token: &str, args: &[&str]| {
        let mut all = vec!["hash-token"];
        all.extend_from_slice(args);
        let (status, line, stderr) = run_corrald(&all, token.as_bytes());
        assert!(status.success(), "{stderr}");
        line
    };
    let (ops, peek) = (line("ops", &[]), line("peek", &["--scope", "memory"]));
    assert!(peek.trim_end().ends_with("scopes=vms,memory"), "{peek}");
    // A hand-written line: memory only, no VM operations.
    let only = format!("{} scopes=memory\n", line("only", &[]).trim_end());
    let token_file = tls.token_file();
    std::fs::write(&token_file, format!("{ops}{peek}{only}")).unwrap();
    let (status, _, stderr) = run_corrald(&["hash-token", "--scope", "disks"], b"x");
    assert!(!status.success() && stderr.contains("disks"), "{stderr}");

    let (d, port) = tls.start(CORRALD);
    eventually("the TLS listener", || async {
        tls_api(port, &ca, Some("ops"))
            .try_send("GET", "/v1/vms", None)
            .await
            .ok()
    })
    .await
    .expect(200);

    let read = "/v1/vms/absent/memory?addr=0x1000&len=16";
    let message = tls_api(port, &ca, Some("ops"))
        .try_send("GET", read, None)
        .await
        .unwrap()
        .expect_error(403, "PermissionDenied");
    assert!(message.contains("`memory` grant"), "{message}");
    // With the scope, the request gets as far as the VM lookup.
    for token in ["peek", "only"] {
        tls_api(port, &ca, Some(token))
            .try_send("GET", read, None)
            .await
            .unwrap()
            .expect_error(404, "NotFound");
    }
    // A line without `vms` is a viewer: it reads, and may not write.
    tls_api(port, &ca, Some("only"))
        .try_send("GET", "/v1/vms", None)
        .await
        .unwrap()
        .expect(200);
    let net = br#"{"kind":"Network","metadata":{"name":"lan"},"spec":{}}"#;
    let message = tls_api(port, &ca, Some("only"))
        .try_send("POST", "/v1/networks", Some(net))
        .await
        .unwrap()
        .expect_error(403, "PermissionDenied");
    assert!(message.contains("role viewer"), "{message}");

    let audit = std::fs::read_to_string(d.data_dir().join("audit.log")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{audit}");
    assert_eq!(lines[0]["outcome"], "denied");
    assert_eq!(lines[0]["verb"], "memory.read");
    assert_eq!(lines[0]["addr"], 0x1000);
    assert_eq!(lines[0]["len"], 16);
    let ops_hash = &ops.trim()["blake3:".len()..];
    assert_eq!(lines[0]["identity"], format!("token:{}", &ops_hash[..8]));
    assert!(lines[1..3].iter().all(|l| l["outcome"] == "error"));
    assert_eq!(
        (&lines[3]["verb"], &lines[3]["name"], &lines[3]["outcome"]),
        (&json!("create"), &json!("lan"), &json!("denied"))
    );
}
