//! [`Strict`]: a deserializer adaptor under which a struct must be written as an object.
//!
//! serde's derived `Deserialize` for a struct also takes the sequence form (`[a, b]` for
//! `{"x": a, "y": b}`), which JSON APIs never mean: `{"spec": [null, null]}` would be read as a
//! spec. `Strict` wraps any deserializer, at every depth, and refuses a sequence where a struct
//! (or a struct variant) is read, naming the field by its path: `spec: expected an object, got
//! an array`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The JSON path of the value being read, and where a map's last key is put.
#[derive(Clone, Default)]
struct Path {
    at: Rc<str>,
    key: Option<Rc<RefCell<String>>>,
}

impl Path {
    fn child(&self, key: &str) -> Path {
        let at = if self.at.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.at)
        };
        Path {
            at: at.into(),
            key: None,
        }
    }

    fn index(&self, i: usize) -> Path {
        Path {
            at: format!("{}[{i}]", self.at).into(),
            key: None,
        }
    }

    fn recording(&self, slot: &Rc<RefCell<String>>) -> Path {
        Path {
            at: self.at.clone(),
            key: Some(slot.clone()),
        }
    }

    fn not_an_object<E: de::Error>(&self) -> E {
        match &*self.at {
            "" => E::custom("expected an object, got an array"),
            at => E::custom(format_args!("{at}: expected an object, got an array")),
        }
    }
}

/// Wraps a deserializer so that structs must be objects, at any depth.
///
/// ```
/// use corral_contract::Strict;
/// use serde::Deserialize;
///
/// #[derive(Debug, Deserialize)]
/// struct Spec { size: u32 }
/// #[derive(Debug, Deserialize)]
/// struct Body { spec: Spec }
///
/// let mut json = serde_json::Deserializer::from_str(r#"{"spec": [3]}"#);
/// let err = Body::deserialize(Strict::new(&mut json)).unwrap_err();
/// assert!(err.to_string().starts_with("spec: expected an object, got an array"));
/// ```
pub struct Strict<D> {
    inner: D,
    path: Path,
}

impl<D> Strict<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        Strict {
            inner,
            path: Path::default(),
        }
    }
}

impl<D> fmt::Debug for Strict<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Strict")
            .field("path", &self.path.at)
            .finish()
    }
}

struct Wrap<V> {
    visitor: V,
    path: Path,
    object: bool,
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*) => $object:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = Wrap { visitor, path: self.path, object: $object };
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<D> {
    type Error = D::Error;

    forward! {
        deserialize_any() => false;
        deserialize_bool() => false;
        deserialize_i8() => false;
        deserialize_i16() => false;
        deserialize_i32() => false;
        deserialize_i64() => false;
        deserialize_i128() => false;
        deserialize_u8() => false;
        deserialize_u16() => false;
        deserialize_u32() => false;
        deserialize_u64() => false;
        deserialize_u128() => false;
        deserialize_f32() => false;
        deserialize_f64() => false;
        deserialize_char() => false;
        deserialize_str() => false;
        deserialize_string() => false;
        deserialize_bytes() => false;
        deserialize_byte_buf() => false;
        deserialize_option() => false;
        deserialize_unit() => false;
        deserialize_unit_struct(name: &'static str) => false;
        deserialize_newtype_struct(name: &'static str) => false;
        deserialize_seq() => false;
        deserialize_tuple(len: usize) => false;
        deserialize_tuple_struct(name: &'static str, len: usize) => false;
        deserialize_map() => false;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) => true;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) => false;
        deserialize_identifier() => false;
        deserialize_ignored_any() => false;
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

impl<V> Wrap<V> {
    fn record(&self, key: &str) {
        if let Some(slot) = &self.path.key {
            key.clone_into(&mut slot.borrow_mut());
        }
    }
}

macro_rules! pass {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    pass! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.record(v);
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.record(v);
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.record(&v);
        self.visitor.visit_string(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.visitor.visit_some(Strict {
            inner: d,
            path: self.path,
        })
    }

    fn visit_newtype_struct<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.visitor.visit_newtype_struct(Strict {
            inner: d,
            path: self.path,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.object {
            return Err(self.path.not_an_object());
        }
        self.visitor.visit_seq(Seq {
            inner: seq,
            path: self.path,
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_map(Map {
            inner: map,
            path: self.path,
            key: Rc::default(),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.visitor.visit_enum(Enum {
            inner: data,
            path: self.path,
        })
    }
}

struct Seed<S> {
    seed: S,
    path: Path,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Strict {
            inner: d,
            path: self.path,
        })
    }
}

struct Seq<A> {
    inner: A,
    path: Path,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let path = self.path.index(self.index);
        self.index += 1;
        self.inner.next_element_seed(Seed { seed, path })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Map<A> {
    inner: A,
    path: Path,
    key: Rc<RefCell<String>>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.key.borrow_mut().clear();
        let path = self.path.recording(&self.key);
        self.inner.next_key_seed(Seed { seed, path })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let path = self.path.child(&self.key.borrow());
        self.inner.next_value_seed(Seed { seed, path })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Enum<A> {
    inner: A,
    path: Path,
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<A> {
    type Error = A::Error;
    type Variant = Variant<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let slot = Rc::default();
        let path = self.path.recording(&slot);
        let (value, variant) = self.inner.variant_seed(Seed { seed, path })?;
        let path = self.path.child(&slot.borrow());
        Ok((
            value,
            Variant {
                inner: variant,
                path,
            },
        ))
    }
}

struct Variant<A> {
    inner: A,
    path: Path,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            seed,
            path: self.path,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            visitor,
            path: self.path,
            object: false,
        };
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = Wrap {
            visitor,
            path: self.path,
            object: true,
        };
        self.inner.struct_variant(fields, visitor)
    }
}

/// Reads a `T` from JSON text with structs required to be objects (see [`Strict`]).
pub fn from_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = T::deserialize(Strict::new(&mut de))?;
    de.end()?;
    Ok(value)
}
