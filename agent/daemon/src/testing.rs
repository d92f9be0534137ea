//! The real agent on a [`FakeDataplane`], for tests that run without root.
//!
//! [`TestAgent`] serves the real [`Agent`] and the real gRPC API through
//! [`server::run`] (the code path `fan-agent` runs), on a temporary state
//! directory and a temporary unix socket, in its own thread and runtime. The
//! only thing not real is the kernel: the [`FakeDataplane`] the test keeps a
//! handle to, to inject failures, drift and address changes and to read what
//! the agent asked of the kernel. [`AgentOnFake`] is the same agent without
//! the server, for tests that call its operations directly.
//!
//! Built with the `testing` feature (on for the agent's own tests); other
//! crates' tests enable it through a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! fan-agent = { workspace = true, features = ["testing"] }
//! ```
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fan_agent::testing::{Op, TestAgent};
//! let agent = TestAgent::start().await?;
//! agent.dataplane().fail_always(Op::Apply, "fan", "EPERM");
//! let mut client = agent.client().await?;
//! // ... CreateNetwork "fan" now fails with NETWORK_PROGRAMMING_FAILED.
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fan_dataplane::Dataplane;
use fan_proto::v1::fan_agent_service_client::FanAgentServiceClient;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::agent::Agent;
use crate::server::{self, ServerConfig, ServerError};
use crate::state::{OpenOptions, Store};

pub use fan_dataplane::fake::{Call, FakeDataplane, Op, Paused, Programmed};
// What a test hands the fake (drift, host addresses, backend availability).
pub use fan_dataplane::{BackendKind, Drift, HostAddress};

