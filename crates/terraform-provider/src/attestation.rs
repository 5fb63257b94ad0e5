//! `data "corral_vm_attestation"`: the signed statement of what a VM runs (its images' and
//! volumes' digests and its declared spec), from the node that runs it, checked here.
//!
//! The envelope is DSSE, signed by the node's ed25519 key; corrald hands out the key beside
//! it. The provider verifies the signature with that key, and, when the configuration pins
//! the key the operator trusts (`trusted_public_key_pem`), refuses an attestation signed by
//! any other: a plan then fails before anything depends on a VM that is not what it claims.

use std::collections::BTreeMap;

use async_trait::async_trait;
use corral_client::ClientError;
use corral_storage::attest;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;

use crate::diag::Diagnostic;
use crate::resource::{Ctx, DataSource, Outcome};
use crate::schema::{Attr, Schema};
use crate::value::Value;

/// The data source.
pub fn data_source() -> Attestation {
    Attestation {
        schema: Schema::new(
            "The attestation of a running VM: a DSSE envelope signed by the node that runs it, \
             naming the digests of its images and volumes and its declared spec. The provider \
             verifies the signature; with `trusted_public_key_pem` it also requires that key.",
        )
        .attr(
            Attr::string("vm")
                .required()
                .describe("The VM's name; it must be running."),
        )
        .attr(Attr::string("trusted_public_key_pem").describe(
            "The node key you trust (SPKI PEM, as `corral attestation get --key-out` writes \
             it). Set, an attestation signed by another key is an error.",
        ))
        .attr(
            Attr::string("envelope")
                .computed()
                .describe("The DSSE envelope, byte for byte as corrald signed it (JSON)."),
        )
        .attr(
            Attr::string("public_key_pem")
                .computed()
                .describe("The key that signed it: the node's (SPKI PEM)."),
        )
        .attr(
            Attr::string("statement")
                .computed()
                .describe("The in-toto statement signed (JSON): `jsondecode` it."),
        )
        .attr(Attr::string_map("subjects").computed().describe(
            "Each attested artefact (`image/NAME`, `volume/NAME`) and its `blake3:<hex>` digest.",
        )),
    }
}

/// `data "corral_vm_attestation"`.
#[derive(Debug)]
pub struct Attestation {
    schema: Schema,
}

#[async_trait]
impl DataSource for Attestation {
    fn type_name(&self) -> &'static str {
        "corral_vm_attestation"
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    async fn read(&self, ctx: &Ctx, config: &Value) -> Outcome<Value> {
        let vm = config.get("vm").as_str().unwrap_or_default().to_owned();
        let trusted = config
            .get("trusted_public_key_pem")
            .as_str()
            .map(str::to_owned);
        let (envelope, key_pem) = ctx.client.attestation(&vm).await.map_err(|e| match e {
            ClientError::NotFound { message } => vec![Diagnostic::attr_error(
                &["vm"],
                "No attestation for this VM",
                message,
            )],
            other => vec![Diagnostic::error(
                "Reading the attestation failed",
                other.to_string(),
            )],
        })?;
        let key = VerifyingKey::from_public_key_pem(&key_pem).map_err(|e| {
            vec![Diagnostic::error(
                "corrald sent an unreadable node key",
                e.to_string(),
            )]
        })?;
        if let Some(trusted) = &trusted {
            let pinned = VerifyingKey::from_public_key_pem(trusted).map_err(|e| {
                vec![Diagnostic::attr_error(
                    &["trusted_public_key_pem"],
                    "Not an ed25519 public key in SPKI PEM",
                    e.to_string(),
                )]
            })?;
            if pinned != key {
                return Err(vec![Diagnostic::attr_error(
                    &["trusted_public_key_pem"],
                    "The attestation is signed by another key",
                    format!(
                        "VM {vm:?} is attested by a node key that is not the one trusted here:\n{key_pem}"
                    ),
                )]);
            }
        }
        let statement = attest::verify(&envelope, &key).map_err(|e| {
            vec![Diagnostic::error(
                "The attestation does not verify",
                format!("VM {vm:?}: {e}"),
            )]
        })?;
        let subjects: BTreeMap<String, Value> = statement
            .subject
            .iter()
            .filter_map(|s| {
                let hex = s.digest.get("blake3")?;
                Some((s.name.clone(), Value::string(format!("blake3:{hex}"))))
            })
            .collect();
        let statement = serde_json::to_string(&statement).map_err(|e| {
            vec![Diagnostic::error(
                "The statement does not encode",
                e.to_string(),
            )]
        })?;
        let mut state = BTreeMap::new();
        state.insert("vm".to_owned(), Value::string(vm));
        state.insert(
            "trusted_public_key_pem".to_owned(),
            trusted.map_or(Value::Null, Value::string),
        );
        state.insert(
            "envelope".to_owned(),
            Value::string(String::from_utf8_lossy(&envelope).into_owned()),
        );
        state.insert("public_key_pem".to_owned(), Value::string(key_pem));
        state.insert("statement".to_owned(), Value::string(statement));
        state.insert("subjects".to_owned(), Value::Map(subjects));
        Ok(Value::Map(state))
    }
}
