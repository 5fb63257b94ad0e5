//! Identities to protobuf and back (see `convert.rs` for the rules).

use super::convert::{decode, enum_value, non_empty, required};
use crate::pb;
use crate::pb::identity_spec::Credential as PbCredential;
use crate::{
    Credential, Identity, IdentitySpec, IdentityStatus, ResourceName, Role, ValidationError,
};

impl From<&Identity> for pb::Identity {
    fn from(id: &Identity) -> Self {
        pb::Identity {
            metadata: Some((&id.metadata).into()),
            spec: Some((&id.spec).into()),
        }
    }
}

impl TryFrom<pb::Identity> for Identity {
    type Error = ValidationError;

    fn try_from(id: pb::Identity) -> Result<Self, Self::Error> {
        let identity = Identity {
            metadata: id
                .metadata
                .ok_or_else(|| required("metadata"))?
                .try_into()?,
            spec: id.spec.ok_or_else(|| required("spec"))?.try_into()?,
            status: IdentityStatus::default(),
        };
        identity.spec.validate()?;
        Ok(identity)
    }
}

impl From<&IdentitySpec> for pb::IdentitySpec {
    fn from(spec: &IdentitySpec) -> Self {
        let credential = match &spec.credential {
            Credential::Token { blake3 } => PbCredential::Token(pb::TokenCredential {
                blake3: blake3.clone().unwrap_or_default(),
            }),
            Credential::Cert { sha256 } => PbCredential::Cert(pb::CertCredential {
                sha256: sha256.clone(),
            }),
            Credential::Unix { uid } => PbCredential::Unix(pb::UnixCredential { uid: *uid }),
        };
        pb::IdentitySpec {
            role: enum_value(spec.role),
            memory: spec.memory,
            projects: spec.projects.iter().map(|p| p.to_string()).collect(),
            credential: Some(credential),
        }
    }
}

impl TryFrom<pb::IdentitySpec> for IdentitySpec {
    type Error = ValidationError;

    fn try_from(spec: pb::IdentitySpec) -> Result<Self, Self::Error> {
        let role = decode::<Role>("spec.role", spec.role)?.ok_or_else(|| required("spec.role"))?;
        let projects = spec
            .projects
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                ResourceName::new(p)
                    .map_err(|e| ValidationError::new(format!("spec.projects[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let credential = match spec.credential.ok_or_else(|| required("spec.credential"))? {
            PbCredential::Token(t) => Credential::Token {
                blake3: non_empty(t.blake3),
            },
            PbCredential::Cert(c) => Credential::Cert { sha256: c.sha256 },
            PbCredential::Unix(u) => Credential::Unix { uid: u.uid },
        };
        let spec = IdentitySpec {
            role,
            memory: spec.memory,
            projects,
            credential,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_need_a_role() {
        let spec = IdentitySpec {
            role: Role::Viewer,
            memory: true,
            projects: vec!["web".parse().unwrap()],
            credential: Credential::Unix { uid: 1000 },
        };
        let id = Identity::new("ops".parse().unwrap(), spec);
        let message = pb::Identity::from(&id);
        assert_eq!(Identity::try_from(message.clone()).unwrap(), id);
        let mut bad = message;
        bad.spec.as_mut().unwrap().role = 0;
        let err = Identity::try_from(bad).unwrap_err();
        assert_eq!(err.to_string(), "spec.role: required");
    }
}
