//! corrald: API (gRPC and REST on one listener), VM controller and node agent in one process,
//! on the embedded SQLite store.
//!
//! Start-up: open the store, re-adopt the VMs that still run (the controller never starts a
//! second QEMU for a VM and stops any QEMU no object declares), then serve. SIGTERM stops
//! serving and leaves every VM running.
#![deny(missing_docs)]

mod agent;
pub mod api;
mod apply;
mod attestations;
mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
mod console;
pub mod dirs;
pub mod fence_guard;
mod identities;
mod images;
mod memory;
mod metrics;
mod networks;
mod nodes;
mod openapi;
mod projects;
mod serve;
mod snapshots;
mod sources;
mod state;
mod system;
mod tunnels;
pub mod ui;
mod vms;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use corral_contract::pb::{
    apply_service_server::ApplyServiceServer, attestation_service_server::AttestationServiceServer,
    audit_service_server::AuditServiceServer, console_service_server::ConsoleServiceServer,
    identity_service_server::IdentityServiceServer, image_service_server::ImageServiceServer,
    memory_service_server::MemoryServiceServer, network_service_server::NetworkServiceServer,
    node_service_server::NodeServiceServer, project_service_server::ProjectServiceServer,
    snapshot_service_server::SnapshotServiceServer, source_service_server::SourceServiceServer,
    system_service_server::SystemServiceServer, vm_service_server::VmServiceServer,
    volume_service_server::VolumeServiceServer,
};
use corral_controller::{ControllerConfig, StorageController, VmController};
use corral_qemu::{QemuBackend, QemuBackendConfig};
use corral_service::{
    ApplyService, AuditLog, ConsoleService, IdentityService, MemoryService, NetworkService,
    NodeService, ProjectService, SourceService, StorageConfig, StorageService, VmService,
};
use corral_store::{EtcdConfig, EtcdStore, SqliteStore};
use tokio::sync::watch;

pub use config::{Args, Config};
pub use metrics::Metrics;
pub use state::Daemon;

/// Reads the PEM files for TLS to etcd, naming the flag of a file that cannot be read.
fn read_etcd_tls(files: &config::EtcdTlsFiles) -> anyhow::Result<corral_store::EtcdTls> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
    };
    Ok(corral_store::EtcdTls {
        ca: read("--etcd-ca-file", &files.ca)?,
        identity: match &files.identity {
            Some((cert, key)) => Some((read("--etcd-cert", cert)?, read("--etcd-key", key)?)),
            None => None,
        },
    })
}

