//! `/v1/nodes`: decode, call the node service, encode. Nodes belong to no project; everyone
//! reads them, admins cordon and drain them.

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};

use crate::api::error::ApiResult;
use corral_service::Projects;

use crate::api::json::{ListQuery, one};
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Admin, Read};
    vec![
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
