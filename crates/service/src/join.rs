//! Joining agents to a cluster: the cluster CA, single-use join tokens, and the node
//! certificates agents authenticate with (the kubeadm model).
//!
//! `corrald cluster init` makes the CA ([`ClusterCa::init`]); an admin mints a token
//! ([`JoinService::mint`]); an agent presents it with a certificate signing request whose key
//! never left the agent ([`JoinService::join`]) and gets back a certificate naming its node,
//! signed by the CA, and the CA certificate. The token carries the CA's SHA-256 so the agent
//! can pin the CA it is handed. A token is kept only as its BLAKE3 hash, and a join marks it
//! used by a compare-and-swap write, so two agents racing with one token cannot both join.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corral_contract::{ResourceName, ValidationError};
use corral_store::{Object, Store, StoreError};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::ServiceError;

/// The store kind join tokens are kept as (hashed; never listed through the API).
const KIND: &str = "JoinToken";
/// How a join token starts.
const PREFIX: &str = "crj";
/// The Organization every node certificate carries, so a node certificate cannot be taken for
/// a user's.
const NODE_ORG: &str = "corral:nodes";
/// The Organization of the client certificate servers present to agents' node listeners
/// (console, memory, attestation of the VMs an agent runs). Agents accept no other: a node
/// certificate, signed by the same CA, must not reach another node's guests.
pub const SERVER_ORG: &str = "corral:servers";
/// How long node certificates are valid.
const NODE_CERT_DAYS: i64 = 365;
/// The longest a join token may live.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why the cluster CA cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA already exists; `cluster init` never overwrites one.
    #[error(
        "a cluster CA already exists in {0} (ca.crt, ca.key): remove it to make a new one, which \
         invalidates every node certificate"
    )]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA's files do not hold a usable certificate and key.
    #[error("the cluster CA in {path}: {source}")]
    Bad {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

/// The cluster CA: it signs agents' node certificates, and servers trust it for agents' mTLS.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    /// Checks client certificates against this CA alone (built once: asked per request).
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("sha256", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// The directory of the CA under a data dir.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster")
    }

    /// Makes a new CA in `dir` (`ca.crt`, and `ca.key` with mode 0600); refuses to replace one.
    pub fn init(dir: &Path) -> Result<ClusterCa, CaError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert.exists() || key.exists() {
            return Err(CaError::Exists(dir.to_owned()));
        }
        let bad = |source| CaError::Bad {
            path: dir.to_owned(),
            source,
        };
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "corral cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key_pair = KeyPair::generate().map_err(bad)?;
        let made = params.self_signed(&key_pair).map_err(bad)?;
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            what: "creating",
            path: dir.to_owned(),
            source,
        })?;
        write_private(&key, key_pair.serialize_pem().as_bytes())?;
        if let Err(e) = std::fs::write(&cert, made.pem()) {
            // Never leave a key without its certificate behind.
            let _ = std::fs::remove_file(&key);
            return Err(CaError::Io {
                what: "writing",
                path: cert,
                source: e,
            });
        }
        Self::load(dir)?.ok_or_else(|| CaError::Exists(dir.to_owned()))
    }

    /// The CA kept in `dir`, if `cluster init` made one there.
    pub fn load(dir: &Path) -> Result<Option<ClusterCa>, CaError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert.exists() && !key.exists() {
            return Ok(None);
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Io {
                what: "reading",
                path: path.to_owned(),
                source,
            })
        };
        let bad = |source| CaError::Bad {
            path: dir.to_owned(),
            source,
        };
        let cert_pem = read(&cert)?;
        let key_pair = KeyPair::from_pem(&read(&key)?).map_err(bad)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(bad)?;
        let cert_der =
            pem_der(&cert_pem).ok_or_else(|| bad(rcgen::Error::CouldNotParseCertificate))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert_der.clone()))
            .map_err(|_| bad(rcgen::Error::CouldNotParseCertificate))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|_| bad(rcgen::Error::CouldNotParseCertificate))?;
        Ok(Some(ClusterCa {
            cert_pem,
            cert_der,
            issuer,
            verifier,
        }))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The SHA-256 of the CA certificate's DER bytes, 64 lowercase hex digits: what join tokens
    /// carry for agents to pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// A certificate for node `node` over the public key of `csr_pem` (a PEM certificate
    /// signing request). Only the key is taken from the request: names and usages are the
    /// CA's choice.
    pub fn sign_node(&self, node: &ResourceName, csr_pem: &str) -> Result<String, ServiceError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            ValidationError::new(
                "csr",
                format!("must be a PEM certificate signing request with a valid signature ({e})"),
            )
        })?;
        let cert = node_params(node)?
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| ServiceError::Host(format!("signing the node certificate: {e}").into()))?;
        Ok(cert.pem())
    }

    /// A node certificate for `node` with a new key, for a node that holds the CA itself
    /// (`--role all` on a cluster's store) rather than joining: the certificate and its key,
    /// PEM. It authenticates the node's live migrations.
    pub fn issue_node(&self, node: &ResourceName) -> Result<(String, String), ServiceError> {
        let failed = |e: rcgen::Error| {
            ServiceError::Host(format!("issuing the node certificate: {e}").into())
        };
        let key = KeyPair::generate().map_err(failed)?;
        let cert = node_params(node)?
            .signed_by(&key, &self.issuer)
            .map_err(failed)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A serving certificate for servers reached by `names` (DNS names or IP addresses), with
    /// its new key: the chain (the certificate, then the CA's) and the key, PEM. Agents that
    /// pinned this CA from their join token trust servers presenting it.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "corral server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }

    /// A client certificate for this server with a new key (PEM certificate, PEM key): what it
    /// presents to agents' node listeners to reach the VMs they run, on behalf of callers it
    /// has authorized itself. Only a holder of the CA key can make one.
    pub fn issue_server_client(&self) -> Result<(String, String), ServiceError> {
        let failed = |e: rcgen::Error| {
            ServiceError::Host(format!("issuing the servers' client certificate: {e}").into())
        };
        let key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "corral server");
        dn.push(DnType::OrganizationName, SERVER_ORG);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(NODE_CERT_DAYS);
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The node a TLS client certificate (DER) names, if this CA signed it for a node; `None`
    /// for any other certificate, such as a user's from `--tls-client-ca`.
    pub fn node_of(&self, leaf: &[u8]) -> Option<ResourceName> {
        self.verifier
            .verify_client_cert(&CertificateDer::from(leaf), &[], UnixTime::now())
            .ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let subject = cert.subject();
        let org = subject.iter_organization().next()?.as_str().ok()?;
        if org != NODE_ORG {
            return None;
        }
        subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .parse()
            .ok()
    }
}

