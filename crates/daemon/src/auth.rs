//! Bearer tokens for TCP clients. The token file holds only BLAKE3 hashes (`blake3:<hex>` per
//! line), so reading it does not reveal a token.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Accepted token hashes.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<HashSet<[u8; 32]>>);

/// The line to put in a token file for `token`.
pub fn hash_line(token: &str) -> String {
    format!("blake3:{}", blake3::hash(token.trim().as_bytes()).to_hex())
}

impl Tokens {
    /// Reads a token file; comments (`#`) and blank lines are skipped.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let mut hashes = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let hex = line.strip_prefix("blake3:").ok_or_else(|| {
                format!(
                    "token file {} line {}: expected `blake3:<hex>`; store hashes, not tokens \
                     (make the line with `corrald hash-token`)",
                    path.display(),
                    i + 1
                )
            })?;
            let hash = blake3::Hash::from_hex(hex)
                .map_err(|e| format!("token file {} line {}: {e}", path.display(), i + 1))?;
            hashes.insert(*hash.as_bytes());
        }
        if hashes.is_empty() {
            return Err(format!("token file {} holds no token", path.display()));
        }
        Ok(Tokens(Arc::new(hashes)))
    }

    /// Whether `token` is accepted.
    pub fn accepts(&self, token: &str) -> bool {
        // Hashing first makes the comparison independent of how much of a token matches.
        self.0.contains(blake3::hash(token.as_bytes()).as_bytes())
    }
}

/// Middleware: refuses requests without an accepted `authorization: Bearer <token>` header.
pub async fn require_token(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) if tokens.accepts(token) => next.run(request).await,
        _ => unauthenticated(&request),
    }
}

fn unauthenticated(request: &Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let message = "missing or unknown bearer token";
    if grpc {
        tonic::Status::unauthenticated(message).into_http::<axum::body::Body>()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({"error": {"code": "Unauthenticated", "message": message}}),
            ),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_plain_lines_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("# ops\n{}\n", hash_line("s3cret"))).unwrap();
        let tokens = Tokens::load(&file).unwrap();
        assert!(tokens.accepts("s3cret"));
        assert!(!tokens.accepts("s3cre"));
        std::fs::write(&file, "s3cret\n").unwrap();
        assert!(
            Tokens::load(&file)
                .unwrap_err()
                .contains("store hashes, not tokens")
        );
    }
}
