//! `/v1/projects`: decode, call the project service, encode.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{Method, StatusCode};
use corral_contract::Resource;
use corral_service::Projects;

use crate::api::error::ApiResult;
use crate::api::json::{ListQuery, name_mismatch, one, resource, wrong_kind};
use crate::api::watch::list_or_watch;
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    use Permission::{Admin, Read};
    vec![
        Route::new(Method::GET, "/v1/projects", Read, "listProjects", list),
        Route::new(Method::POST, "/v1/projects", Admin, "createProject", create),
        Route::new(Method::GET, "/v1/projects/{name}", Read, "getProject", read),
        Route::new(
            Method::PUT,
            "/v1/projects/{name}",
            Admin,
            "updateProject",
            update,
        ),
        Route::new(
            Method::DELETE,
            "/v1/projects/{name}",
            Admin,
            "deleteProject",
            delete,
        ),
    ]
}

async fn list(
    State(d): State<Shared>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult {
    list_or_watch(&d.projects, &Projects::All, &q, &headers).await
}

async fn create(State(d): State<Shared>, body: Bytes) -> ApiResult {
    let Resource::Project(p) = resource(&body)? else {
        return Err(wrong_kind("Project"));
    };
    Ok(one(d.projects.create(p).await?, StatusCode::CREATED))
}

async fn read(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.projects.get(&name).await?, StatusCode::OK))
}

async fn update(State(d): State<Shared>, Path(name): Path<String>, body: Bytes) -> ApiResult {
    let Resource::Project(p) = resource(&body)? else {
        return Err(wrong_kind("Project"));
    };
    if p.metadata.name.as_str() != name {
        return Err(name_mismatch(p.metadata.name.as_str(), &name));
    }
    Ok(one(d.projects.update(p).await?, StatusCode::OK))
}

async fn delete(State(d): State<Shared>, Path(name): Path<String>) -> ApiResult {
    Ok(one(d.projects.delete(&name, None).await?, StatusCode::OK))
}
