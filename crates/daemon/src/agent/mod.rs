//! `corrald --role agent`: this host as a node of a cluster. It holds no store credentials: it
//! joins the servers once with a join token (a certificate signing request for a key made
//! here, which never leaves the host), keeps the node certificate and the pinned cluster CA in
//! `<data-dir>/node/`, and from then on reaches the servers only with that certificate (mTLS).
//! Its VM controller, network controller, storage controller (for the volumes on this node's
//! disk) and heartbeat (with self-fencing) are the ones `--role all` runs, over
//! [`RemoteStore`]: the servers' view of the store for this node.

mod blobs;
mod remote;
pub(crate) mod streams;

pub use blobs::ServerBlobs;
pub use remote::RemoteStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corral_service::{Joined, TokenParts, pem_der, sha256_hex, write_private};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::config::{AgentConfig, Config};

/// The agent's credentials, as kept in `<data-dir>/node/`.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The node certificate, PEM.
    pub cert: String,
    /// Its key, PEM.
    pub key: String,
    /// The cluster CA, PEM: the only CA the agent trusts for servers.
    pub ca: String,
}

impl NodeIdentity {
    fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("node")
    }

    /// The identity kept under `data_dir`, if this agent joined before.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<NodeIdentity>> {
        let dir = Self::dir(data_dir);
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        if !dir.join("node.crt").exists() {
            return Ok(None);
        }
        Ok(Some(NodeIdentity {
            cert: read("node.crt")?,
            key: read("node.key")?,
            ca: read("ca.crt")?,
        }))
    }

    /// Keeps the identity under `data_dir`: the key readable by its owner only. Written key
    /// last-but-one and certificate last, so a crash leaves no certificate without its key.
    fn store(&self, data_dir: &Path) -> anyhow::Result<()> {
        let dir = Self::dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for stale in ["node.key", "ca.crt"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        std::fs::write(dir.join("ca.crt"), &self.ca).context("writing the cluster CA")?;
        write_private(&dir.join("node.key"), self.key.as_bytes())?;
        std::fs::write(dir.join("node.crt"), &self.cert).context("writing the node certificate")?;
        Ok(())
    }
}

/// Runs the agent until SIGTERM or SIGINT: joins (first start) or reuses its certificate,
/// then reports the node to the server.
pub(crate) async fn run(config: &Config, agent: &AgentConfig) -> anyhow::Result<()> {
    crate::dirs::prepare(&config.data_dir, crate::dirs::Which::Data, None)?;
    let node = config.cluster.node_name.to_string();
    let identity = match NodeIdentity::load(&config.data_dir)? {
        Some(identity) => {
            tracing::info!(%node, "using the node certificate from an earlier join");
            identity
        }
        None => {
            let token = agent.join_token.as_deref().context(
                "this agent has not joined yet: give --join-token (CORRAL_JOIN_TOKEN) from \
                 `corral node join-token`",
            )?;
            let (server, identity) = join_any(&agent.servers, token, &node).await?;
            identity.store(&config.data_dir)?;
            tracing::info!(%node, %server, "joined the cluster");
            identity
        }
    };
    let client = client(&identity)?;
    let blobs = Arc::new(ServerBlobs::new(client.clone(), &agent.servers, &node));
    let store: Arc<dyn corral_store::Store> =
        Arc::new(RemoteStore::new(client, &agent.servers, &node));
    // The node certificate also authenticates this node's live migrations (TLS).
    let migration_tls = corral_hypervisor::MigrationTls {
        ca: identity.ca,
        cert: identity.cert,
        key: identity.key,
    };
    run_node(config, store, migration_tls, blobs).await
}

