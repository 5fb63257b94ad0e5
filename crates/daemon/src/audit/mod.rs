//! The audit log, read back (admin only).

pub mod grpc;
pub mod rest;

use std::time::{Duration, SystemTime};

use corral_contract::ValidationError;
use corral_service::{AuditQuery, AuditRecord, ServiceError};

use crate::state::Daemon;

/// The most records one request returns.
pub const MAX_RECORDS: usize = 10_000;

/// `since` as a time: RFC 3339 (`2026-12-04T10:00:00Z`) or a duration back from now (`1h`).
pub fn parse_since(since: &str) -> Result<Option<SystemTime>, ValidationError> {
    let since = since.trim();
    if since.is_empty() {
        return Ok(None);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(since) {
        return Ok(Some(time));
    }
    let back: Duration = humantime::parse_duration(since).map_err(|_| {
        ValidationError::new(
            "since",
            format!("{since:?} is neither an RFC 3339 time nor a duration such as 90s or 1h"),
        )
    })?;
    Ok(Some(SystemTime::now() - back))
}

/// The records a query selects, oldest first, at most [`MAX_RECORDS`] of the newest.
pub(crate) async fn read(
    d: &Daemon,
    since: &str,
    identity: String,
    project: String,
    limit: usize,
) -> Result<Vec<AuditRecord>, ServiceError> {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let query = AuditQuery {
        since: parse_since(since)?,
        identity: non_empty(identity),
        project: non_empty(project),
        limit: if limit == 0 {
            MAX_RECORDS
        } else {
            limit.min(MAX_RECORDS)
        },
    };
    let log = d.audit.clone();
    tokio::task::spawn_blocking(move || log.read(&query))
        .await
        .map_err(|source| ServiceError::Task {
            what: "reading the audit log",
            source,
        })?
        .map_err(|source| ServiceError::Io {
            context: format!("reading {}", d.audit.path().display()),
            source,
        })
}
