//! The synchronous SQL behind `SqliteStore`: one connection, used under a mutex.

use std::collections::BTreeMap;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use crate::{EventType, Object, Selector, StoreError, WatchEvent};

/// The connection and the counters it persists, cached so reads need no query.
pub(crate) struct Db {
    conn: Connection,
    /// The revision of the last committed write.
    revision: u64,
    /// Events up to and including this revision have been compacted away.
    compacted: u64,
}

/// A batch of logged events, and the store's revision when it was read.
pub(crate) struct Page {
    pub(crate) events: Vec<WatchEvent>,
    pub(crate) head: u64,
}

fn db_err(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(operation, e)
}

fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
    kind: &str,
    name: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Corrupt {
        what: format!("{kind} {name:?}"),
        source,
    })
}

fn decode_labels(
    text: &str,
    kind: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    // Most objects carry few or no labels: skip the parser for the common empty case.
    if text == "{}" {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: format!("{kind} {name:?}"),
        source,
    })
}

/// Borrows a TEXT column without copying it.
fn text<'r>(row: &'r Row<'_>, index: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(index)?
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, e.into()))
}

/// Columns `uid, labels, resource_version, body` starting at `first`; the body is copied
/// as it is stored.
fn object_from_row(
    row: &Row<'_>,
    first: usize,
    kind: String,
    name: String,
) -> Result<Object, StoreError> {
    let read = db_err("read an object");
    let labels = decode_labels(text(row, first + 1).map_err(&read)?, &kind, &name)?;
    Ok(Object {
        uid: text(row, first).map_err(&read)?.to_owned(),
        labels,
        resource_version: row.get(first + 2).map_err(&read)?,
        body: text(row, first + 3).map_err(&read)?.to_owned(),
        kind,
        name,
    })
}

#[allow(clippy::too_many_arguments)]
fn log_event(
    tx: &Transaction<'_>,
    revision: u64,
    event: EventType,
    kind: &str,
    name: &str,
    uid: &str,
    labels: &str,
    resource_version: u64,
    body: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (revision, type, kind, name, uid, labels, resource_version, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        revision,
        event.code(),
        kind,
        name,
        uid,
        labels,
        resource_version,
        body
    ])?;
    tx.prepare_cached("UPDATE state SET revision = ?1 WHERE id = 0")?
        .execute([revision])?;
    Ok(())
}

impl Db {
    pub(crate) fn new(conn: Connection, revision: u64, compacted: u64) -> Self {
        Db {
            conn,
            revision,
            compacted,
        }
    }