/// The node's controllers over `store`, until SIGTERM or SIGINT; VMs keep running after.
async fn run_node(
    config: &Config,
    store: Arc<dyn corral_store::Store>,
    migration_tls: corral_hypervisor::MigrationTls,
    blobs: Arc<ServerBlobs>,
) -> anyhow::Result<()> {
    let qemu = config.qemu_user.as_ref().map(|u| u.owner);
    let run_which = if config.run_dir_fallback {
        crate::dirs::Which::RunFallback
    } else {
        crate::dirs::Which::Run
    };
    crate::dirs::prepare(&config.run_dir, run_which, qemu)?;
    // QEMU (its own user) passes through to the volume and seed files, as on `--role all`.
    crate::dirs::prepare(&config.data_dir, crate::dirs::Which::Data, qemu)?;
    crate::dirs::prepare_data_layout(&config.data_dir, qemu, false)?;
    let mut backend_config = corral_qemu::QemuBackendConfig::new(config.run_dir.clone());
    backend_config.run_as = qemu;
    let backend = Arc::new(
        corral_qemu::QemuBackend::new(backend_config).context("preparing the run directory")?,
    );
    let host_paths = crate::host_paths(config)?;
    let vms = corral_service::VmService::new(store.clone())
        .with_host_paths(host_paths.clone())
        .with_port_range(config.port_range.clone());
    let networks = corral_service::NetworkService::new(store.clone());
    let storage_config = crate::storage_config(config, &host_paths, qemu)?;
    let storage = corral_service::StorageService::new(store.clone(), storage_config)
        .map_err(|e| anyhow::anyhow!("preparing the image store: {e}"))?;
    let node_name = config.cluster.node_name.clone();
    let fenced = Arc::new(corral_controller::FenceState::default());
    let guard =
        crate::fence_guard::attach_at_start(&config.run_dir, config.cluster.node_ttl, &fenced)
            .await
            .context("starting the node's fence guard")?;
    let mut controller_config = crate::controller_config(config, host_paths);
    controller_config.migration_tls = Some(migration_tls.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let address = serve_streams(
        config,
        &migration_tls,
        streams::NodeStreams {
            consoles: corral_service::ConsoleService::new(vms.clone(), backend.clone()),
            tunnels: corral_service::TunnelService::new(vms.clone()),
            memory: corral_service::MemoryService::new(
                vms.clone(),
                backend.clone(),
                Arc::new(
                    corral_service::AuditLog::open(
                        &config.data_dir.join("audit.log"),
                        config.audit,
                    )
                    .with_context(|| format!("opening {}/audit.log", config.data_dir.display()))?,
                ),
            ),
            storage: storage.clone(),
            node_key: corral_storage::attest::NodeKey::load_or_create(
                &config.data_dir.join("keys"),
            )
            .context("preparing the node key")?,
            node: node_name.to_string(),
        },
        stop_rx.clone(),
    )
    .await?;
    let controller = Arc::new(
        corral_controller::VmController::new(vms, backend.clone(), controller_config)
            .with_storage(storage.clone())
            .with_fence(fenced.clone()),
    );
    // The volumes of this node: made here for the first VM placed here that uses them.
    let storage_controller = Arc::new(
        corral_controller::StorageController::new(storage, backend.clone())
            .for_agent(node_name.as_str())
            .with_blob_source(blobs),
    );
    let fence = crate::nodes::Fence {
        ttl: config.cluster.node_ttl,
        hypervisor: backend.clone(),
        state: fenced,
        guard: Some(Arc::new(guard)),
    };
    tokio::spawn(crate::nodes::heartbeat(
        corral_service::NodeService::new(store.clone()),
        node_name.clone(),
        config.data_dir.clone(),
        config.storage_pools.clone(),
        Some(address),
        fence,
        stop_rx.clone(),
    ));
    let network_controller =
        corral_controller::NetworkController::new(networks, config.run_dir.join("networks"));
    tokio::spawn(network_controller.run(stop_rx.clone()));
    tokio::spawn(storage_controller.run(stop_rx.clone()));
    let controller_task = tokio::spawn(controller.run(stop_rx.clone()));
    tracing::info!(node = %node_name, "agent running the node's VMs");
    crate::shutdown_signal().await;
    tracing::info!("shutting down; VMs keep running");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), controller_task).await;
    Ok(())
}

