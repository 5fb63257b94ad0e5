//! One side of a live migration set up over QMP before the stream opens: capabilities, and
//! TLS on the stream from the node's certificate (a `tls-creds-x509` object whose files live
//! in the VM's run directory, readable by its QEMU alone).

use std::io::Write;
use std::path::Path;

use corral_hypervisor::{Error, FileOwner, MigrationSetup};
use corral_qmp::Qmp;
use serde_json::json;

use crate::files;

/// The id of the TLS credentials object in a QEMU.
pub(crate) const TLS_ID: &str = "corral-migration-tls";
/// The directory of its files, in the VM's run directory.
const TLS_DIR: &str = "migration-tls";

/// Sets up `qmp`'s QEMU (run directory `vm_dir`, run as `owner`) for its side of a live
/// migration; again from scratch on every attempt.
pub(crate) async fn prepare(
    qmp: &Qmp,
    vm_dir: &Path,
    owner: Option<FileOwner>,
    setup: &MigrationSetup,
) -> Result<(), String> {
    let mut capabilities = vec![("postcopy-ram", setup.postcopy)];
    if !setup.incoming {
        capabilities.push(("auto-converge", setup.auto_converge));
    }
    qmp.migrate_set_capabilities(&capabilities)
        .await
        .map_err(|e| match setup.postcopy {
            true => format!(
                "post-copy is not available to QEMU on this node ({e}): QEMU needs userfaultfd, \
                 which an unprivileged QEMU before 8.1 gets only with the sysctl \
                 vm.unprivileged_userfaultfd=1; migrate without --postcopy"
            ),
            false => format!("setting the migration capabilities: {e}"),
        })?;
    let set = qmp
        .query_migrate_capabilities()
        .await
        .map_err(|e| format!("reading the migration capabilities: {e}"))?;
    for (name, on) in &capabilities {
        let state = set
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["capability"] == *name)
            .and_then(|c| c["state"].as_bool());
        if state != Some(*on) {
            return Err(format!(
                "QEMU did not take the migration capability {name}={on}"
            ));
        }
    }
    // An earlier attempt's credentials go first (a failed one leaves them behind).
    qmp.migrate_set_parameters(json!({ "tls-creds": "" }))
        .await
        .map_err(|e| format!("clearing the migration's TLS credentials: {e}"))?;
    let _ = qmp.object_del(TLS_ID).await;
    if setup.tls.is_none() {
        return Ok(());
    }
    let dir = vm_dir.join(TLS_DIR);
    write_credentials(&dir, owner, setup)
        .map_err(|e| format!("writing the migration's TLS credentials: {e}"))?;
    let endpoint = if setup.incoming { "server" } else { "client" };
    let dir_text = dir
        .to_str()
        .ok_or_else(|| format!("{} is no UTF-8 path", dir.display()))?;
    qmp.object_add(
        "tls-creds-x509",
        TLS_ID,
        json!({ "dir": dir_text, "endpoint": endpoint, "verify-peer": true }),
    )
    .await
    .map_err(|e| {
        format!(
            "loading the node certificate into QEMU: {e} (a node certificate must allow TLS \
             client and server use and key encipherment, as `corrald --role agent` joins give \
             them since live migration runs over TLS; a node that joined earlier joins again)"
        )
    })?;
    let mut parameters = json!({ "tls-creds": TLS_ID });
    if !setup.incoming {
        parameters["tls-hostname"] = json!(setup.peer);
    }
    qmp.migrate_set_parameters(parameters)
        .await
        .map_err(|e| format!("turning TLS on for the migration: {e}"))?;
    let set = qmp
        .query_migrate_parameters()
        .await
        .map_err(|e| format!("reading the migration parameters: {e}"))?;
    if set["tls-creds"].as_str() != Some(TLS_ID) {
        return Err(format!(
            "QEMU did not take the TLS credentials (tls-creds is {})",
            set["tls-creds"]
        ));
    }
    Ok(())
}

/// The CA, and the node's certificate and key under the names QEMU looks for as `endpoint`:
/// files 0600 of QEMU's user, in a directory only its group may pass through.
fn write_credentials(
    dir: &Path,
    owner: Option<FileOwner>,
    setup: &MigrationSetup,
) -> Result<(), Error> {
    let Some(tls) = &setup.tls else {
        return Ok(());
    };
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    files::make_private(dir)?;
    let side = if setup.incoming { "server" } else { "client" };
    for (name, text) in [
        ("ca-cert.pem".to_owned(), &tls.ca),
        (format!("{side}-cert.pem"), &tls.cert),
        (format!("{side}-key.pem"), &tls.key),
    ] {
        let path = dir.join(name);
        let mut file = files::create_private(&path, owner, "migration TLS file")?;
        file.write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    files::share_search(dir, owner)
}
