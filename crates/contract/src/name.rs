use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const RULE: &str =
    "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit";

/// A string is not a valid [`ResourceName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a name cannot be empty: {}", RULE)]
    Empty,
    /// The name is longer than 63 characters.
    #[error("{value:?} is not a valid name: it is {len} characters long; {}", RULE)]
    TooLong {
        /// The name given.
        value: String,
        /// Its length in characters.
        len: usize,
    },
    /// The name has a character other than `a-z`, `0-9`, `-`, or starts or ends with `-`.
    #[error("{value:?} is not a valid name: {}", RULE)]
    Invalid {
        /// The name given.
        value: String,
    },
}

/// The name of a resource, unique within its kind: 1–63 characters of `a-z`, `0-9` and `-`,
/// starting and ending with a letter or digit (a DNS label, so it can name hosts and files).
///
/// ```
/// use corral_contract::ResourceName;
///
/// let name: ResourceName = "web-1".parse()?;
/// assert_eq!(name, "web-1");
/// assert!("Web_1".parse::<ResourceName>().is_err());
/// # Ok::<(), corral_contract::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName(String);

impl ResourceName {
    /// The longest name allowed, in characters.
    pub const MAX_LEN: usize = 63;

    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let len = name.chars().count();
        let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = name.as_bytes();
        match bytes {
            [] => Err(NameError::Empty),
            _ if len > Self::MAX_LEN => Err(NameError::TooLong { value: name, len }),
            [first, .., last] | [first @ last]
                if is_alnum(*first)
                    && is_alnum(*last)
                    && bytes.iter().all(|&b| is_alnum(b) || b == b'-') =>
            {
                Ok(ResourceName(name))
            }
            _ => Err(NameError::Invalid { value: name }),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl utoipa::PartialSchema for ResourceName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::name().into()
    }
}

impl utoipa::ToSchema for ResourceName {}

impl TryFrom<String> for ResourceName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        ResourceName::new(name)
    }
}

impl TryFrom<&str> for ResourceName {
    type Error = NameError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        ResourceName::new(name)
    }
}

impl FromStr for ResourceName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceName::new(s)
    }
}

impl From<ResourceName> for String {
    fn from(name: ResourceName) -> Self {
        name.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl AsRef<str> for ResourceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ResourceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ResourceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ResourceName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "0", "web-1", "a--b", &"x".repeat(63)] {
            assert_eq!(ResourceName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "My_VM",
            "a.b",
            "a b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(ResourceName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn messages_say_what_is_allowed() {
        let err = ResourceName::new("My_VM").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"My_VM\" is not a valid name: use 1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        );
        let err = ResourceName::new("x".repeat(64)).unwrap_err();
        assert!(
            err.to_string()
                .contains("it is 64 characters long; use 1-63"),
            "{err}"
        );
    }

    #[test]
    fn serde_is_a_validated_string() {
        let name: ResourceName = serde_json::from_str(r#""db-2""#).unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""db-2""#);
        let err = serde_json::from_str::<ResourceName>(r#""-db""#).unwrap_err();
        assert!(err.to_string().contains("is not a valid name"), "{err}");
    }
}