/// Serves this node's own streams to the servers on `--node-listen`, until `stop`; the
/// address to report in the node's status (the migration address when bound to all).
async fn serve_streams(
    config: &Config,
    tls: &corral_hypervisor::MigrationTls,
    streams: streams::NodeStreams,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listen = config.cluster.node_listen;
    let listener =
        crate::serve::TlsListener::bind_node(listen, &tls.cert, &tls.key, &tls.ca, &config.limits)
            .await
            .map_err(anyhow::Error::msg)
            .context("--node-listen")?;
    let mut address = axum::serve::Listener::local_addr(&listener)?;
    if address.ip().is_unspecified() {
        address.set_ip(config.cluster.migration_address);
    }
    tracing::info!(%address, "serving this node's consoles and attestations to the servers");
    tokio::spawn(crate::serve::serve(
        listener,
        streams::router(Arc::new(streams)),
        config.limits.clone(),
        |io: &_, _: &std::net::SocketAddr| crate::auth::TlsPeer::of(io),
        stop,
    ));
    Ok(address)
}

/// The body of a successful answer, or the server's error.
async fn read_answer(response: reqwest::Response) -> anyhow::Result<axum::body::Bytes> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .context("reading the server's answer")?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("the server answered {status}: {message}");
    }
    Ok(body)
}

/// Joins through the first of `servers` that takes the token; all of them share the cluster
/// CA, so any one will do. Every server's refusal is reported if none takes it.
async fn join_any(
    servers: &[String],
    token: &str,
    node: &str,
) -> anyhow::Result<(String, NodeIdentity)> {
    let mut refusals = Vec::new();
    for server in servers {
        match join(server, token, node).await {
            Ok(identity) => return Ok((server.clone(), identity)),
            Err(e) => {
                tracing::warn!(%server, error = %format!("{e:#}"), "cannot join through this server");
                refusals.push(format!("{server}: {e:#}"));
            }
        }
    }
    anyhow::bail!("no server let this node join: {}", refusals.join("; "))
}

/// Joins with `token`: a key made here, a signing request for it, the server's certificate
/// trusted only if the CA the token pins signed it, and the CA it returns checked against the
/// pin too.
async fn join(server: &str, token: &str, node: &str) -> anyhow::Result<NodeIdentity> {
    let parts: TokenParts = token.parse()?;
    let key = rcgen::KeyPair::generate().context("making the node key")?;
    let csr = rcgen::CertificateParams::new(vec![node.to_owned()])
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .context("making the certificate signing request")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            sha256: parts.ca_sha256.clone(),
            provider,
        }))
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = serde_json::json!({ "token": token, "node": node, "csr": csr }).to_string();
    // A server not up yet is waited for; a refusal is final.
    let response = loop {
        let sent = client
            .post(format!("{server}/v1/nodes/join"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => break response,
            Err(e) => {
                tracing::warn!(%server, error = %format!("{:#}", anyhow::Error::from(e)), "cannot reach the server to join; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = crate::shutdown_signal() => anyhow::bail!("stopped before joining"),
                }
            }
        }
    };
    let answer = read_answer(response)
        .await
        .with_context(|| format!("joining {server} as node {node:?}"))?;
    let joined: Joined = serde_json::from_slice(&answer).context("reading the join answer")?;
    let ca = pem_der(&joined.ca).context("the server's CA is no PEM certificate")?;
    anyhow::ensure!(
        sha256_hex(&ca) == parts.ca_sha256,
        "the server handed a cluster CA (sha256 {}) other than the join token pins ({})",
        sha256_hex(&ca),
        parts.ca_sha256
    );
    Ok(NodeIdentity {
        cert: joined.certificate,
        key: key.serialize_pem(),
        ca: joined.ca,
    })
}

/// The agent's client: its node certificate, and the cluster CA as the only root.
fn client(identity: &NodeIdentity) -> anyhow::Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(
        pem_der(&identity.ca).context("the kept cluster CA is no PEM certificate")?,
    ))?;
    let chain = CertificateDer::pem_slice_iter(identity.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the kept node certificate")?;
    let key =
        PrivateKeyDer::from_pem_slice(identity.key.as_bytes()).context("the kept node key")?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    // No overall timeout: watches stream for as long as they last; calls set their own.
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

/// Trusts a server whose chain carries the CA of the pinned SHA-256 and whose certificate that
/// CA signed (kubeadm's `--discovery-token-ca-cert-hash`): the join token is all an agent needs.
#[derive(Debug)]
struct PinnedCa {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.sha256)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate chain holds no CA of sha256 {} (the join token's): \
                     start servers with the certificate `corrald cluster init` made",
                    self.sha256
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?
        .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