    fn begin(&mut self, operation: &'static str) -> Result<Transaction<'_>, StoreError> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
        // a lock upgrade if another process opened the file.
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err(operation))
    }

    /// Returns the stored object (with its new `resource_version`).
    pub(crate) fn create(&mut self, mut obj: Object) -> Result<Object, StoreError> {
        const OP: &str = "create an object";
        let labels = encode(&obj.labels, &obj.kind, &obj.name)?;
        let revision = self.revision + 1;
        let tx = self.begin(OP)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO objects (kind, name, uid, labels, resource_version, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (kind, name) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    obj.kind, obj.name, obj.uid, labels, revision, obj.body
                ])
            })
            .map_err(db_err(OP))?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists {
                kind: obj.kind,
                name: obj.name,
            });
        }
        log_event(
            &tx,
            revision,
            EventType::Added,
            &obj.kind,
            &obj.name,
            &obj.uid,
            &labels,
            revision,
            &obj.body,
        )
        .and_then(|()| tx.commit())
        .map_err(db_err(OP))?;
        self.revision = revision;
        obj.resource_version = revision;
        Ok(obj)
    }

    pub(crate) fn get(&mut self, kind: &str, name: &str) -> Result<Object, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uid, labels, resource_version, body FROM objects
                 WHERE kind = ?1 AND name = ?2",
            )
            .map_err(db_err("read an object"))?;
        let mut rows = stmt.query([kind, name]).map_err(db_err("read an object"))?;
        match rows.next().map_err(db_err("read an object"))? {
            Some(row) => object_from_row(row, 0, kind.to_owned(), name.to_owned()),
            None => Err(StoreError::NotFound {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// The matching objects, sorted by name, and the revision of this snapshot.
    pub(crate) fn list(
        &mut self,
        kind: &str,
        selector: &Selector,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        const OP: &str = "list objects";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, uid, labels, resource_version, body FROM objects
                 WHERE kind = ?1 ORDER BY name",
            )
            .map_err(db_err(OP))?;
        let mut rows = stmt.query([kind]).map_err(db_err(OP))?;
        let mut objects = Vec::new();
        while let Some(row) = rows.next().map_err(db_err(OP))? {
            let name = text(row, 0).map_err(db_err(OP))?;
            let labels = decode_labels(text(row, 2).map_err(db_err(OP))?, kind, name)?;
            if !selector.matches(&labels) {
                continue;
            }
            objects.push(Object {
                kind: kind.to_owned(),
                name: name.to_owned(),
                uid: text(row, 1).map_err(db_err(OP))?.to_owned(),
                labels,
                resource_version: row.get(3).map_err(db_err(OP))?,
                body: text(row, 4).map_err(db_err(OP))?.to_owned(),
            });
        }
        Ok((objects, self.revision))
    }

    pub(crate) fn update(&mut self, obj: Object) -> Result<Object, StoreError> {
        Ok(self.update_all(vec![obj])?.remove(0))
    }

    /// Replaces every object of `objs` in one transaction, each at a revision of its own (in
    /// order), or none when one is not at its expected version.
    pub(crate) fn update_all(&mut self, objs: Vec<Object>) -> Result<Vec<Object>, StoreError> {
        const OP: &str = "update an object";
        let first = self.revision + 1;
        let tx = self.begin(OP)?;
        let mut stored = Vec::with_capacity(objs.len());
        for (mut obj, revision) in objs.into_iter().zip(first..) {
            let labels = encode(&obj.labels, &obj.kind, &obj.name)?;
            let expected = obj.resource_version;
            let uid: Option<String> = tx
                .prepare_cached(
                    "UPDATE objects SET labels = ?1, resource_version = ?2, body = ?3
                     WHERE kind = ?4 AND name = ?5 AND resource_version = ?6 RETURNING uid",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![labels, revision, obj.body, obj.kind, obj.name, expected],
                        |row| row.get(0),
                    )
                    .optional()
                })
                .map_err(db_err(OP))?;
            // Dropping `tx` on the way out rolls back what this call wrote so far.
            let Some(uid) = uid else {
                return Err(
                    match current_version(&tx, &obj.kind, &obj.name).map_err(db_err(OP))? {
                        Some(actual) => StoreError::Conflict {
                            kind: obj.kind,
                            name: obj.name,
                            expected,
                            actual,
                        },
                        None => StoreError::NotFound {
                            kind: obj.kind,
                            name: obj.name,
                        },
                    },
                );
            };
            log_event(
                &tx,
                revision,
                EventType::Modified,
                &obj.kind,
                &obj.name,
                &uid,
                &labels,
                revision,
                &obj.body,
            )
            .map_err(db_err(OP))?;
            obj.uid = uid;
            obj.resource_version = revision;
            stored.push(obj);
        }
        tx.commit().map_err(db_err(OP))?;
        self.revision += stored.len() as u64;
        Ok(stored)
    }

    /// Returns the deleted object's last state and the revision of the deletion.
    pub(crate) fn delete(
        &mut self,
        kind: &str,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(Object, u64), StoreError> {
        const OP: &str = "delete an object";
        let revision = self.revision + 1;
        let tx = self.begin(OP)?;
        let row: Option<(String, String, u64, String)> = tx
            .prepare_cached(
                "SELECT uid, labels, resource_version, body FROM objects
                 WHERE kind = ?1 AND name = ?2",
            )
            .and_then(|mut s| {
                s.query_row([kind, name], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(db_err(OP))?;
        let Some((uid, labels, actual, body)) = row else {
            return Err(StoreError::NotFound {
                kind: kind.to_owned(),
                name: name.to_owned(),
            });
        };
        if let Some(expected) = expected.filter(|&e| e != actual) {
            return Err(StoreError::Conflict {
                kind: kind.to_owned(),
                name: name.to_owned(),
                expected,
                actual,
            });
        }
        tx.prepare_cached("DELETE FROM objects WHERE kind = ?1 AND name = ?2")
            .and_then(|mut s| s.execute([kind, name]))
            .and_then(|_| {
                log_event(
                    &tx,
                    revision,
                    EventType::Deleted,
                    kind,
                    name,
                    &uid,
                    &labels,
                    actual,
                    &body,
                )
            })
            .and_then(|()| tx.commit())
            .map_err(db_err(OP))?;
        self.revision = revision;
        let object = Object {
            kind: kind.to_owned(),
            name: name.to_owned(),
            labels: decode_labels(&labels, kind, name)?,
            body,
            uid,
            resource_version: actual,
        };
        Ok((object, revision))
    }

    /// Up to `limit` logged events with revision greater than `after`, oldest first.
    pub(crate) fn events_after(
        &mut self,
        kind: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        const OP: &str = "read the event log";
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: self.compacted,
            });
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT revision, type, kind, name, uid, labels, resource_version, body
                 FROM events WHERE revision > ?1 AND (?2 IS NULL OR kind = ?2)
                 ORDER BY revision LIMIT ?3",
            )
            .map_err(db_err(OP))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt
            .query(params![after, kind, limit])
            .map_err(db_err(OP))?;
        let mut events = Vec::new();
        while let Some(row) = rows.next().map_err(db_err(OP))? {
            let revision: u64 = row.get(0).map_err(db_err(OP))?;
            let code: i64 = row.get(1).map_err(db_err(OP))?;
            let event = EventType::from_code(code).ok_or_else(|| {
                StoreError::backend(OP, format!("event {revision} has unknown type {code}"))
            })?;
            let kind = text(row, 2).map_err(db_err(OP))?.to_owned();
            let name = text(row, 3).map_err(db_err(OP))?.to_owned();
            let object = object_from_row(row, 4, kind, name)?;
            events.push(WatchEvent {
                revision,
                event,
                object,
            });
        }
        Ok(Page {
            events,
            head: self.revision,
        })
    }

    pub(crate) fn compact(&mut self, keep_after: u64) -> Result<(), StoreError> {
        const OP: &str = "compact the event log";
        if keep_after > self.revision {
            return Err(StoreError::FutureRevision {
                requested: keep_after,
                current: self.revision,
            });
        }
        if keep_after <= self.compacted {
            return Ok(());
        }
        let tx = self.begin(OP)?;
        tx.execute("DELETE FROM events WHERE revision <= ?1", [keep_after])
            .and_then(|_| tx.execute("UPDATE state SET compacted = ?1 WHERE id = 0", [keep_after]))
            .and_then(|_| tx.commit())
            .map_err(db_err(OP))?;
        self.compacted = keep_after;
        Ok(())
    }
}

fn current_version(tx: &Transaction<'_>, kind: &str, name: &str) -> rusqlite::Result<Option<u64>> {
    tx.prepare_cached("SELECT resource_version FROM objects WHERE kind = ?1 AND name = ?2")?
        .query_row([kind, name], |row| row.get(0))
        .optional()
}
