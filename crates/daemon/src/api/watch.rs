//! REST watch: `GET /v1/<kind>?watch=true[&resourceVersion=N]` answers with Server-Sent Events,
//! one per change, each `id:` its store revision, so a client (a browser's `EventSource`)
//! resumes where it stopped — the `Last-Event-ID` header it sends on reconnecting wins over the
//! URL's `resourceVersion`. Without a revision the stream starts with the current objects as
//! `ADDED` and a `BOOKMARK` carrying the list's revision. Events go through the service's
//! project-filtered watch, exactly as the gRPC watch's do.
//!
//! Every event's data is JSON: `{"type":"ADDED"|"MODIFIED"|"DELETED","revision":N,
//! "object":{…}}`, `{"type":"BOOKMARK","revision":N}`, or, as the stream's last,
//! `{"type":"ERROR","code":"Gone"|…,"message":…}`. History compacted past the revision asked
//! for is a 410 `Gone` (or that last event): list again and watch from the list's revision.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use corral_contract::Resource;
use corral_service::{EventType, Projects, Resources, ServiceError, Strategy};
use corral_store::StoreError;
use futures_util::{Stream, StreamExt, stream};
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::json::{ListQuery, many};

/// How often an idle stream sends a comment line, so proxies and the client's network stack
/// see it alive, and a dead client is found out.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The header a reconnecting `EventSource` names its last event's id in.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// Answers a list request: the list, or with `watch=true` its stream of changes.
pub async fn list_or_watch<S: Strategy>(
    resources: &Resources<S>,
    listed: &Projects,
    q: &ListQuery,
    headers: &HeaderMap,
) -> ApiResult
where
    S::Object: Into<Resource>,
{
    // Checked for lists too: a malformed header is an error wherever it is sent.
    let after = resume_from(q.resource_version, headers)?;
    if !q.watch {
        // A list is always of the newest revision: a revision asks nothing of it.
        let (items, revision) = resources.list_in(&q.label_selector, listed).await?;
        return Ok(many(items, Some(revision)));
    }
    if !q.label_selector.is_empty() {
        return Err(ApiError::invalid(
            "labelSelector: not supported with watch=true; watch all and filter the events",
        ));
    }
    Ok(watch(resources, listed.clone(), after)
        .await?
        .into_response())
}

/// The revision to watch after: `Last-Event-ID` when the client sends one, else the query's.
pub fn resume_from(query: Option<u64>, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(id) = headers.get(LAST_EVENT_ID) else {
        return Ok(query);
    };
    // (An EventSource that saw no id sends no header: an empty one is malformed too.)
    let text = id.to_str().unwrap_or_default().trim();
    text.parse().map(Some).map_err(|_| {
        ApiError::invalid(format!(
            "Last-Event-ID: {text:?} is not a revision (a non-negative integer)"
        ))
    })
}

/// The SSE stream of `resources` in `listed`, after revision `after` (`None`: the current
/// objects first).
async fn watch<S: Strategy>(
    resources: &Resources<S>,
    listed: Projects,
    after: Option<u64>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<S>>, ApiError>
where
    S::Object: Into<Resource>,
{
    let (initial, after) = match after {
        Some(after) => (Vec::new(), after),
        None => {
            let (items, revision) = resources.list_in("", &listed).await?;
            let mut events: Vec<SseEvent> = items
                .into_iter()
                .map(|o| data(json!({"type": "ADDED", "revision": revision, "object": o.into()})))
                .collect();
            events.push(
                data(json!({"type": "BOOKMARK", "revision": revision})).id(revision.to_string()),
            );
            (events, revision)
        }
    };
    let watch = resources
        .watch_in(None, after, listed)
        .await
        .map_err(gone)?;
    let changes = stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.recv().await? {
            Ok(e) => {
                let kind = match e.event {
                    EventType::Added => "ADDED",
                    EventType::Modified => "MODIFIED",
                    EventType::Deleted => "DELETED",
                };
                let body = json!({"type": kind, "revision": e.revision, "object": e.object.into()});
                Some((data(body).id(e.revision.to_string()), Some(watch)))
            }
            // The stream's last event says why it ends.
            Err(err) => {
                let err = gone(err);
                let body = json!({"type": "ERROR", "code": err.code(), "message": err.message()});
                Some((data(body), None))
            }
        }
    });
    let events = stream::iter(initial).chain(changes).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)))
}

fn data(body: serde_json::Value) -> SseEvent {
    SseEvent::default().data(body.to_string())
}

/// A watch error: compacted history is a 410 telling the client to list again.
fn gone(err: ServiceError) -> ApiError {
    match err {
        ServiceError::Store(e @ StoreError::Compacted { .. }) => {
            ApiError::new(StatusCode::GONE, "Gone", e.to_string())
        }
        other => other.into(),
    }
}
