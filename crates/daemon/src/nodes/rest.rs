//! `/v1/nodes`: decode, call the node service, encode. Nodes belong to no project; everyone
//! reads them, admins cordon and drain them.

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use corral_contract::ValidationError;
use serde::Deserialize;

use crate::api::error::ApiResult;
use corral_service::Projects;

use crate::api::json::{ListQuery, one};
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Admin, Node, Open, Read};
    vec![
        Route::new(
            Method::POST,
            "/v1/nodes/join-tokens",
            Admin,
            "createJoinToken",
            create_join_token,
        ),
        // Open: the agent has no credential yet; the token in the body is the credential.
        Route::new(Method::POST, "/v1/nodes/join", Open, "joinNode", join),
        Route::new(
            Method::POST,
            "/v1/nodes/{name}/store",
            Node,
            "callNodeStore",
            store_call,
        ),
        Route::new(
            Method::GET,
            "/v1/nodes/{name}/store/watch",
            Node,
            "watchNodeStore",
            store_watch,
        ),
        Route::new(
            Method::GET,
            "/v1/nodes/{name}/blobs/{digest}",
            Node,
            "fetchNodeBlob",
            fetch_blob,
        ),
        Route::new(Method::GET, "/v1/nodes", Read, "listNodes", list),
        Route::new(Method::GET, "/v1/nodes/{name}", Read, "getNode", read),
        Route::new(
            Method::POST,
            "/v1/nodes/{name}/cordon",
            Admin,
            "cordonNode",
            cordon,
        ),
        Route::new(
            Method::POST,
            "/v1/nodes/{name}/uncordon",
            Admin,
            "uncordonNode",
            uncordon,
        ),
        Route::new(
            Method::POST,
            "/v1/nodes/{name}/drain",
            Admin,
            "drainNode",
            drain,
        ),
    ]
}

/// Every node (nodes are in no project), or with `watch=true` their changes: the shared list
/// and watch, so the query and `Last-Event-ID` are checked as on every other kind.
async fn list(
    State(d): State<Shared>,
    Query(q): Query<ListQuery>,
    headers: axum::http::HeaderMap,
) -> ApiResult {
    crate::api::watch::list_or_watch(&d.nodes, &Projects::All, &q, &headers).await
}

async fn read(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.nodes.get(&name).await?, StatusCode::OK))
}

async fn cordon(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.nodes.cordon(&name, true).await?, StatusCode::OK))
}

async fn uncordon(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.nodes.cordon(&name, false).await?, StatusCode::OK))
}

/// Cordons the node and asks its agent to give back its VMs; they move once stopped there.
async fn drain(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    let (node, _) = d.nodes.drain(&name, &d.vms).await?;
    Ok(one(node, StatusCode::OK))
}

/// The body of `POST /v1/nodes/join-tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    /// How long the token is accepted, e.g. `1h` [default: 1h].
    #[serde(default)]
    ttl: Option<String>,
    /// The only node it may join.
    #[serde(default)]
    node: Option<String>,
}

/// The body of `POST /v1/nodes/join`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    token: String,
    node: String,
    csr: String,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::api::error::ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| corral_service::ServiceError::Invalid(ValidationError::new("body", e)).into())
}

/// A join token's lifetime from its text (empty: an hour).
pub(super) fn join_token_ttl(
    text: &str,
) -> Result<std::time::Duration, corral_service::ServiceError> {
    if text.is_empty() {
        return Ok(std::time::Duration::from_secs(3600));
    }
    humantime::parse_duration(text).map_err(|e| {
        corral_service::ServiceError::Invalid(ValidationError::new(
            "ttl",
            format!("{text:?} is not a duration such as 30m or 1h ({e})"),
        ))
    })
}

/// Mints a single-use join token (admin only); it is shown only in this answer.
async fn create_join_token(State(d): State<Shared>, bytes: Bytes) -> ApiResult {
    let req: TokenRequest = if bytes.is_empty() {
        TokenRequest::default()
    } else {
        body(&bytes)?
    };
    let ttl = join_token_ttl(req.ttl.as_deref().unwrap_or_default())?;
    let token = d.joins.mint(ttl, req.node.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(token)).into_response())
}

