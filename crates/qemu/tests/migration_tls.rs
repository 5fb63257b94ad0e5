//! TLS on the live migration stream, end to end with two real QEMUs: the target accepts only a
//! source whose certificate its CA signed, and the source checks the target's name. A refused
//! source keeps the guest running (evidence: its heartbeat carries on); one with the right
//! certificate moves it, and the guest counts on in the target.

use std::time::Duration;

use corral_contract::Arch;
use corral_hypervisor::{Hypervisor, MigrationLimits, MigrationSetup, MigrationTls, VmState};
use corral_testkit::{HEARTBEAT, TestVm};

mod common;
use common::{Ca, Result};

/// A target QEMU for `source`'s guest, listening with TLS as node `node-b` of `ca`.
async fn tls_target(source: &TestVm, ca: &Ca) -> Result<(TestVm, String)> {
    let target = source.start_incoming().await?;
    let setup = MigrationSetup {
        tls: Some(ca.node("node-b")?),
        incoming: true,
        ..MigrationSetup::default()
    };
    target
        .backend()
        .prepare_migration(target.uid(), &setup)
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    target
        .backend()
        .migrate_incoming(target.uid(), &uri)
        .await?;
    Ok((target, uri))
}

/// Sends `source`'s guest to `uri` as set up by `setup`; the migration's end state.
async fn send(source: &TestVm, uri: &str, setup: &MigrationSetup) -> Result<String> {
    let hv = source.backend();
    hv.prepare_migration(source.uid(), setup).await?;
    let limits = MigrationLimits {
        downtime_ms: 300,
        bandwidth: None,
    };
    hv.migrate(source.uid(), uri, limits).await?;
    loop {
        let info = hv.migration(source.uid()).await?;
        if info.completed() || info.failed() {
            return Ok(info.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_migration_stream_is_tls_and_refuses_a_stranger() -> Result {
    let cluster = Ca::new("corral cluster CA")?;
    let stranger = Ca::new("another CA")?;
    let source = TestVm::builder(Arch::X86_64).start().await?;
    source.wait_for_boot().await?;
    source.wait_for_line(&format!("{HEARTBEAT} 2")).await?;
    let to_b = |tls: Option<MigrationTls>| MigrationSetup {
        tls,
        peer: "node-b".into(),
        ..MigrationSetup::default()
    };

    // A certificate of another CA, then plain TCP: refused; the guest runs on in the source.
    for setup in [to_b(Some(stranger.node("node-a")?)), to_b(None)] {
        let (target, uri) = tls_target(&source, &cluster).await?;
        let end = send(&source, &uri, &setup).await?;
        assert_eq!(end, "failed", "tls: {}", setup.tls.is_some());
        assert_eq!(
            source.backend().state(source.uid()).await?,
            VmState::Running
        );
        let mark = source.output().mark();
        source
            .wait_for_line_since(mark, HEARTBEAT, Duration::from_secs(30))
            .await?;
        drop(target);
    }
    // The cluster's certificate, but the target is checked for the wrong name: refused too.
    let (target, uri) = tls_target(&source, &cluster).await?;
    let wrong_name = MigrationSetup {
        peer: "node-c".into(),
        ..to_b(Some(cluster.node("node-a")?))
    };
    assert_eq!(send(&source, &uri, &wrong_name).await?, "failed");
    drop(target);

    // The cluster's certificate: the guest moves and counts on in the target.
    let (target, uri) = tls_target(&source, &cluster).await?;
    let end = send(&source, &uri, &to_b(Some(cluster.node("node-a")?))).await?;
    assert_eq!(end, "completed");
    let before = source
        .last_heartbeat()
        .expect("a heartbeat before the move");
    target.backend().resume(target.uid()).await?;
    let line = target
        .wait_for_line_since(target.output().mark(), HEARTBEAT, Duration::from_secs(30))
        .await?;
    let n: u64 = line.split_whitespace().last().unwrap_or_default().parse()?;
    assert!(n > before, "heartbeat {n} in the target after {before}");
    Ok(())
}
