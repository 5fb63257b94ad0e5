//! `/v1/vms`: decode, call the VM service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use corral_contract::{Power, Resource};
use serde::Deserialize;

use crate::api::Scope;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{ListQuery, name_mismatch, one, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::auth::{Caller, host_access};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/vms", Read, "listVms", list),
        Route::new(Method::POST, "/v1/vms", Write, "createVm", create),
        Route::new(Method::GET, "/v1/vms/{name}", Read, "getVm", read),
        Route::new(Method::PUT, "/v1/vms/{name}", Write, "updateVm", update),
        Route::new(Method::DELETE, "/v1/vms/{name}", Write, "deleteVm", delete),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/start",
            Write,
            "startVm",
            start,
        ),
        Route::new(Method::POST, "/v1/vms/{name}/stop", Write, "stopVm", stop),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/pause",
            Write,
            "pauseVm",
            pause,
        ),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/resume",
            Write,
            "resumeVm",
            resume,
        ),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/restart",
            Write,
            "restartVm",
            restart,
        ),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/migrate",
            Write,
            "migrateVm",
            migrate,
        ),
        Route::new(
            Method::POST,
            "/v1/vms/{name}/migrate/cancel",
            Write,
            "cancelVmMigration",
            cancel_migration,
        ),
        Route::new(
            Method::GET,
            "/v1/vms/{name}/metrics/history",
            Read,
            "getVmMetricsHistory",
            history,
        ),
    ]
}

fn vm(body: &[u8]) -> Result<corral_contract::Vm, ApiError> {
    // A VM's validation errors already name their field (`spec.cpus: …`).
    let resource: Resource =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(e.to_string()))?;
    resource.into_vm().ok_or_else(|| wrong_kind("Vm"))
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.vms, &scope.listed, &q, &headers).await
}

async fn create(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    body: Bytes,
) -> ApiResult {
    let access = host_access(caller.as_deref());
    let mut vm = vm(&body)?;
    scope.place(&mut vm)?;
    Ok(one(d.vms.create_as(vm, access).await?, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.vms.get(&scope.key(&name)).await?, StatusCode::OK))
}

async fn update(
    State(d): State<Shared>,
    caller: Option<Extension<Caller>>,
    scope: Scope,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut vm = vm(&body)?;
    if vm.metadata.name.as_str() != name {
        return Err(name_mismatch(vm.metadata.name.as_str(), &name));
    }
    scope.place(&mut vm)?;
    let access = host_access(caller.as_deref());
    Ok(one(d.vms.update_as(vm, access).await?, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteQuery {
    resource_version: Option<u64>,
    /// Skip the graceful stop.
    #[serde(default)]
    force: bool,
    /// Seconds the guest gets to shut down.
    grace: Option<u32>,
}

async fn delete(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult {
    let grace = if q.force { Some(0) } else { q.grace };
    let vm = d
        .vms
        .delete_with_grace(&scope.key(&name), q.resource_version, grace)
        .await?;
    Ok(one(vm, StatusCode::ACCEPTED))
}

async fn start(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let vm = d
        .vms
        .set_power(&scope.key(&name), Power::Running, false)
        .await?;
    Ok(one(vm, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    #[serde(default)]
    force: bool,
}

async fn stop(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult {
    let vm = d
        .vms
        .set_power(&scope.key(&name), Power::Stopped, q.force)
        .await?;
    Ok(one(vm, StatusCode::OK))
}

async fn pause(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let vm = d
        .vms
        .set_power(&scope.key(&name), Power::Paused, false)
        .await?;
    Ok(one(vm, StatusCode::OK))
}

async fn resume(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let vm = d
        .vms
        .set_power(&scope.key(&name), Power::Running, false)
        .await?;
    Ok(one(vm, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateQuery {
    /// The node to move to; left out, the scheduler picks.
    to: Option<String>,
    /// QEMU slows the vCPUs down when the migration does not converge.
    #[serde(default)]
    auto_converge: bool,
    /// Post-copy after the first pass of RAM.
    #[serde(default)]
    postcopy: bool,
    /// At most this many bytes a second for this move (`8M`, `100MiB`, or bytes).
    bandwidth: Option<corral_contract::ByteSize>,
}

async fn migrate(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<MigrateQuery>,
) -> ApiResult {
    let to = super::grpc::migration_target(q.to.as_deref())?;
    let options = corral_contract::MigrationOptions {
        auto_converge: q.auto_converge,
        postcopy: q.postcopy,
        bandwidth: q.bandwidth.map(|b| b.as_u64()).filter(|b| *b > 0),
    };
    Ok(one(
        d.vms
            .migrate(&scope.key(&name), to.as_ref(), options)
            .await?,
        StatusCode::OK,
    ))
}

async fn cancel_migration(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
) -> ApiResult {
    Ok(one(
        d.vms.cancel_migration(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn restart(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.vms.restart(&scope.key(&name)).await?, StatusCode::OK))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Only samples taken after this time (seconds since the epoch).
    #[serde(default)]
    since: u64,
}

/// The VM's CPU and memory samples, oldest first.
#[derive(Debug, serde::Serialize)]
struct HistoryBody {
    interval_seconds: u64,
    capacity: usize,
    samples: Vec<super::history::Sample>,
}

async fn history(
    State(d): State<Shared>,
    scope: Scope,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult {
    let vm = d.vms.get(&scope.key(&name)).await?;
    let body = HistoryBody {
        interval_seconds: super::history::INTERVAL.as_secs(),
        capacity: super::history::CAPACITY,
        samples: d.history.samples(&vm.metadata.uid, q.since),
    };
    Ok(axum::Json(body).into_response())
}
