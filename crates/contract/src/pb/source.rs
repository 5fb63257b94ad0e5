//! Git sources to protobuf and back.

use super::convert::{non_empty, required};
use crate::pb;
use crate::{DriftPolicy, Source, SourceSpec, SourceStatus, ValidationError};

impl From<&Source> for pb::Source {
    fn from(s: &Source) -> Self {
        pb::Source {
            metadata: Some((&s.metadata).into()),
            spec: Some(pb::SourceSpec {
                git: s.spec.git.clone(),
                r#ref: s.spec.reference.clone(),
                path: s.spec.path.clone(),
                prune: s.spec.prune,
                drift: s.spec.drift.as_str().to_owned(),
                interval_seconds: s.spec.interval_seconds.unwrap_or(0),
                depends_on: s.spec.depends_on.iter().map(ToString::to_string).collect(),
                verify_keys: s.spec.verify_keys.clone(),
            }),
            status: Some(pb::SourceStatus {
                commit: s.status.commit.clone(),
                applied: s.status.applied.clone(),
                drift: s.status.drift.clone(),
                errors: s.status.errors.clone(),
                observed_generation: s.status.observed_generation,
                approval_used: s.status.approval_used.clone(),
                last_reconcile: s.status.last_reconcile.clone(),
                waiting: s.status.waiting.clone(),
            }),
        }
    }
}

impl TryFrom<pb::Source> for Source {
    type Error = ValidationError;

    fn try_from(s: pb::Source) -> Result<Self, Self::Error> {
        let spec = s.spec.ok_or_else(|| required("spec"))?;
        let drift = match non_empty(spec.drift) {
            None => DriftPolicy::Correct,
            Some(word) => word
                .parse()
                .map_err(|e| ValidationError::new("spec.drift", e))?,
        };
        let depends_on = spec
            .depends_on
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.parse()
                    .map_err(|e| ValidationError::new(format!("spec.depends_on[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let spec = SourceSpec {
            depends_on,
            git: spec.git,
            reference: spec.r#ref,
            path: spec.path,
            prune: spec.prune,
            drift,
            interval_seconds: (spec.interval_seconds != 0).then_some(spec.interval_seconds),
            verify_keys: spec.verify_keys,
        };
        spec.validate()?;
        let status = s
            .status
            .map(|st| SourceStatus {
                commit: st.commit,
                applied: st.applied,
                drift: st.drift,
                errors: st.errors,
                observed_generation: st.observed_generation,
                approval_used: st.approval_used,
                last_reconcile: st.last_reconcile,
                waiting: st.waiting,
            })
            .unwrap_or_default();
        Ok(Source {
            metadata: s.metadata.ok_or_else(|| required("metadata"))?.try_into()?,
            spec,
            status,
        })
    }
}
