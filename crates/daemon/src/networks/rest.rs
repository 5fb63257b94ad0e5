//! `/v1/networks`: decode, call the network service, encode.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode};
use corral_contract::Resource;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::json::{ListQuery, one, resource, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::auth::Caller;
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Read, Write};
    vec![
        Route::new(Method::GET, "/v1/networks", Read, "listNetworks", list),
        Route::new(Method::POST, "/v1/networks", Write, "createNetwork", create),
        Route::new(Method::GET, "/v1/networks/{name}", Read, "getNetwork", read),
        Route::new(
            Method::DELETE,
            "/v1/networks/{name}",
            Write,
            "deleteNetwork",
            delete,
        ),
    ]
}

async fn list(
    State(d): State<Shared>,
    scope: Scope,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.networks, &scope.listed, &q, &headers).await
}

async fn create(
    State(d): State<Shared>,
    Extension(caller): Extension<Caller>,
    scope: Scope,
    body: Bytes,
) -> ApiResult {
    let Resource::Network(mut net) = resource(&body)? else {
        return Err(wrong_kind("Network"));
    };
    scope.place(&mut net)?;
    let created = d.networks.create_as(net, caller.host_access()).await?;
    Ok(one(created, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.networks.get(&scope.key(&name)).await?,
        StatusCode::OK,
    ))
}

async fn delete(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    Ok(one(
        d.networks.delete(&scope.key(&name), None).await?,
        StatusCode::OK,
    ))
}
