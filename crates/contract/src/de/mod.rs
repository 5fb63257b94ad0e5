//! Deserialisation helpers that name the field in serde's own errors.
//!
//! serde reports a wrong type as `invalid type: string "two", expected u32`, without saying
//! where. Fields read through [`at`] get their JSON path in front: `spec.cpus: invalid type: …`.

mod strict;

pub use strict::{Strict, from_json};

use serde::de::{Deserialize, Deserializer, Error};

/// Deserialises a `T`, prefixing any error with the field's JSON path.
pub(crate) fn at<'de, D, T>(path: &str, deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map_err(|e| {
        let message = e.to_string();
        let message = without_position(&message);
        // An error from deeper down (e.g. [`Strict`]'s) may already start with this path.
        let named = message
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with([':', '.', '[']));
        match named {
            true => D::Error::custom(message),
            false => D::Error::custom(format_args!("{path}: {message}")),
        }
    })
}

// serde_json ends positioned errors with " at line L column C" and positions the outer error
// again, so the inner position is dropped to avoid saying it twice.
fn without_position(message: &str) -> &str {
    const AT_LINE: &str = " at line ";
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // No let-chains: the workspace's rust-version is 1.85.
    match message.rfind(AT_LINE) {
        Some(i) => match message[i + AT_LINE.len()..].split_once(" column ") {
            Some((line, column)) if digits(line) && digits(column) => &message[..i],
            _ => message,
        },
        None => message,
    }
}

/// Defines `deserialize_with` functions that read a field through [`at`] with a fixed path.
macro_rules! field_paths {
    ($($name:ident => $path:literal),* $(,)?) => {$(
        fn $name<'de, D, T>(deserializer: D) -> Result<T, D::Error>
        where
            D: serde::Deserializer<'de>,
            T: serde::Deserialize<'de>,
        {
            $crate::de::at($path, deserializer)
        }
    )*};
}
pub(crate) use field_paths;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_a_trailing_position() {
        assert_eq!(without_position("bad at line 1 column 20"), "bad");
        assert_eq!(without_position("bad at line one"), "bad at line one");
        assert_eq!(without_position("plain"), "plain");
    }

    #[test]
    fn prefixes_the_path_once() {
        let mut de = serde_json::Deserializer::from_str(r#""two""#);
        let err = at::<_, u32>("spec.cpus", &mut de).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"spec.cpus: invalid type: string "two", expected u32"#
        );
    }
}
