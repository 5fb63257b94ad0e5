//! Closed sets of words (`x86_64`, `q35`, `on-failure` …) with one string form each.

use std::fmt;

use crate::error::one_of;

/// A word is not one of the values a setting allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}: use {}", one_of(allowed))]
pub struct UnknownChoice {
    /// What was being parsed, e.g. `architecture`.
    pub what: &'static str,
    /// The word given.
    pub value: String,
    /// The words allowed.
    pub allowed: &'static [&'static str],
}

/// Pads a word so that `{:>8}`-style widths work in tables.
pub(crate) fn pad(f: &mut fmt::Formatter<'_>, word: &str) -> fmt::Result {
    f.pad(word)
}

/// Defines a fieldless enum whose variants each have one string form, with `as_str`, `ALL`,
/// `Display`, `FromStr` (error: [`UnknownChoice`]), serde as that string and an OpenAPI schema
/// listing the words (`enum`).
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $word:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string form used in manifests and on the command line.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::choice::pad(f, self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::choice::UnknownChoice;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::choice::UnknownChoice {
                        what: $what,
                        value: s.to_owned(),
                        allowed: &[$($word,)+],
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::schema::string().enum_values(Some([$($word,)+])).into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let word = String::deserialize(deserializer)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use choice;

#[cfg(test)]
mod tests {
    choice! {
        /// A test enum.
        #[derive(Default)]
        pub enum Colour ("colour") {
            /// Red.
            #[default]
            Red => "red",
            /// Dark blue.
            DarkBlue => "dark-blue",
        }
    }

    #[test]
    fn parses_displays_and_serialises_the_same_words() {
        for c in Colour::ALL {
            assert_eq!(c.to_string().parse::<Colour>().unwrap(), *c);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), *c);
        }
        assert_eq!(format!("{:>6}|", Colour::Red), "   red|");
        assert_eq!(Colour::default(), Colour::Red);
    }

    #[test]
    fn unknown_word_lists_the_allowed_ones() {
        let err = "green".parse::<Colour>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""green" is not a valid colour: use red or dark-blue"#
        );
        let err = serde_json::from_str::<Colour>(r#""Red""#).unwrap_err();
        assert!(err.to_string().contains("use red or dark-blue"), "{err}");
    }
}
