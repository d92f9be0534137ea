//! Listeners, health, reflection, readiness and shutdown around the agent.
//! The optional TCP listener (mutual TLS only) lives in [`tls`].

pub mod authority;
pub mod connections;
pub mod tls;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fan_dataplane::Dataplane;
use fan_proto::v1::fan_agent_service_server::FanAgentServiceServer;
use futures::FutureExt;
use tokio::net::UnixListener;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::codegen::http::Request;
use tonic_health::ServingStatus;

use crate::agent::Agent;
use crate::api::FanAgentApi;
use crate::state::{OpenOptions, Store, StoreHealth};

/// Largest request the agent decodes: a GC request with many owners fits; more is refused.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// How the agent serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Unix socket path.
    pub socket: PathBuf,
    /// Group owning the socket (mode 0660); None keeps the process group.
    pub socket_group: Option<String>,
    /// Directory of the state database.
    pub state_dir: PathBuf,
    /// How often the kernel is compared with the desired state and repaired;
    /// zero disables the timer (start-up reconcile still runs).
    pub reconcile_interval: Duration,
    /// TCP listener with mutual TLS, in addition to the socket; None serves the socket only.
    pub tcp: Option<tls::TcpConfig>,
    /// Most connections open at once on each listener (lowered to fit the
    /// descriptor limit); at the cap the quietest connection is closed.
    pub max_connections: usize,
    /// How the state store treats state it cannot trust (`--recover`).
    pub state_open: OpenOptions,
    /// Plain-HTTP address serving `GET /metrics` ([`crate::metrics`]); None serves none.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] crate::error::AgentError),
    /// The socket could not be prepared.
    #[error("socket {path}: {message}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Reflection could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The TCP listener could not be opened.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The metrics listener could not be opened.
    #[error("--metrics-listen {listen}: {source}")]
    Metrics {
        /// The address asked for.
        listen: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: ServerConfig,
    dataplane: Arc<dyn Dataplane>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let nofile = connections::raise_descriptor_limit();
    let limits =
        connections::ConnectionLimits::for_descriptor_limit(config.max_connections, nofile);
    tracing::info!(
        descriptor_limit = nofile,
        max_connections = limits.max_connections,
        "connection limits"
    );
    let (store, report) = Store::open_with(&config.state_dir, config.state_open)?;
    if config.state_open.recover {
        if report.is_empty() {
            tracing::info!(path = %store.path().display(), "recover: every record is readable; nothing to repair");
        } else {
            tracing::warn!(path = %store.path().display(), actions = report.len(), "recover: done (see the lines above); serving");
        }
    }
    tracing::info!(path = %store.path().display(), "state opened");
    let mut store_health = store.health();
    // Subscribe before the first check, so no change slips in between.
    let address_changes = match dataplane.watch_addresses().await {
        Ok(changes) => changes,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch address changes; relying on the reconcile timer");
            None
        }
    };
    // DHCP on the bridges of networks with `dhcp` set, from the same store.
    let dhcp = crate::dhcp::DhcpService::start(store.clone());
    let state = store.clone();
    let agent = Arc::new(Agent::new(store, dataplane).await);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<FanAgentServiceServer<FanAgentApi>>()
        .await;

    // google.rpc (tonic-types) too: grpcurl and other reflection clients then
    // decode the ErrorInfo/BadRequest/... details of a status instead of
    // printing them as unrecognized Any.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    // TCP first: a taken port then stops the start-up before the socket exists.
    let tcp = config.tcp.as_ref().map(tls::TcpConfig::bind).transpose()?;
    let metrics_listener = match config.metrics_listen {
        Some(listen) => Some(
            crate::metrics::bind(listen)
                .await
                .map_err(|source| ServerError::Metrics { listen, source })?,
        ),
        None => None,
    };
    let listener = bind_unix(&config.socket, config.socket_group.as_deref())?;
    tracing::info!(socket = %config.socket.display(), "serving");

    // The tasks the agent runs beside its listeners are owned here: each ends
    // at the shutdown signal, and the agent waits for them before it exits.
    let shutdown = shutdown.shared();
    let mut background = JoinSet::new();

    // Readiness follows the data path and the store: SERVING only while every
    // network is programmed and the state store can write.
    let mut ready = agent.readiness();
    let readiness_health = health.clone();
    background.spawn(until(shutdown.clone(), async move {
        let mut notified = false;
        let mut store_was_writable = true;
        loop {
            let networks_ready = *ready.borrow_and_update();
            let store_state = store_health.borrow_and_update().clone();
            let is_ready = networks_ready && store_state.is_writable();
            match &store_state {
                StoreHealth::Unwritable { reason } => {
                    tracing::warn!(reason = %reason, "health NOT_SERVING: the state store cannot write");
                    notify_systemd(&format!("STATUS=state store not writable: {reason}"));
                }
                StoreHealth::Writable if !store_was_writable => {
                    notify_systemd("STATUS=state store writable again");
                }
                StoreHealth::Writable => {}
            }
            store_was_writable = store_state.is_writable();
            let status = if is_ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            readiness_health.set_service_status("", status).await;
            if is_ready {
                readiness_health
                    .set_serving::<FanAgentServiceServer<FanAgentApi>>()
                    .await;
            } else {
                readiness_health
                    .set_not_serving::<FanAgentServiceServer<FanAgentApi>>()
                    .await;
            }
            if is_ready && !notified {
                notified = true;
                notify_systemd("READY=1\nSTATUS=every network programmed");
            }
            let changed = tokio::select! {
                changed = ready.changed() => changed,
                changed = store_health.changed() => changed,
            };
            if changed.is_err() {
                break;
            }
        }
    }));

    if let Some(mut changes) = address_changes {
        let watcher = agent.clone();
        background.spawn(until(shutdown.clone(), async move {
            while changes.recv().await.is_some() {
                // Let a burst settle (`ip addr flush`, an address replaced).
                tokio::time::sleep(Duration::from_millis(100)).await;
                while changes.try_recv().is_ok() {}
                if let Err(err) = watcher.check_host().await {
                    tracing::error!(error = %err, "checking the host's addresses failed");
                }
            }
            tracing::warn!("address-change watch ended; relying on the reconcile timer");
        }));
    }

    // Cut short at the signal even mid-pass: a pass is idempotent and
    // crash-safe, and the next start runs one first thing.
    let reconciler = agent.clone();
    let interval = config.reconcile_interval;
    background.spawn(until(shutdown.clone(), async move {
        loop {
            // The underlay may have changed while the agent was down or
            // between two passes: settle each network's slice first.
            if let Err(err) = reconciler.check_host().await {
                tracing::error!(error = %err, "checking the host's addresses failed");
            }
            match reconciler.reconcile_all().await {
                Ok(0) => tracing::debug!("reconcile: every network matches"),
                Ok(failed) => {
                    tracing::warn!(failed, "reconcile: some networks could not be programmed")
                }
                Err(err) => tracing::error!(error = %err, "reconcile failed"),
            }
            if interval.is_zero() {
                break;
            }
            tokio::time::sleep(interval).await;
        }
    }));

    let events = agent.events();
    // Both listeners serve the same routes and stop on the same signal.
    if let Some(listener) = metrics_listener {
        background.spawn(crate::metrics::serve(
            listener,
            agent.clone(),
            shutdown.clone(),
        ));
    }
    let service = crate::api::service(agent, MAX_MESSAGE_BYTES);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service);
    // Watch streams never end by themselves: end them (UNAVAILABLE) when the
    // agent stops, so the graceful shutdown does not wait on them.
    let closing = shutdown.clone();
    background.spawn(async move {
        closing.await;
        events.close();
    });
    // Every call on either listener is counted by method and status code.
    let routes = tonic::service::Routes::from(routes.into_axum_router().layer(
        crate::metrics::RpcMetricsLayer::new(&[
            fan_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]),
    ));
    let unix = tonic::transport::Server::builder()
        .layer(tower::util::MapRequestLayer::new(
            authority::accept_on_unix as fn(Request<Body>) -> Request<Body>,
        ))
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(
            connections::admit(listener, limits, "unix"),
            shutdown.clone(),
        );
    let tcp = async move {
        match tcp {
            Some(tcp) => tcp.serve(routes, limits, shutdown).await,
            None => Ok(()),
        }
    };
    let (result, tcp_result) = futures::join!(unix, tcp);
    let result = result.and(tcp_result);
    notify_systemd("STOPPING=1");
    stop_background(background).await;
    dhcp.stop().await;
    // The database file alone then holds the state (the log is for crashes).
    state.checkpoint().await;
    // Leave no socket file behind for the next start to trip over.
    if std::fs::symlink_metadata(&config.socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&config.socket);
    }
    tracing::info!("stopped");
    Ok(result?)
}

