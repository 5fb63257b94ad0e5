//! Guest-access benchmark: how much later than its boot marker a VM is reachable by ssh.
//!
//! `cargo run --release -p corral-bench --bin access -- [--runs 5]`
//!
//! A real corrald (release build, `target/release/corrald`, brought up to date first) runs N
//! rounds. Each round creates two VMs from the guest kit, one after the other, and times from
//! the create call:
//!   plain:  a VM without networks, to its `CORRAL_BOOT_OK` console line (the baseline);
//!   access: a VM on the default user network with guest port 22 forwarded and a cloud-init
//!           seed carrying a key, to its `CORRAL_BOOT_OK` line and to `SshReady` in its status
//!           (corrald saw the guest's `SSH-2.0` banner through the forward).
//! It prints the medians, SshReady/boot-marker of the same VM (the cost of readiness: DHCP,
//! the seed, host-key generation and dropbear starting, plus the probe's interval) and
//! access/plain boot (what a NIC and a seed cost the boot itself). Informational: exits 0
//! whatever the figures, non-zero only if something broke.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use corral_bench::{flag, median, ms, ratio};
use corral_client::{Client, Endpoint};
use corral_contract::{Arch, Boot, CloudInit, NetworkAttachment, Vm, VmSpec};
use corral_testkit::{Corrald, GuestKit, release_build};

const OP_TIMEOUT: Duration = Duration::from_secs(180);

fn corrald() -> anyhow::Result<PathBuf> {
    Ok(release_build(&["corral-daemon"])?.join("corrald"))
}

fn spec(kit: &GuestKit, access: bool) -> anyhow::Result<VmSpec> {
    let boot = Boot::Kernel {
        kernel: kit.kernel(),
        initrd: Some(kit.initrd()),
        cmdline: Some("console=ttyS0 quiet".into()),
    };
    let mut b = VmSpec::builder(boot).memory(corral_contract::ByteSize::from_mib(256));
    if access {
        b = b
            .network(NetworkAttachment::new("default".parse()?).forward(22))
            .cloud_init(CloudInit::ssh_user_data(
                None,
                &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr8ZmvVbQvzbNnhZcC5hwdSt1U0fTNcXb1ryr0KX0Re bench".into()],
                Some("bench"),
            ));
    }
    Ok(b.build()?)
}

/// Times from create to the boot marker and, for `access`, to SshReady.
async fn round(
    client: &Client,
    kit: &GuestKit,
    name: &str,
    access: bool,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let vm = Vm::new(name.parse()?, spec(kit, access)?);
    let t0 = Instant::now();
    client.create_vm(&vm).await?;
    let (mut boot, mut ssh) = (None, None);
    while boot.is_none() || (access && ssh.is_none()) {
        if t0.elapsed() > OP_TIMEOUT {
            bail!("{name}: no boot marker or SshReady within {OP_TIMEOUT:?}");
        }
        if boot.is_none() {
            let log = client.console_log(name, 0).await?;
            if log.windows(14).any(|w| w == b"CORRAL_BOOT_OK") {
                boot = Some(t0.elapsed());
            }
        }
        if access && ssh.is_none() {
            let vm = client.get_vm(name).await?;
            if vm.status.condition("SshReady").is_some_and(|c| c.status) {
                ssh = Some(t0.elapsed());
            }
            if vm.status.phase == corral_contract::Phase::Failed {
                bail!("{name} failed: {:?}", vm.status.message);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.delete_vm(name).await?;
    client
        .wait_for(name, |vm| vm.is_none(), OP_TIMEOUT)
        .await
        .context("waiting for the delete")?;
    Ok((boot.unwrap_or_default(), ssh))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = flag("--runs", 5);
    let kit = GuestKit::get(Arch::X86_64).context("guest kit (run guest/build.sh)")?;
    let daemon = Corrald::start(corrald()?).context("starting corrald")?;
    let client = Client::connect(Endpoint::Unix(daemon.socket())).await?;
    let (mut plain, mut boot, mut ssh) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up round (page cache, QEMU's first start), not counted.
    for i in 0..=runs {
        let (p, _) = round(&client, &kit, &format!("plain-{i}"), false).await?;
        let (b, s) = round(&client, &kit, &format!("access-{i}"), true).await?;
        let s = s.context("no SshReady time")?;
        if i > 0 {
            plain.push(p);
            boot.push(b);
            ssh.push(s);
        }
        eprintln!(
            "round {i}: plain boot {}, access boot {}, SshReady {}",
            ms(p),
            ms(b),
            ms(s)
        );
    }
    let overhead: Vec<Duration> = ssh
        .iter()
        .zip(&boot)
        .map(|(s, b)| s.saturating_sub(*b))
        .collect();
    println!("access bench: {runs} runs, TCG, 256M, 1 vCPU, guest kit initramfs");
    println!(
        "create -> boot marker, no network        median {}",
        ms(median(&plain))
    );
    println!(
        "create -> boot marker, network + seed    median {}",
        ms(median(&boot))
    );
    println!(
        "create -> SshReady                       median {}",
        ms(median(&ssh))
    );
    println!(
        "SshReady / boot marker (same VM)         {:.2}x, overhead median {}",
        ratio(median(&ssh), median(&boot)),
        ms(median(&overhead))
    );
    println!(
        "boot with network + seed / plain boot    {:.2}x",
        ratio(median(&boot), median(&plain))
    );
    drop(daemon);
    Ok(())
}
