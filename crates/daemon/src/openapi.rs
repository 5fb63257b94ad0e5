//! The committed OpenAPI document of the REST API, served at `/openapi.json`.

/// OpenAPI 3.1 description of `/v1`.
pub const DOCUMENT: &str = include_str!("../openapi.json");
