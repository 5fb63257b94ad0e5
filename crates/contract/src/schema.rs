//! OpenAPI 3.1 schemas for the value types the parser checks by hand, so that the published
//! contract says what the parser enforces: patterns, lengths and ranges.
//!
//! Derived schemas (`#[derive(ToSchema)]`) point here with `#[schema(schema_with = …)]` where a
//! field is narrower than its type (memory between 16M and 1T, a port from 1). Patterns use
//! only what ECMA-262 and Python's `re` read alike (no `\d`, `\s` or `\w`, which differ on
//! Unicode).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};

/// `ResourceName`: a DNS label.
pub(crate) const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// An absolute host path without NUL bytes.
pub(crate) const ABSOLUTE_PATH_PATTERN: &str = "^/[^\\x00]*$";
/// A label or annotation key: an optional DNS prefix and `/`, then a label name.
const LABEL_KEY_PATTERN: &str = "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or a label name.
const LABEL_VALUE_PATTERN: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// What Rust's `str::trim` removes (`char::is_whitespace`), for values the parser trims.
pub const TRIMMED: &str = "[\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*";
/// One octet of a dotted IPv4 address, as Rust's parser takes it (no leading zeros).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

pub(crate) fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

pub(crate) fn integer(min: u64, max: u64) -> ObjectBuilder {
    // As integers: an f64 bound would round u64::MAX up, past what the parser takes.
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(uint(min)))
        .maximum(Some(uint(max)))
}

/// A bound as an exact JSON integer.
pub fn uint(n: u64) -> utoipa::Number {
    utoipa::Number::UInt(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The schema of a resource name (see [`crate::ResourceName`]), for path and query parameters.
pub fn name_schema() -> RefOr<Schema> {
    name().into()
}

/// A resource name (see [`crate::ResourceName`]).
pub(crate) fn name() -> ObjectBuilder {
    string()
        .min_length(Some(1))
        .max_length(Some(crate::ResourceName::MAX_LEN))
        .pattern(Some(NAME_PATTERN))
        .description(Some(
            "1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ))
}

/// A closed object (`additionalProperties: false`) with `(name, schema, required)` properties.
pub(crate) fn object<const N: usize>(
    properties: [(&str, RefOr<Schema>, bool); N],
) -> ObjectBuilder {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    for (name, schema, required) in properties {
        object = object.property(name, schema);
        if required {
            object = object.required(name);
        }
    }
    object
}

/// An absolute path on the daemon's host.
pub(crate) fn absolute_path() -> RefOr<Schema> {
    string()
        .min_length(Some(1))
        .pattern(Some(ABSOLUTE_PATH_PATTERN))
        .description(Some("An absolute path on the daemon's host"))
        .into()
}

/// A dotted IPv4 address.
pub(crate) fn ipv4() -> RefOr<Schema> {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4)))
        .pattern(Some(format!("^({OCTET}\\.){{3}}{OCTET}$")))
        .into()
}

/// A TCP or UDP port, 1-65535.
pub(crate) fn port() -> RefOr<Schema> {
    integer(1, 65535).into()
}

/// A source's `verify_keys`: up to 32 SSH public key lines of the types checked.
pub(crate) fn verify_keys() -> RefOr<Schema> {
    let key = string().max_length(Some(1024)).pattern(Some(
        "^(ssh-ed25519|ecdsa-sha2-nistp256)[ \t]+AAAA[A-Za-z0-9+/=]{12,}([ \t][^\n\r]*)?$",
    ));
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(key)
        .max_items(Some(32))
        .description(Some(
            "SSH public keys (authorized_keys lines) allowed to sign commits: when set, a \
             commit applies only if one of them signed it.",
        ))
        .into()
}

/// A host interface name: 1-15 letters, digits, '-', '_' or '.'.
pub(crate) fn ifname() -> RefOr<Schema> {
    string()
        .min_length(Some(1))
        .max_length(Some(15))
        .pattern(Some("^[-A-Za-z0-9_.]{1,15}$"))
        .into()
}

/// `metadata.labels`: keys and values both checked.
pub(crate) fn labels() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string().pattern(Some(LABEL_KEY_PATTERN))))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
            string()
                .max_length(Some(63))
                .pattern(Some(LABEL_VALUE_PATTERN))
                .into(),
        ))))
        .description(Some(
            "Keys: an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit. Values: empty or the same as a key's name.",
        ))
        .into()
}

