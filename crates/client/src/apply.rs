//! Applying declared resources as one owner (`corral apply`, `corral diff`).

use corral_contract::pb::apply_service_client::ApplyServiceClient;
use corral_contract::{ApplyReport, ApplyRequest, pb};

use crate::{Client, ClientError};

impl Client {
    /// Applies `request` (or, with `dry_run`, reports what it would do).
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyReport, ClientError> {
        let report = ApplyServiceClient::new(self.transport.clone())
            .apply(pb::ApplyRequest::from(request))
            .await
            .map_err(|s| self.status(s))?;
        ApplyReport::try_from(report.into_inner()).map_err(|e| ClientError::Other {
            message: format!("the server sent a report that does not validate: {e}"),
        })
    }
}
