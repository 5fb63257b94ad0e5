//! The audit log: one JSON line per change, refusal and read of guest memory, appended to
//! `<data_dir>/audit.log` (0600), rotated by size into `audit.log.1` … `audit.log.<keep>`.
//! Every field is cut to a bounded length, so one request cannot write an unbounded line.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The longest a name-like field of a line may be, in bytes.
const MAX_FIELD: usize = 256;
/// The longest a line's `reason` may be, in bytes.
const MAX_REASON: usize = 1024;

/// When the log rotates, and how many old files it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRotation {
    /// A file that would grow past this many bytes is rotated first.
    pub max_size: u64,
    /// How many rotated files are kept (`audit.log.1` is the newest).
    pub keep: usize,
}

impl Default for AuditRotation {
    /// 16 MiB per file, 4 old files.
    fn default() -> Self {
        AuditRotation {
            max_size: 16 << 20,
            keep: 4,
        }
    }
}

/// An append-only JSON-lines file, rotated by size.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    rotation: AuditRotation,
    file: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    file: File,
    size: u64,
}

/// One audited act, as it is recorded.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    /// Who: `unix:uid=0,pid=123`, `identity:ci` or `token:<first 8 hex of its hash>`.
    pub identity: &'a str,
    /// The project acted in, when one applies.
    pub project: Option<&'a str>,
    /// What: `create`, `update`, `delete`, `start`, `memory.read` …
    pub verb: &'a str,
    /// The kind of object acted on (`Vm`, `Identity` …), when one applies.
    pub kind: Option<&'a str>,
    /// The object's name (empty when the request named none).
    pub name: &'a str,
    /// The object's uid, when it exists.
    pub uid: Option<&'a str>,
    /// Guest-physical address of a memory range.
    pub addr: Option<u64>,
    /// Length of a memory range in bytes.
    pub len: Option<u64>,
    /// `ok`, `denied`, or `error`.
    pub outcome: &'a str,
    /// Why it was denied or failed.
    pub reason: Option<&'a str>,
}

/// One line of the log, read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    /// When, in RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// Who.
    #[serde(alias = "who")]
    pub identity: String,
    /// The project, or empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// What.
    #[serde(alias = "op")]
    pub verb: String,
    /// The kind, or empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The object's name, or empty.
    #[serde(alias = "vm")]
    pub name: String,
    /// The object's uid, or empty.
    #[serde(alias = "vm_uid", skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// A memory range's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<u64>,
    /// A memory range's length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    /// Why, or empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Which records [`AuditLog::read`] returns.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// Only this identity's records.
    pub identity: Option<String>,
    /// Only this project's records.
    pub project: Option<String>,
    /// At most this many of the newest matching records.
    pub limit: usize,
}

