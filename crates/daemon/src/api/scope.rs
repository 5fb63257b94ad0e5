//! The project a request acts in, and the projects its lists and watches show: read once by
//! the authorization layer (which refuses a caller outside it) from the request — the `project`
//! query parameter or the `corral-project` header (gRPC metadata), and `all_projects=true` /
//! `corral-all-projects: true` for lists — and handed to handlers as a request extension.

use std::collections::{BTreeSet, HashMap};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use corral_contract::{DEFAULT_PROJECT, Object, ResourceName, ValidationError, object_key};
use corral_service::{Projects, ServiceError};

use crate::auth::Caller;

/// The header (gRPC metadata) naming the project.
pub const PROJECT_HEADER: &str = "corral-project";
/// The header (gRPC metadata) asking lists and watches for every project the caller works in.
pub const ALL_PROJECTS_HEADER: &str = "corral-all-projects";

/// Where a request acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The project names in the request mean objects of.
    pub project: String,
    /// What lists and watches show.
    pub listed: Projects,
}

impl Default for Scope {
    fn default() -> Self {
        Scope::one(DEFAULT_PROJECT)
    }
}

impl Scope {
    /// Acting in `project` only.
    pub fn one(project: &str) -> Self {
        Scope {
            project: project.to_owned(),
            listed: Projects::one(project),
        }
    }

    /// What a request asks, for `caller`. Names no project: the caller's only one when it
    /// works in exactly one (an operator of `web` need not say so each time), else `default`.
    /// Fails when the project named is not a valid name.
    pub fn read(uri: &Uri, headers: &HeaderMap, caller: &Caller) -> Result<Scope, ValidationError> {
        let params = axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
            .map(|q| q.0)
            .unwrap_or_default();
        let query = |key: &str| params.get(key).cloned();
        let header = |key: &str| {
            headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let named = query("project").or_else(|| header(PROJECT_HEADER));
        let project = match named {
            Some(p) => ResourceName::new(p)
                .map_err(|e| ValidationError::new("project", e))?
                .to_string(),
            None => match caller.principal.projects.as_slice() {
                [only] if !caller.is_admin() => only.clone(),
                _ => DEFAULT_PROJECT.to_owned(),
            },
        };
        let all = match query("all_projects").or_else(|| header(ALL_PROJECTS_HEADER)) {
            None => false,
            Some(v) => match v.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ValidationError::new(
                        "all_projects",
                        format!("{other:?} is not a boolean: use true or false"),
                    ));
                }
            },
        };
        let listed = if !all {
            Projects::one(&project)
        } else if caller.is_admin() {
            Projects::All
        } else if caller.principal.projects.is_empty() {
            Projects::one(DEFAULT_PROJECT)
        } else {
            Projects::Only(
                caller
                    .principal
                    .projects
                    .iter()
                    .cloned()
                    .collect::<BTreeSet<_>>(),
            )
        };
        Ok(Scope { project, listed })
    }

    /// The store key of the object named `name` in the request's project.
    pub fn key(&self, name: &str) -> String {
        object_key(&self.project, name)
    }

    /// Puts a new or changed object in the request's project; one that names another project
    /// is refused (the caller was authorized for this one only).
    pub fn place<T: Object>(&self, obj: &mut T) -> Result<(), ServiceError> {
        if !T::KIND.in_project() {
            return Ok(());
        }
        let meta = obj.metadata_mut();
        match &meta.project {
            Some(p) if p.as_str() != self.project => Err(ValidationError::new(
                "metadata.project",
                format!(
                    "{:?} is not the request's project {:?}: send it to project {p} \
                     (`corral --project {p} …`, or the `project` query parameter)",
                    p.as_str(),
                    self.project
                ),
            )
            .into()),
            Some(_) => Ok(()),
            None => {
                meta.project = Some(
                    ResourceName::new(self.project.clone())
                        .map_err(|e| ValidationError::new("project", e))?,
                );
                Ok(())
            }
        }
    }

    /// The scope the authorization layer put in `extensions` (`default` when none did: routes
    /// open to everyone).
    pub fn of(extensions: &axum::http::Extensions) -> Scope {
        extensions.get::<Scope>().cloned().unwrap_or_default()
    }
}

/// Takes `project` (when `project` is true) and `all_projects` out of a request's query, once
/// read: each route's own query parameters are checked strictly, and these are every route's.
/// Routes of objects in no project keep `project`, which is some route's own (the audit log's
/// filter); `all_projects` means nothing to them and goes, so that a script passing it to
/// every list (`corral node list --all-projects`) is not refused.
pub fn strip_query(uri: &mut Uri, project: bool) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            key != "all_projects" && !(project && key == "project")
        })
        .collect();
    if kept.len() == query.split('&').count() {
        return;
    }
    let path = uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    if let Ok(new) = Uri::from_parts(parts) {
        *uri = new;
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Scope::of(&parts.extensions))
    }
}
