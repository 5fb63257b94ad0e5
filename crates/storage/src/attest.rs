//! Signed attestations: an in-toto Statement v1 in a DSSE envelope, signed with the node's
//! Ed25519 key.
//!
//! The signature covers DSSE's pre-authentication encoding (PAE) of the payload type and the
//! statement, so any tool that speaks DSSE can check it with the node's public key (PEM,
//! SubjectPublicKeyInfo). Corral's own [`verify`] is stricter than DSSE requires: the file must
//! be exactly the canonical envelope Corral writes and the key id must match the key, so
//! changing any byte of the file makes verification fail.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Corral's predicate type: what runs in a VM.
pub const PREDICATE_TYPE: &str = "https://corral.dev/attestation/vm/v1";

/// Why signing or verifying failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A key or envelope file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not an Ed25519 key in PEM.
    #[error("{path}: not an Ed25519 {what} key in PEM ({reason})")]
    BadKey {
        /// The file.
        path: String,
        /// `private` or `public`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The envelope does not parse or is not in canonical form.
    #[error("not a Corral DSSE envelope: {0}")]
    Malformed(String),
    /// The signature does not match the key and content.
    #[error(
        "signature does not verify with this key: the attestation was changed or signed by another key"
    )]
    BadSignature,
}

/// DSSE's pre-authentication encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    /// Base64 of the statement.
    pub payload: String,
    /// What the payload is ([`PAYLOAD_TYPE`]).
    pub payload_type: String,
    /// The signatures (Corral writes one).
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Which key signed (see [`key_id`]).
    pub keyid: String,
    /// Base64 of the Ed25519 signature over the PAE.
    pub sig: String,
}

/// An in-toto Statement v1 with Corral's predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The artefacts attested: images and volumes, by digest.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// What runs.
    pub predicate: VmPredicate,
}

/// One attested artefact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// E.g. `image/debian` or `volume/root`.
    pub name: String,
    /// Algorithm → lowercase hex, e.g. `{"blake3": "…"}`.
    pub digest: BTreeMap<String, String>,
}

/// Corral's predicate: the VM's declared spec and what it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmPredicate {
    /// The VM's name.
    pub vm: String,
    /// The VM's uid.
    pub vm_uid: String,
    /// BLAKE3 of the VM's spec as canonical JSON (`blake3:<hex>`).
    pub spec_hash: String,
    /// QEMU version of the running process, when running.
    pub qemu_version: Option<String>,
    /// Accelerator in use, when running.
    pub accelerator: Option<String>,
    /// The node that issued the statement.
    pub node_id: String,
    /// When, in RFC 3339.
    pub time: String,
}

/// The node's signing key.
#[derive(Debug, Clone)]
pub struct NodeKey {
    key: SigningKey,
}

/// The key id Corral writes: hex of the first 16 bytes of BLAKE3 of the raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..32].to_owned()
}

impl NodeKey {
    /// Loads the key at `dir/node.key` (PKCS#8 PEM), creating it — and `dir` (0700) — on first
    /// use, with mode 0600. Also writes `dir/node.pub` (SPKI PEM) for verifiers.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, AttestError> {
        let io = |what: String| move |source| AttestError::Io { what, source };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join("node.key");
        let key = match fs::read_to_string(&path) {
            Ok(pem) => SigningKey::from_pkcs8_pem(&pem).map_err(|e| AttestError::BadKey {
                path: path.display().to_string(),
                what: "private",
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::getrandom(&mut seed).map_err(|e| AttestError::Io {
                    what: "reading random bytes".into(),
                    source: std::io::Error::other(e),
                })?;
                let key = SigningKey::from_bytes(&seed);
                let pem = key
                    .to_pkcs8_pem(Default::default())
                    .map_err(|e| AttestError::Malformed(e.to_string()))?;
                let tmp = dir.join("node.key.tmp");
                let _ = fs::remove_file(&tmp);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io(format!("creating {}", tmp.display())))?;
                f.write_all(pem.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io(format!("writing {}", tmp.display())))?;
                fs::rename(&tmp, &path).map_err(io(format!("creating {}", path.display())))?;
                key
            }
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        // Older or hand-made files: never leave the key readable by others.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        let node = NodeKey { key };
        fs::write(dir.join("node.pub"), node.public_pem())
            .map_err(io(format!("writing {}", dir.join("node.pub").display())))?;
        Ok(node)
    }

