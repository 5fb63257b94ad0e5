//! `/metrics` of a live corrald with a running guest follows Prometheus conventions, as
//! `promtool check metrics` judges them (promtool comes from `scripts/setup.sh`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_client::{Client, Endpoint, reached};
use corral_contract::{Boot, ByteSize, Phase, Vm, VmSpec};
use corral_testkit::{Corrald, GuestKit, workspace_root};

const WAIT: Duration = Duration::from_secs(120);

/// promtool from PATH, or the copy `scripts/setup.sh` puts under target/tools/bin.
fn promtool() -> PathBuf {
    let bundled = workspace_root().join("target/tools/bin/promtool");
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .chain([bundled])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("promtool is missing; run scripts/setup.sh"))
}

/// What `promtool check metrics` says of `exposition`: Ok, or its complaints.
fn promtool_check(promtool: &Path, exposition: &str) -> Result<(), String> {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool ({}): {said}", out.status))
    }
}

/// GET /metrics on the unix socket, as a bare HTTP/1.0 client would: (content type, body).
fn scrape(socket: &Path, accept: &str) -> (String, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("a content type");
    (content_type, body.to_owned())
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_of_a_running_vm_pass_promtool() -> anyhow::Result<()> {
    let promtool = promtool();
    // promtool is live and strict: it refuses a counter not named `_total`.
    let bad = "# HELP vm_cpu_seconds CPU.\n# TYPE vm_cpu_seconds counter\nvm_cpu_seconds 1\n";
    assert!(promtool_check(&promtool, bad).is_err());

    let d = Corrald::start(env!("CARGO_BIN_EXE_corrald"))?;
    let c = Client::connect(Endpoint::Unix(d.socket())).await?;
    let kit = GuestKit::get(corral_contract::Arch::X86_64)?;
    let boot = Boot::Kernel {
        kernel: kit.kernel(),
        initrd: Some(kit.initrd()),
        cmdline: Some(format!("console={} quiet panic=-1", kit.console())),
    };
    let spec = VmSpec::builder(boot)
        .memory(ByteSize::from_mib(128))
        .build()?;
    c.create_vm(&Vm::new("metered".parse()?, spec)).await?;
    c.wait_for(
        "metered",
        |vm| vm.is_some_and(|vm| reached(vm, Phase::Running)),
        WAIT,
    )
    .await?;

    // The reconcile that wrote `Running` records its duration when it returns, a moment after
    // the status is visible: scrape until that reconcile has been counted.
    let started = std::time::Instant::now();
    let (content_type, text) = loop {
        let scraped = scrape(&d.socket(), "text/plain;version=0.0.4");
        let counted = scraped
            .1
            .lines()
            .any(|l| l.starts_with(r#"corral_reconcile_duration_seconds_count{result="ok"}"#));
        if counted || started.elapsed() > WAIT {
            break scraped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    promtool_check(&promtool, &text).map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    for declared in [
        "# TYPE corral_vm_qemu_cpu_seconds_total counter",
        "# TYPE corral_vm_qemu_rss_bytes gauge",
        "# TYPE corral_reconcile_duration_seconds histogram",
        "# TYPE corral_vms gauge",
    ] {
        assert!(
            text.lines().any(|l| l == declared),
            "no {declared:?} in:\n{text}"
        );
    }
    assert!(sample(&text, r#"corral_vm_qemu_cpu_seconds_total{vm="metered"}"#) > 0.0);
    assert!(sample(&text, r#"corral_vm_qemu_rss_bytes{vm="metered"}"#) > 1e6);
    assert_eq!(sample(&text, r#"corral_vms{phase="Running"}"#), 1.0);
    assert!(
        sample(
            &text,
            r#"corral_reconcile_duration_seconds_count{result="ok"}"#
        ) >= 1.0
    );

    // What Prometheus itself asks for: OpenMetrics, the same series, the counter declared by
    // its family name with a unit.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (content_type, om) = scrape(&d.socket(), accept);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for line in [
        "# TYPE corral_vm_qemu_cpu_seconds counter",
        "# UNIT corral_vm_qemu_cpu_seconds seconds",
        "# EOF",
    ] {
        assert!(om.lines().any(|l| l == line), "no {line:?} in:\n{om}");
    }
    assert!(sample(&om, r#"corral_vm_qemu_cpu_seconds_total{vm="metered"}"#) > 0.0);
    Ok(())
}
