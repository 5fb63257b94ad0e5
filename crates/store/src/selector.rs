//! Label selectors: `tier=web,env!=prod,gpu,!spot`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A conjunction of label requirements; an object matches when it meets all of them.
///
/// The text form is a comma-separated list of requirements, with optional spaces around
/// each one:
///
/// | requirement | matches when the label … |
/// |-------------|--------------------------|
/// | `k=v` (or `k==v`) | `k` is present with value `v` |
/// | `k!=v` | `k` is absent, or present with another value |
/// | `k` | `k` is present |
/// | `!k` | `k` is absent |
///
/// Keys are non-empty and made of ASCII letters, digits, `.`, `_`, `-` and `/`; values are
/// made of the same characters but `/`, and may be empty. The empty string selects
/// everything.
///
/// ```
/// use std::collections::BTreeMap;
/// use corral_store::Selector;
///
/// let selector: Selector = "tier=web, !spot".parse()?;
/// let labels = BTreeMap::from([("tier".to_owned(), "web".to_owned())]);
/// assert!(selector.matches(&labels));
/// assert_eq!(selector.to_string(), "tier=web,!spot");
/// # Ok::<(), corral_store::SelectorError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One term of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`.
    Equals(String, String),
    /// `key!=value`.
    NotEquals(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// Why a label selector did not parse. Every variant names the offending requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Two commas with nothing between them, or a trailing comma.
    #[error("label selector {selector:?}: requirement {index} is empty (stray comma?)")]
    EmptyRequirement {
        /// The whole selector.
        selector: String,
        /// The 1-based position of the empty requirement.
        index: usize,
    },
    /// A requirement with no key, such as `=web` or `!`.
    #[error("label selector requirement {requirement:?} has no key")]
    MissingKey {
        /// The requirement as written.
        requirement: String,
    },
    /// A key with a character outside `A-Z a-z 0-9 . _ - /`.
    #[error(
        "label selector requirement {requirement:?}: key {key:?} may only contain ASCII \
         letters, digits, '.', '_', '-' and '/'"
    )]
    InvalidKey {
        /// The requirement as written.
        requirement: String,
        /// The offending key.
        key: String,
    },
    /// A value with a character outside `A-Z a-z 0-9 . _ -`, such as a second `=`.
    #[error(
        "label selector requirement {requirement:?}: value {value:?} may only contain ASCII \
         letters, digits, '.', '_' and '-'"
    )]
    InvalidValue {
        /// The requirement as written.
        requirement: String,
        /// The offending value.
        value: String,
    },
}

impl Selector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Adds `key=value`.
    pub fn equals(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let requirement = Requirement::Equals(key.into(), value.into());
        self.requirements.push(requirement);
        self
    }

    /// Adds `key!=value`.
    pub fn not_equals(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let requirement = Requirement::NotEquals(key.into(), value.into());
        self.requirements.push(requirement);
        self
    }

    /// Adds `key` (the label is present).
    pub fn exists(mut self, key: impl Into<String>) -> Self {
        self.requirements.push(Requirement::Exists(key.into()));
        self
    }

    /// Adds `!key` (the label is absent).
    pub fn not_exists(mut self, key: impl Into<String>) -> Self {
        self.requirements.push(Requirement::NotExists(key.into()));
        self
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector matches every object.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    /// Whether `labels` meet this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }

    fn parse(text: &str) -> Result<Self, SelectorError> {
        enum Op {
            Equals,
            NotEquals,
            Exists,
            NotExists,
        }
        let (op, key, value) = if let Some((k, v)) = text.split_once("!=") {
            (Op::NotEquals, k, Some(v))
        } else if let Some((k, v)) = text.split_once("==") {
            (Op::Equals, k, Some(v))
        } else if let Some((k, v)) = text.split_once('=') {
            (Op::Equals, k, Some(v))
        } else if let Some(k) = text.strip_prefix('!') {
            (Op::NotExists, k, None)
        } else {
            (Op::Exists, text, None)
        };
        let (key, value) = (key.trim(), value.map(str::trim));
        if key.is_empty() {
            return Err(SelectorError::MissingKey {
                requirement: text.to_owned(),
            });
        }
        if !key.bytes().all(|b| is_value_byte(b) || b == b'/') {
            return Err(SelectorError::InvalidKey {
                requirement: text.to_owned(),
                key: key.to_owned(),
            });
        }
        let value = value.unwrap_or_default();
        if !value.bytes().all(is_value_byte) {
            return Err(SelectorError::InvalidValue {
                requirement: text.to_owned(),
                value: value.to_owned(),
            });
        }
        let (key, value) = (key.to_owned(), value.to_owned());
        Ok(match op {
            Op::Equals => Requirement::Equals(key, value),
            Op::NotEquals => Requirement::NotEquals(key, value),
            Op::Exists => Requirement::Exists(key),
            Op::NotExists => Requirement::NotExists(key),
        })
    }
}

