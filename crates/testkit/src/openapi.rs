use std::collections::BTreeSet;

use serde_json::Value;

use crate::http::Reply;

/// An OpenAPI document and the routes a server serves, as `(method, path template)`: checks
/// that an answer from a documented route is one the document describes.
#[derive(Debug)]
pub struct Document {
    doc: Value,
    routes: Vec<(String, String)>,
}

impl Document {
    /// `doc` (the parsed document) for a server with `routes`.
    pub fn new(doc: Value, routes: &[(&str, &str)]) -> Document {
        Document {
            doc,
            routes: routes
                .iter()
                .map(|(m, p)| (m.to_string(), p.to_string()))
                .collect(),
        }
    }

    /// The document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The route template of `path` (without its query), if it is one of the routes.
    pub fn template_of(&self, method: &str, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, template)| template.as_str())
            .find(|template| {
                let parts: Vec<&str> = template.split('/').collect();
                parts.len() == segments.len()
                    && parts
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
            })
    }

    /// Checks an answer from a documented route against the document: its status is one the
    /// operation lists, its content type one that response lists, and a JSON or text body
    /// validates against the response's schema.
    #[track_caller]
    pub fn conforms(&self, method: &str, path: &str, reply: &Reply) {
        let Some(template) = self.template_of(method, path) else {
            return;
        };
        let what = format!("{method} {path} → {}", reply.status);
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        let mut response = operation["responses"]
            .get(reply.status.to_string())
            .unwrap_or_else(|| panic!("{what}: status not documented for {template}"));
        if let Some(Value::String(r)) = response.get("$ref") {
            response = self.doc.pointer(&r[1..]).expect("a response reference");
        }
        let essence = |t: &str| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        };
        let Some(content_type) = reply.header("content-type") else {
            assert!(
                reply.body.is_empty(),
                "{what}: a body without a content type"
            );
            return;
        };
        let content = response["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: the response documents no content"));
        let (media, documented) = content
            .iter()
            .find(|(media, _)| essence(media) == essence(content_type))
            .unwrap_or_else(|| {
                panic!(
                    "{what}: content type {content_type} is not among {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        let value = match essence(media).as_str() {
            "application/json" => reply.json(),
            m if m.starts_with("text/") || m.ends_with("-text") => Value::String(reply.text()),
            _ => return,
        };
        let errors = Validator { doc: &self.doc }.errors(&documented["schema"], &value);
        assert!(
            errors.is_empty(),
            "{what}: the body does not match the document: {errors:#?}\n{value}"
        );
    }
}

/// The `schema` objects of parameters and media types under `value`.
pub fn collect_schemas<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "schema" {
                    out.push(v);
                } else {
                    collect_schemas(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_schemas(v, out)),
        _ => {}
    }
}

/// The `$ref` strings under `value`.
pub fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A small JSON Schema (2020-12 subset) validator: enough for the keywords the document uses,
/// which the daemon's document tests check.
#[derive(Debug)]
pub struct Validator<'a> {
    /// The document whose `components.schemas` and references are resolved.
    pub doc: &'a Value,
}

/// Keywords that assert something, all implemented below.
pub const ASSERTIONS: &[&str] = &[
    "$ref",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "oneOf",
    "minimum",
    "maximum",
    "multipleOf",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
];
/// Keywords that only annotate.
pub const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "default",
    "example",
    "examples",
    "readOnly",
    "format",
    "contentMediaType",
];