/// The Organization a certificate (DER) names first, if it parses: callers check the chain
/// first (TLS did), then what it is for ([`SERVER_ORG`], the nodes').
pub fn certificate_org(leaf: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let org = cert
        .subject()
        .iter_organization()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(org)
}

/// What a node certificate says: the node's name (also as its DNS name, which the source of
/// a live migration checks on the target), the nodes' Organization, and both TLS roles — an
/// agent is the client of servers and of migration targets, and the server of migration
/// sources. Key encipherment too, which QEMU's TLS credentials insist on.
fn node_params(node: &ResourceName) -> Result<CertificateParams, ServiceError> {
    let mut params = CertificateParams::new(vec![node.to_string()])
        .map_err(|e| ValidationError::new("node", format!("cannot be a certificate name ({e})")))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.as_str());
    dn.push(DnType::OrganizationName, NODE_ORG);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(NODE_CERT_DAYS);
    Ok(params)
}

/// A join token as minted: shown once.
#[derive(Debug, Clone, Serialize)]
pub struct JoinToken {
    /// `crj.<CA SHA-256>.<id>.<secret>`: what `corrald --role agent --join-token` takes.
    pub token: String,
    /// When it stops being accepted, RFC 3339.
    pub expires: String,
    /// The SHA-256 of the cluster CA certificate (also inside the token).
    pub ca_sha256: String,
}

/// What a successful join hands the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Joined {
    /// The node certificate, PEM.
    pub certificate: String,
    /// The cluster CA certificate, PEM.
    pub ca: String,
}

/// A join token's parts, as an agent reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParts {
    /// The SHA-256 of the CA the agent must be handed.
    pub ca_sha256: String,
    /// The stored record's name.
    pub id: String,
    /// The secret, kept by the server only as its hash.
    pub secret: String,
}

impl std::str::FromStr for TokenParts {
    type Err = ValidationError;

