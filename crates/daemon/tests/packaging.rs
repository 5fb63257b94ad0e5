//! What Corral ships besides its binaries: the systemd unit is one systemd reads without a
//! complaint, and stopping it leaves the VMs (and the fence guard) running.

use std::process::Command;

#[test]
fn the_systemd_unit_is_valid_and_its_stop_kills_only_corrald() {
    let root = corral_testkit::workspace_root();
    let unit = std::fs::read_to_string(root.join("packaging/systemd/corrald.service"))
        .expect("packaging/systemd/corrald.service");
    // QEMU outlives corrald on purpose; systemd's default would kill it with the daemon.
    let modes: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("KillMode="))
        .collect();
    assert_eq!(modes, ["KillMode=process"]);
    // systemd itself checks it, with ExecStart on the corrald just built.
    let built = unit.replace(
        "ExecStart=/usr/local/bin/corrald",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_corrald")),
    );
    assert_ne!(built, unit, "ExecStart=/usr/local/bin/corrald");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrald.service");
    std::fs::write(&path, built).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}