impl Validator<'_> {
    /// The schema `components.schemas.NAME`.
    pub fn schema(&self, name: &str) -> &Value {
        let schema = &self.doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    /// Errors of `value` against `schema`, each with its JSON path.
    pub fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(schema, value, "$", &mut errors);
        errors
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = schema.as_object().expect("a schema object");
        for keyword in schema.keys() {
            assert!(
                ASSERTIONS.contains(&keyword.as_str()) || ANNOTATIONS.contains(&keyword.as_str()),
                "keyword {keyword} at {at} is not understood by this validator"
            );
        }
        let fail = |errors: &mut Vec<String>, message: String| {
            errors.push(format!("{at}: {message}"));
        };
        if let Some(Value::String(r)) = schema.get("$ref") {
            let target = self
                .doc
                .pointer(r.strip_prefix('#').expect("a local reference"))
                .unwrap_or_else(|| panic!("{r} does not resolve"));
            self.check(target, value, at, errors);
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                other => panic!("bad type {other}"),
            };
            let ok = types.iter().any(|t| match *t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_u64() || value.is_i64(),
                "number" => value.is_number(),
                "null" => value.is_null(),
                other => panic!("unknown type {other}"),
            });
            if !ok {
                fail(errors, format!("{value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(c) = schema.get("const") {
            if value != c {
                fail(errors, format!("{value} is not {c}"));
            }
        }
        if let Some(Value::Array(allowed)) = schema.get("enum") {
            if !allowed.contains(value) {
                fail(errors, format!("{value} is not one of {allowed:?}"));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    fail(errors, format!("{n} < {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    fail(errors, format!("{n} > {max}"));
                }
            }
            if let Some(m) = schema.get("multipleOf").and_then(Value::as_u64) {
                if value.as_u64().is_none_or(|v| v % m != 0) {
                    fail(errors, format!("{value} is not a multiple of {m}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    fail(errors, format!("{s:?} is too short"));
                }
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    fail(errors, format!("{s:?} is too long"));
                }
            }
            if let Some(Value::String(pattern)) = schema.get("pattern") {
                let re = regex::Regex::new(pattern).expect("a valid pattern");
                if !re.is_match(s) {
                    fail(errors, format!("{s:?} does not match {pattern}"));
                }
            }
        }
        if let Some(Value::Array(options)) = schema.get("oneOf") {
            let passing = options
                .iter()
                .filter(|o| self.errors(o, value).is_empty())
                .count();
            if passing != 1 {
                fail(
                    errors,
                    format!("{value} matches {passing} of the oneOf options, not 1"),
                );
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if items.len() as u64 > max {
                    fail(errors, format!("{} items, more than {max}", items.len()));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.check(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
        }
        let Some(object) = value.as_object() else {
            return;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: {name} is required"));
                }
            }
        }
        for (key, v) in object {
            let path = format!("{at}.{key}");
            if let Some(names) = schema.get("propertyNames") {
                self.check(
                    names,
                    &Value::String(key.clone()),
                    &format!("{path} (name)"),
                    errors,
                );
            }
            match properties.and_then(|p| p.get(key)) {
                Some(property) => self.check(property, v, &path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{path} is not allowed")),
                    Some(extra @ Value::Object(_)) => self.check(extra, v, &path, errors),
                    _ => {}
                },
            }
        }
    }

    /// Asserts that `value` is a valid `name`.
    #[track_caller]
    pub fn assert_valid(&self, name: &str, value: &Value) {
        let errors = self.errors(self.schema(name), value);
        assert!(
            errors.is_empty(),
            "{value}\nis not a valid {name}:\n{errors:#?}"
        );
    }

    /// Asserts that `value` is not a valid `name`.
    #[track_caller]
    pub fn assert_invalid(&self, name: &str, value: &Value) {
        assert!(
            !self.errors(self.schema(name), value).is_empty(),
            "{value} is a valid {name}, but the API refuses it"
        );
    }

    /// The properties a schema declares.
    pub fn properties(&self, name: &str) -> BTreeSet<String> {
        self.schema(name)["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no properties"))
            .keys()
            .cloned()
            .collect()
    }

    /// The words of the enum schema `name`.
    pub fn enum_words(&self, name: &str) -> Vec<String> {
        self.schema(name)["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

/// The keys of a JSON object.
pub fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_undocumented_status_or_body_is_refused_on_routes_only() {
        let schema = json!({"type": "object", "required": ["a"]});
        let doc = json!({"paths": {"/v1/x/{name}": {"get": {"responses": {
            "200": {"content": {"application/json": {"schema": schema}}}
        }}}}});
        let d = Document::new(doc, &[("GET", "/v1/x/{name}")]);
        assert_eq!(d.template_of("GET", "/v1/x/y?z=1"), Some("/v1/x/{name}"));
        d.conforms("GET", "/v1/x/y", &reply(200, r#"{"a": 1}"#));
        let refused = |status, body: &'static str| {
            std::panic::catch_unwind(|| d.conforms("GET", "/v1/x/y", &reply(status, body))).is_err()
        };
        assert!(refused(404, r#"{"a": 1}"#), "an undocumented status");
        assert!(refused(200, "{}"), "a body against the schema");
        // Not a route of the server: nothing to check.
        d.conforms("GET", "/v2/other", &reply(404, "{}"));
    }
}
