//! The raw-QEMU baseline: the backend's exact command line minus `-S`, spawned directly.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_qemu::{QemuBackend, QemuBackendConfig};
use corral_testkit::{BOOT_MARKER, TestVmBuilder};

/// What one raw boot took.
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    /// Spawn → QMP greeting read.
    pub qmp: Duration,
    /// Spawn → `qmp_capabilities` answered: the monitor takes commands. QEMU answers its first
    /// command only once machine set-up is done, ~15 ms after the greeting here.
    pub negotiated: Duration,
    /// Spawn → the guest's boot marker on the console (when asked for).
    pub boot: Option<Duration>,
}

/// Runs `qemu-system-*` with the command line Corral's backend would use for `builder`'s VM,
/// minus `-S` (so the guest runs at once), times it, and kills it.
pub async fn run(builder: &TestVmBuilder, until_boot: bool) -> anyhow::Result<RawSample> {
    let dir = tempfile::Builder::new()
        .prefix("corral-b")
        .tempdir_in("/tmp")?;
    let uid = uuid_like();
    let config = builder.config(dir.path(), &uid)?;
    let backend = QemuBackend::new(QemuBackendConfig::new(dir.path()))?;
    let (_, cmd) = backend.command_line(&config).await?;
    let paths = backend.paths(&uid);
    std::fs::create_dir_all(&paths.dir)?;
    let args: Vec<_> = cmd.args().iter().filter(|a| *a != "-S").cloned().collect();
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let mut child = Command::new(cmd.binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let result = (|| {
            let mut qmp = connect(&paths.qmp, t0)?;
            let mut reader = BufReader::new(qmp.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if !line.contains("QMP") {
                bail!("no QMP greeting: {line:?}");
            }
            let qmp_at = t0.elapsed();
            qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
            line.clear();
            reader.read_line(&mut line)?;
            if !line.contains("return") {
                bail!("qmp_capabilities failed: {line:?}");
            }
            let negotiated = t0.elapsed();
            if !until_boot {
                return Ok(RawSample {
                    qmp: qmp_at,
                    negotiated,
                    boot: None,
                });
            }
            let mut console = connect(&paths.console, t0)?;
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !contains(&seen, BOOT_MARKER.as_bytes()) {
                let n = console.read(&mut buf)?;
                if n == 0 {
                    bail!("raw QEMU closed its console before booting");
                }
                seen.extend_from_slice(&buf[..n]);
            }
            Ok(RawSample {
                qmp: qmp_at,
                negotiated,
                boot: Some(t0.elapsed()),
            })
        })();
        let _ = child.kill();
        let _ = child.wait();
        drop(dir);
        result
    })
    .await?
}

fn connect(path: &Path, t0: Instant) -> anyhow::Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                return Ok(s);
            }
            Err(_) if t0.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A unique, short uid for a benchmark VM.
pub fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("b{:015x}", nanos & 0xfff_ffff_ffff_ffff)
}
