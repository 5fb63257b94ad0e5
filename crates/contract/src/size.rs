use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const HOW: &str = "use bytes or a number with K, M, G or T (binary units), e.g. 512M or 2G";

/// A string is not a valid [`ByteSize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Not a number, or a unit Corral does not know.
    #[error("{value:?} is not a size: {}", HOW)]
    NotASize {
        /// The text given.
        value: String,
    },
    /// A decimal (1000-based) unit such as `MB`, which people read differently.
    #[error(
        "{value:?} uses the decimal unit {unit}: sizes are binary (1024-based), \
         so write {binary} or {binary}iB"
    )]
    DecimalUnit {
        /// The text given.
        value: String,
        /// The unit given, e.g. `MB`.
        unit: String,
        /// The binary unit to use instead, e.g. `M`.
        binary: &'static str,
    },
    /// A fraction that does not come to a whole number of bytes, e.g. `0.3K`.
    #[error("{value:?} is not a whole number of bytes")]
    NotWholeBytes {
        /// The text given.
        value: String,
    },
    /// More than 2^64 - 1 bytes.
    #[error("{value:?} is too large: the largest size is 16777215T")]
    TooLarge {
        /// The text given.
        value: String,
    },
}

/// A number of bytes, written the way QEMU writes sizes: binary units, 1024-based.
///
/// Parses a bare integer (bytes, as a JSON number or string) or a number with a unit: `K`, `M`,
/// `G`, `T` (also `k m g t`, `Ki`…`Ti` and `KiB`…`TiB`), or `B` for bytes. A fraction is allowed
/// when it comes to whole bytes (`1.5G`). Decimal units such as `MB` are rejected rather than
/// guessed at. Displays and serialises in the largest unit that is exact, which parses back to
/// the same value.
///
/// ```
/// use corral_contract::ByteSize;
///
/// let size: ByteSize = "1.5G".parse()?;
/// assert_eq!(size.as_u64(), 1536 << 20);
/// assert_eq!(size.to_string(), "1536M");
/// assert_eq!(ByteSize::new(1000).to_string(), "1000");
/// assert!("1MB".parse::<ByteSize>().is_err());
/// # Ok::<(), corral_contract::ByteSizeError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    /// One kibibyte, in bytes.
    pub const KIB: u64 = 1 << 10;
    /// One mebibyte, in bytes.
    pub const MIB: u64 = 1 << 20;
    /// One gibibyte, in bytes.
    pub const GIB: u64 = 1 << 30;
    /// One tebibyte, in bytes.
    pub const TIB: u64 = 1 << 40;

    /// A size of `bytes` bytes.
    pub const fn new(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    /// A size of `n` KiB.
    ///
    /// # Panics
    /// If the size does not fit in a `u64` (likewise for the other `from_*`).
    pub const fn from_kib(n: u64) -> Self {
        Self::times(n, Self::KIB)
    }

    /// A size of `n` MiB.
    pub const fn from_mib(n: u64) -> Self {
        Self::times(n, Self::MIB)
    }

    /// A size of `n` GiB.
    pub const fn from_gib(n: u64) -> Self {
        Self::times(n, Self::GIB)
    }

    /// A size of `n` TiB.
    pub const fn from_tib(n: u64) -> Self {
        Self::times(n, Self::TIB)
    }

    const fn times(n: u64, unit: u64) -> Self {
        match n.checked_mul(unit) {
            Some(bytes) => ByteSize(bytes),
            None => panic!("ByteSize overflows u64"),
        }
    }

    /// The size in bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The size in whole MiB, rounded down (QEMU's `-m` unit).
    pub const fn mib(self) -> u64 {
        self.0 / Self::MIB
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        ByteSize(bytes)
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> Self {
        size.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (Self::TIB, "T"),
            (Self::GIB, "G"),
            (Self::MIB, "M"),
            (Self::KIB, "K"),
        ];
        let text = match units
            .iter()
            .find(|(unit, _)| self.0 != 0 && self.0 % unit == 0)
        {
            Some((unit, suffix)) => format!("{}{suffix}", self.0 / unit),
            None => self.0.to_string(),
        };
        f.pad(&text)
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not_a_size = || ByteSizeError::NotASize {
            value: s.to_owned(),
        };
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim_start();
        // log2 of the unit, so that fractions can be checked exactly (see `fraction_bytes`).
        let shift: u32 = match unit {
            "" | "B" => 0,
            "K" | "k" | "Ki" | "KiB" => 10,
            "M" | "m" | "Mi" | "MiB" => 20,
            "G" | "g" | "Gi" | "GiB" => 30,
            "T" | "t" | "Ti" | "TiB" => 40,
            _ => return Err(decimal_unit(s, unit).unwrap_or_else(not_a_size)),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let is_digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !is_digits(whole) || (number.contains('.') && !is_digits(fraction)) {
            return Err(not_a_size());
        }
        let too_large = || ByteSizeError::TooLarge {
            value: s.to_owned(),
        };
        // Only digits remain, so a parse error means overflow.
        let whole: u128 = whole.parse().map_err(|_| too_large())?;
        let fraction = fraction_bytes(fraction.trim_end_matches('0'), shift).ok_or_else(|| {
            ByteSizeError::NotWholeBytes {
                value: s.to_owned(),
            }
        })?;
        let bytes = whole
            .checked_mul(1 << shift)
            .and_then(|b| b.checked_add(fraction))
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(too_large)?;
        Ok(ByteSize(bytes))
    }
}

/// The bytes in `0.<digits>` units of `2^shift` bytes, if that is a whole number.
fn fraction_bytes(digits: &str, shift: u32) -> Option<u128> {
    let k = u32::try_from(digits.len()).ok()?;
    if k == 0 {
        return Some(0);
    }
    // A whole number of bytes is m / 2^shift units, which has at most `shift` decimals (and
    // `digits` has no trailing zeros), so anything longer is not whole.
    if k > shift {
        return None;
    }
    // digits / 10^k * 2^shift is whole iff 5^k divides digits (10^k = 5^k * 2^k, k <= shift).
    // Long division keeps every value below 10 * 5^40, well inside a u128.
    let five_k = 5u128.pow(k);
    let (mut quotient, mut rest) = (0u128, 0u128);
    for digit in digits.bytes() {
        let current = rest * 10 + u128::from(digit - b'0');
        quotient = quotient * 10 + current / five_k;
        rest = current % five_k;
    }
    (rest == 0).then(|| quotient << (shift - k))
}

/// The error for a decimal unit (`KB`, `mb`, `GB` …), naming the binary one to use.
fn decimal_unit(value: &str, unit: &str) -> Option<ByteSizeError> {
    let mut chars = unit.chars();
    let (prefix, b) = (chars.next()?, chars.next()?);
    let binary = match prefix.to_ascii_uppercase() {
        'K' => "K",
        'M' => "M",
        'G' => "G",
        'T' => "T",
        _ => return None,
    };
    (chars.next().is_none() && b.eq_ignore_ascii_case(&'b')).then(|| ByteSizeError::DecimalUnit {
        value: value.to_owned(),
        unit: unit.to_owned(),
        binary,
    })
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::byte_size(0, u64::MAX, None)
    }
}

