//! Image bytes for an agent: the servers keep the images; an agent fetches the blob a volume
//! of its clones, by digest, over its mTLS connection, and keeps it only if it hashes to
//! that digest.

use std::time::Duration;

use futures_util::StreamExt;

/// The servers' blob store, as node `node` may read it.
#[derive(Debug, Clone)]
pub struct ServerBlobs {
    client: reqwest::Client,
    servers: Vec<String>,
    node: String,
}

/// How long one blob may take to arrive, at worst (a multi-GiB image on a slow link).
const PATIENCE: Duration = Duration::from_secs(3600);

impl ServerBlobs {
    /// Blobs of `servers` (tried in turn), through `client` (which presents the node
    /// certificate of `node`).
    pub fn new(client: reqwest::Client, servers: &[String], node: &str) -> Self {
        ServerBlobs {
            client,
            servers: servers.to_vec(),
            node: node.to_owned(),
        }
    }

    async fn fetch_from(
        &self,
        server: &str,
        digest: &corral_storage::Digest,
        cas: &corral_storage::Cas,
    ) -> Result<(), String> {
        let url = format!("{server}/v1/nodes/{}/blobs/{}", self.node, digest.hex());
        let response = self
            .client
            .get(&url)
            .timeout(PATIENCE)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("{url}: the server answered {status}: {body}"));
        }
        let mut writer = cas.writer().map_err(|e| e.to_string())?;
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
            writer.write_chunk(&chunk).map_err(|e| e.to_string())?;
        }
        let (got, size) = writer.finish().map_err(|e| e.to_string())?;
        if got != *digest {
            // Dropped uncommitted: its temporary file goes with it.
            return Err(format!(
                "{url}: the {size} bytes received hash to {}, not {}",
                got.hex(),
                digest.hex()
            ));
        }
        writer.commit().map_err(|e| e.to_string())?;
        tracing::info!(digest = %digest.hex(), size, %server, "image blob fetched and verified");
        Ok(())
    }
}

#[async_trait::async_trait]
impl corral_controller::BlobSource for ServerBlobs {
    async fn fetch(&self, digest: &str, cas: &corral_storage::Cas) -> Result<(), String> {
        let digest: corral_storage::Digest = digest.parse().map_err(|e| format!("{e}"))?;
        let mut failures = Vec::new();
        for server in &self.servers {
            match self.fetch_from(server, &digest, cas).await {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(e),
            }
        }
        Err(failures.join("; "))
    }
}
