//! Real etcd members for the store tests: the Debian `etcd` binary (etcd-server 3.4) on
//! free loopback ports with private data directories, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::Error;
use crate::http::free_port;

/// How long a member or a cluster may take to report itself healthy.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// One etcd member of an [`EtcdCluster`].
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and `/metrics`), also when clients need TLS.
    metrics_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A real etcd cluster of one or more members on loopback, for tests.
///
/// Every member has its own data directory under one temporary directory, removed on
/// drop with the processes. A member can be killed (`SIGKILL`, as a crash) and started
/// again on its data.
///
/// ```no_run
/// let etcd = corral_testkit::EtcdCluster::start(1)?;
/// let endpoints = etcd.endpoints(); // ["http://127.0.0.1:PORT"]
/// # Ok::<(), corral_testkit::Error>(())
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<EtcdTlsFiles>,
    _dir: TempDir,
}

/// The PEM files of an [`EtcdCluster::start_tls`] cluster: its CA, the members' server
/// certificate, and a client certificate the members accept (they require one).
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA that signed every certificate here.
    pub ca: PathBuf,
    /// The members' certificate (for `127.0.0.1` and `localhost`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Makes a CA and, signed by it, a server and a client certificate, under `dir`.
fn make_certificates(dir: &std::path::Path) -> Result<EtcdTlsFiles, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let tls_err = |e: rcgen::Error| Error::Wait(format!("making etcd test certificates: {e}"));
    let write = |name: &str, pem: String| -> Result<PathBuf, Error> {
        let path = dir.join(name);
        std::fs::write(&path, pem)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        Ok(path)
    };
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(tls_err)?;
        let mut params = CertificateParams::new(names).map_err(tls_err)?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;
        Ok::<_, Error>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) =
        leaf(vec!["corral".into()], ExtendedKeyUsagePurpose::ClientAuth)?;
    Ok(EtcdTlsFiles {
        ca: write("ca.pem", ca_cert.pem())?,
        server_cert: write("server.pem", server_cert)?,
        server_key: write("server-key.pem", server_key)?,
        client_cert: write("client.pem", client_cert)?,
        client_key: write("client-key.pem", client_key)?,
    })
}

impl EtcdCluster {
    /// Starts `size` members forming one new cluster and waits until it is healthy (has
    /// a leader). Fails when the `etcd` binary is missing (`scripts/setup.sh` installs it).
    pub fn start(size: usize) -> Result<EtcdCluster, Error> {
        Self::start_with(size, false)
    }

    /// Like [`start`](EtcdCluster::start), with clients served over TLS only and
    /// required to present a certificate the cluster's CA signed ([`EtcdCluster::tls`]).
    pub fn start_tls(size: usize) -> Result<EtcdCluster, Error> {
        Self::start_with(size, true)
    }

    /// The certificates of a [`start_tls`](EtcdCluster::start_tls) cluster.
    pub fn tls(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    fn start_with(size: usize, tls: bool) -> Result<EtcdCluster, Error> {
        // A free port can be taken by another test between being picked and etcd binding
        // it: start again on new ports then.
        let mut attempt = 0;
        loop {
            match Self::try_start(size, tls) {
                Err(Error::Wait(log)) if attempt < 3 && log.contains("address already in use") => {
                    attempt += 1;
                    tracing::warn!(attempt, "an etcd port was taken; starting again");
                }
                other => return other,
            }
        }
    }

    fn try_start(size: usize, tls: bool) -> Result<EtcdCluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("corral-etcd-")
            .tempdir()
            .map_err(|e| Error::io("create the etcd directory", e))?;
        let members: Vec<Member> = (0..size.max(1))
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let tls = if tls {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        let mut cluster = EtcdCluster {
            members,
            tls,
            _dir: dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(0..cluster.members.len())?;
        Ok(cluster)
    }

    /// The client URLs of every member (also of killed ones), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `index` (`https://` with TLS).
    pub fn endpoint(&self, index: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[index].client_port)
    }

    /// Kills member `index` with `SIGKILL` and reaps it; its data stays.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again on its data and waits until it answers as healthy.
    pub fn restart(&mut self, index: usize) -> Result<(), Error> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_healthy(index..index + 1)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, index: usize) -> Result<(), Error> {
        let initial_cluster = self.initial_cluster();
        let client = self.endpoint(index);
        let tls = self.tls.clone();
        let member = &mut self.members[index];
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|e| Error::io(format!("open {}", member.log.display()), e))?;
        let mut command = Command::new("etcd");
        if let Some(tls) = &tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", member.metrics_port))
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("corral-test")
            // Loopback is fast; a short election timeout makes failover quick.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| Error::io("dup the etcd log", e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| {
                Error::io(
                    "start etcd (install it with scripts/setup.sh: Debian package etcd-server)",
                    e,
                )
            })?;
        member.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, members: std::ops::Range<usize>) -> Result<(), Error> {
        let deadline = Instant::now() + READY_PATIENCE;
        for i in members {
            loop {
                if health(self.members[i].metrics_port) {
                    break;
                }
                if let Some(child) = self.members[i].child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(Error::Wait(format!(
                        "etcd member {} exited with {status}; log:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    )));
                }
                if Instant::now() > deadline {
                    return Err(Error::Wait(format!(
                        "etcd member {} to report healthy within {READY_PATIENCE:?}; log:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The end of member `index`'s log, for failure messages.
    pub fn log_tail(&self, index: usize) -> String {
        let text = std::fs::read_to_string(&self.members[index].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Whether the member whose metrics listener is on `port` answers `/health` with `"health":"true"` (it has a
/// leader and serves requests).
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
