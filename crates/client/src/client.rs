//! The connection to corrald and its typed calls.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_contract::pb::memory_service_client::MemoryServiceClient;
use corral_contract::pb::system_service_client::SystemServiceClient;
use corral_contract::pb::vm_service_client::VmServiceClient;
use corral_contract::{Vm, pb};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Uri};

use crate::watch::VmWatch;
use crate::{ClientError, Endpoint};

/// Replies larger than gRPC's default 4 MiB are expected: a list of 10,000 VMs.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// How long a TCP connection and TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection under every service client: the channel with the token added to each call.
pub type Transport = InterceptedService<Channel, Auth>;

/// A connection to corrald, speaking the contract's types.
///
/// Cheap to clone: clones share one HTTP/2 connection, and calls on them run concurrently.
#[derive(Debug, Clone)]
pub struct Client {
    vms: VmServiceClient<Transport>,
    system: SystemServiceClient<Transport>,
    pub(crate) memory: MemoryServiceClient<Transport>,
    /// The connection, for the service clients of other modules.
    pub(crate) transport: Transport,
    channel: Channel,
    auth: Auth,
    /// The socket path or URL, for error messages.
    endpoint: Arc<str>,
}

/// What the server says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// Corral's version, e.g. `0.1.0`.
    pub version: String,
    /// The Git commit the server was built from, when known.
    pub git_commit: Option<String>,
    /// The store backend, e.g. `sqlite`.
    pub store: String,
    /// The name of the node that answered.
    pub node: String,
}

/// What every call carries: `authorization: Bearer <token>` when there is a token, and the
/// project it acts in (`corral-project`, `corral-all-projects`) when one is chosen.
#[derive(Clone, Default)]
pub struct Auth {
    token: Option<MetadataValue<Ascii>>,
    project: Option<MetadataValue<Ascii>>,
    all_projects: bool,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Auth")
            .field("token", &token)
            .field("project", &self.project)
            .field("all_projects", &self.all_projects)
            .finish()
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(value) = &self.token {
            metadata.insert("authorization", value.clone());
        }
        if let Some(project) = &self.project {
            metadata.insert("corral-project", project.clone());
        }
        if self.all_projects {
            metadata.insert("corral-all-projects", MetadataValue::from_static("true"));
        }
        Ok(request)
    }
}

