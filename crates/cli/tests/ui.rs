//! `corral ui` against a live corrald on its socket: the link it prints (or hands the browser)
//! logs a browser in once on corrald's 127.0.0.1 listener.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use corral_testkit::{Cli, Corrald, workspace_binary};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// `GET path` over plain HTTP/1.0 on 127.0.0.1:port; the answer's head.
fn head(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.split("\r\n\r\n").next().unwrap().to_owned()
}

fn port_and_path(url: &str) -> (u16, String) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("{url} is not on 127.0.0.1"));
    let (port, path) = rest.split_once('/').unwrap();
    (port.parse().unwrap(), format!("/{path}"))
}

#[test]
fn corral_ui_prints_or_opens_a_one_time_local_login_link() {
    let d = Corrald::start(workspace_binary("corrald")).expect("corrald");
    let cli = Cli::new(CORRAL, &d);

    let link = cli.json(&["ui", "--no-browser", "-o", "json"]);
    assert_eq!(link["opened"], false);
    assert_eq!(link["expires_in_seconds"], 60);
    let (port, path) = port_and_path(link["url"].as_str().unwrap());
    let first = head(port, &path);
    assert!(first.starts_with("HTTP/1.0 303"), "{first}");
    assert!(first.contains("set-cookie: corral_session="), "{first}");
    assert!(first.contains("HttpOnly"), "{first}");
    let second = head(port, &path);
    assert!(
        second.starts_with("HTTP/1.0 401"),
        "a link works once: {second}"
    );

    // Without --no-browser the link goes to $BROWSER, as one argument.
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("url");
    let browser = dir.path().join("browser");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cli.clone_with_browser(&browser).ok(&["ui"]);
    assert!(out.contains("Opened the web console"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the browser was never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = std::fs::read_to_string(&seen).unwrap();
    let (port, path) = port_and_path(&url);
    assert!(head(port, &path).starts_with("HTTP/1.0 303"));
}

trait WithBrowser<'a> {
    fn clone_with_browser(&self, browser: &std::path::Path) -> Cli<'a>;
}

impl<'a> WithBrowser<'a> for Cli<'a> {
    fn clone_with_browser(&self, browser: &std::path::Path) -> Cli<'a> {
        Cli::new(CORRAL, self.daemon()).env("BROWSER", browser)
    }
}
