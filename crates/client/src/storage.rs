//! Images, volumes, snapshots and attestations.

use std::path::Path;

use corral_contract::pb::{
    self, attestation_service_client::AttestationServiceClient,
    image_service_client::ImageServiceClient, snapshot_service_client::SnapshotServiceClient,
    volume_service_client::VolumeServiceClient,
};
use corral_contract::{ByteSize, Image, Snapshot, Volume};
use tokio::io::AsyncReadExt;

use crate::client::Transport;
use crate::{Client, ClientError};

/// Bytes per upload message: large enough to keep the stream busy, far below gRPC's limits.
const UPLOAD_CHUNK: usize = 1 << 20;

fn decode<P, T: TryFrom<P, Error = corral_contract::ValidationError>>(
    what: &str,
    message: P,
) -> Result<T, ClientError> {
    T::try_from(message).map_err(|e| ClientError::Other {
        message: format!("corrald sent {what} this client cannot read: {e}"),
    })
}

impl Client {
    fn images(&self) -> ImageServiceClient<Transport> {
        ImageServiceClient::new(self.transport.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(4 << 20)
    }

    fn volumes(&self) -> VolumeServiceClient<Transport> {
        VolumeServiceClient::new(self.transport.clone()).max_decoding_message_size(64 << 20)
    }

    fn snapshots(&self) -> SnapshotServiceClient<Transport> {
        SnapshotServiceClient::new(self.transport.clone()).max_decoding_message_size(64 << 20)
    }

    /// One object from a reply, or the error the call or decoding gave.
    fn one<P, T: TryFrom<P, Error = corral_contract::ValidationError>>(
        &self,
        what: &str,
        reply: Result<tonic::Response<P>, tonic::Status>,
    ) -> Result<T, ClientError> {
        decode(what, reply.map_err(|s| self.status(s))?.into_inner())
    }

    /// Every object of a list reply (`items` takes them out of the message).
    fn many<L, P, T: TryFrom<P, Error = corral_contract::ValidationError>>(
        &self,
        what: &str,
        reply: Result<tonic::Response<L>, tonic::Status>,
        items: impl FnOnce(L) -> Vec<P>,
    ) -> Result<Vec<T>, ClientError> {
        let list = reply.map_err(|s| self.status(s))?.into_inner();
        items(list).into_iter().map(|p| decode(what, p)).collect()
    }

    /// Imports an image whose source is a path on the daemon's host or a URL; returns once
    /// the bytes are stored.
    pub async fn create_image(&self, image: &Image) -> Result<Image, ClientError> {
        let request = pb::CreateImageRequest {
            image: Some(image.into()),
        };
        self.one("an image", self.images().create(request).await)
    }

    /// Streams the file at `path` to the daemon as image `image` (whose source is an upload);
    /// `progress` is told the bytes sent so far.
    pub async fn upload_image(
        &self,
        image: &Image,
        path: &Path,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<Image, ClientError> {
        let local = |e: std::io::Error| ClientError::Config {
            message: format!("{}: {e}", path.display()),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let size = file.metadata().await.map_err(local)?.len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = pb::UploadImageChunk {
            image: Some(image.into()),
            data: Vec::new(),
            size: Some(size),
        };
        let _ = tx.send(first).await;
        let shown = path.display().to_string();
        let reader = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("{shown}: {e}"))?;
                if n == 0 {
                    return Ok::<(), String>(());
                }
                buf.truncate(n);
                sent += n as u64;
                let chunk = pb::UploadImageChunk {
                    image: None,
                    data: buf,
                    size: None,
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(()); // the call ended; its error says why
                }
                progress(sent);
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let reply = self.images().upload(stream).await;
        if let Ok(Err(message)) = reader.await {
            return Err(ClientError::Config { message });
        }
        self.one("an image", reply)
    }

    /// Reads one image.
    pub async fn get_image(&self, name: &str) -> Result<Image, ClientError> {
        let request = pb::ImageNameRequest { name: name.into() };
        self.one("an image", self.images().get(request).await)
    }

    /// Lists images whose labels match `selector`.
    pub async fn list_images(&self, selector: &str) -> Result<Vec<Image>, ClientError> {
        let request = pb::ListImagesRequest {
            label_selector: selector.into(),
        };
        let reply = self.images().list(request).await;
        self.many("an image", reply, |l| l.items)
    }

    /// Recomputes an image's digest; returns the image and whether its bytes still match.
    pub async fn verify_image(&self, name: &str) -> Result<(Image, bool), ClientError> {
        let request = pb::ImageNameRequest { name: name.into() };
        let reply = self
            .images()
            .verify(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let image = reply.image.ok_or_else(|| ClientError::Other {
            message: "corrald's verify reply has no image".into(),
        })?;
        Ok((decode("an image", image)?, reply.ok))
    }

    /// Deletes an image (refused while a volume or VM uses it).
    pub async fn delete_image(&self, name: &str) -> Result<Image, ClientError> {
        let request = pb::ImageNameRequest { name: name.into() };
        self.one("an image", self.images().delete(request).await)
    }

    /// Declares a volume.
    pub async fn create_volume(&self, volume: &Volume) -> Result<Volume, ClientError> {
        let request = pb::VolumeRequest {
            volume: Some(volume.into()),
        };
        self.one("a volume", self.volumes().create(request).await)
    }

    /// Replaces a volume's labels and spec (only its size may grow).
    pub async fn update_volume(&self, volume: &Volume) -> Result<Volume, ClientError> {
        let request = pb::VolumeRequest {
            volume: Some(volume.into()),
        };
        self.one("a volume", self.volumes().update(request).await)
    }

    /// Reads one volume.
    pub async fn get_volume(&self, name: &str) -> Result<Volume, ClientError> {
        let request = pb::VolumeNameRequest { name: name.into() };
        self.one("a volume", self.volumes().get(request).await)
    }

    /// Lists volumes whose labels match `selector`.
    pub async fn list_volumes(&self, selector: &str) -> Result<Vec<Volume>, ClientError> {
        let request = pb::ListVolumesRequest {
            label_selector: selector.into(),
        };
        let reply = self.volumes().list(request).await;
        self.many("a volume", reply, |l| l.items)
    }

    /// Grows a volume.
    pub async fn resize_volume(&self, name: &str, size: ByteSize) -> Result<Volume, ClientError> {
        let request = pb::ResizeVolumeRequest {
            name: name.into(),
            size_bytes: size.as_u64(),
        };
        self.one("a volume", self.volumes().resize(request).await)
    }

    /// Marks a volume for deletion (refused while a VM uses it).
    pub async fn delete_volume(&self, name: &str) -> Result<Volume, ClientError> {
        let request = pb::VolumeNameRequest { name: name.into() };
        self.one("a volume", self.volumes().delete(request).await)
    }

    /// Declares a snapshot.
    pub async fn create_snapshot(&self, snapshot: &Snapshot) -> Result<Snapshot, ClientError> {
        let request = pb::CreateSnapshotRequest {
            snapshot: Some(snapshot.into()),
        };
        self.one("a snapshot", self.snapshots().create(request).await)
    }

    /// Reads one snapshot.
    pub async fn get_snapshot(&self, name: &str) -> Result<Snapshot, ClientError> {
        let request = pb::SnapshotNameRequest { name: name.into() };
        self.one("a snapshot", self.snapshots().get(request).await)
    }

    /// Lists snapshots, all or one VM's.
    pub async fn list_snapshots(&self, vm: Option<&str>) -> Result<Vec<Snapshot>, ClientError> {
        let request = pb::ListSnapshotsRequest {
            vm: vm.unwrap_or_default().into(),
        };
        let reply = self.snapshots().list(request).await;
        self.many("a snapshot", reply, |l| l.items)
    }

    /// Asks for a VM to be put back to a snapshot.
    pub async fn restore_snapshot(&self, name: &str) -> Result<Snapshot, ClientError> {
        let request = pb::SnapshotNameRequest { name: name.into() };
        self.one("a snapshot", self.snapshots().restore(request).await)
    }

    /// Marks a snapshot for deletion.
    pub async fn delete_snapshot(&self, name: &str) -> Result<Snapshot, ClientError> {
        let request = pb::SnapshotNameRequest { name: name.into() };
        self.one("a snapshot", self.snapshots().delete(request).await)
    }

    /// A signed attestation of what VM `vm` runs: the DSSE envelope's bytes and the node's
    /// public key (PEM).
    pub async fn attestation(&self, vm: &str) -> Result<(Vec<u8>, String), ClientError> {
        let request = pb::GetAttestationRequest { vm: vm.into() };
        let reply = AttestationServiceClient::new(self.transport.clone())
            .get(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        Ok((reply.envelope, reply.public_key_pem))
    }
}