impl utoipa::ToSchema for ByteSize {}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as 512M or 2G, or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(bytes))
    }

    fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
        u64::try_from(bytes).map(ByteSize).map_err(|_| {
            E::custom(ByteSizeError::NotASize {
                value: bytes.to_string(),
            })
        })
    }

    fn visit_f64<E: de::Error>(self, bytes: f64) -> Result<ByteSize, E> {
        Err(E::custom(ByteSizeError::NotASize {
            value: bytes.to_string(),
        }))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, ByteSizeError> {
        s.parse::<ByteSize>().map(ByteSize::as_u64)
    }

    #[test]
    fn parses_binary_units() {
        assert_eq!(parse("0").unwrap(), 0);
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse("4096B").unwrap(), 4096);
        assert_eq!(parse("1K").unwrap(), 1024);
        assert_eq!(parse("1k").unwrap(), 1024);
        assert_eq!(parse("1KiB").unwrap(), 1024);
        assert_eq!(parse("512M").unwrap(), 512 << 20);
        assert_eq!(parse("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse(" 512 MiB ").unwrap(), 512 << 20);
        assert_eq!(parse("1GiB").unwrap(), 1_073_741_824);
        assert_eq!(parse("2T").unwrap(), 2 << 40);
        assert_eq!(parse("16777215T").unwrap(), 16_777_215 << 40);
    }

    #[test]
    fn accepts_exact_fractions_only() {
        assert_eq!(parse("1.5G").unwrap(), 1536 << 20);
        assert_eq!(parse("0.5K").unwrap(), 512);
        assert_eq!(parse("1.000K").unwrap(), 1024);
        assert_eq!(parse("0.0009765625K").unwrap(), 1);
        assert_eq!(
            parse("0.0000000000009094947017729282379150390625T").unwrap(),
            1
        );
        assert!(matches!(
            parse("0.3K"),
            Err(ByteSizeError::NotWholeBytes { .. })
        ));
        assert!(matches!(
            parse("1.5"),
            Err(ByteSizeError::NotWholeBytes { .. })
        ));
        assert_eq!(
            parse("0.9999999999990905052982270717620849609375T").unwrap(),
            (1 << 40) - 1
        );
        assert!(matches!(
            parse("0.00000000000090949470177292823791503906T"),
            Err(ByteSizeError::NotWholeBytes { .. })
        ));
        assert!(matches!(
            parse("0.5B"),
            Err(ByteSizeError::NotWholeBytes { .. })
        ));
    }

    #[test]
    fn rejects_decimal_units_with_advice() {
        for (text, binary) in [("1MB", "M"), ("1kB", "K"), ("2GB", "G"), ("3tb", "T")] {
            match parse(text) {
                Err(ByteSizeError::DecimalUnit { binary: b, .. }) => assert_eq!(b, binary),
                other => panic!("{text}: {other:?}"),
            }
        }
        let err = parse("1MB").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"1MB\" uses the decimal unit MB: sizes are binary (1024-based), so write M or MiB"
        );
    }

    #[test]
    fn rejects_non_sizes() {
        for bad in [
            "", "lots", "M", "1.G", ".5G", "-1", "1e6", "1 2", "1P", "1kib", "1GiBs",
        ] {
            assert!(
                matches!(parse(bad), Err(ByteSizeError::NotASize { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse("lots").unwrap_err().to_string(),
            "\"lots\" is not a size: use bytes or a number with K, M, G or T (binary units), \
             e.g. 512M or 2G"
        );
        assert!(matches!(
            parse("16777216T"),
            Err(ByteSizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse(&"9".repeat(50)),
            Err(ByteSizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn displays_the_largest_exact_unit() {
        assert_eq!(ByteSize::from_mib(512).to_string(), "512M");
        assert_eq!(ByteSize::from_gib(2).to_string(), "2G");
        assert_eq!(ByteSize::new(1_073_741_824).to_string(), "1G");
        assert_eq!(ByteSize::new(1536 << 20).to_string(), "1536M");
        assert_eq!(ByteSize::new(1000).to_string(), "1000");
        assert_eq!(ByteSize::new(0).to_string(), "0");
        assert_eq!(format!("{:>5}", ByteSize::from_kib(4)), "   4K");
    }

    #[test]
    fn round_trips_through_text_and_json() {
        for text in ["512M", "1GiB", "1.5G", "123", "1T", "0.5K"] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(
                size.to_string().parse::<ByteSize>().unwrap(),
                size,
                "{text}"
            );
            let json = serde_json::to_string(&size).unwrap();
            assert_eq!(json, format!("\"{size}\""));
            assert_eq!(serde_json::from_str::<ByteSize>(&json).unwrap(), size);
        }
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().to_string(), "1G");
    }

    #[test]
    fn json_numbers_are_bytes() {
        assert_eq!(
            serde_json::from_str::<ByteSize>("1048576").unwrap(),
            ByteSize::from_mib(1)
        );
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert!(serde_json::from_str::<ByteSize>("1.5").is_err());
        let err = serde_json::from_str::<ByteSize>("true").unwrap_err();
        assert!(
            err.to_string().contains("expected a size such as 512M"),
            "{err}"
        );
    }

    #[test]
    fn mib_rounds_down() {
        assert_eq!(ByteSize::from_gib(1).mib(), 1024);
        assert_eq!(ByteSize::new(ByteSize::MIB * 3 - 1).mib(), 2);
    }
}
