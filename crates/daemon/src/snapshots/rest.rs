//! `/v1/snapshots`: decode, call the storage service, encode.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use corral_contract::Resource;
use serde::Deserialize;

use crate::api::Scope;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{ListQuery, many, one, resource, wrong_kind};
use crate::api::watch::{list_or_watch, resume_from};
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/snapshots", Read, "listSnapshots", list),
        Route::new(
            Method::POST,
            "/v1/snapshots",
            Write,
            "createSnapshot",
            create,
        ),
        Route::new(
            Method::GET,
            "/v1/snapshots/{name}",
            Read,
            "getSnapshot",
            read,
        ),
        Route::new(
            Method::DELETE,
            "/v1/snapshots/{name}",
            Write,
            "deleteSnapshot",
            delete,
        ),
        Route::new(
            Method::POST,
            "/v1/snapshots/{name}/restore",
            Write,
            "restoreSnapshot",
            restore,
        ),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SnapshotQuery {
    #[serde(default)]
    vm: Option<String>,
    #[serde(default)]
    watch: bool,
    resource_version: Option<u64>,
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<SnapshotQuery>,
    headers: HeaderMap,
) -> ApiResult {
    if q.watch {
        if q.vm.is_some() {
            return Err(ApiError::invalid(
                "vm: not supported with watch=true; watch all and filter on spec.vm",
            ));
        }
        let watch = ListQuery {
            label_selector: String::new(),
            watch: true,
            resource_version: q.resource_version,
        };
        return list_or_watch(&d.storage.snapshots, &scope.listed, &watch, &headers).await;
    }
    resume_from(q.resource_version, &headers)?;
    let vm = q.vm.as_deref().map(|vm| scope.key(vm));
    let snaps = d
        .storage
        .list_snapshots(vm.as_deref(), &scope.listed)
        .await?;
    Ok(many(snaps, None))
}

async fn create(State(d): State<Shared>, scope: Scope, body: Bytes) -> ApiResult {
    let Resource::Snapshot(mut snap) = resource(&body)? else {
        return Err(wrong_kind("Snapshot"));
    };
    scope.place(&mut snap)?;
    let snap = d.storage.create_snapshot(snap).await?;
    Ok(one(snap, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.storage.snapshots.get(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn delete(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let snap = d.storage.delete_snapshot(&scope.key(&name)).await?;
    Ok(one(snap, StatusCode::ACCEPTED))
}

async fn restore(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let snap = d.storage.restore_snapshot(&scope.key(&name)).await?;
    Ok(one(snap, StatusCode::ACCEPTED))
}
