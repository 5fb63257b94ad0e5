//! What a request does, as the audit log names it (verb, kind, object), read by the
//! authorization layer from the route or method and the request; and how it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::RequestExt;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;

/// The most of a request's first bytes kept to name its object in the audit log.
const MAX_TAPPED: usize = 4096;
/// The most of a create's answer read to name the object made. A create answers with the
/// object, which may be as large as the request body it came from (and then some status):
/// read past that, the answer would be lost.
const MAX_CREATED: usize = 4 * super::limits::MAX_BODY;

/// One audited request: its verb, kind and object.
#[derive(Debug, Clone, Default)]
pub struct Act {
    /// `create`, `delete`, `start`, `revoke` …
    pub verb: String,
    /// `Vm`, `Identity` …; empty when none applies.
    pub kind: String,
    /// The object's name; empty until known.
    pub name: String,
    /// The project it acts in, for acts on objects that belong to one.
    pub project: Option<String>,
}

/// The kind a REST path segment names.
fn kind_of_segment(segment: &str) -> String {
    match segment {
        "vms" => "Vm",
        "images" => "Image",
        "volumes" => "Volume",
        "snapshots" => "Snapshot",
        "networks" => "Network",
        "identities" => "Identity",
        "projects" => "Project",
        "sources" => "Source",
        "nodes" => "Node",
        "apply" => "Apply",
        "attestations" => "Attestation",
        "audit" => "Audit",
        other => other,
    }
    .to_owned()
}

impl Act {
    /// A REST request of the route `path` with operation `operation_id` (`createVm`): the
    /// verb is the id's first word, the kind the path's first segment, the name its `{name}`.
    pub async fn rest(request: &mut Request, path: &str, operation_id: &str) -> Act {
        let verb: String = operation_id
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        let kind = path
            .trim_start_matches("/v1/")
            .split('/')
            .next()
            .map(kind_of_segment)
            .unwrap_or_default();
        let name = request
            .extract_parts::<Path<HashMap<String, String>>>()
            .await
            .ok()
            .and_then(|Path(params)| params.get("name").cloned())
            .unwrap_or_default();
        Act {
            verb,
            kind,
            name,
            project: None,
        }
    }

    /// Reads the body of a request refused before any handler saw it, naming the object from
    /// it if the path did not: a connection closed on unread bytes is reset, and the client
    /// would lose the refusal (and, on a reused connection, its next request).
    pub async fn read_refused(&mut self, request: Request, grpc: bool) {
        let name = refused_name(request, grpc).await;
        if self.name.is_empty() {
            self.name = name;
        }
    }

    /// Whether the act is on objects that belong to a project (VMs and what they use), as
    /// opposed to the daemon's own (identities, projects, the audit log, metrics).
    pub fn in_project(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "Vm" | "Image"
                | "Source"
                | "Apply"
                | "Volume"
                | "Snapshot"
                | "Network"
                | "Console"
                | "Memory"
                | "Attestation"
        )
    }

    /// A gRPC request to `/corral.v1.VmService/Start`: verb `start`, kind `Vm`.
    pub fn grpc(path: &str) -> Act {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or_default();
        let method = parts.next().unwrap_or_default();
        let service = service.rsplit('.').next().unwrap_or_default();
        let kind = service.strip_suffix("Service").unwrap_or(service);
        let mut verb = method.to_owned();
        if let Some(first) = verb.get_mut(0..1) {
            first.make_ascii_lowercase();
        }
        Act {
            verb,
            kind: kind.to_owned(),
            name: String::new(),
            project: None,
        }
    }
}

/// Keeps a copy of the first bytes a request body yields, as the handler reads it, without
/// holding the body back (so streaming requests stream).
pub fn tap(request: Request) -> (Request, Arc<Mutex<Vec<u8>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let copy = seen.clone();
    let (parts, body) = request.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            let mut seen = copy.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_TAPPED.saturating_sub(seen.len());
            seen.extend_from_slice(&data[..room.min(data.len())]);
        }
        frame
    });
    (Request::from_parts(parts, Body::new(body)), seen)
}