/// `metadata.annotations`: keys checked, values free text.
pub(crate) fn annotations() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(string().pattern(Some(LABEL_KEY_PATTERN))))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(string().into()))))
        .into()
}

/// An IPv4 subnet `ADDRESS/PREFIX` with prefix 1-`max_prefix`.
pub(crate) fn cidr(min_prefix: u8, max_prefix: u8) -> ObjectBuilder {
    string()
        .pattern(Some(format!(
            "^({OCTET}\\.){{3}}{OCTET}/({})$",
            uint_range(u64::from(min_prefix), u64::from(max_prefix))
        )))
        .description(Some(
            "An IPv4 subnet ADDRESS/PREFIX with no host bits set, e.g. 10.0.2.0/24",
        ))
}

/// A unicast MAC address, six hex pairs joined by ':'.
pub(crate) fn mac() -> ObjectBuilder {
    string()
        .pattern(Some("^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$"))
        .description(Some("A unicast MAC address, e.g. 02:c0:00:00:00:01"))
}

/// A byte size between `min` and `max` bytes: a JSON integer, or a string with a binary unit.
///
/// `multiple_of` is stated for the integer form (`multipleOf`); a pattern cannot state it.
pub(crate) fn byte_size(min: u64, max: u64, multiple_of: Option<u64>) -> RefOr<Schema> {
    let mut number = integer(min, max);
    if let Some(m) = multiple_of {
        number = number.multiple_of(Some(uint(m)));
    }
    let units: [(u32, &str); 5] = [
        (0, "B?"),
        (10, "(K|k|Ki|KiB)"),
        (20, "(M|m|Mi|MiB)"),
        (30, "(G|g|Gi|GiB)"),
        (40, "(T|t|Ti|TiB)"),
    ];
    let mut forms = Vec::new();
    // A pattern cannot say "a multiple of 512" of a number of bytes: bare numbers in a string
    // are described by their range only, and the description says the rest.
    for (shift, unit) in units {
        let scale = 1u64 << shift;
        let lo = min.div_ceil(scale);
        let hi = max / scale;
        if lo <= hi {
            // A fraction (1.5G) is taken when it comes to whole bytes, which a pattern cannot
            // say; the pattern allows any, and the range is that of the whole part.
            let fraction = if shift == 0 { "" } else { "(\\.[0-9]+)?" };
            forms.push(format!(
                "0*({}){fraction}{TRIMMED}{unit}",
                uint_range(lo, hi)
            ));
        }
    }
    let what = match multiple_of {
        Some(m) => format!(
            "A size with a binary unit: K, M, G or T (1024-based), e.g. 512M or 2G; a multiple \
             of {m} bytes"
        ),
        None => "A size with a binary unit: K, M, G or T (1024-based), e.g. 512M or 2G".to_owned(),
    };
    let text = string()
        .pattern(Some(format!("^{TRIMMED}({}){TRIMMED}$", forms.join("|"))))
        .description(Some(what));
    OneOfBuilder::new()
        .item(number)
        .item(text)
        .description(Some(
            "Bytes, as an integer or as a string with a binary unit (K, M, G, T), e.g. 512M",
        ))
        .into()
}

/// `schema`, or JSON `null`: serde reads `null` as a left-out optional field.
pub(crate) fn or_null(schema: impl Into<RefOr<Schema>>) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(schema)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// An optional absolute path.
pub(crate) fn absolute_path_or_null() -> RefOr<Schema> {
    or_null(absolute_path())
}

/// An optional IPv4 address.
pub(crate) fn ipv4_or_null() -> RefOr<Schema> {
    or_null(ipv4())
}

/// An optional address to listen on: not multicast (224-239.x.x.x).
pub(crate) fn listen_ipv4_or_null() -> RefOr<Schema> {
    let first = "(1?[0-9]?[0-9]|2[01][0-9]|22[0-3]|24[0-9]|25[0-5])";
    or_null(
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4)))
            .pattern(Some(format!("^{first}(\\.{OCTET}){{3}}$"))),
    )
}

