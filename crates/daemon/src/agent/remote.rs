//! The store as an agent sees it: every call goes to a server's node-scoped store routes
//! (`/v1/nodes/<node>/store`), authenticated by the node certificate, so the node's controllers
//! run unchanged over it while the agent holds no store credentials.

use std::time::Duration;

use async_trait::async_trait;
use corral_service::{StoreAnswer, StoreCall, WireError, WireObject, event_of};
use corral_store::{Object, Selector, Store, StoreError, WatchEvent, WatchStream};
use futures_util::StreamExt;

/// How long one store call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`Store`] over a server's node-scoped store routes.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    client: reqwest::Client,
    url: String,
}

fn unexpected(answer: &StoreAnswer) -> StoreError {
    StoreError::backend(
        "read the server's answer",
        format!("an answer of another shape: {answer:?}"),
    )
}

impl RemoteStore {
    /// The store of node `node` at `server` (`https://host:port`), through `client` (which
    /// presents the node certificate).
    pub fn new(client: reqwest::Client, server: &str, node: &str) -> Self {
        RemoteStore {
            client,
            url: format!("{server}/v1/nodes/{node}/store"),
        }
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
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .timeout(CALL_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(|e| StoreError::backend("reach the server", e))?;
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
            .client
            .get(format!("{}/watch", self.url))
            .query(&query)
            .send()
            .await
            .map_err(|e| StoreError::backend("reach the server", e))?;
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
