//! The etcd v3 store: the [`Store`] trait over a cluster, as the crate documentation maps it.
//!
//! Keys are `<prefix><kind>/<name>` (the prefix is `/corral/` by default), values are the
//! object's `uid`, `labels` and verbatim `body` as JSON. The object's `resource_version`
//! is the key's `mod_revision` and the store's revision is etcd's cluster revision, so
//! every compare-and-swap is a single `Txn` and watches resume from any revision etcd
//! has not compacted.
//!
//! A name may contain `/` (project-scoped names such as `team-a/web`): a kind's objects are
//! the keys under `<prefix><kind>/`, and kinds never contain `/`, so no kind's range
//! overlaps another's.

mod coord;
mod watcher;

pub use coord::EtcdCoordinator;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::MAX_TXN_OBJECTS;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KeyValue, KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch as signal;

use crate::{Object, Selector, Store, StoreError, WatchStream};

/// The key prefix under which [`EtcdStore`] keeps objects unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/corral/";

/// How to reach an etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members, such as `http://10.0.0.1:2379`. Requests are
    /// balanced over the members that answer.
    pub endpoints: Vec<String>,
    /// Every key this store writes starts with it; it must start and end with `/`. Two
    /// stores with different prefixes share a cluster without seeing each other's objects
    /// (but share its revision counter and its compaction).
    pub prefix: String,
    /// How long connecting to a member may take.
    pub connect_timeout: Duration,
    /// How many events each [`WatchStream`] buffers before its reader must catch up.
    pub stream_capacity: usize,
    /// How many objects one `Range` request of a list reads.
    pub list_page: usize,
    /// TLS to the members: needed for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// How long a watch keeps re-establishing itself (on another member) after its
    /// connection broke, before it reports the failure.
    pub watch_retry: Duration,
}

impl EtcdConfig {
    /// The default settings for a cluster reachable at `endpoints`.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(5),
            stream_capacity: 1024,
            list_page: 500,
            tls: None,
            watch_retry: Duration::from_secs(30),
        }
    }
}

/// TLS to etcd's client port, as PEM text.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA certificates that signed the members' certificates; the members' names (or
    /// IP addresses) in the endpoints must be in their certificates.
    pub ca: String,
    /// A client certificate chain and its private key, for an etcd that asks for one
    /// (`--client-cert-auth`).
    pub identity: Option<(String, String)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// Checks the endpoints and the prefix, naming the setting and what is allowed.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::InvalidConfig {
                field: "etcd endpoints",
                reason: "give at least one client URL, such as http://127.0.0.1:2379".into(),
            });
        }
        for endpoint in &self.endpoints {
            check_endpoint(endpoint, self.tls.is_some()).map_err(|reason| {
                StoreError::InvalidConfig {
                    field: "etcd endpoints",
                    reason: format!("{endpoint:?}: {reason}"),
                }
            })?;
        }
        let prefix_ok = self.prefix.len() > 1
            && self.prefix.starts_with('/')
            && self.prefix.ends_with('/')
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !prefix_ok {
            return Err(StoreError::InvalidConfig {
                field: "etcd key prefix",
                reason: format!(
                    "{:?}: must start and end with '/' and contain only ASCII letters, \
                     digits, '/', '-', '_' and '.', such as /corral/",
                    self.prefix
                ),
            });
        }
        Ok(())
    }
}

