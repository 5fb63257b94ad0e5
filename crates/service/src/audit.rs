//! The audit log: one JSON line per privileged act, appended to `<data_dir>/audit.log` (0600).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// One audited act.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry<'a> {
    /// Who: `unix:uid=0,pid=123` or `token:<first 8 hex of its hash>`.
    pub who: String,
    /// The VM's name.
    pub vm: &'a str,
    /// The VM's uid, when the VM exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_uid: Option<&'a str>,
    /// `memory.read`, `memory.find`, `memory.snapshot`, `memory.map`, `memory.stream`.
    pub op: &'a str,
    /// Guest-physical address of the range, when the act has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// Length of the range in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// `ok`, `denied`, or `error`.
    pub outcome: &'a str,
    /// Why it was denied or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. A line that cannot be written is logged as an error; the act itself
    /// has already been decided.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        #[derive(Serialize)]
        struct Line<'a> {
            time: String,
            #[serde(flatten)]
            entry: &'a AuditEntry<'a>,
        }
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            entry,
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write of a whole line on an O_APPEND file: lines never interleave.
        if let Err(e) = file.write_all(&bytes) {
            tracing::error!(path = %self.path.display(), error = %e, "writing the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn lines_are_json_appended_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for outcome in ["ok", "denied"] {
            log.record(&AuditEntry {
                who: "token:0123abcd".into(),
                vm: "web-1",
                vm_uid: Some("u1"),
                op: "memory.read",
                addr: Some(0x1000),
                len: Some(16),
                outcome,
                reason: None,
            });
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "token:0123abcd");
        assert_eq!(lines[0]["addr"], 4096);
        assert_eq!(lines[1]["outcome"], "denied");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