    fn from_str(token: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                "join_token",
                "must be a token from `corral node join-token`: crj.<64 hex>.<16 hex>.<64 hex>",
            )
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        let mut parts = token.trim().split('.');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(PREFIX), Some(ca), Some(id), Some(secret), None)
                if hex(ca, 64) && hex(id, 16) && hex(secret, 64) =>
            {
                Ok(TokenParts {
                    ca_sha256: ca.to_owned(),
                    id: id.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            _ => Err(bad()),
        }
    }
}

/// A stored join token.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// BLAKE3 of the secret.
    blake3: String,
    /// Seconds since the epoch after which it is refused.
    expires: u64,
    /// The node that used it.
    #[serde(default)]
    used_by: Option<String>,
    /// The only node it may join, if minted for one.
    #[serde(default)]
    node: Option<String>,
}

/// Join tokens and joins, for the servers of a cluster.
#[derive(Clone)]
pub struct JoinService {
    store: Arc<dyn Store>,
    ca: Option<Arc<ClusterCa>>,
}

impl std::fmt::Debug for JoinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinService")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl JoinService {
    /// Joins signed by `ca`; without one, minting and joining are refused with what to do.
    pub fn new(store: Arc<dyn Store>, ca: Option<Arc<ClusterCa>>) -> Self {
        JoinService { store, ca }
    }

    /// The cluster CA, if this server has one.
    pub fn ca(&self) -> Option<&Arc<ClusterCa>> {
        self.ca.as_ref()
    }

    fn need_ca(&self) -> Result<&ClusterCa, ServiceError> {
        self.ca.as_deref().ok_or_else(|| ServiceError::WrongState {
            kind: "server",
            name: "joins".into(),
            state: "without a cluster CA, so agents cannot join through it".into(),
            rule: "run `corrald cluster init --data-dir DIR` once and start the servers with \
                   --cluster-dir DIR/cluster (or that data dir)"
                .into(),
        })
    }

    /// Mints a single-use token accepted for `ttl` (at most [`MAX_TOKEN_TTL`]), for node
    /// `node` only if given. Records of tokens that expired over a day ago are dropped.
    pub async fn mint(&self, ttl: Duration, node: Option<&str>) -> Result<JoinToken, ServiceError> {
        let ca = self.need_ca()?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ValidationError::new(
                "ttl",
                format!(
                    "must be more than 0 and at most {} (got {})",
                    humantime::format_duration(MAX_TOKEN_TTL),
                    humantime::format_duration(ttl)
                ),
            )
            .into());
        }
        let node = node
            .map(|n| {
                n.parse::<ResourceName>()
                    .map_err(|e| ValidationError::new("node", format!("{e}")))
            })
            .transpose()?;
        self.forget_expired().await;
        let id = random_hex::<8>()?;
        let secret = random_hex::<32>()?;
        let expires = SystemTime::now() + ttl;
        let record = Record {
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            expires: expires
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            used_by: None,
            node: node.map(|n| n.to_string()),
        };
        let body = serde_json::to_string(&record).map_err(|source| ServiceError::Encode {
            kind: "join token",
            name: id.clone(),
            source,
        })?;
        self.store
            .create(Object::new(KIND, id.clone(), id.clone(), body))
            .await
            .map_err(|e| ServiceError::from_store("join token", e))?;
        let ca_sha256 = ca.fingerprint();
        Ok(JoinToken {
            token: format!("{PREFIX}.{ca_sha256}.{id}.{secret}"),
            expires: humantime::format_rfc3339_seconds(expires).to_string(),
            ca_sha256,
        })
    }

    /// Drops the records of tokens that expired over a day ago (sooner, an agent still hears
    /// "expired" rather than "unknown"); best effort.
    async fn forget_expired(&self) {
        let Ok((records, _)) = self
            .store
            .list(KIND, &corral_store::Selector::default())
            .await
        else {
            return;
        };
        let long_ago = now_secs().saturating_sub(24 * 3600);
        for obj in records {
            let stale = serde_json::from_str::<Record>(&obj.body)
                .map(|r| r.expires < long_ago)
                .unwrap_or(false);
            if stale {
                let _ = self
                    .store
                    .delete(KIND, &obj.name, Some(obj.resource_version))
                    .await;
            }
        }
    }

    /// Joins node `node`: checks the token (known, unexpired, unused), signs a certificate for
    /// the key of `csr_pem`, and marks the token used, in one compare-and-swap; a refused or
    /// failed join leaves the token as it was.
    pub async fn join(
        &self,
        token: &str,
        node: &str,
        csr_pem: &str,
    ) -> Result<Joined, ServiceError> {
        let ca = self.need_ca()?;
        let parts: TokenParts = token.parse()?;
        let node: ResourceName = node
            .parse()
            .map_err(|e| ValidationError::new("node", format!("{e}")))?;
        let refused = |why: String| ServiceError::PermissionDenied {
            what: format!("join token refused: {why}"),
            remedy: "an admin mints a new one with `corral node join-token`",
        };
        if parts.ca_sha256 != ca.fingerprint() {
            return Err(refused(
                "it was minted for another cluster CA than this server's".into(),
            ));
        }
        let mut stored = match self.store.get(KIND, &parts.id).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => return Err(refused("unknown token".into())),
            Err(e) => return Err(ServiceError::from_store("join token", e)),
        };
        let mut record: Record =
            serde_json::from_str(&stored.body).map_err(|e| ServiceError::Corrupt {
                kind: "join token",
                name: parts.id.clone(),
                source: e.into(),
            })?;
        // Compared as hashes: the time taken says nothing about the secret.
        if blake3::hash(parts.secret.as_bytes()).to_hex().as_str() != record.blake3 {
            return Err(refused("unknown token".into()));
        }
        if let Some(by) = &record.used_by {
            return Err(refused(format!("it was already used (by node {by:?})")));
        }
        if let Some(only) = record.node.as_deref().filter(|only| *only != node.as_str()) {
            return Err(refused(format!(
                "it was minted for node {only:?}, not {:?}",
                node.as_str()
            )));
        }
        if now_secs() >= record.expires {
            return Err(refused("it has expired".into()));
        }
        let certificate = ca.sign_node(&node, csr_pem)?;
        record.used_by = Some(node.to_string());
        stored.body = serde_json::to_string(&record).map_err(|source| ServiceError::Encode {
            kind: "join token",
            name: parts.id.clone(),
            source,
        })?;
        match self.store.update(stored).await {
            Ok(_) => Ok(Joined {
                certificate,
                ca: ca.cert_pem().to_owned(),
            }),
            Err(StoreError::Conflict { .. }) => {
                Err(refused("another node used it at the same moment".into()))
            }
            Err(e) => Err(ServiceError::from_store("join token", e)),
        }
    }
}