/// An endpoint is `http://HOST:PORT`, or `https://HOST:PORT` with TLS, nothing more (no
/// user, path or query). Either every endpoint uses TLS or none does.
fn check_endpoint(endpoint: &str, tls: bool) -> Result<(), String> {
    let authority = match (endpoint.split_once("://"), tls) {
        (Some(("https", rest)), true) => rest,
        (Some(("http", _)), true) => {
            return Err(
                "with TLS to etcd (a CA file), write the client URL as https://HOST:PORT".into(),
            );
        }
        (Some(("http", rest)), false) => rest,
        (Some(("https", _)), false) => {
            return Err(
                "an https:// endpoint needs the CA that signed etcd's certificates \
                 (--etcd-ca-file)"
                    .into(),
            );
        }
        _ => {
            return Err(format!(
                "write a client URL as {}://HOST:PORT",
                if tls { "https" } else { "http" }
            ));
        }
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err("name the port: SCHEME://HOST:PORT (etcd's client port is 2379)".into());
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("port {port:?} is not a TCP port (1-65535)"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return Err(format!(
            "host {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok(())
}

/// The value stored under an object's key. `body` stays a string: it is stored verbatim.
#[derive(Serialize, Deserialize)]
struct Value<'a> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    labels: BTreeMap<String, String>,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

/// A [`Store`] kept in an etcd v3 cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: EtcdConfig,
    /// Dropped with the last store handle: watch tasks see it close and end their streams.
    alive: signal::Sender<()>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.config.endpoints)
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

/// Maps an etcd client error, recognising the two revision errors the trait names.
fn etcd_err(operation: &'static str) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| StoreError::backend(operation, e)
}

/// Whether an etcd error says the requested revision was compacted away.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// Whether an etcd error says the requested revision is in the future.
fn is_future(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision is a future revision"))
}

/// Whether a request failed before it reached any member (connection refused or reset
/// while connecting): sending it again cannot apply it twice.
fn is_unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Whether an etcd error says the members are electing a leader.
fn is_electing(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::Unavailable
            && (s.message().contains("leader changed") || s.message().contains("no leader")))
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

/// A revision as etcd's signed type; ours never exceed `i64::MAX`.
fn signed(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn unsigned(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    ///
    /// Fails with [`StoreError::Backend`] naming the endpoints when none answers, and with
    /// [`StoreError::InvalidConfig`] when the configuration is unusable.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            let mut settings =
                TlsOptions::new().ca_certificate(Certificate::from_pem(tls.ca.as_bytes()));
            if let Some((cert, key)) = &tls.identity {
                settings = settings.identity(Identity::from_pem(cert.as_bytes(), key.as_bytes()));
            }
            options = options.with_tls(settings);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(etcd_err("connect to etcd"))?;
        let (alive, _) = signal::channel(());
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                config,
                alive,
            }),
        };
        // Fail now, naming the endpoints, rather than at the first request.
        let mut kv = store.inner.client.kv_client();
        tokio::time::timeout(
            store.inner.config.connect_timeout,
            kv.get(
                store.inner.config.prefix.as_bytes(),
                Some(GetOptions::new().with_count_only()),
            ),
        )
        .await
        .map_err(|_| {
            StoreError::backend(
                "reach etcd",
                format!(
                    "no answer from {} within {:?}",
                    store.inner.config.endpoints.join(","),
                    store.inner.config.connect_timeout
                ),
            )
        })?
        .map_err(etcd_err("reach etcd"))?;
        Ok(store)
    }

    /// The etcd client this store uses, for the leases and elections built on the same
    /// connection.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The configuration the store was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// Runs one KV request, sending it again while it fails before reaching a member
    /// (a killed member stays in the client's balancer until its reconnects fail), for up
    /// to the connect timeout.
    async fn kv<T, F, Fut>(&self, request: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.send(request, is_unsent).await
    }

    /// Like [`EtcdStore::kv`] for a read, which is also sent again while the members elect
    /// a leader (a killed leader's followers answer "leader changed" or "no leader" for a
    /// moment): reading twice changes nothing.
    async fn read<T, F, Fut>(&self, request: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.send(request, |e| is_unsent(e) || is_electing(e)).await
    }

    async fn send<T, F, Fut>(
        &self,
        mut request: F,
        again: impl Fn(&etcd_client::Error) -> bool,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.config.connect_timeout;
        loop {
            match request(self.inner.client.kv_client()).await {
                Err(e) if again(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "etcd request failed on the way; sending it again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.kv(|mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.inner.config.prefix)
    }

    fn kind_prefix(&self, kind: &str) -> String {
        format!("{}{kind}/", self.inner.config.prefix)
    }

    fn encode(obj: &Object) -> Result<String, StoreError> {
        serde_json::to_string(&Value {
            uid: Cow::Borrowed(&obj.uid),
            labels: obj.labels.clone(),
            body: Cow::Borrowed(&obj.body),
        })
        .map_err(|source| StoreError::Corrupt {
            what: format!("{} {:?}", obj.kind, obj.name),
            source,
        })
    }

    /// Decodes a stored key-value pair into `(kind, name)` and the object.
    fn decode(&self, kv: &KeyValue) -> Result<Object, StoreError> {
        decode(&self.inner.config.prefix, kv)
    }
}

pub(crate) fn decode(prefix: &str, kv: &KeyValue) -> Result<Object, StoreError> {
    const OP: &str = "read an object";
    let key = kv.key_str().map_err(etcd_err(OP))?;
    let (kind, name) = key
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| StoreError::backend(OP, format!("key {key:?} is not an object key")))?;
    let value: Value<'_> =
        serde_json::from_slice(kv.value()).map_err(|source| StoreError::Corrupt {
            what: format!("{kind} {name:?}"),
            source,
        })?;
    Ok(Object {
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: value.uid.into_owned(),
        labels: value.labels,
        resource_version: unsigned(kv.mod_revision()),
        body: value.body.into_owned(),
    })
}

/// The key-value pair of each `Range` in a transaction's responses, in order (`None` where
/// the key does not exist).
fn ranges(responses: Vec<TxnOpResponse>) -> Vec<Option<KeyValue>> {
    responses
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(mut get) => Some(get.take_kvs().into_iter().next()),
            _ => None,
        })
        .collect()
}

