//! `/v1/vms/{name}/attestation`: a DSSE envelope signed by the node key.

use axum::extract::{Path, State};
use axum::http::{Method, header};
use axum::response::IntoResponse;

use crate::api::Scope;
use crate::api::error::ApiResult;
use crate::api::{Permission, Route};
use crate::state::Shared;

pub(crate) fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/v1/vms/{name}/attestation",
        Permission::Read,
        "getVmAttestation",
        attestation,
    )]
}

async fn attestation(State(d): State<Shared>, scope: Scope, Path(name): Path<String>) -> ApiResult {
    let (envelope, _) = d.attestation(&scope.key(&name)).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.dsse.envelope.v1+json",
        )],
        envelope,
    )
        .into_response())
}