/// Why a test agent could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// The temporary directory or the agent's thread could not be made.
    #[error("test agent set-up: {0}")]
    Io(#[from] std::io::Error),
    /// The state store could not be opened.
    #[error(transparent)]
    Agent(#[from] crate::error::AgentError),
    /// `server::run` failed (or stopped before it served).
    #[error("test agent server: {0}")]
    Server(#[from] ServerError),
    /// The agent's thread ended without a result (it panicked).
    #[error("test agent thread ended without a result")]
    Gone,
    /// The socket could not be dialled.
    #[error("dial {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// How to start a [`TestAgent`]; [`TestAgent::builder`] makes one.
#[derive(Debug)]
pub struct TestAgentBuilder {
    dataplane: Option<Arc<FakeDataplane>>,
    reconcile_interval: Duration,
    dir: Option<tempfile::TempDir>,
}

impl TestAgentBuilder {
    /// Serves on this fake (e.g. one a test prepared, or the one of an agent
    /// it stopped); a new [`FakeDataplane::new`] otherwise.
    pub fn dataplane(mut self, dataplane: Arc<FakeDataplane>) -> Self {
        self.dataplane = Some(dataplane);
        self
    }

    /// Reconciles on this interval after the start-up pass; the default
    /// (zero) runs the start-up pass only.
    pub fn reconcile_interval(mut self, interval: Duration) -> Self {
        self.reconcile_interval = interval;
        self
    }

    /// Serves from this directory (its `state/` and `agent.sock`), e.g. the
    /// one [`TestAgent::stop`] returned: the stored networks and
    /// allocations survive, as across a restart of `fan-agent`.
    pub fn directory(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Starts the agent and returns once it answers on its socket (before
    /// the start-up pass is done: readiness is what the health service says).
    pub async fn start(self) -> Result<TestAgent, TestingError> {
        let restart = self.dir.is_some();
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::Builder::new()
                .prefix("fan-agent-test-")
                .tempdir()?,
        };
        let dataplane = self
            .dataplane
            .unwrap_or_else(|| Arc::new(FakeDataplane::new()));
        let socket = dir.path().join("agent.sock");
        let config = ServerConfig {
            socket: socket.clone(),
            socket_group: None,
            state_dir: dir.path().join("state"),
            reconcile_interval: self.reconcile_interval,
            tcp: None,
            max_connections: 64,
            state_open: OpenOptions::default(),
            metrics_listen: None,
        };
        let (stop, done) = loop {
            let (stop, mut done) = launch(config.clone(), dataplane.clone())?;
            // Serving means the socket answers; the server ending first is its error.
            let served = loop {
                match done.try_recv() {
                    Ok(Ok(())) | Err(oneshot::error::TryRecvError::Closed) => {
                        break Err(TestingError::Gone)
                    }
                    Ok(Err(err)) => break Err(TestingError::Server(err)),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                    break Ok(());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            match served {
                Ok(()) => break (stop, done),
                // A restart may find the previous agent's writer thread still
                // closing the database (after the directory lock is released).
                Err(TestingError::Server(ServerError::State(
                    crate::error::AgentError::Storage(message),
                ))) if restart && message.contains("another agent holds") => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(err) => return Err(err),
            }
        };
        Ok(TestAgent {
            socket,
            dataplane,
            dir: Some(dir),
            stop: Some(stop),
            done: Some(done),
        })
    }
}

/// Runs `server::run` in a thread of its own, with its own runtime: a
/// test's runtime flavour or a blocked test thread cannot stall the agent.
/// Returns the stop signal and the server's result.
#[allow(clippy::type_complexity)]
fn launch(
    config: ServerConfig,
    dataplane: Arc<FakeDataplane>,
) -> Result<
    (
        oneshot::Sender<()>,
        oneshot::Receiver<Result<(), ServerError>>,
    ),
    TestingError,
> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel();
    let shared: Arc<dyn Dataplane> = dataplane;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fan-test-agent")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("fan-test-agent".into())
        .spawn(move || {
            let result = runtime.block_on(server::run(config, shared, async move {
                // A dropped TestAgent stops the agent too.
                let _ = stopped.await;
            }));
            // Dropping the runtime ends the agent's tasks, and with them its
            // hold on the state directory.
            drop(runtime);
            let _ = done_tx.send(result);
        })?;
    Ok((stop, done))
}

/// The real agent served on a temporary unix socket over a [`FakeDataplane`]
/// (see the [module documentation](self)). Dropping it stops the agent and
/// removes its directory.
#[derive(Debug)]
pub struct TestAgent {
    socket: PathBuf,
    dataplane: Arc<FakeDataplane>,
    dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<(), ServerError>>>,
}

impl TestAgent {
    /// Starts an agent on a new fake host ([`FakeDataplane::new`]).
    pub async fn start() -> Result<TestAgent, TestingError> {
        TestAgent::builder().start().await
    }

    /// Options for [`TestAgentBuilder::start`].
    pub fn builder() -> TestAgentBuilder {
        TestAgentBuilder {
            dataplane: None,
            reconcile_interval: Duration::ZERO,
            dir: None,
        }
    }

    /// The unix socket the agent serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket as a `unix://` target, as `FAN_AGENT` / `--agent` take it.
    pub fn target(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.directory().join("state")
    }

    fn directory(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            // Only `stop` takes it, and `stop` consumes the agent.
            None => Path::new("/nonexistent"),
        }
    }

    /// The fake kernel under the agent: inject faults, read its calls.
    pub fn dataplane(&self) -> &Arc<FakeDataplane> {
        &self.dataplane
    }

    /// A gRPC channel over the socket (one connection, made now).
    pub async fn channel(&self) -> Result<Channel, TestingError> {
        let socket = Arc::new(self.socket.clone());
        let path = socket.clone();
        // The URI is not used by the connector; it only sets :authority.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&*path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| TestingError::Connect {
                socket: (*socket).clone(),
                source,
            })
    }

    /// A `fan.agent.v1` client over [`TestAgent::channel`].
    pub async fn client(&self) -> Result<FanAgentServiceClient<Channel>, TestingError> {
        Ok(FanAgentServiceClient::new(self.channel().await?))
    }

    /// Stops the agent the way SIGTERM does, waits until it has stopped and
    /// released its state, and returns its directory for a restart
    /// ([`TestAgentBuilder::directory`]); the fake stays with the caller.
    pub async fn stop(mut self) -> Result<tempfile::TempDir, TestingError> {
        // The agent's address watch would keep its tasks alive.
        self.dataplane.close_address_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.done.take() {
            Some(done) => done.await.map_err(|_| TestingError::Gone)?,
            None => Ok(()),
        };
        result?;
        let dir = self.dir.take().ok_or(TestingError::Gone)?;
        state_released(&dir.path().join("state")).await?;
        Ok(dir)
    }
}

/// Waits until no store holds `state_dir` (the writer thread closes the
/// database after the agent's runtime is gone), so a restart can open it.
async fn state_released(state_dir: &Path) -> Result<(), TestingError> {
    loop {
        let dir = std::fs::File::open(state_dir)?;
        match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            // Dropping the lock releases it at once.
            Ok(_lock) => return Ok(()),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((_, errno)) => return Err(std::io::Error::from(errno).into()),
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real [`Agent`] over a [`FakeDataplane`] and a store in a temporary
/// directory, without a server: its operations are called directly, and
/// nothing runs in the background (no start-up pass, no timer) unless the
/// test calls it.
pub struct AgentOnFake {
    /// The agent.
    pub agent: Arc<Agent>,
    /// The fake kernel under it.
    pub dataplane: Arc<FakeDataplane>,
    /// The state directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl AgentOnFake {
    /// An agent on a new fake host ([`FakeDataplane::new`]).
    pub async fn new() -> Result<AgentOnFake, TestingError> {
        AgentOnFake::on(Arc::new(FakeDataplane::new())).await
    }

    /// An agent on `dataplane`.
    pub async fn on(dataplane: Arc<FakeDataplane>) -> Result<AgentOnFake, TestingError> {
        let dir = tempfile::Builder::new()
            .prefix("fan-agent-test-")
            .tempdir()?;
        let store = Store::open(&dir.path().join("state"))?;
        let shared: Arc<dyn Dataplane> = dataplane.clone();
        let agent = Arc::new(Agent::new(store, shared).await);
        Ok(AgentOnFake {
            agent,
            dataplane,
            dir,
        })
    }
}

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
mod api_tests;