/// An agent's first contact: its join token and a certificate signing request for a key it
/// keeps; answers its node certificate and the cluster CA.
async fn join(State(d): State<Shared>, bytes: Bytes) -> ApiResult {
    let req: JoinRequest = body(&bytes)?;
    let joined = d.joins.join(&req.token, &req.node, &req.csr).await;
    let outcome = if joined.is_ok() { "ok" } else { "denied" };
    let reason = joined.as_ref().err().map(ToString::to_string);
    d.audit.record(&corral_service::AuditEntry {
        identity: &format!("node:{}", req.node),
        verb: "join",
        kind: Some("Node"),
        name: &req.node,
        outcome,
        reason: reason.as_deref(),
        ..corral_service::AuditEntry::default()
    });
    Ok(axum::Json(joined?).into_response())
}

/// The node `name` the caller acts for: a node certificate only its own.
fn acting_for(
    caller: &crate::auth::Caller,
    name: &str,
) -> Result<(), corral_service::ServiceError> {
    if caller.node.as_ref().is_some_and(|own| own != name) {
        return Err(corral_service::ServiceError::PermissionDenied {
            what: format!("{caller} may not act for node {name:?}"),
            remedy: "a node certificate acts only for the node it names",
        });
    }
    Ok(())
}

/// One store call of node `name`'s agent, within what a node may see and change.
async fn store_call(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Extension(caller): Extension<crate::auth::Caller>,
    bytes: Bytes,
) -> ApiResult {
    acting_for(&caller, &name)?;
    let call: corral_service::StoreCall = body(&bytes)?;
    let answer = corral_service::NodeScope::new(d.store.clone(), name)
        .call(call)
        .await;
    Ok(axum::Json(answer).into_response())
}

/// The bytes of image blob `digest` (BLAKE3, hex) for node `name`'s agent: only of an image
/// one of its volumes clones. The agent checks the digest of what it receives.
async fn fetch_blob(
    State(d): State<Shared>,
    Path((name, digest)): Path<(String, String)>,
    Extension(caller): Extension<crate::auth::Caller>,
) -> ApiResult {
    use tokio::io::AsyncReadExt;
    acting_for(&caller, &name)?;
    if digest.parse::<corral_storage::Digest>().is_err() {
        return Err(corral_service::ServiceError::Invalid(ValidationError::new(
            "digest",
            format!("{digest:?} is not a BLAKE3 digest: use 64 hex digits (blake3: before them may stay)"),
        ))
        .into());
    }
    let path = d.storage.blob_path(&digest)?;
    if let Err(e) = corral_service::NodeScope::new(d.store.clone(), name.clone())
        .may_fetch_blob(&digest)
        .await
    {
        let what = match e {
            corral_service::WireError::PermissionDenied { message } => message,
            other => format!("{other:?}"),
        };
        return Err(corral_service::ServiceError::PermissionDenied {
            what,
            remedy: "a node fetches an image once a volume on it clones that image",
        }
        .into());
    }
    let file =
        tokio::fs::File::open(&path)
            .await
            .map_err(|_| corral_service::ServiceError::NotFound {
                kind: "blob",
                name: digest.clone(),
            })?;
    let length = file.metadata().await.map(|m| m.len()).ok();
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 256 << 10];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = axum::body::Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(length) = length {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, length.into());
    }
    Ok(response)
}

/// `?kind=&after=` of a node's watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    kind: Option<String>,
    /// Required: an agent always knows the revision it follows from.
    after: u64,
}

/// The changes node `name`'s agent may see, one JSON answer per line.
async fn store_watch(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<WatchQuery>,
    Extension(caller): Extension<crate::auth::Caller>,
) -> ApiResult {
    use corral_service::{StoreAnswer, WireError};
    acting_for(&caller, &name)?;
    // A stream for a node that is not (yet) registered would never carry anything.
    d.nodes.get(&name).await?;
    let scope = corral_service::NodeScope::new(d.store.clone(), name);
    use futures_util::StreamExt;
    let lines = match scope.watch(q.kind.as_deref(), q.after).await {
        Ok(stream) => stream
            .map(|event| match event {
                Ok(e) => StoreAnswer::Event {
                    revision: e.revision,
                    event: corral_service::event_name(e.event).to_owned(),
                    object: e.object.into(),
                },
                Err(e) => StoreAnswer::Error(WireError::from(e)),
            })
            .boxed(),
        Err(e) => futures_util::stream::iter([StoreAnswer::Error(e)]).boxed(),
    };
    let body = lines.map(|answer| {
        let mut line = serde_json::to_vec(&answer).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
