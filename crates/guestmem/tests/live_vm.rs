//! The bridge against real QEMU guests booted from the guest kit.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use corral_contract::Arch;
use corral_guestmem::{Error, GuestRam, MemoryLayout, PAGE_SIZE};
use corral_hypervisor::Hypervisor;
use corral_testkit::TestVm;

const RAM: u64 = 256 << 20;

fn random_marker() -> String {
    format!("cm-{}", uuid::Uuid::new_v4().simple())
}

/// Boots a VM with introspection whose init printed `marker`, and maps its RAM. With
/// `churn`, a guest process rewrites 64 KiB of a tmpfs file forever.
async fn boot_with_marker(marker: &str, churn: bool) -> Result<(TestVm, GuestRam)> {
    let mut builder = TestVm::builder(Arch::X86_64)
        .introspection()
        .cmdline(format!("corral.marker={marker}"));
    if churn {
        builder = builder.cmdline("corral.memchurn=1");
    }
    let vm = builder.start().await?;
    vm.wait_for_boot().await?;
    vm.wait_for_line(&format!("CORRAL_MARKER {marker}")).await?;
    let path = vm.config().memory_file.clone().context("no memory file")?;
    let ram = GuestRam::open(&path, MemoryLayout::x86_q35(vm.config().memory_bytes))?;
    Ok((vm, ram))
}

fn memory_file(vm: &TestVm) -> PathBuf {
    vm.config().memory_file.clone().expect("introspection VM")
}

