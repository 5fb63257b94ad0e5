//! Diagnostics: the errors and warnings Terraform prints, pointing at an attribute when they
//! are about one.

use crate::pb::tfplugin6 as tf;

/// One error or warning for Terraform to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// An error stops the operation; a warning is only printed.
    pub error: bool,
    /// One line.
    pub summary: String,
    /// The rest: what was wrong, what is allowed, what to do.
    pub detail: String,
    /// The attribute it is about (`["cpus"]`, `["timeouts", "create"]`), so Terraform shows
    /// the line of configuration that set it.
    pub path: Vec<String>,
}

impl Diagnostic {
    /// An error not about one attribute.
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Diagnostic {
        Diagnostic {
            error: true,
            summary: summary.into(),
            detail: detail.into(),
            path: Vec::new(),
        }
    }

    /// An error about attribute `path`.
    pub fn attr_error(
        path: &[&str],
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            path: path.iter().map(|s| s.to_string()).collect(),
            ..Diagnostic::error(summary, detail)
        }
    }

    /// A warning about attribute `path`.
    pub fn attr_warning(
        path: &[&str],
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            error: false,
            ..Diagnostic::attr_error(path, summary, detail)
        }
    }

    /// The diagnostic as Terraform reads it.
    pub fn to_proto(&self) -> tf::Diagnostic {
        let severity = if self.error {
            tf::diagnostic::Severity::Error
        } else {
            tf::diagnostic::Severity::Warning
        };
        tf::Diagnostic {
            severity: severity as i32,
            summary: self.summary.clone(),
            detail: self.detail.clone(),
            attribute: (!self.path.is_empty()).then(|| attribute_path(&self.path)),
        }
    }
}

/// A path of attribute names as Terraform reads it.
pub fn attribute_path(path: &[impl AsRef<str>]) -> tf::AttributePath {
    tf::AttributePath {
        steps: path
            .iter()
            .map(|name| tf::attribute_path::Step {
                selector: Some(tf::attribute_path::step::Selector::AttributeName(
                    name.as_ref().to_owned(),
                )),
            })
            .collect(),
    }
}

/// Converts diagnostics for a response.
pub fn to_proto(diags: &[Diagnostic]) -> Vec<tf::Diagnostic> {
    diags.iter().map(Diagnostic::to_proto).collect()
}

/// Whether any is an error.
pub fn has_error(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.error)
}