impl AuditQuery {
    fn matches(&self, record: &AuditRecord) -> bool {
        let since = self.since.is_none_or(|since| {
            humantime::parse_rfc3339_weak(&record.time).is_ok_and(|time| time >= since)
        });
        since
            && self.identity.as_ref().is_none_or(|i| *i == record.identity)
            && self.project.as_ref().is_none_or(|p| *p == record.project)
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` for appending, rotated as `rotation`
    /// says.
    pub fn open(path: &Path, rotation: AuditRotation) -> std::io::Result<AuditLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(AuditLog {
            path: path.to_owned(),
            rotation,
            file: Mutex::new(Open { file, size }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the `n`th rotated file (1 is the newest).
    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Appends one line. A line that cannot be written is logged as an error; the act itself
    /// has already been decided.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let field = |s: &str| bounded(s, MAX_FIELD);
        let record = AuditRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            identity: field(entry.identity),
            project: field(entry.project.unwrap_or_default()),
            verb: field(entry.verb),
            kind: field(entry.kind.unwrap_or_default()),
            name: field(entry.name),
            uid: field(entry.uid.unwrap_or_default()),
            addr: entry.addr,
            len: entry.len,
            outcome: field(entry.outcome),
            reason: bounded(entry.reason.unwrap_or_default(), MAX_REASON),
        };
        let mut bytes = serde_json::to_vec(&record).unwrap_or_default();
        bytes.push(b'\n');
        let mut open = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if open.size > 0 && open.size + bytes.len() as u64 > self.rotation.max_size {
            if let Err(e) = self.rotate(&mut open) {
                tracing::error!(path = %self.path.display(), error = %e, "rotating the audit log");
            }
        }
        // One write of a whole line on an O_APPEND file: lines never interleave.
        match open.file.write_all(&bytes) {
            Ok(()) => open.size += bytes.len() as u64,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "writing the audit log")
            }
        }
    }

    /// Shifts `audit.log.N` to `.N+1` (dropping the oldest), the log to `.1`, and starts a
    /// new log.
    fn rotate(&self, open: &mut Open) -> std::io::Result<()> {
        if self.rotation.keep == 0 {
            open.file.set_len(0)?;
            open.size = 0;
            return Ok(());
        }
        for n in (1..self.rotation.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        open.file = open_append(&self.path)?;
        open.size = 0;
        Ok(())
    }

    /// The records `query` selects, oldest first, from the rotated files and the log.
    pub fn read(&self, query: &AuditQuery) -> std::io::Result<Vec<AuditRecord>> {
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let mut out = VecDeque::new();
        let files = (1..=self.rotation.keep)
            .rev()
            .map(|n| self.rotated(n))
            .chain([self.path.clone()]);
        for path in files {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(file).lines() {
                // A line cut short by a crash is skipped, not fatal.
                let Ok(record) = serde_json::from_str::<AuditRecord>(&line?) else {
                    continue;
                };
                if query.matches(&record) {
                    if out.len() == limit {
                        out.pop_front();
                    }
                    out.push_back(record);
                }
            }
        }
        Ok(out.into())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn entry<'a>(name: &'a str, outcome: &'a str) -> AuditEntry<'a> {
        AuditEntry {
            identity: "token:0123abcd",
            project: Some("default"),
            verb: "memory.read",
            kind: Some("Vm"),
            name,
            uid: Some("u1"),
            addr: Some(0x1000),
            len: Some(16),
            outcome,
            reason: None,
        }
    }

    #[test]
    fn lines_are_json_appended_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, AuditRotation::default()).unwrap();
        for outcome in ["ok", "denied"] {
            log.record(&entry("web-1", outcome));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["identity"], "token:0123abcd");
        assert_eq!(lines[0]["addr"], 4096);
        assert_eq!(lines[1]["outcome"], "denied");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotates_by_size_keeps_n_files_and_bounds_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotation = AuditRotation {
            max_size: 1000,
            keep: 2,
        };
        let log = AuditLog::open(&path, rotation).unwrap();
        let huge = "x".repeat(10_000);
        log.record(&entry(&huge, "ok"));
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.len() < 600, "{} bytes", first.len());
        for i in 0..40 {
            log.record(&entry(&format!("vm-{i}"), "ok"));
        }
        for file in [path.clone(), log.rotated(1), log.rotated(2)] {
            let len = std::fs::metadata(&file).unwrap().len();
            assert!(len <= 1000, "{} is {len} bytes", file.display());
        }
        assert!(!log.rotated(3).exists());
        let all = log.read(&AuditQuery::default()).unwrap();
        assert_eq!(all.last().unwrap().name, "vm-39");
        assert!(all.iter().all(|r| r.name != huge));
        let last = log
            .read(&AuditQuery {
                limit: 2,
                ..AuditQuery::default()
            })
            .unwrap();
        let names: Vec<_> = last.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["vm-38", "vm-39"]);
        let none = log
            .read(&AuditQuery {
                identity: Some("token:ffffffff".into()),
                ..AuditQuery::default()
            })
            .unwrap();
        assert!(none.is_empty());
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let later = log
            .read(&AuditQuery {
                since: Some(future),
                ..AuditQuery::default()
            })
            .unwrap();
        assert!(later.is_empty());
    }
}
