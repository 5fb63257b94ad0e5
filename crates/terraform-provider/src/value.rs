//! Terraform's values (cty) as the provider sees them, and their wire encodings.
//!
//! Terraform sends configuration, plans and state as MessagePack whose shape is given by the
//! schema's type: objects are maps keyed by attribute name, a null is `nil`, and a value not
//! known until apply is the extension value of type 0. State written by older versions comes
//! back as JSON (`UpgradeResourceState`).

use std::collections::BTreeMap;

/// The type of an attribute, as the schema declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// A UTF-8 string.
    String,
    /// A number (integers here).
    Number,
    /// `true` or `false`.
    Bool,
    /// A map with string keys and values of one type.
    Map(Box<Type>),
    /// An ordered list of values of one type.
    List(Box<Type>),
    /// An object with named attributes of their own types.
    Object(BTreeMap<String, Type>),
}

impl Type {
    /// The JSON form Terraform expects in a schema: `"string"`, `["map","string"]`, …
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Type::String => json!("string"),
            Type::Number => json!("number"),
            Type::Bool => json!("bool"),
            Type::Map(element) => json!(["map", element.to_json()]),
            Type::List(element) => json!(["list", element.to_json()]),
            Type::Object(attrs) => {
                let attrs: serde_json::Map<_, _> = attrs
                    .iter()
                    .map(|(name, ty)| (name.clone(), ty.to_json()))
                    .collect();
                json!(["object", attrs])
            }
        }
    }
}

/// A value of Terraform's type system.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// Not set.
    #[default]
    Null,
    /// Known only after apply.
    Unknown,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
    /// A map (`Type::Map`) or an object (`Type::Object`).
    Map(BTreeMap<String, Value>),
    /// A list (`Type::List`).
    List(Vec<Value>),
}

/// A value that does not fit its type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The MessagePack bytes do not parse.
    #[error("cannot read a MessagePack value: {0}")]
    MessagePack(String),
    /// The JSON bytes do not parse.
    #[error("cannot read a JSON value: {0}")]
    Json(#[from] serde_json::Error),
    /// A value has another shape than the type says.
    #[error("{path}: expected {expected}, got {got}")]
    Mismatch {
        /// Where, as `a.b`.
        path: String,
        /// The type wanted.
        expected: String,
        /// What came.
        got: String,
    },
}

impl Value {
    /// A string value.
    pub fn string(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// `Some(string)` for a known string, else `None`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// `Some(number)` for a known number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// `Some(bool)` for a known boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The entries of a known map or object.
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Whether it is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether it, or anything inside it, is unknown.
    pub fn is_unknown(&self) -> bool {
        match self {
            Value::Unknown => true,
            Value::Map(m) => m.values().any(Value::is_unknown),
            Value::List(l) => l.iter().any(Value::is_unknown),
            _ => false,
        }
    }

    /// The attribute `name` of an object; null when absent or when the object is null.
    pub fn get(&self, name: &str) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Value::Map(m) => m.get(name).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// An object with the attributes `pairs` (a later pair wins).
    pub fn object(pairs: &[(&str, Value)]) -> Value {
        Value::Null.with(pairs)
    }

    /// The same object with the attributes `pairs` set.
    pub fn with(mut self, pairs: &[(&str, Value)]) -> Value {
        for (name, value) in pairs {
            self.set(name, value.clone());
        }
        self
    }

    /// Sets attribute `name` of an object (a null becomes an empty object first).
    pub fn set(&mut self, name: &str, value: Value) {
        if !matches!(self, Value::Map(_)) {
            *self = Value::Map(BTreeMap::new());
        }
        if let Value::Map(m) = self {
            m.insert(name.to_owned(), value);
        }
    }

    /// Decodes MessagePack as a value of type `ty`.
    pub fn from_msgpack(bytes: &[u8], ty: &Type) -> Result<Value, DecodeError> {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        let raw = rmpv::decode::read_value(&mut &bytes[..])
            .map_err(|e| DecodeError::MessagePack(e.to_string()))?;
        from_rmpv(raw, ty, "")
    }

    /// Encodes the value as MessagePack, shaped by `ty` (every object attribute is written,
    /// null when unset, as Terraform expects).
    pub fn to_msgpack(&self, ty: &Type) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = rmpv::encode::write_value(&mut out, &to_rmpv(self, ty));
        out
    }

    /// Decodes JSON (state as Terraform stores it) as a value of type `ty`. Attributes the
    /// type does not have are dropped; attributes missing from the JSON are null.
    pub fn from_json(bytes: &[u8], ty: &Type) -> Result<Value, DecodeError> {
        let json: serde_json::Value = serde_json::from_slice(bytes)?;
        from_json(json, ty, "")
    }
}