    /// A key from a 32-byte seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> NodeKey {
        NodeKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap_or_default()
    }

    /// Signs `statement` into the canonical envelope bytes (compact JSON and a newline).
    pub fn sign(&self, statement: &Statement) -> Vec<u8> {
        let payload = serde_json::to_vec(statement).unwrap_or_default();
        let sig = self.key.sign(&pae(PAYLOAD_TYPE, &payload));
        let envelope = Envelope {
            payload: B64.encode(&payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                keyid: key_id(&self.key.verifying_key()),
                sig: B64.encode(sig.to_bytes()),
            }],
        };
        let mut out = serde_json::to_vec(&envelope).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Reads a public key in SPKI PEM.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, AttestError> {
    let pem = fs::read_to_string(path).map_err(|source| AttestError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| AttestError::BadKey {
        path: path.display().to_string(),
        what: "public",
        reason: e.to_string(),
    })
}

/// Checks an envelope file's bytes against `key` and returns the statement it signs.
pub fn verify(envelope: &[u8], key: &VerifyingKey) -> Result<Statement, AttestError> {
    let parsed: Envelope =
        serde_json::from_slice(envelope).map_err(|e| AttestError::Malformed(e.to_string()))?;
    let mut canonical = serde_json::to_vec(&parsed).unwrap_or_default();
    canonical.push(b'\n');
    if canonical != envelope {
        return Err(AttestError::Malformed(
            "the file is not the envelope exactly as Corral wrote it".into(),
        ));
    }
    if parsed.payload_type != PAYLOAD_TYPE {
        return Err(AttestError::Malformed(format!(
            "payloadType is {:?}, not {PAYLOAD_TYPE}",
            parsed.payload_type
        )));
    }
    let [signature] = parsed.signatures.as_slice() else {
        return Err(AttestError::Malformed(
            "expected exactly one signature".into(),
        ));
    };
    if signature.keyid != key_id(key) {
        return Err(AttestError::BadSignature);
    }
    let payload = B64
        .decode(&parsed.payload)
        .map_err(|e| AttestError::Malformed(format!("payload: {e}")))?;
    let sig_bytes: [u8; 64] = B64
        .decode(&signature.sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(AttestError::BadSignature)?;
    key.verify(
        &pae(&parsed.payload_type, &payload),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| AttestError::BadSignature)?;
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| AttestError::Malformed(format!("statement: {e}")))?;
    if statement.type_ != STATEMENT_TYPE {
        return Err(AttestError::Malformed(format!(
            "_type is {:?}, not {STATEMENT_TYPE}",
            statement.type_
        )));
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            type_: STATEMENT_TYPE.into(),
            subject: vec![Subject {
                name: "image/debian".into(),
                digest: BTreeMap::from([("blake3".into(), "ab".repeat(32))]),
            }],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: VmPredicate {
                vm: "web-1".into(),
                vm_uid: "u".into(),
                spec_hash: format!("blake3:{}", "cd".repeat(32)),
                qemu_version: Some("7.2.22".into()),
                accelerator: Some("tcg".into()),
                node_id: "node-a".into(),
                time: "2026-01-01T00:00:00Z".into(),
            },
        }
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn any_changed_byte_fails_verification() {
        let key = NodeKey::from_seed([9; 32]);
        let envelope = key.sign(&statement());
        let public = key.key.verifying_key();
        assert_eq!(verify(&envelope, &public).unwrap(), statement());
        for i in 0..envelope.len() {
            let mut bad = envelope.clone();
            bad[i] ^= 0x01;
            assert!(
                verify(&bad, &public).is_err(),
                "byte {i} changed, still verifies"
            );
        }
        let other = NodeKey::from_seed([1; 32]).key.verifying_key();
        assert!(matches!(
            verify(&envelope, &other),
            Err(AttestError::BadSignature)
        ));
    }

    #[test]
    fn node_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = NodeKey::load_or_create(&keys).unwrap();
        let mode = fs::metadata(keys.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = NodeKey::load_or_create(&keys).unwrap();
        assert_eq!(a.public_pem(), b.public_pem());
        let public = read_public_key(&keys.join("node.pub")).unwrap();
        assert!(verify(&a.sign(&statement()), &public).is_ok());
    }
}
