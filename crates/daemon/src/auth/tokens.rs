//! The token file of `--token-file`: BLAKE3 hashes only, one `blake3:<hex> [scopes=vms,memory]`
//! per line, so reading it does not reveal a token. Each line is an identity without a name
//! of its own (`token:<first 8 hex of its hash>`): role `operator` (`vms`), `admin` with the
//! `admin` scope, and the `memory` grant with `memory`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use corral_contract::Role;

/// What a token line grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    /// Create, read, change and delete objects (role `operator`).
    pub vms: bool,
    /// Read guest memory (read, find, snapshot, map, stream).
    pub memory: bool,
    /// Everything (role `admin`).
    pub admin: bool,
}

/// A token line is not one; the message names the file, the line and what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenFileError(String);

impl Scopes {
    /// What a token line without `scopes=` grants.
    pub const DEFAULT: Scopes = Scopes {
        vms: true,
        memory: false,
        admin: false,
    };

    /// Parses `vms,memory,admin`.
    pub fn parse(list: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes {
            vms: false,
            memory: false,
            admin: false,
        };
        for scope in list.split(',').map(str::trim) {
            match scope {
                "vms" => scopes.vms = true,
                "memory" => scopes.memory = true,
                "admin" => scopes.admin = true,
                other => {
                    return Err(format!(
                        "unknown scope {other:?}; the scopes are `vms`, `memory` and `admin`"
                    ));
                }
            }
        }
        Ok(scopes)
    }

    /// The role these scopes amount to: `admin`, else `operator` with `vms`, else `viewer`.
    pub fn role(self) -> Role {
        if self.admin {
            Role::Admin
        } else if self.vms {
            Role::Operator
        } else {
            Role::Viewer
        }
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.vms, "vms"),
            (self.memory, "memory"),
            (self.admin, "admin"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// Accepted token hashes and their scopes.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<HashMap<[u8; 32], Scopes>>);

/// The line to put in a token file for `token` with `scopes`.
pub fn hash_line(token: &str, scopes: Scopes) -> String {
    let hash = blake3::hash(token.trim().as_bytes()).to_hex();
    if scopes == Scopes::DEFAULT {
        format!("blake3:{hash}")
    } else {
        format!("blake3:{hash} scopes={scopes}")
    }
}

impl Tokens {
    /// Reads a token file; comments (`#`) and blank lines are skipped.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenFileError(format!("token file {}: {e}", path.display())))?;
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |msg: String| {
                TokenFileError(format!(
                    "token file {} line {}: {msg}",
                    path.display(),
                    i + 1
                ))
            };
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            let hex = first.strip_prefix("blake3:").ok_or_else(|| {
                at(
                    "expected `blake3:<hex> [scopes=vms,memory,admin]`; store hashes, not tokens \
                    (make the line with `corrald hash-token`)"
                        .into(),
                )
            })?;
            let hash = blake3::Hash::from_hex(hex).map_err(|e| at(e.to_string()))?;
            let mut scopes = Scopes::DEFAULT;
            for word in words {
                let list = word.strip_prefix("scopes=").ok_or_else(|| {
                    at(format!(
                        "unexpected {word:?}; expected `scopes=vms,memory,admin`"
                    ))
                })?;
                scopes = Scopes::parse(list).map_err(at)?;
            }
            hashes.insert(*hash.as_bytes(), scopes);
        }
        Ok(Tokens(Arc::new(hashes)))
    }

    /// The scopes of the token whose BLAKE3 hash is `hash`, if the file lists it.
    pub fn scopes(&self, hash: &blake3::Hash) -> Option<Scopes> {
        self.0.get(hash.as_bytes()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_plain_lines_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        let all = Scopes {
            vms: true,
            memory: true,
            admin: false,
        };
        std::fs::write(
            &file,
            format!(
                "# ops\n{}\n{}\nblake3:{} scopes=vms,admin\n",
                hash_line("s3cret", Scopes::DEFAULT),
                hash_line("peek", all),
                blake3::hash(b"boss").to_hex()
            ),
        )
        .unwrap();
        let tokens = Tokens::load(&file).unwrap();
        let scopes = |t: &str| tokens.scopes(&blake3::hash(t.as_bytes()));
        assert_eq!(scopes("s3cret"), Some(Scopes::DEFAULT));
        assert_eq!(scopes("s3cre"), None);
        assert_eq!(scopes("s3cret").unwrap().role(), Role::Operator);
        assert!(scopes("peek").unwrap().memory);
        assert_eq!(scopes("boss").unwrap().role(), Role::Admin);
        assert!(hash_line("peek", all).ends_with(" scopes=vms,memory"));
        std::fs::write(
            &file,
            format!("{} scopes=vms,disk\n", hash_line("x", Scopes::DEFAULT)),
        )
        .unwrap();
        let err = Tokens::load(&file).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("\"disk\""), "{err}");
        std::fs::write(&file, "s3cret\n").unwrap();
        let err = Tokens::load(&file).unwrap_err().to_string();
        assert!(err.contains("store hashes, not tokens"), "{err}");
    }
}