/// A u64 counter the server keeps (resource_version, generation).
/// Any JSON value (a field's value in a diff).
pub(crate) fn any_value() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
        .into()
}

pub(crate) fn counter() -> RefOr<Schema> {
    integer(0, u64::MAX).into()
}

/// An optional port.
pub(crate) fn port_or_null() -> RefOr<Schema> {
    or_null(port())
}

/// An optional host interface name.
pub(crate) fn ifname_or_null() -> RefOr<Schema> {
    or_null(ifname())
}

/// An optional MAC address.
pub(crate) fn mac_or_null() -> RefOr<Schema> {
    or_null(mac())
}

/// Every named schema of the contract, dependencies included, for an OpenAPI document's
/// `components.schemas`.
pub fn components() -> Vec<(String, RefOr<Schema>)> {
    let mut out = Vec::new();
    add::<crate::Vm>(&mut out);
    add::<crate::Network>(&mut out);
    add::<crate::Image>(&mut out);
    // Referred to from ImageSource's written-out schema, which lists no references itself.
    add::<crate::ImageBuild>(&mut out);
    add::<crate::TemplateSource>(&mut out);
    add::<crate::TemplateStatus>(&mut out);
    add::<crate::Volume>(&mut out);
    add::<crate::Snapshot>(&mut out);
    add::<crate::Source>(&mut out);
    add::<crate::Resource>(&mut out);
    add::<crate::Kind>(&mut out);
    add::<crate::ApplyRequest>(&mut out);
    add::<crate::ApplyReport>(&mut out);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Adds `T`'s schema and those it refers to.
pub(crate) fn add<T: utoipa::ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

/// A kind's object as the API reads and writes it: `kind`, `metadata`, `spec` and a read-only
/// `status` (accepted on input so that a read can be written back, and ignored).
pub(crate) fn kind_object<S: utoipa::ToSchema, T: utoipa::ToSchema>(
    kind: crate::Kind,
) -> RefOr<Schema> {
    use utoipa::ToSchema;
    use utoipa::openapi::schema::Ref;
    // utoipa has no `readOnly` beside a `$ref`: a one-item oneOf carries it, as an extension.
    let read_only = [("readOnly".to_owned(), serde_json::Value::Bool(true))];
    let status = OneOfBuilder::new()
        .item(Ref::from_schema_name(T::name()))
        .extensions(Some(read_only.into_iter().collect()));
    let object = object([
        (
            "kind",
            string().enum_values(Some([kind.as_str()])).into(),
            true,
        ),
        (
            "metadata",
            Ref::from_schema_name(crate::ObjectMeta::name()).into(),
            true,
        ),
        ("spec", Ref::from_schema_name(S::name()).into(), true),
        ("status", status.into(), false),
    ])
    .description(Some(format!(
        "A {kind}: what the user wants (spec) and what controllers observed (status, read-only)"
    )));
    // `example` (one manifest) rather than 3.1's `examples`, which clients read less widely.
    #[allow(deprecated)]
    let object = object.example(example(kind));
    object.into()
}

/// A manifest the API accepts, for the kinds that have one.
fn example(kind: crate::Kind) -> Option<serde_json::Value> {
    match kind {
        crate::Kind::Vm => Some(serde_json::json!({
            "kind": "Vm",
            "metadata": {"name": "web-1", "labels": {"tier": "web"}},
            "spec": {
                "cpus": 2,
                "memory": "1G",
                "boot": {"kernel": {"kernel": "/var/lib/corral/vmlinuz", "cmdline": "console=ttyS0"}}
            }
        })),
        _ => None,
    }
}

/// A regular expression matching the decimal integers `lo..=hi` (no leading zeros), for
/// patterns of numbers written as text.
pub fn uint_range(lo: u64, hi: u64) -> String {
    assert!(lo <= hi, "empty range {lo}..={hi}");
    let mut parts = Vec::new();
    let mut start = lo;
    // Split into runs of equal digit count, each handled digit by digit.
    loop {
        let digits = start.to_string().len() as u32;
        let top = 10u64
            .checked_pow(digits)
            .map_or(u64::MAX, |p| p - 1)
            .min(hi);
        same_length(&start.to_string(), &top.to_string(), "", &mut parts);
        if top == hi {
            break;
        }
        start = top + 1;
    }
    parts.join("|")
}

fn same_length(lo: &str, hi: &str, prefix: &str, out: &mut Vec<String>) {
    let (l, h) = (lo.as_bytes(), hi.as_bytes());
    let rest = lo.len() - 1;
    let class = |a: u8, b: u8| {
        if a == b {
            (a as char).to_string()
        } else {
            format!("[{}-{}]", a as char, b as char)
        }
    };
    let any = |n: usize| match n {
        0 => String::new(),
        1 => "[0-9]".to_owned(),
        n => format!("[0-9]{{{n}}}"),
    };
    if rest == 0 {
        out.push(format!("{prefix}{}", class(l[0], h[0])));
        return;
    }
    let (lo_rest, hi_rest) = (&lo[1..], &hi[1..]);
    let lo_full = lo_rest.bytes().all(|b| b == b'0');
    let hi_full = hi_rest.bytes().all(|b| b == b'9');
    if l[0] == h[0] {
        same_length(lo_rest, hi_rest, &format!("{prefix}{}", l[0] as char), out);
        return;
    }
    if lo_full && hi_full {
        out.push(format!("{prefix}{}{}", class(l[0], h[0]), any(rest)));
        return;
    }
    let mut first = l[0];
    if lo_full {
        // lo is d000…: the whole decade of `d` goes into the middle run.
    } else {
        same_length(
            lo_rest,
            &"9".repeat(rest),
            &format!("{prefix}{}", l[0] as char),
            out,
        );
        first += 1;
    }
    let last = if hi_full { h[0] } else { h[0] - 1 };
    if first <= last {
        out.push(format!("{prefix}{}{}", class(first, last), any(rest)));
    }
    if !hi_full {
        same_length(
            &"0".repeat(rest),
            hi_rest,
            &format!("{prefix}{}", h[0] as char),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, n: u64) -> bool {
        let re = format!("^({pattern})$");
        simple_match(&re, &n.to_string())
    }

    // A tiny matcher for the subset `uint_range` emits: alternation of sequences of literal
    // digits, `[a-b]` classes and `[0-9]{n}` repeats.
    fn simple_match(re: &str, text: &str) -> bool {
        let body = &re[2..re.len() - 2];
        body.split('|').any(|alt| seq_match(alt, text))
    }

    fn seq_match(alt: &str, text: &str) -> bool {
        let mut classes: Vec<(u8, u8)> = Vec::new();
        let b = alt.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let class = if b[i] == b'[' {
                let c = (b[i + 1], b[i + 3]);
                i += 5;
                c
            } else {
                let c = (b[i], b[i]);
                i += 1;
                c
            };
            if i < b.len() && b[i] == b'{' {
                let end = alt[i..].find('}').unwrap() + i;
                let n: usize = alt[i + 1..end].parse().unwrap();
                classes.extend(std::iter::repeat_n(class, n));
                i = end + 1;
            } else {
                classes.push(class);
            }
        }
        classes.len() == text.len()
            && classes
                .iter()
                .zip(text.bytes())
                .all(|(&(a, z), c)| (a..=z).contains(&c))
    }

    #[test]
    fn ranges_match_exactly_their_integers() {
        for (lo, hi) in [
            (1, 256),
            (16, 1_048_576),
            (576, 9000),
            (1, 32),
            (0, 9),
            (1, 29),
        ] {
            let re = uint_range(lo, hi);
            for n in lo.saturating_sub(50)..=(hi + 50).min(lo + 20_000) {
                assert_eq!(
                    matches(&re, n),
                    (lo..=hi).contains(&n),
                    "{n} in {lo}..={hi}: {re}"
                );
            }
            for n in [hi.saturating_sub(3), hi, hi + 1, hi * 10] {
                assert_eq!(
                    matches(&re, n),
                    (lo..=hi).contains(&n),
                    "{n} in {lo}..={hi}: {re}"
                );
            }
        }
        assert_eq!(
            uint_range(1, 256),
            "[1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-6]"
        );
    }
}
