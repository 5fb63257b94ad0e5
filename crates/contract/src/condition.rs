use serde::{Deserialize, Serialize};

/// One aspect of a resource's state, as controllers observed it (Kubernetes-style).
///
/// `status` is a plain boolean: Corral has no "unknown" conditions, a controller that cannot
/// tell leaves the condition out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    /// What the condition is about, in PascalCase, e.g. `Ready` or `Booted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: bool,
    /// Why, as a PascalCase word for programs, e.g. `QemuExited`.
    #[serde(default)]
    pub reason: String,
    /// Why, as a sentence for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed, in RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<String>,
}

impl Condition {
    /// A condition without a transition time (see [`set_condition`]).
    pub fn new(
        type_: impl Into<String>,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition: None,
        }
    }
}

/// Adds or replaces the condition of the same type in `conditions`.
///
/// When its `status` did not change, the old `last_transition` is kept, so that it records
/// when the condition last flipped rather than when it was last written.
pub fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(old) => {
            let last_transition = if old.status == condition.status {
                old.last_transition
                    .take()
                    .or(condition.last_transition.clone())
            } else {
                condition.last_transition.clone()
            };
            *old = Condition {
                last_transition,
                ..condition
            };
        }
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(c: Condition, time: &str) -> Condition {
        Condition {
            last_transition: Some(time.into()),
            ..c
        }
    }

    #[test]
    fn serialises_type_and_boolean_status() {
        let c = at(
            Condition::new("Ready", true, "Booted", "guest is up"),
            "2025-01-01T00:00:00Z",
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["type"], "Ready");
        assert_eq!(json["status"], true);
        assert_eq!(serde_json::from_value::<Condition>(json).unwrap(), c);
    }

    #[test]
    fn set_keeps_the_transition_time_while_status_holds() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            at(Condition::new("Ready", false, "Starting", ""), "t1"),
        );
        set_condition(
            &mut cs,
            at(Condition::new("Ready", false, "Booting", ""), "t2"),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(
            (cs[0].reason.as_str(), cs[0].last_transition.as_deref()),
            ("Booting", Some("t1"))
        );
        set_condition(
            &mut cs,
            at(Condition::new("Ready", true, "Booted", ""), "t3"),
        );
        assert_eq!(cs[0].last_transition.as_deref(), Some("t3"));
        set_condition(&mut cs, Condition::new("Paused", false, "", ""));
        assert_eq!(cs.len(), 2);
    }
}
