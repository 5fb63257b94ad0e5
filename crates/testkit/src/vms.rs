use std::time::Duration;

use corral_client::{Client, reached};
use corral_contract::{Arch, Boot, ByteSize, Phase, Vm, VmSpec, VmSpecBuilder};

use crate::{Corrald, Error, GuestKit, tail};

/// How long a daemon-level wait ([`wait_phase`], [`wait_console`]) may take (a bound, never
/// a timing claim).
pub const VM_PATIENCE: Duration = Duration::from_secs(120);

/// Where a running introspectable VM's guest RAM is: `/dev/shm`, named for its uid and the
/// node that runs it ([`corral_hypervisor::guest_ram_name`]).
pub fn guest_ram_file(vm: &Vm) -> std::path::PathBuf {
    guest_ram_path(&vm.metadata.uid, vm.status.node.as_deref())
}

/// [`guest_ram_file`] of VM `uid` on node `node`.
pub fn guest_ram_path(uid: &str, node: Option<&str>) -> std::path::PathBuf {
    std::path::Path::new("/dev/shm").join(corral_hypervisor::guest_ram_name(uid, node))
}

/// A VM that boots the x86_64 guest kit's kernel and initramfs with 256 MiB, the kit's console
/// and `quiet panic=-1`; `f` sets what else the test needs (`|b| b` for nothing).
pub fn kit_vm(name: &str, f: impl FnOnce(VmSpecBuilder) -> VmSpecBuilder) -> Vm {
    let kit = GuestKit::get(Arch::X86_64).expect("guest kit");
    let boot = Boot::Kernel {
        kernel: kit.kernel(),
        initrd: Some(kit.initrd()),
        cmdline: Some(format!("console={} quiet panic=-1", kit.console())),
    };
    let spec = f(VmSpec::builder(boot).memory(ByteSize::from_mib(256)))
        .build()
        .expect("a valid spec");
    Vm::new(name.parse().expect("a valid name"), spec)
}

/// Waits (within [`VM_PATIENCE`]) until VM `name` of `daemon` has reached `phase`, and
/// returns it; the error ends with the daemon's log.
pub async fn wait_phase(
    client: &Client,
    daemon: &Corrald,
    name: &str,
    phase: Phase,
) -> Result<Vm, Error> {
    let vm = client
        .wait_for(
            name,
            |vm| vm.is_some_and(|vm| reached(vm, phase)),
            VM_PATIENCE,
        )
        .await
        .map_err(|e| Error::Wait(format!("{name} to be {phase}: {e}{}", log_of(daemon))))?;
    vm.ok_or_else(|| Error::Wait(format!("{name} disappeared{}", log_of(daemon))))
}

/// Waits (within [`VM_PATIENCE`]) for a console line of VM `name` containing `needle`,
/// printed after the first `skip` bytes of its console log, and returns it.
pub async fn wait_console(
    client: &Client,
    daemon: &Corrald,
    name: &str,
    needle: &str,
    skip: usize,
) -> Result<String, Error> {
    let deadline = tokio::time::Instant::now() + VM_PATIENCE;
    loop {
        let log = client
            .console_log(name, 0)
            .await
            .map_err(|e| Error::Wait(format!("{name}'s console log: {e}{}", log_of(daemon))))?;
        let text = String::from_utf8_lossy(&log[skip.min(log.len())..]).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.trim_end().to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Wait(format!(
                "no {needle:?} on {name}'s console within {VM_PATIENCE:?}; it shows:\n{}{}",
                tail(&text),
                log_of(daemon)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of the last `CORRAL_HEARTBEAT n` VM `name` printed (the guest kit prints one a
/// second from boot): the same boot goes on while it grows, a new boot starts again at 1.
pub async fn last_heartbeat(client: &Client, name: &str) -> Result<Option<u64>, Error> {
    let log = client
        .console_log(name, 0)
        .await
        .map_err(|e| Error::Wait(format!("{name}'s console log: {e}")))?;
    Ok(String::from_utf8_lossy(&log)
        .lines()
        .rev()
        .filter_map(|l| l.split("CORRAL_HEARTBEAT ").nth(1))
        .find_map(|n| n.trim().parse().ok()))
}

/// Types `line` on VM `name`'s console (a live session, as `corral vm console` opens it) and
/// waits (within a minute) for `needle` in what comes back.
pub async fn type_on_console(
    client: &Client,
    name: &str,
    line: &str,
    needle: &str,
) -> Result<(), Error> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let mut console = client
        .attach_console(name, true, false)
        .await
        .map_err(|e| Error::Wait(format!("{name}'s console: {e}")))?;
    console
        .input
        .send(format!("{line}\n").into_bytes())
        .await
        .map_err(|e| Error::Wait(format!("typing on {name}'s console: {e}")))?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen = String::new();
    while !seen.contains(needle) {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Wait(format!(
                "{needle:?} on {name}'s console within {PATIENCE:?} after typing {line:?}; it \
                 shows:\n{}",
                tail(&seen)
            )));
        }
        if let Ok(Some(Ok(bytes))) =
            tokio::time::timeout(Duration::from_secs(1), console.output.recv()).await
        {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    Ok(())
}

/// How many times VM `name` printed its boot marker since its console log began.
pub async fn boots(client: &Client, name: &str) -> Result<usize, Error> {
    let log = client
        .console_log(name, 0)
        .await
        .map_err(|e| Error::Wait(format!("{name}'s console log: {e}")))?;
    Ok(String::from_utf8_lossy(&log)
        .matches(crate::BOOT_MARKER)
        .count())
}

fn log_of(daemon: &Corrald) -> String {
    format!("\n--- corrald log (end) ---\n{}", tail(&daemon.log()))
}