/// Eight threads reading pages all over RAM and searching it at once; with `hits` (of a
/// paused guest), each also reads every hit back.
fn hammer(ram: &GuestRam, marker: &str, hits: Option<&[u64]>) {
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                for i in 0..200u64 {
                    let gpa = (t * 7919 + i * 104_729) * 4096 % (RAM - 4096);
                    assert_eq!(ram.read_physical(gpa, 4096).unwrap().len(), 4096);
                    for &hit in hits.unwrap_or_default() {
                        let read = ram.read_physical(hit, marker.len() as u64).unwrap();
                        assert_eq!(read, marker.as_bytes());
                    }
                }
                assert!(!ram.find(marker.as_bytes()).is_empty());
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_finds_and_snapshots_a_live_guest() -> Result<()> {
    let marker = random_marker();
    let (vm, ram) = boot_with_marker(&marker, true).await?;
    let path = memory_file(&vm);
    assert_eq!(ram.len(), RAM);

    // Running: transient copies of the marker may be overwritten between `find` and the
    // read, but the kernel's saved command line keeps one for good.
    let hits = ram.find(marker.as_bytes());
    ensure!(!hits.is_empty(), "marker {marker} not found in guest RAM");
    let still_there = hits
        .iter()
        .filter(|&&gpa| ram.read_physical(gpa, marker.len() as u64).unwrap() == marker.as_bytes())
        .count();
    assert!(still_there > 0, "no hit of {hits:?} reads back the marker");

    assert!(matches!(
        ram.read_physical(RAM - 1, 2),
        Err(Error::InvalidAddress { addr, len: 2, max: RAM }) if addr == RAM - 1
    ));
    assert!(matches!(
        ram.read_physical(RAM, 1),
        Err(Error::InvalidAddress { .. })
    ));

    hammer(&ram, &marker, None);

    // A Hilbert map of a booted guest shows more than zeros and encodes as PNG.
    let frame = corral_guestmem::hilbert_frame(&ram, 64, 32);
    assert_eq!(frame.len(), 64 * 64 * 3);
    assert!(frame.iter().any(|b| *b != 0), "map is all black");
    let png = corral_guestmem::to_png(&frame, 64)?;
    assert_eq!(&png[1..4], b"PNG");

    // Paused: bytes through the bridge equal bytes read from the file, and a consistent
    // snapshot has nothing torn.
    vm.backend().pause(vm.uid()).await?;
    let hits = ram.find(marker.as_bytes());
    ensure!(
        !hits.is_empty(),
        "marker {marker} not found in paused guest RAM"
    );
    hammer(&ram, &marker, Some(&hits));
    let file = std::fs::File::open(&path)?;
    for &gpa in hits.iter().chain(&[0, 0x9_f000, RAM - 4096]) {
        let page = gpa & !(PAGE_SIZE as u64 - 1);
        let mut buf = vec![0; PAGE_SIZE];
        file.read_exact_at(&mut buf, ram.layout().translate(page, PAGE_SIZE as u64)?)?;
        assert_eq!(ram.read_physical(page, PAGE_SIZE as u64)?, &buf[..]);
    }
    let full = ram.snapshot();
    assert_eq!(full.len() as u64, RAM);
    assert!(
        full == std::fs::read(&path)?,
        "snapshot differs from the file"
    );
    let paused = ram.snapshot_consistent(4);
    assert!(
        paused.torn_pages.is_empty(),
        "torn while paused: {:?}",
        paused.torn_pages
    );
    assert_eq!(paused.reread_pages, 0);
    assert!(paused.data == full);

    // Running: the guest kernel keeps writing (timers, the heartbeat), so some pages change
    // during a copy; with no re-reads allowed they are reported torn, with re-reads repaired.
    vm.backend().resume(vm.uid()).await?;
    let mut seen_torn = false;
    for _ in 0..20 {
        let running = ram.snapshot_consistent(0);
        eprintln!(
            "running guest, no re-reads: {} torn pages",
            running.torn_pages.len()
        );
        if !running.torn_pages.is_empty() {
            assert!(running.torn_pages.iter().all(|p| p % 4096 == 0 && *p < RAM));
            seen_torn = true;
            break;
        }
    }
    assert!(
        seen_torn,
        "no page changed in 20 snapshots of a running guest"
    );
    let repaired = ram.snapshot_consistent(8);
    eprintln!(
        "running guest, up to 8 re-reads: {} re-read, {} still torn",
        repaired.reread_pages,
        repaired.torn_pages.len()
    );
    assert!(repaired.torn_pages.len() as u64 <= repaired.reread_pages);

    drop(ram);
    drop(vm);
    assert!(!path.exists(), "{} left behind", path.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_guests_each_see_only_their_own_ram() -> Result<()> {
    let markers: Vec<String> = (0..3).map(|_| random_marker()).collect();
    let (a, b, c) = tokio::try_join!(
        boot_with_marker(&markers[0], false),
        boot_with_marker(&markers[1], false),
        boot_with_marker(&markers[2], false),
    )?;
    let vms = [a, b, c];
    for (i, (_, ram)) in vms.iter().enumerate() {
        for (j, marker) in markers.iter().enumerate() {
            let found = !ram.find(marker.as_bytes()).is_empty();
            assert_eq!(found, i == j, "VM {i} finding VM {j}'s marker: {found}");
        }
    }
    let paths: Vec<PathBuf> = vms.iter().map(|(vm, _)| memory_file(vm)).collect();
    drop(vms);
    for path in paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_virt_ram_starts_at_one_gib() -> Result<()> {
    const GIB: u64 = 1 << 30;
    let marker = random_marker();
    let vm = TestVm::builder(Arch::Aarch64)
        .introspection()
        .cmdline(format!("corral.marker={marker}"))
        .start()
        .await?;
    vm.wait_for_line(&format!("CORRAL_MARKER {marker}")).await?;
    let size = vm.config().memory_bytes;

    // Discovery over the backend's own monitor finds the file and places it at 1 GiB, as the
    // fixed rule does.
    let qmp = vm.backend().qmp(vm.uid()).await?;
    let ram = corral_guestmem::open_discovered(&qmp, |_| MemoryLayout::flat(0)).await?;
    assert_eq!(ram.layout(), &MemoryLayout::aarch64_virt(size));
    assert_eq!(Some(ram.path()), vm.config().memory_file.as_deref());

    vm.backend().pause(vm.uid()).await?;
    let hits = ram.find(marker.as_bytes());
    ensure!(!hits.is_empty(), "marker {marker} not in aarch64 guest RAM");
    for &hit in &hits {
        assert!((GIB..GIB + size).contains(&hit), "{hit:#x} outside RAM");
        assert_eq!(
            ram.read_physical(hit, marker.len() as u64)?,
            marker.as_bytes()
        );
    }
    // Below 1 GiB is flash and devices, not RAM.
    assert!(matches!(
        ram.read_physical(0x1000, 16),
        Err(Error::CrossesHole { addr: 0x1000, .. })
    ));
    assert!(matches!(
        ram.read_physical(GIB + size - 8, 16),
        Err(Error::InvalidAddress { .. })
    ));
    assert!(ram.snapshot() == std::fs::read(ram.path())?);
    Ok(())
}
