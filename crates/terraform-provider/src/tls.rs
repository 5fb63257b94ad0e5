//! go-plugin's AutoMTLS: each side makes a throw-away certificate and trusts only the other's.
//!
//! Terraform hands the plugin its client certificate in `PLUGIN_CLIENT_CERT` (PEM); the plugin
//! makes a self-signed server certificate for `localhost` and prints it (base64 DER) on the
//! handshake line. The server here accepts exactly that client certificate — pinned byte for
//! byte, with the handshake signature checked against its key — rather than validating a chain:
//! go-plugin's certificate is marked as a CA, which WebPKI path validation refuses as an end
//! entity, and nothing but that one certificate may connect anyway.
//!
//! go-plugin's keys are ECDSA P-521, which `ring` does not verify; [`P521`] does it with the
//! RustCrypto `p521` crate.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, PrivateKeyDer,
    SignatureVerificationAlgorithm, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The certificate and TLS settings of one plugin process.
#[derive(Debug)]
pub struct AutoMtls {
    /// TLS settings requiring the pinned client certificate.
    pub config: Arc<rustls::ServerConfig>,
    /// The server certificate, DER, for the handshake line.
    pub server_cert_der: Vec<u8>,
}

/// AutoMTLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `PLUGIN_CLIENT_CERT` holds no PEM certificate.
    #[error("PLUGIN_CLIENT_CERT does not hold a PEM certificate: {0}")]
    ClientCert(String),
    /// Making the server certificate failed.
    #[error("cannot make the plugin's TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the settings.
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl AutoMtls {
    /// Makes a server certificate and TLS settings that accept only `client_cert_pem`.
    pub fn new(client_cert_pem: &str) -> Result<AutoMtls, TlsError> {
        let client = CertificateDer::from_pem_slice(client_cert_pem.as_bytes())
            .map_err(|e| TlsError::ClientCert(e.to_string()))?;

        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Corral");
        // As go-plugin's own: Terraform puts this certificate in its root pool.
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let server_cert_der = cert.der().to_vec();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedClient {
            cert: client.into_owned(),
            algorithms: algorithms(&provider),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(
                vec![CertificateDer::from(server_cert_der.clone())],
                PrivateKeyDer::try_from(key.serialize_der())
                    .map_err(|e| TlsError::ClientCert(e.to_string()))?,
            )?;
        // gRPC runs over HTTP/2; newer gRPC clients insist on ALPN saying so.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(AutoMtls {
            config: Arc::new(config),
            server_cert_der,
        })
    }
}

/// ring's algorithms plus ECDSA P-521 with SHA-512.
fn algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    let ring = provider.signature_verification_algorithms;
    let all: Vec<&'static dyn SignatureVerificationAlgorithm> =
        ring.all.iter().copied().chain([P521_ALG]).collect();
    let mapping: Vec<(
        SignatureScheme,
        &'static [&'static dyn SignatureVerificationAlgorithm],
    )> = ring
        .mapping
        .iter()
        .copied()
        .chain([(SignatureScheme::ECDSA_NISTP521_SHA512, P521_ALGS)])
        .collect();
    // Built once per process, so leaking keeps the 'static lifetimes rustls wants.
    WebPkiSupportedAlgorithms {
        all: Vec::leak(all),
        mapping: Vec::leak(mapping),
    }
}

const P521_ALG: &dyn SignatureVerificationAlgorithm = &P521;
const P521_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[P521_ALG];

/// ECDSA on NIST P-521 with SHA-512, the signature of go-plugin's client keys.
#[derive(Debug)]
pub struct P521;

impl SignatureVerificationAlgorithm for P521 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p521::ecdsa::signature::Verifier;
        let key =
            p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature =
            p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

/// Accepts exactly one client certificate, whose key must sign the handshake.
#[derive(Debug)]
struct PinnedClient {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hint: Go's TLS client then sends its one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p521_verifies_its_own_signatures_and_refuses_others() {
        use p521::ecdsa::signature::Signer;
        let mut scalar = [7u8; 66];
        scalar[0] = 0; // below the group order
        let secret = p521::ecdsa::SigningKey::from_slice(&scalar).unwrap();
        let public = p521::ecdsa::VerifyingKey::from(&secret);
        let point = public.to_encoded_point(false);
        let signature: p521::ecdsa::Signature = secret.sign(b"handshake");
        let der = signature.to_der();
        assert!(
            P521.verify_signature(point.as_bytes(), b"handshake", der.as_bytes())
                .is_ok()
        );
        assert!(
            P521.verify_signature(point.as_bytes(), b"tampered", der.as_bytes())
                .is_err()
        );
    }

    #[test]
    fn only_the_pinned_client_certificate_is_accepted() {
        let mine = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = AutoMtls::new(&mine.cert.pem()).unwrap();
        assert!(!tls.server_cert_der.is_empty());
        let verifier = PinnedClient {
            cert: mine.cert.der().clone(),
            algorithms: algorithms(&rustls::crypto::ring::default_provider()),
        };
        let now = UnixTime::now();
        assert!(
            verifier
                .verify_client_cert(mine.cert.der(), &[], now)
                .is_ok()
        );
        assert!(
            verifier
                .verify_client_cert(other.cert.der(), &[], now)
                .is_err()
        );
        assert!(
            verifier
                .supported_verify_schemes()
                .contains(&SignatureScheme::ECDSA_NISTP521_SHA512)
        );
        assert!(AutoMtls::new("not a certificate").is_err());
    }
}
