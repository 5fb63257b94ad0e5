//! What the store holds and what its watches deliver.

use std::collections::BTreeMap;

/// One stored resource.
///
/// The store is schema-agnostic: it indexes `kind`, `name` and `labels`, keeps `uid`, and
/// stores `body` (the whole resource as JSON text, as the contract crate serialises it)
/// verbatim, without parsing or checking it: a read returns exactly the text that was
/// written. It never rewrites `body`, so a `metadata.resource_version` inside it is whatever
/// the caller put there; the authoritative version is [`Object::resource_version`].
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The resource kind, such as `Vm`.
    pub kind: String,
    /// The name, unique within the kind.
    pub name: String,
    /// The identity set when the object was created; `update` keeps the stored one.
    pub uid: String,
    /// Labels, matched by [`Selector`](crate::Selector)s.
    pub labels: BTreeMap<String, String>,
    /// The global revision of the object's last write. Set by the store: ignored by
    /// `create`, and the compare-and-swap precondition of `update`.
    pub resource_version: u64,
    /// The whole resource as JSON text, stored and returned verbatim.
    pub body: String,
}

impl Object {
    /// An object with no labels and `resource_version` 0, ready to `create`. `body` is the
    /// resource's JSON text.
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        Object {
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            labels: BTreeMap::new(),
            resource_version: 0,
            body: body.into(),
        }
    }

    /// Adds a label (builder style).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was updated.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    pub(crate) fn code(self) -> i64 {
        match self {
            EventType::Added => 0,
            EventType::Modified => 1,
            EventType::Deleted => 2,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(EventType::Added),
            1 => Some(EventType::Modified),
            2 => Some(EventType::Deleted),
            _ => None,
        }
    }
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// The global revision of this change; strictly increasing along a watch stream.
    /// Resume a broken watch with `watch(kind, revision)` of the last event seen.
    pub revision: u64,
    /// What happened.
    pub event: EventType,
    /// The object after the change; for [`EventType::Deleted`], its last stored state
    /// (whose `resource_version` is the revision of its last write, not of the deletion).
    pub object: Object,
}