impl Client {
    /// Connects to corrald; fails at once, naming the socket or URL, when nothing answers.
    pub async fn connect(endpoint: Endpoint) -> Result<Client, ClientError> {
        let name = endpoint.to_string();
        let (channel, token) = match &endpoint {
            Endpoint::Unix(path) => (connect_unix(path).await?, None),
            Endpoint::Https {
                url,
                token,
                ca_file,
            } => (
                connect_https(url, ca_file.as_deref()).await?,
                token.as_deref(),
            ),
        };
        let auth = match token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Config {
                        message: "the token has characters a header cannot carry: use the \
                                  token exactly as corrald printed it"
                            .into(),
                    })?,
            ),
            None => None,
        };
        let auth = Auth {
            token: auth,
            ..Auth::default()
        };
        Ok(Client::build(channel, auth, name.into()))
    }

    fn build(channel: Channel, auth: Auth, endpoint: Arc<str>) -> Client {
        let transport = InterceptedService::new(channel.clone(), auth.clone());
        Client {
            vms: VmServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            memory: MemoryServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            system: SystemServiceClient::new(transport.clone()),
            transport,
            channel,
            auth,
            endpoint,
        }
    }

    /// The same connection acting in `project` (`None`: the server's choice — the caller's
    /// only project, else `default`), with lists and watches of every project the caller
    /// works in when `all_projects`.
    pub fn in_project(
        self,
        project: Option<&str>,
        all_projects: bool,
    ) -> Result<Client, ClientError> {
        let project = project
            .map(|p| {
                corral_contract::ResourceName::new(p)
                    .map_err(|e| ClientError::Config {
                        message: format!("project: {e}"),
                    })
                    .and_then(|p| {
                        p.as_str().parse::<MetadataValue<Ascii>>().map_err(|_| {
                            ClientError::Config {
                                message: format!("project {p:?} cannot be sent"),
                            }
                        })
                    })
            })
            .transpose()?;
        let auth = Auth {
            project,
            all_projects,
            ..self.auth
        };
        Ok(Client::build(self.channel, auth, self.endpoint))
    }

    /// The generated gRPC client of the VM service on this connection, for callers that
    /// measure the wire itself (the benchmarks); everyone else uses the typed methods.
    pub fn vm_service(&self) -> VmServiceClient<Transport> {
        self.vms.clone()
    }

    /// The socket path or URL this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn status(&self, status: tonic::Status) -> ClientError {
        ClientError::from_status(status, &self.endpoint)
    }

    fn vm_reply(
        &self,
        reply: Result<tonic::Response<pb::Vm>, tonic::Status>,
    ) -> Result<Vm, ClientError> {
        decode_vm(reply.map_err(|s| self.status(s))?.into_inner())
    }

    /// Creates a VM; returns it as stored (uid, versions and creation time set).
    pub async fn create_vm(&self, vm: &Vm) -> Result<Vm, ClientError> {
        let request = pb::CreateVmRequest {
            vm: Some(vm.into()),
        };
        self.vm_reply(self.vms.clone().create(request).await)
    }

    /// Reads one VM.
    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        let request = pb::GetVmRequest { name: name.into() };
        self.vm_reply(self.vms.clone().get(request).await)
    }

    /// Lists the VMs whose labels match `selector` (`tier=web,env=prod`; `""` for all), by
    /// name.
    pub async fn list_vms(&self, selector: &str) -> Result<Vec<Vm>, ClientError> {
        Ok(self.list_vms_with_revision(selector).await?.0)
    }

    /// [`Client::list_vms`], with the store revision the list was read at: watch after it
    /// to see every later change.
    pub async fn list_vms_with_revision(
        &self,
        selector: &str,
    ) -> Result<(Vec<Vm>, u64), ClientError> {
        let request = pb::ListVmsRequest {
            label_selector: selector.into(),
        };
        let reply = self
            .vms
            .clone()
            .list(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let vms = reply
            .items
            .into_iter()
            .map(decode_vm)
            .collect::<Result<_, _>>()?;
        Ok((vms, reply.revision))
    }

    /// Replaces a VM's spec, labels and annotations. A compare-and-swap on
    /// `metadata.resource_version` ([`ClientError::Conflict`] when someone else wrote
    /// first); 0 overwrites unconditionally.
    pub async fn update_vm(&self, vm: &Vm) -> Result<Vm, ClientError> {
        let request = pb::UpdateVmRequest {
            vm: Some(vm.into()),
        };
        self.vm_reply(self.vms.clone().update(request).await)
    }

    /// Marks a VM for deletion and returns it; it is gone once its QEMU is stopped and its
    /// files removed (see [`Client::wait_for`]).
    pub async fn delete_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.delete_vm_with(name, None).await
    }

    /// [`Client::delete_vm`] with how long the guest gets to shut down: `Some(0)` skips the
    /// graceful stop (for a guest that ignores the power button), `None` is the daemon's
    /// default.
    pub async fn delete_vm_with(
        &self,
        name: &str,
        grace_seconds: Option<u32>,
    ) -> Result<Vm, ClientError> {
        let request = pb::DeleteVmRequest {
            name: name.into(),
            resource_version: 0,
            grace_seconds,
            force: grace_seconds == Some(0),
        };
        self.vm_reply(self.vms.clone().delete(request).await)
    }

    /// Declares the VM running (`spec.power = running`).
    pub async fn start_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.vm_reply(self.vms.clone().start(action(name)).await)
    }

    /// Declares the VM stopped; `force` kills QEMU instead of asking the guest to shut down.
    pub async fn stop_vm(&self, name: &str, force: bool) -> Result<Vm, ClientError> {
        let request = pb::StopVmRequest {
            name: name.into(),
            force,
        };
        self.vm_reply(self.vms.clone().stop(request).await)
    }

    /// Declares the VM paused.
    pub async fn pause_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.vm_reply(self.vms.clone().pause(action(name)).await)
    }

    /// Declares a paused VM running again.
    pub async fn resume_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.vm_reply(self.vms.clone().resume(action(name)).await)
    }

    /// Asks for the VM to be restarted in a new QEMU process.
    pub async fn restart_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.vm_reply(self.vms.clone().restart(action(name)).await)
    }

    /// Asks for a live migration of VM `name` to node `to` (`None`: the scheduler picks);
    /// `status.migration` follows it.
    pub async fn migrate_vm(&self, name: &str, to: Option<&str>) -> Result<Vm, ClientError> {
        self.migrate_vm_with(name, to, corral_contract::MigrationOptions::default())
            .await
    }

    /// [`Client::migrate_vm`] with `options` (auto-converge, post-copy, bandwidth).
    pub async fn migrate_vm_with(
        &self,
        name: &str,
        to: Option<&str>,
        options: corral_contract::MigrationOptions,
    ) -> Result<Vm, ClientError> {
        let request = pb::MigrateVmRequest {
            name: name.into(),
            to: to.unwrap_or_default().into(),
            auto_converge: options.auto_converge,
            postcopy: options.postcopy,
            bandwidth: options.bandwidth.unwrap_or_default(),
        };
        self.vm_reply(self.vms.clone().migrate(request).await)
    }

    /// Withdraws VM `name`'s migration request: one not yet switched over is cancelled.
    pub async fn cancel_vm_migration(&self, name: &str) -> Result<Vm, ClientError> {
        self.vm_reply(self.vms.clone().cancel_migration(action(name)).await)
    }

    /// Follows changes to one VM (`name`) or all, after store revision `after_revision`
    /// (0: live changes only).
    pub async fn watch_vms(
        &self,
        name: Option<&str>,
        after_revision: u64,
    ) -> Result<VmWatch, ClientError> {
        let request = pb::WatchVmsRequest {
            after_revision,
            name: name.unwrap_or_default().into(),
        };
        let stream = self
            .vms
            .clone()
            .watch(request)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        Ok(VmWatch::new(stream, self.endpoint.clone()))
    }

    /// The end of the VM's serial console log: at most `tail_bytes` bytes (0: all that is
    /// kept), raw as the guest wrote them.
    pub async fn console_log(&self, name: &str, tail_bytes: u64) -> Result<Vec<u8>, ClientError> {
        let request = pb::ConsoleLogRequest {
            name: name.into(),
            tail_bytes,
        };
        let reply = self
            .vms
            .clone()
            .console_log(request)
            .await
            .map_err(|s| self.status(s))?;
        Ok(reply.into_inner().data)
    }

    /// The server's version, store backend and node name.
    pub async fn version(&self) -> Result<ServerVersion, ClientError> {
        let reply = self
            .system
            .clone()
            .version(pb::VersionRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        Ok(ServerVersion {
            version: reply.version,
            git_commit: reply.git_commit.filter(|c| !c.is_empty()),
            store: reply.store,
            node: reply.node,
        })
    }
}

