//! Identities: who may call the API, kept as objects of the store through the generic path.
//! A token is kept only as its BLAKE3 hash; creating a token identity without one makes the
//! token, which is returned once and never stored.

use corral_contract::{Credential, Identity};
use corral_store::Store;

use crate::ServiceError;
use crate::resources::{Resources, Strategy, read_all};

/// Identities: [`Resources`] of the [`IdentityKind`] strategy, with [`Resources::issue`] on
/// top.
pub type IdentityService = Resources<IdentityKind>;

/// How identities are admitted: one credential names at most one identity.
#[derive(Debug, Default)]
pub struct IdentityKind;

impl Strategy for IdentityKind {
    type Object = Identity;

    async fn admit(
        &self,
        store: &dyn Store,
        obj: &Identity,
        current: Option<&Identity>,
    ) -> Result<(), ServiceError> {
        if current.is_some() {
            return Ok(());
        }
        let twin = read_all::<Identity>(store)
            .await?
            .into_iter()
            .find(|other| other.spec.credential == obj.spec.credential);
        match twin {
            Some(other) => Err(ServiceError::WrongState {
                kind: "identity",
                name: obj.metadata.name.to_string(),
                state: format!(
                    "given a {} credential that identity {:?} already has",
                    obj.spec.credential.type_name(),
                    other.metadata.name.as_str()
                ),
                rule: "one credential names one identity: revoke the other first".into(),
            }),
            None => Ok(()),
        }
    }
}

/// A new bearer token: `crl_` and 64 hex digits (256 random bits).
pub fn new_token() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| ServiceError::Io {
        context: "drawing random bytes for a token".into(),
        source: e.into(),
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("crl_{hex}"))
}

/// The hash an identity keeps of `token`.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

impl Resources<IdentityKind> {
    /// Creates an identity. A token credential without a hash gets a new token, returned
    /// here once; the identity keeps only its hash.
    pub async fn issue(
        &self,
        mut id: Identity,
    ) -> Result<(Identity, Option<String>), ServiceError> {
        let token = match &mut id.spec.credential {
            Credential::Token {
                blake3: hash @ None,
            } => {
                let token = new_token()?;
                *hash = Some(token_hash(&token));
                Some(token)
            }
            _ => None,
        };
        Ok((self.create(id).await?, token))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use corral_contract::{IdentitySpec, Role};

    use super::*;

    fn spec(credential: Credential) -> IdentitySpec {
        IdentitySpec {
            role: Role::Operator,
            memory: false,
            projects: vec![],
            credential,
        }
    }

    #[tokio::test]
    async fn tokens_are_made_once_kept_hashed_and_credentials_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            corral_store::SqliteStore::open(dir.path().join("state.db"))
                .await
                .unwrap(),
        );
        let ids = IdentityService::new(store);
        let token_spec = spec(Credential::Token { blake3: None });
        let (ci, token) = ids
            .issue(Identity::new("ci".parse().unwrap(), token_spec))
            .await
            .unwrap();
        let token = token.expect("a token is made");
        assert!(token.starts_with("crl_") && token.len() == 68, "{token}");
        assert_eq!(
            ci.spec.credential,
            Credential::Token {
                blake3: Some(token_hash(&token))
            }
        );
        let stored = serde_json::to_string(&ids.get("ci").await.unwrap()).unwrap();
        assert!(!stored.contains(&token), "the token itself is never stored");
        let uid = spec(Credential::Unix { uid: 1000 });
        ids.issue(Identity::new("alice".parse().unwrap(), uid.clone()))
            .await
            .unwrap();
        let err = ids
            .issue(Identity::new("alice2".parse().unwrap(), uid))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("identity \"alice\" already has"),
            "{err}"
        );
        ids.delete("alice", None).await.unwrap();
        assert!(!ids.exists("alice").await.unwrap());
    }
}