/// The SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The DER bytes of the first PEM block of `pem`.
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex<const N: usize>() -> Result<String, ServiceError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| ServiceError::Io {
        context: "drawing random bytes for a join token".into(),
        source: e.into(),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to a new file `path` only its owner may read (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| CaError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn service() -> (tempfile::TempDir, JoinService) {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::init(&ClusterCa::dir(dir.path())).unwrap();
        let store = corral_store::SqliteStore::open(dir.path().join("state.db"))
            .await
            .unwrap();
        (dir, JoinService::new(Arc::new(store), Some(Arc::new(ca))))
    }

    fn csr() -> (KeyPair, String) {
        let key = KeyPair::generate().unwrap();
        // What the agent asks for is ignored: the CA names the node.
        let req = CertificateParams::new(vec!["admin".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        (key, req.pem().unwrap())
    }

    #[tokio::test]
    async fn a_token_joins_one_node_once_and_its_certificate_names_the_node() {
        let (dir, joins) = service().await;
        let mode = std::fs::metadata(dir.path().join("cluster/ca.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(matches!(
            ClusterCa::init(&ClusterCa::dir(dir.path())),
            Err(CaError::Exists(_))
        ));
        let minted = joins.mint(Duration::from_secs(60), None).await.unwrap();
        let parts: TokenParts = minted.token.parse().unwrap();
        assert_eq!(parts.ca_sha256, minted.ca_sha256);
        let stored = joins.store.get(KIND, &parts.id).await.unwrap();
        assert!(
            !stored.body.contains(&parts.secret),
            "only the hash is kept"
        );

        let (_key, request) = csr();
        let joined = joins.join(&minted.token, "node-a", &request).await.unwrap();
        let ca = joins.ca().unwrap();
        assert_eq!(joined.ca, ca.cert_pem());
        let leaf = pem_der(&joined.certificate).unwrap();
        assert_eq!(
            ca.node_of(&leaf).map(|n| n.to_string()),
            Some("node-a".into())
        );

        let again = joins
            .join(&minted.token, "node-b", &request)
            .await
            .unwrap_err();
        assert!(
            again
                .to_string()
                .contains("already used (by node \"node-a\")"),
            "{again}"
        );
    }

    #[tokio::test]
    async fn unknown_expired_foreign_and_malformed_tokens_are_refused_and_stay_unused() {
        let (_dir, joins) = service().await;
        let (_key, request) = csr();
        let minted = joins.mint(Duration::from_secs(60), None).await.unwrap();
        let parts: TokenParts = minted.token.parse().unwrap();
        let wrong_secret = format!("crj.{}.{}.{}", parts.ca_sha256, parts.id, "0".repeat(64));
        let err = joins.join(&wrong_secret, "n", &request).await.unwrap_err();
        assert!(err.to_string().contains("unknown token"), "{err}");
        let foreign = format!("crj.{}.{}.{}", "a".repeat(64), parts.id, parts.secret);
        let err = joins.join(&foreign, "n", &request).await.unwrap_err();
        assert!(err.to_string().contains("another cluster CA"), "{err}");
        let err = joins.join("crl_abc", "n", &request).await.unwrap_err();
        assert!(err.to_string().contains("join_token"), "{err}");
        let err = joins
            .join(&minted.token, "n", "not a csr")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("csr"), "{err}");
        let err = joins
            .join(&minted.token, "Bad Name", &request)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("node"), "{err}");
        // None of the refusals spent it.
        joins.join(&minted.token, "n", &request).await.unwrap();

        let other = joins.mint(Duration::from_secs(60), None).await.unwrap();
        let id = other.token.parse::<TokenParts>().unwrap().id;
        let mut obj = joins.store.get(KIND, &id).await.unwrap();
        let mut record: Record = serde_json::from_str(&obj.body).unwrap();
        record.expires = 1;
        obj.body = serde_json::to_string(&record).unwrap();
        joins.store.update(obj).await.unwrap();
        let err = joins.join(&other.token, "m", &request).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let err = joins.mint(Duration::ZERO, None).await.unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[tokio::test]
    async fn a_token_for_one_node_joins_only_that_node_and_old_records_go() {
        let (_dir, joins) = service().await;
        let (_key, request) = csr();
        let for_b = joins
            .mint(Duration::from_secs(60), Some("node-b"))
            .await
            .unwrap();
        let err = joins
            .join(&for_b.token, "node-a", &request)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("minted for node \"node-b\""),
            "{err}"
        );
        joins.join(&for_b.token, "node-b", &request).await.unwrap();
        let err = joins
            .mint(Duration::from_secs(60), Some("Not A Name"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("node"), "{err}");

        let id = for_b.token.parse::<TokenParts>().unwrap().id;
        let mut obj = joins.store.get(KIND, &id).await.unwrap();
        let mut record: Record = serde_json::from_str(&obj.body).unwrap();
        record.expires = 1;
        obj.body = serde_json::to_string(&record).unwrap();
        joins.store.update(obj).await.unwrap();
        joins.mint(Duration::from_secs(60), None).await.unwrap();
        assert!(
            joins.store.get(KIND, &id).await.is_err(),
            "long expired: dropped"
        );
    }

    #[test]
    fn the_servers_client_certificate_is_no_node_and_names_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::init(&ClusterCa::dir(dir.path())).unwrap();
        let (cert, _) = ca.issue_server_client().unwrap();
        let der = pem_der(&cert).unwrap();
        assert_eq!(certificate_org(&der).as_deref(), Some(SERVER_ORG));
        assert_eq!(ca.node_of(&der), None);
        let (node, _) = ca.issue_node(&"agent-a".parse().unwrap()).unwrap();
        let node = pem_der(&node).unwrap();
        assert_eq!(certificate_org(&node).as_deref(), Some(NODE_ORG));
    }

    #[test]
    fn a_user_certificate_of_another_ca_is_no_node() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::init(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["node-a".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "node-a");
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODE_ORG);
        let forged = params.self_signed(&key).unwrap();
        assert_eq!(ca.node_of(forged.der()), None);
    }
}