/// The object a gRPC request names: its first message's field 1 is the name, or a message
/// whose field 1 is (`CreateVmRequest.vm.metadata.name`), at most three levels down.
pub fn grpc_name(tapped: &[u8]) -> String {
    // One length-prefixed message: a compression flag byte, a 4-byte length, the bytes.
    tapped
        .get(5..)
        .and_then(|m| field_one(m, 3))
        .unwrap_or_default()
}

fn field_one(mut message: &[u8], depth: u8) -> Option<String> {
    while !message.is_empty() {
        let key = prost::encoding::decode_varint(&mut message).ok()?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                prost::encoding::decode_varint(&mut message).ok()?;
            }
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            2 => {
                let len =
                    usize::try_from(prost::encoding::decode_varint(&mut message).ok()?).ok()?;
                let value = message.get(..len)?;
                message = &message[len..];
                if field != 1 {
                    continue;
                }
                if let Ok(text) = std::str::from_utf8(value) {
                    if corral_contract::ResourceName::new(text).is_ok() {
                        return Some(text.to_owned());
                    }
                }
                return if depth > 1 {
                    field_one(value, depth - 1)
                } else {
                    None
                };
            }
            _ => return None,
        }
    }
    None
}

/// How a request ended: `ok`, or `error` and why.
pub fn outcome(response: &Response, grpc: bool) -> (&'static str, Option<String>) {
    if grpc {
        return grpc_outcome(response.headers());
    }
    let status = response.status();
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
        ("ok", None)
    } else {
        ("error", Some(format!("HTTP {status}")))
    }
}

/// A gRPC answer that failed at once carries `grpc-status` in its headers (trailers-only).
fn grpc_outcome(headers: &HeaderMap) -> (&'static str, Option<String>) {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => ("ok", None),
        Some(code) => {
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            ("error", Some(format!("gRPC status {code}: {message}")))
        }
    }
}

/// gRPC percent-encodes its messages' non-ASCII and `%` bytes.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a refused request's body is waited for to name its object.
const REFUSED_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// The object a refused request names in its body (a REST create's `metadata.name`, a gRPC
/// message's name), from at most its first [`MAX_TAPPED`] bytes; the request is not served, so
/// its body is free to read.
pub async fn refused_name(request: Request, grpc: bool) -> String {
    let mut body = request.into_body();
    let mut seen = Vec::new();
    // The whole body is read (up to the most a request may send), not only what names the
    // object: a connection closed on unread bytes is reset, and the client loses the answer.
    let read = async {
        let mut total = 0;
        while total < super::limits::MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        total += data.len();
                        let room = MAX_TAPPED.saturating_sub(seen.len());
                        seen.extend_from_slice(&data[..room.min(data.len())]);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_PATIENCE, read).await;
    if grpc {
        return grpc_name(&seen);
    }
    serde_json::from_slice::<serde_json::Value>(&seen)
        .ok()
        .and_then(|v| v.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The name of the object a REST create made, read from its answer (which is given back
/// unchanged).
pub async fn created_name(response: Response) -> (Response, String) {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_CREATED).await {
        Ok(bytes) => bytes,
        Err(_) => Bytes::new(),
    };
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            let meta = v
                .get("metadata")
                .or_else(|| v.pointer("/identity/metadata"))?;
            meta.get("name")?.as_str().map(str::to_owned)
        })
        .unwrap_or_default();
    (Response::from_parts(parts, Body::from(bytes)), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names_are_found_one_to_three_levels_down() {
        // GetVmRequest { name: "web-1" }
        let get = [&[0, 0, 0, 0, 7, 0x0a, 5][..], b"web-1"].concat();
        assert_eq!(grpc_name(&get), "web-1");
        // CreateVmRequest { vm: Vm { metadata: ObjectMeta { name: "db" } } }
        let create = [&[0, 0, 0, 0, 8, 0x0a, 6, 0x0a, 4, 0x0a, 2][..], b"db"].concat();
        assert_eq!(grpc_name(&create), "db");
        assert_eq!(grpc_name(&[0, 0, 0, 0, 2, 0x08, 1]), "");
        let act = Act::grpc("/corral.v1.IdentityService/Revoke");
        assert_eq!(
            (act.verb.as_str(), act.kind.as_str()),
            ("revoke", "Identity")
        );
    }
}
