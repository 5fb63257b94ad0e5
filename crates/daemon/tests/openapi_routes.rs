//! Every (method, path) the served OpenAPI document lists is a route the router serves: asked
//! for it, the daemon answers from a handler, not with the router's 404 ("no such endpoint") or
//! 405. Once the route table is exposed, this compares the two sets directly.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use corral_testkit::Corrald;
use serde_json::Value;

const CORRALD: &str = env!("CARGO_BIN_EXE_corrald");

/// One HTTP/1.1 request over the unix socket: the status and the body.
fn request(daemon: &Corrald, method: &str, path: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(daemon.socket()).unwrap();
    let body = if matches!(method, "POST" | "PUT") {
        "{}"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn every_documented_operation_is_routed() {
    let daemon = Corrald::start(CORRALD).expect("corrald starts");
    let (status, body) = request(&daemon, "GET", "/openapi.json");
    assert_eq!(status, 200, "{body}");
    // The reply may be chunked; the document is the JSON object inside.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let doc: Value = serde_json::from_str(json).expect("the document is JSON");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let concrete = path.replace("{name}", "no-such-thing");
            let (status, body) = request(&daemon, &method, &concrete);
            assert_ne!(
                status, 405,
                "{method} {path} is documented but not routed: {body}"
            );
            assert!(
                !(status == 404 && body.contains("no such endpoint")),
                "{method} {path} is documented but not routed: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations documented");
    // The router's own answer to an undocumented path, so the check above can fail.
    let (status, body) = request(&daemon, "GET", "/v1/no-such-route");
    assert_eq!(status, 404);
    assert!(body.contains("no such endpoint"), "{body}");
}
