//! Typed CRUD over the store for any resource kind: JSON bodies, server-stamped identity,
//! compare-and-swap updates. [`crate::VmService`] predates it and keeps its own copy; the
//! storage kinds use this.

use std::marker::PhantomData;
use std::sync::Arc;

use corral_contract::{Object as Resource, ValidationError};
use corral_store::{Object, Selector, Store, WatchStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ServiceError;

const CAS_RETRIES: usize = 16;

/// The objects of one kind `T` in a store.
#[derive(Debug)]
pub struct Objects<T> {
    store: Arc<dyn Store>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Objects<T> {
    fn clone(&self) -> Self {
        Objects {
            store: self.store.clone(),
            _kind: PhantomData,
        }
    }
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl<T: Resource + Serialize + DeserializeOwned + Clone> Objects<T> {
    /// The objects of kind `T` in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Objects {
            store,
            _kind: PhantomData,
        }
    }

    fn kind() -> &'static str {
        T::KIND.as_str()
    }

    fn encode(obj: &T) -> Result<Object, ServiceError> {
        let meta = obj.metadata();
        let body = serde_json::to_string(obj).map_err(|e| {
            ServiceError::FailedPrecondition(format!("cannot encode {}: {e}", Self::kind()))
        })?;
        let mut o = Object::new(Self::kind(), meta.name.as_str(), meta.uid.clone(), body);
        o.labels = meta.labels.clone();
        o.resource_version = meta.resource_version;
        Ok(o)
    }

    fn decode(obj: Object) -> Result<T, ServiceError> {
        let mut t: T = serde_json::from_str(&obj.body).map_err(|e| {
            ServiceError::FailedPrecondition(format!(
                "stored {} {:?} does not decode: {e}",
                Self::kind(),
                obj.name
            ))
        })?;
        t.metadata_mut().resource_version = obj.resource_version;
        Ok(t)
    }

    /// Stores a new object: validates it and stamps uid, generation 1 and creation time.
    /// The caller sets the status it should start with.
    pub async fn create(&self, mut obj: T) -> Result<T, ServiceError> {
        obj.validate()?;
        let meta = obj.metadata_mut();
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.generation = 1;
        meta.resource_version = 0;
        meta.created_at = Some(now());
        meta.deleting = false;
        let stored = self
            .store
            .create(Self::encode(&obj)?)
            .await
            .map_err(|e| ServiceError::from_store(Self::kind(), e))?;
        Self::decode(stored)
    }

    /// One object by name.
    pub async fn get(&self, name: &str) -> Result<T, ServiceError> {
        let obj = self
            .store
            .get(Self::kind(), name)
            .await
            .map_err(|e| ServiceError::from_store(Self::kind(), e))?;
        Self::decode(obj)
    }

    /// Whether an object by that name exists.
    pub async fn exists(&self, name: &str) -> Result<bool, ServiceError> {
        match self.get(name).await {
            Ok(_) => Ok(true),
            Err(ServiceError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Objects matching a label selector (`""` for all), by name, and the store revision.
    pub async fn list(&self, selector: &str) -> Result<(Vec<T>, u64), ServiceError> {
        let selector: Selector = selector
            .parse()
            .map_err(|e| ValidationError::new("label_selector", e))?;
        let (objects, revision) = self
            .store
            .list(Self::kind(), &selector)
            .await
            .map_err(|e| ServiceError::from_store(Self::kind(), e))?;
        let items = objects
            .into_iter()
            .map(Self::decode)
            .collect::<Result<_, _>>()?;
        Ok((items, revision))
    }

    /// Read-modify-write with compare-and-swap. `expected` 0 retries on conflicts; otherwise
    /// a conflict is the caller's. `f` returns whether it changed anything.
    pub async fn modify(
        &self,
        name: &str,
        expected: u64,
        mut f: impl FnMut(&mut T) -> Result<bool, ServiceError>,
    ) -> Result<T, ServiceError> {
        for _ in 0..CAS_RETRIES {
            let mut obj = self.get(name).await?;
            let actual = obj.metadata().resource_version;
            if expected != 0 && actual != expected {
                return Err(ServiceError::Conflict {
                    kind: Self::kind(),
                    name: name.to_owned(),
                    expected,
                    actual,
                });
            }
            if !f(&mut obj)? {
                return Ok(obj);
            }
            match self.store.update(Self::encode(&obj)?).await {
                Ok(stored) => return Self::decode(stored),
                Err(corral_store::StoreError::Conflict { .. }) if expected == 0 => continue,
                Err(e) => return Err(ServiceError::from_store(Self::kind(), e)),
            }
        }
        Err(ServiceError::FailedPrecondition(format!(
            "{} {name:?} changed {CAS_RETRIES} times while being updated; try again",
            Self::kind()
        )))
    }

    /// Marks an object for deletion (its controller removes what it made, then the object).
    pub async fn mark_deleting(&self, name: &str) -> Result<T, ServiceError> {
        self.modify(name, 0, |obj| {
            let meta = obj.metadata_mut();
            let first = !meta.deleting;
            meta.deleting = true;
            Ok(first)
        })
        .await
    }

    /// Removes an object for good.
    pub async fn remove(&self, name: &str, resource_version: u64) -> Result<(), ServiceError> {
        self.store
            .delete(Self::kind(), name, Some(resource_version))
            .await
            .map(drop)
            .map_err(|e| ServiceError::from_store(Self::kind(), e))
    }

    /// Store events of this kind after `after` (decode with [`Objects::decode_event`]).
    pub async fn watch(&self, after: u64) -> Result<WatchStream, ServiceError> {
        self.store
            .watch(Some(Self::kind()), after)
            .await
            .map_err(|e| ServiceError::from_store(Self::kind(), e))
    }
}