/// Connects to etcd, waiting up to `wait` for it to answer: etcd started beside corrald
/// may not be serving yet.
async fn connect_etcd(
    config: EtcdConfig,
    wait: std::time::Duration,
) -> Result<EtcdStore, corral_store::StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match EtcdStore::connect(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e @ corral_store::StoreError::InvalidConfig { .. }) => return Err(e),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "etcd does not answer yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(agent) = &config.cluster.agent {
        return agent::run(&config, agent).await;
    }
    let qemu = config.qemu_user.as_ref().map(|u| u.owner);
    match &config.qemu_user {
        Some(user) => {
            tracing::info!(user = %user.name, uid = user.owner.uid, "QEMU runs unprivileged")
        }
        None if nix::unistd::geteuid().is_root() => tracing::warn!(
            "QEMU runs as root: create user {} (scripts/setup.sh does) or pass --qemu-user",
            config::DEFAULT_QEMU_USER
        ),
        None => {}
    }
    dirs::prepare(&config.data_dir, dirs::Which::Data, qemu)?;
    let run_which = if config.run_dir_fallback {
        dirs::Which::RunFallback
    } else {
        dirs::Which::Run
    };
    dirs::prepare(&config.run_dir, run_which, qemu)?;
    dirs::prepare_data_layout(
        &config.data_dir,
        qemu,
        config.store == config::StoreConfig::Sqlite,
    )?;
    let mut elections: Arc<dyn corral_store::Elections> =
        Arc::new(corral_store::LocalCoordinator::default());
    let store: Arc<dyn corral_store::Store> = match &config.store {
        config::StoreConfig::Sqlite => Arc::new(
            SqliteStore::open(config.data_dir.join("state.db"))
                .await
                .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
        config::StoreConfig::Etcd {
            endpoints,
            prefix,
            wait,
            tls,
        } => {
            let mut etcd = EtcdConfig::new(endpoints.iter().cloned());
            etcd.prefix = prefix.clone();
            etcd.tls = tls.as_ref().map(read_etcd_tls).transpose()?;
            tracing::info!(endpoints = %endpoints.join(","), %prefix, "keeping state in etcd");
            let etcd = connect_etcd(etcd, *wait).await.with_context(|| {
                format!(
                    "connecting to the etcd store at {} (waited {}; --etcd-wait sets how long)",
                    endpoints.join(","),
                    humantime::format_duration(*wait)
                )
            })?;
            // Everyone on one etcd elects one scheduler there (candidates by node name).
            elections = Arc::new(corral_store::EtcdCoordinator::new(&etcd));
            Arc::new(etcd)
        }
    };
    let mut backend_config = QemuBackendConfig::new(config.run_dir.clone());
    backend_config.run_as = qemu;
    let backend =
        Arc::new(QemuBackend::new(backend_config).context("preparing the run directory")?);
    let host_paths = host_paths(&config)?;
    let mut vms = VmService::new(store.clone())
        .with_host_paths(host_paths.clone())
        .with_port_range(config.port_range.clone());
    if config.store != config::StoreConfig::Sqlite {
        // On etcd the VMs run on the cluster's nodes, and move between them: what listens
        // on this host says nothing of the node whose forward it will be.
        vms = vms.with_ports_elsewhere();
    }
    let networks = NetworkService::new(store.clone());
    networks
        .ensure_default()
        .await
        .context("creating the default network")?;
    let mut storage_config = storage_config(&config, &host_paths, qemu)?;
    storage_config.import = config.import.clone();
    storage_config.max_upload = Some(config.upload_max_size.as_u64());
    storage_config.build = config.build.clone();
    let storage = StorageService::new(store.clone(), storage_config)
        .map_err(|e| anyhow::anyhow!("preparing the image store: {e}"))?
        .with_hypervisor(backend.clone());
    let node_key = corral_storage::attest::NodeKey::load_or_create(&config.data_dir.join("keys"))
        .context("preparing the node key")?;
    let node_name = config.cluster.node_name.clone();
    let cluster_ca = corral_service::ClusterCa::load(&config.cluster.cluster_dir)
        .context("loading the cluster CA")?
        .map(Arc::new);
    let mut controller_config = controller_config(&config, host_paths);
    // With the cluster CA at hand, this node migrates VMs over TLS on a certificate of its
    // own from it, like an agent on the one it joined with.
    if let Some(ca) = &cluster_ca {
        let (cert, key) = ca
            .issue_node(&node_name)
            .context("issuing this node's certificate for live migrations")?;
        controller_config.migration_tls = Some(corral_hypervisor::MigrationTls {
            ca: ca.cert_pem().to_owned(),
            cert,
            key,
        });
    }
    let metrics = Arc::new(Metrics::new());
    let fenced = Arc::new(corral_controller::FenceState::default());
    let runs_vms = config.cluster.role == config::Role::All;
    // In a cluster a guard process enforces the fence should this one die; a single host
    // needs none, and a guard left from an earlier cluster run on this run dir is retired.
    let guard = match (&config.store, runs_vms) {
        (config::StoreConfig::Etcd { .. }, true) => Some(Arc::new(
            fence_guard::attach_at_start(&config.run_dir, config.cluster.node_ttl, &fenced)
                .await
                .context("starting the node's fence guard")?,
        )),
        (config::StoreConfig::Sqlite, true) => {
            fence_guard::retire(&config.run_dir);
            None
        }
        _ => None,
    };
    let controller = Arc::new(
        VmController::new(vms.clone(), backend.clone(), controller_config)
            .with_observer(metrics.clone())
            .with_storage(storage.clone())
            .with_fence(fenced.clone()),
    );
    // On etcd other nodes share the volumes: each is made on its first VM's node, and only
    // that node touches its file.
    let cluster = matches!(config.store, config::StoreConfig::Etcd { .. });
    let storage_controller = Arc::new(
        StorageController::new(storage.clone(), backend.clone())
            .with_node(node_name.as_str(), cluster),
    );
    let node = node_name.to_string();
    let audit = Arc::new(
        AuditLog::open(&config.data_dir.join("audit.log"), config.audit)
            .with_context(|| format!("opening {}/audit.log", config.data_dir.display()))?,
    );
    let tokens = match config.tcp.as_ref().and_then(|t| t.token_file.as_ref()) {
        Some(file) => auth::Tokens::load(file)?,
        None => auth::Tokens::default(),
    };
    let admin_group = auth::AdminGroup::new(config.admin_group.clone());
    admin_group.check().map_err(anyhow::Error::msg)?;
    let registry = auth::Registry::new(tokens, admin_group);
    let identities = IdentityService::new(store.clone());
    let projects = ProjectService::new(store.clone());
    let nodes = NodeService::new(store.clone());
    if let Some(ca) = &cluster_ca {
        tracing::info!(sha256 = %ca.fingerprint(), "agents join with the cluster CA");
    }
    let joins = corral_service::JoinService::new(store.clone(), cluster_ca.clone());
    // On a cluster's store, the consoles and attestations of VMs other nodes run are asked
    // of those nodes' agents.
    let route = match (&cluster_ca, &config.store) {
        (Some(ca), config::StoreConfig::Etcd { .. }) => Some(corral_service::NodeRoute::new(
            node_name.as_str(),
            Arc::new(nodes::link::AgentLink::new(nodes.clone(), ca).context(
                "issuing this server's client certificate for the agents' node listeners",
            )?),
        )),
        _ => None,
    };
    let mut consoles = ConsoleService::new(vms.clone(), backend.clone());
    let mut tunnels = corral_service::TunnelService::new(vms.clone());
    let mut memory = MemoryService::new(vms.clone(), backend.clone(), audit.clone());
    if let Some(route) = &route {
        memory = memory.with_route(route.clone());
        consoles = consoles.with_route(route.clone());
        tunnels = tunnels.with_route(route.clone());
    }
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        apply: ApplyService::new(vms.clone(), networks.clone(), storage.clone()),
        sources: SourceService::new(store.clone()),
        memory,
        consoles,
        tunnels,
        vms,
        networks,
        storage,
        node_key,
        backend,
        node,
        metrics,
        identities,
        projects,
        nodes,
        store: store.clone(),
        joins,
        registry,
        audit,
        ui: ui::Ui::default(),
        history: vms::history::History::default(),
        route,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    daemon
        .registry
        .follow(daemon.identities.clone(), stop_rx.clone())
        .await
        .context("loading identities")?;
    if runs_vms {
        let fence = nodes::Fence {
            ttl: config.cluster.node_ttl,
            hypervisor: daemon.backend.clone(),
            state: fenced,
            guard,
        };
        tokio::spawn(nodes::heartbeat(
            daemon.nodes.clone(),
            node_name.clone(),
            config.data_dir.clone(),
            config.storage_pools.clone(),
            None,
            fence,
            stop_rx.clone(),
        ));
    }
    let scheduler = Arc::new(corral_controller::Scheduler::new(
        daemon.vms.clone(),
        daemon.nodes.clone(),
        elections,
        corral_controller::SchedulerConfig {
            placement: config.cluster.placement,
            node_ttl: config.cluster.node_ttl,
            candidate: node_name.to_string(),
            ..Default::default()
        },
    ));
    tokio::spawn(scheduler.run(stop_rx.clone()));
    let mut controller_task = None;
    if runs_vms {
        controller_task = Some(tokio::spawn(controller.run(stop_rx.clone())));
        let network_controller = corral_controller::NetworkController::new(
            daemon.networks.clone(),
            config.run_dir.join("networks"),
        );
        tokio::spawn(network_controller.run(stop_rx.clone()));
        tokio::spawn(vms::history::sample(daemon.clone(), stop_rx.clone()));
    }
    let storage_task = tokio::spawn(storage_controller.run(stop_rx.clone()));
    let source_controller = corral_controller::SourceController::new(
        daemon.sources.clone(),
        corral_controller::SourceReconciler::new(
            daemon.apply.clone(),
            config.import.clone(),
            config.data_dir.join("sources"),
        ),
    );
    tokio::spawn(source_controller.run(stop_rx.clone()));

    let app = router(daemon.clone()).await?;
    daemon.ui.serve_locally_with(
        app.clone().layer(axum::middleware::from_fn_with_state(
            daemon.ui.sessions.clone(),
            ui::local_caller,
        )),
        config.limits.clone(),
        stop_rx.clone(),
    );
    let unix = serve::bind_unix(&config.socket).await?;
    tracing::info!(socket = %config.socket.display(), data_dir = %config.data_dir.display(), "corrald serving");
    let mut servers = tokio::task::JoinSet::new();
    let limits = config.limits.clone();
    let unix_app = app.clone().layer(axum::middleware::from_fn_with_state(
        daemon.registry.clone(),
        auth::unix_caller,
    ));
    servers.spawn(serve::serve(
        serve::Capped::new(unix, limits.max_connections),
        unix_app,
        limits.clone(),
        |io: &serve::Counted<serve::UnixConnection>, _: &_| {
            auth::PeerCred::of(io.get_ref().get_ref())
        },
        stop_rx.clone(),
    ));
    if let Some(tcp) = &config.tcp {
        let listener = serve::TlsListener::bind(
            tcp.listen,
            &tcp.tls_cert,
            &tcp.tls_key,
            tcp.tls_client_ca.as_deref(),
            cluster_ca
                .as_ref()
                .and_then(|ca| corral_service::pem_der(ca.cert_pem()))
                .map(rustls_pki_types::CertificateDer::from),
            &limits,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        tracing::info!(
            addr = %tcp.listen,
            mtls = tcp.tls_client_ca.is_some(),
            max_connections = limits.max_connections,
            "serving TLS"
        );
        let tcp_app = app.layer(axum::middleware::from_fn_with_state(
            auth::TcpGate {
                registry: daemon.registry.clone(),
                audit: daemon.audit.clone(),
                sessions: daemon.ui.sessions.clone(),
                cluster_ca: cluster_ca.clone(),
            },
            auth::tcp_caller,
        ));
        servers.spawn(serve::serve(
            listener,
            tcp_app,
            limits,
            |io: &_, _: &std::net::SocketAddr| auth::TlsPeer::of(io),
            stop_rx.clone(),
        ));
    }

    shutdown_signal().await;
    tracing::info!("shutting down; VMs keep running");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if let Some(task) = controller_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), storage_task).await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// REST and gRPC on one router, behind the one authorization layer.