fn action(name: &str) -> pb::VmActionRequest {
    pb::VmActionRequest { name: name.into() }
}

pub(crate) fn decode_vm(vm: pb::Vm) -> Result<Vm, ClientError> {
    Vm::try_from(vm).map_err(|e| ClientError::Other {
        message: format!("corrald sent a VM this client cannot read: {e}"),
    })
}

async fn connect_unix(path: &Path) -> Result<Channel, ClientError> {
    let unavailable = |message: String| ClientError::Unavailable {
        endpoint: path.display().to_string(),
        message,
    };
    // The channel retries and wraps connection errors; connecting once first gives the
    // plain reason (no such file, permission denied, refused).
    if let Err(e) = UnixStream::connect(path).await {
        return Err(unavailable(socket_error(&e)));
    }
    let path: PathBuf = path.to_owned();
    // The URI is required by the API but unused: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| unavailable(error_chain(&e)))
}

fn socket_error(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::NotFound => "the socket does not exist".into(),
        ErrorKind::PermissionDenied => {
            "permission denied: the socket belongs to the user who started corrald".into()
        }
        ErrorKind::ConnectionRefused => "connection refused: nothing listens on the socket".into(),
        _ => err.to_string(),
    }
}

async fn connect_https(url: &str, ca_file: Option<&Path>) -> Result<Channel, ClientError> {
    let tls = match ca_file {
        Some(path) => {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|e| ClientError::Config {
                    message: format!("cannot read the CA file {}: {e}", path.display()),
                })?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    let config = |e: tonic::transport::Error| ClientError::Config {
        message: format!("{url}: {}", error_chain(&e)),
    };
    Channel::from_shared(url.to_owned())
        .map_err(|e| ClientError::Config {
            message: format!("{url} is not a valid server address: {e}"),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(config)?
        .connect()
        .await
        .map_err(|e| ClientError::Unavailable {
            endpoint: url.to_owned(),
            message: error_chain(&e),
        })
}

/// An error and its causes, `outer: inner: innermost`, without repeats.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.sock");
        let err = Client::connect(Endpoint::Unix(path.clone()))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("the socket does not exist"), "{text}");
        assert!(
            text.contains("start it with `corrald` or set CORRAL_SOCKET"),
            "{text}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_stale_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corral.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = Client::connect(Endpoint::Unix(path)).await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn an_unreadable_ca_file_is_a_config_error() {
        let endpoint = Endpoint::Https {
            url: "https://127.0.0.1:1".into(),
            token: Some("t".into()),
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        let err = Client::connect(endpoint).await.unwrap_err();
        assert!(matches!(err, ClientError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