fn is_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Selector::everything());
        }
        let requirements = s
            .split(',')
            .enumerate()
            .map(|(i, term)| {
                let term = term.trim();
                if term.is_empty() {
                    return Err(SelectorError::EmptyRequirement {
                        selector: s.to_owned(),
                        index: i + 1,
                    });
                }
                Requirement::parse(term)
            })
            .collect::<Result<_, _>>()?;
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form() {
        let s: Selector = " tier = web ,env!=prod,gpu, !spot,a==b,empty="
            .parse()
            .unwrap();
        assert_eq!(
            s.requirements(),
            &[
                Requirement::Equals("tier".into(), "web".into()),
                Requirement::NotEquals("env".into(), "prod".into()),
                Requirement::Exists("gpu".into()),
                Requirement::NotExists("spot".into()),
                Requirement::Equals("a".into(), "b".into()),
                Requirement::Equals("empty".into(), "".into()),
            ]
        );
        assert_eq!(s.to_string(), "tier=web,env!=prod,gpu,!spot,a=b,empty=");
        assert_eq!(s.to_string().parse::<Selector>().unwrap(), s);
    }

    #[test]
    fn empty_selects_everything() {
        for text in ["", "  "] {
            let s: Selector = text.parse().unwrap();
            assert!(s.is_everything());
            assert!(s.matches(&labels(&[])));
        }
    }

    #[test]
    fn matching() {
        let web_gpu = labels(&[("tier", "web"), ("gpu", "a100")]);
        let db = labels(&[("tier", "db")]);
        let none = labels(&[]);
        let check = |sel: &str, expect: [bool; 3]| {
            let s: Selector = sel.parse().unwrap();
            let got = [s.matches(&web_gpu), s.matches(&db), s.matches(&none)];
            assert_eq!(got, expect, "selector {sel}");
        };
        check("tier=web", [true, false, false]);
        check("tier!=web", [false, true, true]);
        check("gpu", [true, false, false]);
        check("!gpu", [false, true, true]);
        check("tier,!gpu", [false, true, false]);
        check("tier=web,gpu=a100", [true, false, false]);
        check("tier!=db,!gpu", [false, false, true]);
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |text: &str| text.parse::<Selector>().unwrap_err();
        assert_eq!(
            err("tier=web,,gpu"),
            SelectorError::EmptyRequirement {
                selector: "tier=web,,gpu".into(),
                index: 2
            }
        );
        assert!(matches!(
            err("tier=web,"),
            SelectorError::EmptyRequirement { index: 2, .. }
        ));
        assert!(matches!(err("=web"), SelectorError::MissingKey { .. }));
        assert!(matches!(err("!"), SelectorError::MissingKey { .. }));
        assert!(matches!(err("!=x"), SelectorError::MissingKey { .. }));
        assert_eq!(
            err("ti er=web"),
            SelectorError::InvalidKey {
                requirement: "ti er=web".into(),
                key: "ti er".into()
            }
        );
        assert!(matches!(err("a=b=c"), SelectorError::InvalidValue { .. }));
        assert!(matches!(err("a=x/y"), SelectorError::InvalidValue { .. }));
        let message = err("tier=w eb").to_string();
        assert!(
            message.contains("\"tier=w eb\"") && message.contains("value"),
            "{message}"
        );
        let message = err("a,,b").to_string();
        assert!(message.contains("requirement 2 is empty"), "{message}");
    }
}