async fn router(daemon: Arc<Daemon>) -> anyhow::Result<axum::Router> {
    let grpc = grpc_routes(&daemon).await?.into_axum_router();
    Ok(api::rest_router(daemon, grpc))
}

/// Every gRPC service: Corral's, health and reflection. Each method's permission is declared
/// beside its service (`METHODS` in each concept's `grpc.rs`).
async fn grpc_routes(daemon: &Arc<Daemon>) -> anyhow::Result<tonic::service::Routes> {
    // One list of descriptor sets feeds reflection (v1 and v1alpha, each listing the other)
    // and health, so every service a client can discover also reports SERVING.
    let descriptors = [
        corral_contract::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let reflection = || {
        descriptors.iter().fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building gRPC reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building gRPC reflection v1alpha")?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let services = grpc_service_names(&descriptors).context("reading the gRPC descriptors")?;
    for service in services {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let d = daemon;
    use api::limits::grpc_limits;
    Ok(
        tonic::service::Routes::new(grpc_limits!(VmServiceServer::new(vms::grpc::VmGrpc(
            d.clone()
        ))))
        .add_service(grpc_limits!(SystemServiceServer::new(
            system::grpc::SystemGrpc(d.clone())
        )))
        .add_service(grpc_limits!(MemoryServiceServer::new(
            memory::grpc::MemoryGrpc(d.clone())
        )))
        .add_service(grpc_limits!(NetworkServiceServer::new(
            networks::grpc::NetworkGrpc(d.clone())
        )))
        .add_service(grpc_limits!(ConsoleServiceServer::new(
            console::grpc::ConsoleGrpc(d.clone())
        )))
        .add_service(grpc_limits!(
            corral_contract::pb::tunnel_service_server::TunnelServiceServer::new(
                tunnels::grpc::TunnelGrpc(d.clone())
            )
        ))
        .add_service(grpc_limits!(ImageServiceServer::new(
            images::grpc::ImageGrpc(d.clone())
        )))
        .add_service(grpc_limits!(VolumeServiceServer::new(
            volumes::grpc::VolumeGrpc(d.clone())
        )))
        .add_service(grpc_limits!(SnapshotServiceServer::new(
            snapshots::grpc::SnapshotGrpc(d.clone())
        )))
        .add_service(grpc_limits!(AttestationServiceServer::new(
            attestations::grpc::AttestationGrpc(d.clone())
        )))
        .add_service(grpc_limits!(IdentityServiceServer::new(
            identities::grpc::IdentityGrpc(d.clone())
        )))
        .add_service(grpc_limits!(AuditServiceServer::new(
            audit::grpc::AuditGrpc(d.clone())
        )))
        .add_service(grpc_limits!(ProjectServiceServer::new(
            projects::grpc::ProjectGrpc(d.clone())
        )))
        .add_service(grpc_limits!(ApplyServiceServer::new(
            apply::grpc::ApplyGrpc(d.clone())
        )))
        .add_service(grpc_limits!(SourceServiceServer::new(
            sources::grpc::SourceGrpc(d.clone())
        )))
        .add_service(grpc_limits!(NodeServiceServer::new(nodes::grpc::NodeGrpc(
            d.clone()
        ))))
        .add_service(grpc_limits!(health))
        .add_service(grpc_limits!(reflection_v1))
        .add_service(grpc_limits!(reflection_v1alpha)),
    )
}

/// The full names (`corral.v1.VmService` …) of the services in encoded descriptor sets.
fn grpc_service_names(sets: &[&[u8]]) -> Result<Vec<String>, prost::DecodeError> {
    use prost::Message;
    let mut names = Vec::new();
    for set in sets {
        for file in prost_types::FileDescriptorSet::decode(*set)?.file {
            for service in &file.service {
                names.push(format!("{}.{}", file.package(), service.name()));
            }
        }
    }
    Ok(names)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// The rules for host files specs name: below `--host-path-allow` for non-admins, never
/// corrald's own state, TLS key or token file; the image store's blobs recognised as its own.
/// Where this node keeps volumes and images, with its storage pools' directories prepared
/// like the data directory (private to corrald, QEMU's group passing through).
pub(crate) fn storage_config(
    config: &Config,
    host_paths: &corral_service::HostPaths,
    qemu: Option<corral_hypervisor::FileOwner>,
) -> anyhow::Result<StorageConfig> {
    for pool in config.storage_pools.values() {
        dirs::prepare(&pool.path, dirs::Which::Pool, qemu)?;
    }
    let mut storage = StorageConfig::new(&config.data_dir);
    storage.qemu_img = config.qemu_img.clone();
    storage.host_paths = host_paths.clone();
    storage.pools = config.storage_pools.clone();
    Ok(storage)
}

pub(crate) fn host_paths(config: &Config) -> anyhow::Result<corral_service::HostPaths> {
    // Canonical, so that the image store's blobs are recognised by the path the kernel reports.
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("resolving {}", config.data_dir.display()))?;
    Ok(config
        .host_path_allow
        .iter()
        .fold(corral_service::HostPaths::new(), |rules, dir| {
            rules.allow(dir)
        })
        .private(&data_dir)
        .private(&config.run_dir)
        .private_files(
            config
                .tcp
                .iter()
                .flat_map(|t| std::iter::once(&t.tls_key).chain(t.token_file.as_ref())),
        )
        .store_blobs(data_dir.join("images/blake3")))
}

/// How this node's VM controller runs: one place for `--role all` and `--role agent`.
pub(crate) fn controller_config(
    config: &Config,
    host_paths: corral_service::HostPaths,
) -> ControllerConfig {
    ControllerConfig {
        seed_dir: config.data_dir.join("seeds"),
        host_paths: Some(host_paths),
        node: Some(config.cluster.node_name.to_string()),
        migration_address: config.cluster.migration_address,
        migration_bandwidth: config.cluster.migration_bandwidth,
        ..ControllerConfig::default()
    }
}
