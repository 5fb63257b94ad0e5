//! `corrald cluster init`: the cluster CA and the servers' serving certificate.

use std::path::Path;

use anyhow::Context;
use corral_service::{ClusterCa, write_private};

/// Makes the cluster CA and a serving certificate for `names` under `data_dir/cluster`, and
/// says how to use them.
pub fn init(data_dir: &Path, names: &[String]) -> anyhow::Result<String> {
    let dir = ClusterCa::dir(data_dir);
    let mut names = names.to_vec();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
        if let Ok(host) = nix::unistd::gethostname() {
            names.extend(host.into_string().ok().filter(|h| !h.is_empty()));
        }
    }
    let ca = ClusterCa::init(&dir)?;
    let (cert, key) = ca
        .issue_server(&names)
        .with_context(|| format!("issuing the servers' certificate for {}", names.join(", ")))?;
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    write_private(&key_file, key.as_bytes())?;
    std::fs::write(&cert_file, cert).with_context(|| format!("writing {}", cert_file.display()))?;
    Ok(format!(
        "cluster CA: {dir}/ca.crt (sha256 {fp}); key {dir}/ca.key (0600)\n\
         servers' certificate for {names}: start each server with\n  \
         --role server --data-dir {data} --tls-cert {cert} --tls-key {key}\n\
         (other servers: copy {dir} into their data dir)\n\
         agents: `corral node join-token`, then on each host\n  \
         corrald --role agent --server https://SERVER:PORT --node-name NAME (CORRAL_JOIN_TOKEN=TOKEN)",
        dir = dir.display(),
        fp = ca.fingerprint(),
        names = names.join(", "),
        data = data_dir.display(),
        cert = cert_file.display(),
        key = key_file.display(),
    ))
}
