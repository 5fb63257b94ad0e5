//! The SSH readiness probe: sets `SshReady` once the guest's SSH server answers.

use std::net::SocketAddr;
use std::time::Duration;

use corral_contract::{Condition, NetworkAttachmentStatus, Protocol};
use corral_service::VmService;
use tokio::io::AsyncReadExt;

/// The condition the SSH probe sets.
pub const SSH_READY: &str = "SshReady";

/// The host address of the forward to guest port 22/tcp, if the VM has one.
pub(crate) fn ssh_endpoint(networks: &[NetworkAttachmentStatus]) -> Option<SocketAddr> {
    networks.iter().flat_map(|n| &n.forwards).find_map(|f| {
        (f.protocol == Protocol::Tcp && f.guest_port == 22).then(|| {
            let addr = match f.host_address {
                Some(a) if !a.is_unspecified() => a,
                _ => std::net::Ipv4Addr::LOCALHOST,
            };
            SocketAddr::from((addr, f.host_port))
        })
    })
}

/// Whether an SSH server answers at `addr`: it must send its `SSH-2.0` banner. (Connecting
/// alone proves nothing: QEMU's user stack accepts on the host port before the guest listens.)
pub async fn ssh_banner(addr: SocketAddr, wait: Duration) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 8 {
            let n = stream.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                return None;
            }
            got += n;
        }
        Some(buf[..got].starts_with(b"SSH-2.0-"))
    };
    matches!(tokio::time::timeout(wait, attempt).await, Ok(Some(true)))
}

/// Probes until the guest's SSH server answers (then sets `SshReady`), the VM's process changes,
/// or `timeout` passes.
pub(crate) fn probe_ssh(
    svc: VmService,
    name: String,
    pid: u32,
    addr: SocketAddr,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            // A short wait per attempt: before the guest has an address, QEMU's user stack
            // holds the host connection open without an answer, and a long wait would only
            // delay noticing the server once it is up.
            if ssh_banner(addr, Duration::from_secs(1)).await {
                let message = format!("ssh answers on {addr}");
                let _ = svc
                    .update_status(&name, |_, st| {
                        let same = st.pid == Some(pid);
                        if same {
                            st.set_condition(Condition::new(
                                SSH_READY,
                                true,
                                "BannerSeen",
                                &message,
                            ));
                        }
                        same
                    })
                    .await;
                return;
            }
            match svc.get(&name).await {
                Ok(vm) if vm.status.pid == Some(pid) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}