fn mismatch(path: &str, ty: &Type, got: impl std::fmt::Debug) -> DecodeError {
    DecodeError::Mismatch {
        path: if path.is_empty() {
            "(root)".into()
        } else {
            path.into()
        },
        expected: ty.to_json().to_string(),
        got: format!("{got:?}"),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn from_rmpv(raw: rmpv::Value, ty: &Type, path: &str) -> Result<Value, DecodeError> {
    use rmpv::Value as R;
    Ok(match (raw, ty) {
        (R::Nil, _) => Value::Null,
        // Type 0 is an unknown value; newer Terraform versions add refinements (type 12).
        (R::Ext(_, _), _) => Value::Unknown,
        (R::String(s), Type::String) => match s.into_str() {
            Some(s) => Value::String(s),
            None => return Err(mismatch(path, ty, "invalid UTF-8")),
        },
        (R::Integer(i), Type::Number) => match i.as_i64() {
            Some(i) => Value::Number(i as f64),
            None => Value::Number(i.as_u64().unwrap_or(u64::MAX) as f64),
        },
        (R::F32(f), Type::Number) => Value::Number(f64::from(f)),
        (R::F64(f), Type::Number) => Value::Number(f),
        // cty writes numbers too large for 64 bits as decimal strings.
        (R::String(s), Type::Number) => match s.as_str().and_then(|s| s.parse().ok()) {
            Some(n) => Value::Number(n),
            None => return Err(mismatch(path, ty, s)),
        },
        (R::Boolean(b), Type::Bool) => Value::Bool(b),
        (R::Map(entries), Type::Map(element)) => {
            let mut map = BTreeMap::new();
            for (key, value) in entries {
                let Some(key) = key.as_str().map(str::to_owned) else {
                    return Err(mismatch(path, ty, key));
                };
                let value = from_rmpv(value, element, &join(path, &key))?;
                map.insert(key, value);
            }
            Value::Map(map)
        }
        (R::Array(items), Type::List(element)) => Value::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| from_rmpv(item, element, &join(path, &i.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        (R::Map(entries), Type::Object(attrs)) => {
            let mut map: BTreeMap<String, Value> =
                attrs.keys().map(|k| (k.clone(), Value::Null)).collect();
            for (key, value) in entries {
                let Some(key) = key.as_str().map(str::to_owned) else {
                    return Err(mismatch(path, ty, key));
                };
                let Some(attr_ty) = attrs.get(&key) else {
                    return Err(DecodeError::Mismatch {
                        path: join(path, &key),
                        expected: "no such attribute".into(),
                        got: "a value".into(),
                    });
                };
                let value = from_rmpv(value, attr_ty, &join(path, &key))?;
                map.insert(key, value);
            }
            Value::Map(map)
        }
        (other, _) => return Err(mismatch(path, ty, other)),
    })
}

fn to_rmpv(value: &Value, ty: &Type) -> rmpv::Value {
    use rmpv::Value as R;
    match (value, ty) {
        (Value::Null, _) => R::Nil,
        // cty's encoding of an unknown value: fixext1 of type 0.
        (Value::Unknown, _) => R::Ext(0, vec![0]),
        (Value::Bool(b), _) => R::Boolean(*b),
        (Value::Number(n), _) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                R::from(*n as i64)
            } else {
                R::F64(*n)
            }
        }
        (Value::String(s), _) => R::from(s.as_str()),
        (Value::Map(m), Type::Object(attrs)) => R::Map(
            attrs
                .iter()
                .map(|(name, attr_ty)| {
                    let v = m.get(name).unwrap_or(&Value::Null);
                    (R::from(name.as_str()), to_rmpv(v, attr_ty))
                })
                .collect(),
        ),
        (Value::Map(m), Type::Map(element)) => R::Map(
            m.iter()
                .map(|(k, v)| (R::from(k.as_str()), to_rmpv(v, element)))
                .collect(),
        ),
        (Value::List(items), Type::List(element)) => {
            R::Array(items.iter().map(|v| to_rmpv(v, element)).collect())
        }
        // A map or list where a scalar was declared: a bug in the provider; write it as a
        // string so that Terraform's error names the attribute.
        (Value::Map(_) | Value::List(_), _) => R::from(format!("{value:?}")),
    }
}

fn from_json(json: serde_json::Value, ty: &Type, path: &str) -> Result<Value, DecodeError> {
    use serde_json::Value as J;
    Ok(match (json, ty) {
        (J::Null, _) => Value::Null,
        (J::String(s), Type::String) => Value::String(s),
        (J::Number(n), Type::Number) => Value::Number(n.as_f64().unwrap_or_default()),
        (J::String(s), Type::Number) => match s.parse() {
            Ok(n) => Value::Number(n),
            Err(_) => return Err(mismatch(path, ty, s)),
        },
        (J::Bool(b), Type::Bool) => Value::Bool(b),
        (J::Object(entries), Type::Map(element)) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let value = from_json(v, element, &join(path, &k))?;
                    Ok((k, value))
                })
                .collect::<Result<_, DecodeError>>()?,
        ),
        (J::Array(items), Type::List(element)) => Value::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| from_json(item, element, &join(path, &i.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        (J::Object(mut entries), Type::Object(attrs)) => Value::Map(
            attrs
                .iter()
                .map(|(name, attr_ty)| {
                    let v = entries.remove(name).unwrap_or(J::Null);
                    Ok((name.clone(), from_json(v, attr_ty, &join(path, name))?))
                })
                .collect::<Result<_, DecodeError>>()?,
        ),
        (other, _) => return Err(mismatch(path, ty, other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Type {
        Type::Object(BTreeMap::from([
            ("name".to_owned(), Type::String),
            ("cpus".to_owned(), Type::Number),
            ("on".to_owned(), Type::Bool),
            ("labels".to_owned(), Type::Map(Box::new(Type::String))),
        ]))
    }

    #[test]
    fn msgpack_round_trips_with_nulls_and_unknowns() {
        let mut v = Value::Null;
        v.set("name", Value::string("web"));
        v.set("cpus", Value::Number(2.0));
        v.set("on", Value::Unknown);
        let bytes = v.to_msgpack(&object());
        let back = Value::from_msgpack(&bytes, &object()).unwrap();
        assert_eq!(back.get("name"), &Value::string("web"));
        assert_eq!(back.get("cpus"), &Value::Number(2.0));
        assert_eq!(back.get("on"), &Value::Unknown);
        assert_eq!(back.get("labels"), &Value::Null);
        assert!(back.is_unknown());
    }

    #[test]
    fn lists_round_trip_in_msgpack_and_json() {
        let ty = Type::List(Box::new(Type::String));
        let v = Value::List(vec![Value::string("a"), Value::Unknown]);
        assert_eq!(Value::from_msgpack(&v.to_msgpack(&ty), &ty).unwrap(), v);
        assert_eq!(ty.to_json().to_string(), r#"["list","string"]"#);
        let json = serde_json::json!(["a", "b"]);
        assert_eq!(
            from_json(json, &ty, "").unwrap(),
            Value::List(vec![Value::string("a"), Value::string("b")])
        );
    }

    #[test]
    fn unknown_is_cty_fixext1_type_0() {
        assert_eq!(Value::Unknown.to_msgpack(&Type::String), [0xd4, 0, 0]);
        // A refined unknown from newer Terraform versions is unknown too.
        let refined = [0xd5, 0x0c, 0x81, 0x01];
        assert_eq!(
            Value::from_msgpack(&refined, &Type::String).unwrap(),
            Value::Unknown
        );
    }

    #[test]
    fn unknown_attributes_and_wrong_types_are_errors() {
        let mut raw = Vec::new();
        let value = rmpv::Value::Map(vec![("nope".into(), 1.into())]);
        rmpv::encode::write_value(&mut raw, &value).unwrap();
        let err = Value::from_msgpack(&raw, &object()).unwrap_err();
        assert!(err.to_string().starts_with("nope:"), "{err}");

        let mut raw = Vec::new();
        let value = rmpv::Value::Map(vec![("cpus".into(), "two".into())]);
        rmpv::encode::write_value(&mut raw, &value).unwrap();
        assert!(Value::from_msgpack(&raw, &object()).is_err());
    }

    #[test]
    fn json_state_fills_missing_and_drops_removed_attributes() {
        let json = br#"{"name":"web","cpus":2,"gone":true,"labels":{"a":"b"}}"#;
        let v = Value::from_json(json, &object()).unwrap();
        assert_eq!(v.get("cpus").as_f64(), Some(2.0));
        assert_eq!(v.get("on"), &Value::Null);
        assert_eq!(v.get("labels").get("a").as_str(), Some("b"));
        assert!(v.as_map().unwrap().get("gone").is_none());
    }

    #[test]
    fn types_encode_as_terraform_json() {
        assert_eq!(
            Type::Map(Box::new(Type::String)).to_json().to_string(),
            r#"["map","string"]"#
        );
    }
}
