//! The store as an agent sees it: every call goes to a server's node-scoped store routes
//! (`/v1/nodes/<node>/store`), authenticated by the node certificate, so the node's controllers
//! run unchanged over it while the agent holds no store credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use corral_service::{StoreAnswer, StoreCall, WireError, WireObject, event_of};
use corral_store::{Object, Selector, Store, StoreError, WatchEvent, WatchStream};
use futures_util::StreamExt;

/// How long one store call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`Store`] over the servers' node-scoped store routes.
///
/// It talks to one server at a time. When that server cannot be reached it moves on to the
/// next: a read is asked again there at once; a write is asked again only if it never left
/// (the connection was refused), since one that timed out may have been carried out, and a
/// write repeated blindly could apply twice. Its caller sees the error and tries again later,
/// by then against the next server.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    client: reqwest::Client,
    /// The node-scoped store URL on each server.
    urls: Arc<[String]>,
    /// Which of `urls` to ask first.
    current: Arc<AtomicUsize>,
    /// Which of `urls` answered last (`usize::MAX`: none yet).
    answered: Arc<AtomicUsize>,
}

fn unexpected(answer: &StoreAnswer) -> StoreError {
    StoreError::backend(
        "read the server's answer",
        format!("an answer of another shape: {answer:?}"),
    )
}

/// Whether a store call only reads, so that asking another server again is always safe.
fn reads_only(call: &StoreCall) -> bool {
    matches!(
        call,
        StoreCall::Get { .. } | StoreCall::List { .. } | StoreCall::Revision
    )
}

