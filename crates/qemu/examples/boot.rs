//! Boots the guest kit through the QEMU backend, prints the guest's own proof that it booted,
//! shows the VM's state, then powers it off through ACPI.
//!
//! `cargo run -p corral-qemu --example boot -- [x86_64|aarch64]`

use std::time::{Duration, Instant};

use anyhow::Context;
use corral_contract::Arch;
use corral_hypervisor::{Hypervisor, StopMode};
use corral_testkit::TestVm;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arch: Arch = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("x86_64")
        .parse()?;
    let t0 = Instant::now();
    let vm = TestVm::builder(arch)
        .start()
        .await
        .context("starting the VM")?;
    let info = vm.info();
    println!(
        "started {} (uid {}) as pid {} with accelerator {} on QEMU {}",
        vm.config().name,
        vm.uid(),
        info.pid,
        info.accel,
        info.emulator_version
    );
    let line = vm.wait_for_boot().await?;
    println!(
        "guest console after {:.2} s: {line}",
        t0.elapsed().as_secs_f64()
    );
    vm.send_line("echo uname: $(uname -sr)").await?;
    println!("guest console: {}", vm.wait_for_line("uname: Linux").await?);
    println!("state: {:?}", vm.backend().state(vm.uid()).await?);
    let exit = vm
        .backend()
        .stop(
            vm.uid(),
            StopMode::Graceful {
                timeout: Duration::from_secs(60),
            },
        )
        .await?;
    println!("stopped: {exit}");
    Ok(())
}
