//! IPv4 forwarding, which NAT for bridge networks needs: turned on while a bridge network
//! exists, and put back to what it was when the last one is torn down. The value found before
//! the first change is saved in a file next to the networks' state (written before forwarding
//! is changed, so a crash never loses it).

use std::path::{Path, PathBuf};

use crate::ControllerError;

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where the value from before the first bridge network is kept, under the networks' dir.
fn saved_path(dir: &Path) -> PathBuf {
    dir.join("ip_forward.saved")
}

fn read(sysctl: &Path) -> Result<String, ControllerError> {
    std::fs::read_to_string(sysctl)
        .map(|v| v.trim().to_owned())
        .map_err(ControllerError::io("reading", sysctl))
}

/// Turns forwarding on, first saving the value it had if nothing is saved yet.
pub(super) fn enable(dir: &Path) -> Result<(), ControllerError> {
    enable_at(dir, Path::new(SYSCTL))
}

fn enable_at(dir: &Path, sysctl: &Path) -> Result<(), ControllerError> {
    let saved = saved_path(dir);
    if !saved.exists() {
        let before = read(sysctl)?;
        let tmp = dir.join(".ip_forward.saved.tmp");
        std::fs::write(&tmp, &before).map_err(ControllerError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &saved).map_err(ControllerError::io("writing", &saved))?;
    }
    if read(sysctl)? != "1" {
        std::fs::write(sysctl, "1")
            .map_err(ControllerError::io("enabling IPv4 forwarding in", sysctl))?;
    }
    Ok(())
}

/// Puts forwarding back to the saved value (the last bridge network is gone). Nothing to do if
/// none was saved.
pub(super) fn restore(dir: &Path) -> Result<(), ControllerError> {
    restore_at(dir, Path::new(SYSCTL))
}

fn restore_at(dir: &Path, sysctl: &Path) -> Result<(), ControllerError> {
    let saved = saved_path(dir);
    let Ok(before) = std::fs::read_to_string(&saved) else {
        return Ok(());
    };
    let before = before.trim();
    if before != "0" && before != "1" {
        tracing::warn!(
            value = before,
            "saved ip_forward value is not 0 or 1: leaving it"
        );
    } else if read(sysctl)? != before {
        std::fs::write(sysctl, before)
            .map_err(ControllerError::io("restoring IPv4 forwarding in", sysctl))?;
        tracing::info!(value = before, "restored net.ipv4.ip_forward");
    }
    std::fs::remove_file(&saved).map_err(ControllerError::io("removing", &saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_saved_once_and_restored_once() {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("ip_forward");
        std::fs::write(&sysctl, "0\n").unwrap();
        enable_at(dir.path(), &sysctl).unwrap();
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "1");
        // A second network (or pass) must not save the 1 it finds.
        enable_at(dir.path(), &sysctl).unwrap();
        restore_at(dir.path(), &sysctl).unwrap();
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "0");
        assert!(!saved_path(dir.path()).exists());
        // Nothing saved: nothing restored.
        std::fs::write(&sysctl, "1").unwrap();
        restore_at(dir.path(), &sysctl).unwrap();
        assert_eq!(std::fs::read_to_string(&sysctl).unwrap(), "1");
    }
}