impl RemoteStore {
    /// The store of node `node` at `servers` (`https://host:port` each; the first is tried
    /// first), through `client` (which presents the node certificate).
    pub fn new(client: reqwest::Client, servers: &[String], node: &str) -> Self {
        assert!(!servers.is_empty(), "an agent has at least one server");
        RemoteStore {
            client,
            urls: servers
                .iter()
                .map(|server| format!("{server}/v1/nodes/{node}/store"))
                .collect(),
            current: Arc::new(AtomicUsize::new(0)),
            answered: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    /// Sends the request `build` makes for a server's store URL to the current server, and on
    /// to the next ones while they cannot be reached and `again` allows it.
    async fn send(
        &self,
        again: bool,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        let first = self.current.load(Ordering::Relaxed) % self.urls.len();
        let mut last = None;
        for step in 0..self.urls.len() {
            let at = (first + step) % self.urls.len();
            let url = &self.urls[at];
            match build(url).send().await {
                Ok(response) => {
                    self.current.store(at, Ordering::Relaxed);
                    let before = self.answered.swap(at, Ordering::Relaxed);
                    if before != at && before != usize::MAX {
                        tracing::info!(server = %url, "reporting to this server now");
                    }
                    return Ok(response);
                }
                Err(e) => {
                    tracing::warn!(server = %url, error = %e, "cannot reach the server");
                    // The next call starts from the next server either way.
                    self.current
                        .store((at + 1) % self.urls.len(), Ordering::Relaxed);
                    let unsent = e.is_connect();
                    last = Some(e);
                    if !(again || unsent) {
                        break;
                    }
                }
            }
        }
        Err(StoreError::backend(
            "reach a server",
            last.map_or_else(|| "no server".to_owned(), |e| e.to_string()),
        ))
    }

    async fn call(&self, call: StoreCall) -> Result<StoreAnswer, StoreError> {
        self.answer(call).await?.map_err(Into::into)
    }

    /// The server's answer to `call`: `Err` if it could not be had, `Ok(Err)` if the server
    /// (or the store behind it) refused.
    async fn answer(&self, call: StoreCall) -> Result<Result<StoreAnswer, WireError>, StoreError> {
        let body =
            serde_json::to_vec(&call).map_err(|e| StoreError::backend("encode a store call", e))?;
        let response = self
            .send(reads_only(&call), |url| {
                self.client
                    .post(url)
                    .header("content-type", "application/json")
                    .timeout(CALL_TIMEOUT)
                    .body(body.clone())
            })
            .await?;
        let answer = super::read_answer(response)
            .await
            .map_err(|e| StoreError::backend("ask the server", format!("{e:#}")))?;
        Ok(
            match serde_json::from_slice(&answer)
                .map_err(|e| StoreError::backend("read the server's answer", e))?
            {
                StoreAnswer::Error(e) => Err(e),
                answer => Ok(answer),
            },
        )
    }

    async fn one(&self, call: StoreCall) -> Result<Object, StoreError> {
        match self.call(call).await? {
            StoreAnswer::Object(o) => Ok(o.into()),
            other => Err(unexpected(&other)),
        }
    }
}

#[async_trait]
impl Store for RemoteStore {
    async fn create(&self, obj: Object) -> Result<Object, StoreError> {
        self.one(StoreCall::Create {
            object: WireObject::from(obj),
        })
        .await
    }

    /// Agents write their own objects one at a time; the node scope has no batch.
    async fn update_all(&self, _objs: Vec<Object>) -> Result<Vec<Object>, StoreError> {
        Err(StoreError::backend(
            "update objects together",
            "a node writes through its server one object at a time",
        ))
    }

    async fn get(&self, kind: &str, name: &str) -> Result<Object, StoreError> {
        let call = StoreCall::Get {
            kind: kind.into(),
            name: name.into(),
        };
        match self.answer(call).await? {
            Ok(StoreAnswer::Object(o)) => Ok(o.into()),
            // A VM that moved to another node (a live migration's source after the switch)
            // is, as far as this node is concerned, gone.
            Err(WireError::PermissionDenied { .. }) if kind == "Vm" => Err(StoreError::NotFound {
                kind: kind.into(),
                name: name.into(),
            }),
            Err(e) => Err(e.into()),
            Ok(other) => Err(unexpected(&other)),
        }
    }

    async fn list(
        &self,
        kind: &str,
        selector: &Selector,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        let call = StoreCall::List {
            kind: kind.into(),
            selector: selector.to_string(),
        };
        match self.call(call).await? {
            StoreAnswer::List { items, revision } => {
                Ok((items.into_iter().map(Into::into).collect(), revision))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn update(&self, obj: Object) -> Result<Object, StoreError> {
        self.one(StoreCall::Update {
            object: WireObject::from(obj),
        })
        .await
    }

    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<Object, StoreError> {
        self.one(StoreCall::Delete {
            kind: kind.into(),
            name: name.into(),
            expected_version,
        })
        .await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        match self.call(StoreCall::Revision).await? {
            StoreAnswer::Revision(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn watch(&self, kind: Option<&str>, after: u64) -> Result<WatchStream, StoreError> {
        let mut query = vec![("after", after.to_string())];
        if let Some(kind) = kind {
            query.push(("kind", kind.to_owned()));
        }
        let response = self
            .send(true, |url| {
                self.client.get(format!("{url}/watch")).query(&query)
            })
            .await?;
        if !response.status().is_success() {
            let e = super::read_answer(response).await.err();
            return Err(StoreError::backend(
                "watch through the server",
                format!("{e:?}"),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut bytes = response.bytes_stream();
        tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let chunk = match bytes.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        let _ = tx
                            .send(Err(StoreError::backend("watch through the server", e)))
                            .await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Err(StoreError::backend(
                                "watch through the server",
                                "the server ended the watch",
                            )))
                            .await;
                        return;
                    }
                };
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let item = match serde_json::from_slice::<StoreAnswer>(&line) {
                        Ok(StoreAnswer::Event {
                            revision,
                            event,
                            object,
                        }) => match event_of(&event) {
                            Some(event) => Ok(WatchEvent {
                                revision,
                                event,
                                object: object.into(),
                            }),
                            None => Err(StoreError::backend(
                                "read a watch event",
                                format!("unknown event {event:?}"),
                            )),
                        },
                        Ok(StoreAnswer::Error(e)) => Err(e.into()),
                        Ok(other) => Err(unexpected(&other)),
                        Err(e) => Err(StoreError::backend("read a watch event", e)),
                    };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        Ok(WatchStream::new(rx))
    }

    async fn compact(&self, _keep_after: u64) -> Result<(), StoreError> {
        Err(StoreError::backend(
            "compact",
            "agents do not compact the cluster's store",
        ))
    }
}
