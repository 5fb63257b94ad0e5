//! The user-data Corral writes is valid for cloud-init itself: checked by Debian's real
//! `cloud-init schema` (package `cloud-init`; `scripts/setup.sh` installs it).

use std::process::Command;

use corral_contract::CloudInit;

/// `cloud-init schema -c FILE`: `Ok` when valid, else its report.
fn schema_check(doc: &str) -> Result<(), String> {
    let dir = scratch_dir();
    let path = dir.join("user-data");
    std::fs::write(&path, doc).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run cloud-init ({e}): install it with scripts/setup.sh \
                 (apt-get install cloud-init)"
            )
        });
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && report.contains("Valid cloud-config") {
        Ok(())
    } else {
        Err(report)
    }
}

fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "corral-ci-schema-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generated_user_data_passes_cloud_inits_own_schema_check() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr8ZmvVbQvzbNnhZcC5hwdSt1U0fTNcXb1ryr0KX0Re";
    let keys = [
        format!("{key} corral"),
        // A comment with YAML's special characters stays one scalar.
        format!("{key} a: b # c, \"d\" 'e' [f]"),
    ];
    let cases = [
        CloudInit::ssh_user_data(None, &keys[..1], None),
        CloudInit::ssh_user_data(Some("alice"), &keys, Some("web-1")),
        CloudInit::ssh_user_data(Some("bob"), &[], Some("db")),
    ];
    for ci in cases {
        ci.validate().unwrap();
        let doc = ci.user_data.unwrap();
        schema_check(&doc).unwrap_or_else(|report| panic!("{doc}\n---\n{report}"));
    }
}

#[test]
fn the_checker_can_fail() {
    let report = schema_check("#cloud-config\nusers: 5\n").unwrap_err();
    assert!(report.contains("users"), "{report}");
}