/// The key-value pair of the first `Range` in a transaction's responses.
fn first_range(responses: Vec<TxnOpResponse>) -> Option<KeyValue> {
    responses.into_iter().find_map(|r| match r {
        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
        _ => None,
    })
}

#[async_trait]
impl Store for EtcdStore {
    async fn create(&self, mut obj: Object) -> Result<Object, StoreError> {
        const OP: &str = "create an object";
        let key = self.key(&obj.kind, &obj.name);
        let value = Self::encode(&obj)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.txn(txn).await.map_err(etcd_err(OP))?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists {
                kind: obj.kind,
                name: obj.name,
            });
        }
        obj.resource_version = revision_of(response.header());
        Ok(obj)
    }

    async fn get(&self, kind: &str, name: &str) -> Result<Object, StoreError> {
        let key = self.key(kind, name);
        let mut response = self
            .read(|mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(etcd_err("read an object"))?;
        match response.take_kvs().first() {
            Some(kv) => self.decode(kv),
            None => Err(StoreError::NotFound {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    async fn list(
        &self,
        kind: &str,
        selector: &Selector,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        // Pages of one snapshot: the first Range fixes the revision, the others read at
        // it. Keys sort by name. Paging keeps each response well under gRPC's message
        // limit however many objects there are.
        let prefix = self.kind_prefix(kind);
        // The prefix ends in '/': the range ends just past it, at '0'.
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        let page = i64::try_from(self.inner.config.list_page.max(1)).unwrap_or(i64::MAX);
        let mut start = prefix.into_bytes();
        let mut revision = 0;
        let mut objects = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                options = options.with_revision(signed(revision));
            }
            let mut response = self
                .read(|mut kv| {
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await
                .map_err(etcd_err("list objects"))?;
            if revision == 0 {
                revision = revision_of(response.header());
            }
            let more = response.more();
            let kvs = response.take_kvs();
            if let Some(last) = kvs.last() {
                start = last.key().to_vec();
                start.push(0);
            }
            for kv in kvs {
                let obj = self.decode(&kv)?;
                if selector.matches(&obj.labels) {
                    objects.push(obj);
                }
            }
            if !more {
                break;
            }
        }
        Ok((objects, revision))
    }

    async fn update(&self, mut obj: Object) -> Result<Object, StoreError> {
        const OP: &str = "update an object";
        let key = self.key(&obj.kind, &obj.name);
        let expected = obj.resource_version;
        // The stored uid is kept: read it, then write only if the object is still the
        // version that was read (the read's version is the precondition, so the uid
        // cannot have changed in between).
        let current = self.get(&obj.kind, &obj.name).await?;
        if current.resource_version != expected {
            return Err(StoreError::Conflict {
                kind: obj.kind,
                name: obj.name,
                expected,
                actual: current.resource_version,
            });
        }
        obj.uid = current.uid;
        let value = Self::encode(&obj)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                signed(expected),
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await.map_err(etcd_err(OP))?;
        if !response.succeeded() {
            return Err(match first_range(response.op_responses()) {
                Some(kv) => StoreError::Conflict {
                    kind: obj.kind,
                    name: obj.name,
                    expected,
                    actual: unsigned(kv.mod_revision()),
                },
                None => StoreError::NotFound {
                    kind: obj.kind,
                    name: obj.name,
                },
            });
        }
        obj.resource_version = revision_of(response.header());
        Ok(obj)
    }

    async fn update_all(&self, mut objs: Vec<Object>) -> Result<Vec<Object>, StoreError> {
        const OP: &str = "update objects together";
        if objs.is_empty() {
            return Ok(objs);
        }
        if objs.len() > MAX_TXN_OBJECTS {
            return Err(StoreError::backend(
                OP,
                format!(
                    "{} objects in one transaction; at most {MAX_TXN_OBJECTS} may go together",
                    objs.len()
                ),
            ));
        }
        let keys: Vec<String> = objs.iter().map(|o| self.key(&o.kind, &o.name)).collect();
        let gets = || {
            keys.iter()
                .map(|k| TxnOp::get(k.clone(), None))
                .collect::<Vec<_>>()
        };
        // As `update`: the stored uids are kept, read first (all in one request); the write
        // is conditional on the versions read, so no uid can change in between.
        let read = self
            .txn(Txn::new().and_then(gets()))
            .await
            .map_err(etcd_err(OP))?;
        let mismatch = |obj: Object, kv: Option<&KeyValue>| match kv {
            Some(kv) => StoreError::Conflict {
                expected: obj.resource_version,
                actual: unsigned(kv.mod_revision()),
                kind: obj.kind,
                name: obj.name,
            },
            None => StoreError::NotFound {
                kind: obj.kind,
                name: obj.name,
            },
        };
        let current = ranges(read.op_responses());
        for (i, kv) in current.iter().enumerate() {
            match kv {
                Some(kv) if unsigned(kv.mod_revision()) == objs[i].resource_version => {
                    objs[i].uid = self.decode(kv)?.uid;
                }
                _ => return Err(mismatch(objs.swap_remove(i), kv.as_ref())),
            }
        }
        let compares: Vec<Compare> = keys
            .iter()
            .zip(&objs)
            .map(|(k, o)| {
                Compare::mod_revision(k.clone(), CompareOp::Equal, signed(o.resource_version))
            })
            .collect();
        let puts = keys
            .iter()
            .zip(&objs)
            .map(|(k, o)| Ok(TxnOp::put(k.clone(), Self::encode(o)?, None)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets());
        let response = self.txn(txn).await.map_err(etcd_err(OP))?;
        if !response.succeeded() {
            // Written in between: name the first object that moved on.
            let now = ranges(response.op_responses());
            let i = objs
                .iter()
                .zip(&now)
                .position(|(o, kv)| {
                    kv.as_ref().map(|kv| unsigned(kv.mod_revision())) != Some(o.resource_version)
                })
                .unwrap_or(0);
            return Err(mismatch(objs.swap_remove(i), now[i].as_ref()));
        }
        let revision = revision_of(response.header());
        for obj in &mut objs {
            obj.resource_version = revision;
        }
        Ok(objs)
    }

    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<Object, StoreError> {
        const OP: &str = "delete an object";
        let key = self.key(kind, name);
        let delete = TxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key()));
        let txn = match expected_version {
            Some(version) => Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    signed(version),
                )])
                .and_then([delete])
                .or_else([TxnOp::get(key, None)]),
            None => Txn::new().and_then([delete]),
        };
        let response = self.txn(txn).await.map_err(etcd_err(OP))?;
        let not_found = || StoreError::NotFound {
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        if !response.succeeded() {
            return Err(match first_range(response.op_responses()) {
                Some(kv) => StoreError::Conflict {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    expected: expected_version.unwrap_or(0),
                    actual: unsigned(kv.mod_revision()),
                },
                None => not_found(),
            });
        }
        let deleted = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(mut d) => d.take_prev_kvs().into_iter().next(),
            _ => None,
        });
        match deleted {
            Some(kv) => self.decode(&kv),
            None => Err(not_found()),
        }
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let prefix = self.inner.config.prefix.clone();
        let response = self
            .read(|mut kv| {
                let prefix = prefix.clone();
                async move {
                    kv.get(prefix, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(etcd_err("read the revision"))?;
        Ok(revision_of(response.header()))
    }

    async fn watch(&self, kind: Option<&str>, after: u64) -> Result<WatchStream, StoreError> {
        let prefix = match kind {
            Some(kind) => self.kind_prefix(kind),
            None => self.inner.config.prefix.clone(),
        };
        watcher::start(self, prefix, after).await
    }

    async fn compact(&self, keep_after: u64) -> Result<(), StoreError> {
        const OP: &str = "compact the history";
        let current = self.revision().await?;
        if keep_after > current {
            return Err(StoreError::FutureRevision {
                requested: keep_after,
                current,
            });
        }
        // etcd keeps the revisions at or above the compaction point and cannot compact
        // past its head: up to the head, the head's own event stays watchable.
        let point = (keep_after + 1).min(current);
        if point == 0 {
            return Ok(());
        }
        match self
            .kv(|mut kv| async move { kv.compact(signed(point), None).await })
            .await
        {
            Ok(_) => Ok(()),
            // Compacting at or below the current compaction point does nothing.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => Err(StoreError::FutureRevision {
                requested: keep_after,
                current,
            }),
            Err(e) => Err(StoreError::backend(OP, e)),
        }
    }
}
