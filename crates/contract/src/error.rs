use std::fmt;

/// A value in a resource is not allowed.
///
/// `field` is the JSON path of the offending field from the resource's root (`spec.cpus`,
/// `metadata.name`, `spec.boot.kernel.initrd`); `message` says what was wrong and what is
/// allowed. Displays as `spec.cpus: must be between 1 and 256 (got 0)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the field, e.g. `spec.memory`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ValidationError {
    /// An error about `field`, explained by `message`.
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        ValidationError {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Joins allowed values for a message: `a`, `a or b`, `a, b or c`.
pub(crate) fn one_of<T: fmt::Display>(values: &[T]) -> String {
    let mut out = String::new();
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == values.len() { " or " } else { ", " });
        }
        out.push_str(&value.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_field_then_message() {
        let err = ValidationError::new("spec.cpus", "must be between 1 and 256 (got 0)");
        assert_eq!(
            err.to_string(),
            "spec.cpus: must be between 1 and 256 (got 0)"
        );
    }

    #[test]
    fn joins_alternatives() {
        assert_eq!(one_of(&["a"]), "a");
        assert_eq!(one_of(&["a", "b"]), "a or b");
        assert_eq!(one_of(&["a", "b", "c"]), "a, b or c");
    }
}