/// Runs `task` until it ends or `stop` resolves, whichever comes first.
async fn until(stop: impl Future<Output = ()>, task: impl Future<Output = ()>) {
    tokio::select! {
        () = stop => {}
        () = task => {}
    }
}

/// Waits for the background tasks (each has seen the shutdown signal);
/// one that did not end by itself is aborted, one that panicked is logged.
async fn stop_background(mut tasks: JoinSet<()>) {
    let count = tasks.len();
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            if err.is_panic() {
                tracing::error!(error = %err, "a background task panicked");
            }
        }
    }
    tracing::info!(tasks = count, "background tasks stopped");
}

/// Binds the unix socket: refuses when another agent is live on it, removes a
/// stale socket file, sets mode 0660 and the group.
fn bind_unix(path: &Path, group: Option<&str>) -> Result<UnixListener, ServerError> {
    let fail = |message: String| ServerError::Socket {
        path: path.to_owned(),
        message,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("create parent directory: {e}")))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => {
            // Only a socket may be replaced: a typo such as the database path
            // must stop the start-up, never delete what is there.
            if !metadata.file_type().is_socket() {
                return Err(fail(format!(
                    "{} is in the way: refusing to replace it with the agent's socket \
                     (only a stale socket is removed); choose another --socket path",
                    describe_file(&metadata)
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another process is serving on this socket".into()));
            }
            tracing::info!(socket = %path.display(), "removing a stale socket nobody answers on");
            std::fs::remove_file(path).map_err(|e| fail(format!("remove stale socket: {e}")))?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(format!("inspect: {err}"))),
    }
    let listener = UnixListener::bind(path).map_err(|e| fail(format!("bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail(format!("chmod 0660: {e}")))?;
    if let Some(group) = group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|e| fail(format!("look up group {group}: {e}")))?
            .ok_or_else(|| fail(format!("no group named {group}")))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| fail(format!("chown to group {group}: {e}")))?;
    }
    Ok(listener)
}

/// Names what a non-socket file at the socket path is, for the refusal.
fn describe_file(metadata: &std::fs::Metadata) -> String {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        format!("a regular file of {} bytes", metadata.len())
    } else if file_type.is_dir() {
        "a directory".to_owned()
    } else if file_type.is_symlink() {
        "a symbolic link".to_owned()
    } else if file_type.is_fifo() {
        "a FIFO".to_owned()
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device node".to_owned()
    } else {
        "a file that is not a socket".to_owned()
    }
}

/// Sends a state line to systemd when started with `Type=notify`.
fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = PathBuf::from(socket);
    let result = std::os::unix::net::UnixDatagram::unbound().and_then(|s| {
        // An '@' prefix names an abstract socket.
        let bytes = socket.as_os_str().as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)
        } else {
            s.send_to(state.as_bytes(), &socket)
        }
    });
    if let Err(err) = result {
        tracing::warn!(error = %err, "sd_notify failed");
    }
}
