//! Discovery and atomic snapshots over QMP, against a QEMU started here without a guest.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use corral_guestmem::{Error, MemoryLayout, Region, discover, discover_layout, open_discovered};
use corral_qmp::Qmp;

const RAM: u64 = 64 << 20;

/// A paused-at-start QEMU with file-backed RAM; killed and cleaned up on drop.
struct Qemu {
    child: Child,
    dir: tempfile::TempDir,
    mem: PathBuf,
}

impl Qemu {
    async fn start(share: bool) -> Result<(Qemu, Qmp)> {
        let dir = tempfile::tempdir()?;
        let mem = PathBuf::from(format!("/dev/shm/corral-gmtest-{}", uuid::Uuid::new_v4()));
        let sock = dir.path().join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-S",
                "-display",
                "none",
                "-nodefaults",
                "-accel",
                "tcg",
                "-m",
                "64M",
            ])
            .args(["-machine", "q35,memory-backend=ram0", "-object"])
            .arg(format!(
                "memory-backend-file,id=ram0,mem-path={},size={RAM},share={}",
                mem.display(),
                if share { "on" } else { "off" }
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let qemu = Qemu { child, dir, mem };
        for _ in 0..200 {
            if let Ok(qmp) = Qmp::connect(&sock).await {
                return Ok((qemu, qmp));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("QMP socket in {} never came up", qemu.dir.path().display())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.mem);
    }
}

#[tokio::test]
async fn discovers_backend_and_layout_and_snapshots_atomically() -> Result<()> {
    let (qemu, qmp) = Qemu::start(true).await?;
    let backends = discover(&qmp).await?;
    assert_eq!(backends.len(), 1);
    let b = &backends[0];
    assert_eq!(
        (b.id.as_str(), &b.mem_path, b.size, b.share),
        ("ram0", &qemu.mem, RAM, true)
    );

    // q35 maps the BIOS over 0xc0000..0x100000, so the tree shows a hole there.
    let layout = discover_layout(&qmp, b, MemoryLayout::x86_q35).await?;
    assert_eq!(
        layout.regions(),
        &[
            Region {
                guest_phys_base: 0,
                file_offset: 0,
                len: 0xc_0000
            },
            Region {
                guest_phys_base: 0x10_0000,
                file_offset: 0x10_0000,
                len: RAM - 0x10_0000
            },
        ]
    );
    let ram = open_discovered(&qmp, MemoryLayout::x86_q35).await?;
    assert_eq!(ram.layout(), &layout);
    assert!(matches!(
        ram.read_physical(0xb_fff0, 0x20),
        Err(Error::CrossesHole {
            addr: 0xb_fff0,
            len: 0x20
        })
    ));
    assert!(matches!(
        ram.read_physical(0xc_0000, 1),
        Err(Error::CrossesHole { .. })
    ));
    assert_eq!(ram.read_physical(0x10_0000, 16)?.len(), 16);

    // Already paused (-S): stays paused.
    let (data, _) = ram.snapshot_atomic(&qmp).await?;
    assert_eq!(data.len() as u64, ram.len());
    assert!(!qmp.query_status().await?.running);
    // Running: paused for the copy, running again afterwards.
    qmp.cont().await?;
    let (data, paused) = ram.snapshot_atomic(&qmp).await?;
    assert_eq!(data.len() as u64, ram.len());
    assert!(paused > Duration::ZERO && paused < Duration::from_secs(10));
    assert!(qmp.query_status().await?.running);
    drop(qemu);
    Ok(())
}

#[tokio::test]
async fn private_backend_is_rejected() -> Result<()> {
    let (qemu, qmp) = Qemu::start(false).await?;
    assert!(!discover(&qmp).await?[0].share);
    assert!(matches!(
        open_discovered(&qmp, MemoryLayout::x86_q35).await,
        Err(Error::NotShared { id }) if id == "ram0"
    ));
    drop(qemu);
    Ok(())
}
