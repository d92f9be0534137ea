//! The real agent for the SDK's and the CLI's tests, and a thin fault layer
//! in front of it. Runs without root.
//!
//! [`start`] serves the real agent (`fan_agent::testing::TestAgent`: the
//! real API, validation and store over an in-memory data plane) on a
//! temporary unix socket, so every rule the tests meet (paging, ErrorInfo
//! reasons, spec checks, allocation) is the agent's own. [`FaultProxy`] is
//! only what the real agent cannot be made to do on demand: a proxy that
//! forwards every call to it, counts the calls per method, and fails or
//! delays the next calls of a method; the SDK's retries, deadlines and TLS
//! are tested through it.

#![allow(dead_code)]

pub mod pki;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// Not every test binary uses every one.
#[allow(unused_imports)]
pub use fan_agent::testing::{BackendKind, Drift, FakeDataplane, HostAddress, TestAgent};
use fan_proto::v1::fan_agent_service_server::SERVICE_NAME;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Service, ServiceExt};

/// The real agent on a new fake host.
pub async fn start() -> TestAgent {
    TestAgent::start().await.expect("start the test agent")
}

/// The real agent on `dataplane` (a host the test prepared: addresses,
/// backend availability; read when the agent starts).
pub async fn start_on(dataplane: FakeDataplane) -> TestAgent {
    TestAgent::builder()
        .dataplane(Arc::new(dataplane))
        .start()
        .await
        .expect("start the test agent")
}

/// A status to inject, shaped as the agent sends its own: code, message,
/// ErrorInfo reason.
pub fn status(code: Code, message: &str, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, "fan.agent.v1", HashMap::new()),
    )
}

#[derive(Default)]
struct Script {
    /// method -> statuses to answer, in order, instead of forwarding
    failures: HashMap<String, VecDeque<Status>>,
    /// method -> delay before answering
    delays: HashMap<String, Duration>,
    /// method -> calls received
    calls: HashMap<String, usize>,
}

/// The real agent behind a proxy that counts, fails and delays calls;
/// stops when dropped.
pub struct FaultProxy {
    /// The real agent.
    pub agent: TestAgent,
    /// The proxy's target (`unix:…`, or `https://127.0.0.1:…` with TLS).
    pub target: String,
    script: Arc<Mutex<Script>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A new real agent behind a proxy on a unix socket.
    pub async fn start() -> FaultProxy {
        let agent = start().await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(
            tokio::net::UnixListener::bind(&socket).unwrap(),
        );
        let target = format!("unix:{}", socket.display());
        Self::serve(
            agent,
            dir,
            target,
            tonic::transport::Server::builder(),
            incoming,
        )
        .await
    }

    /// A new real agent behind a proxy on TCP 127.0.0.1 with TLS: it
    /// presents `cert`/`key` and, with `client_ca`, requires client
    /// certificates signed by it (mutual TLS).
    #[cfg(feature = "tls")]
    pub async fn start_tls(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> FaultProxy {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let agent = start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        let server = tonic::transport::Server::builder().tls_config(tls).unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Self::serve(
            agent,
            tempfile::tempdir().unwrap(),
            target,
            server,
            incoming,
        )
        .await
    }

    async fn serve<I, IO>(
        agent: TestAgent,
        dir: tempfile::TempDir,
        target: String,
        mut server: tonic::transport::Server,
        incoming: I,
    ) -> FaultProxy
    where
        I: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let script = Arc::new(Mutex::new(Script::default()));
        let proxy = Proxy {
            upstream: agent.channel().await.expect("dial the test agent"),
            script: script.clone(),
        };
        let router = server.add_service(proxy);
        let task = tokio::spawn(async move {
            // Ends with the test (the task is aborted on drop).
            let _ = router.serve_with_incoming(incoming).await;
        });
        FaultProxy {
            agent,
            target,
            script,
            _dir: dir,
            task,
        }
    }

    /// Answers the next calls of `method` (e.g. "GetAgentInfo") with these
    /// statuses instead of forwarding them.
    pub fn fail(&self, method: &str, statuses: Vec<Status>) {
        let mut script = self.script.lock().unwrap();
        script
            .failures
            .entry(method.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// Delays every call of `method` by `delay` before answering.
    pub fn delay(&self, method: &str, delay: Duration) {
        let mut script = self.script.lock().unwrap();
        script.delays.insert(method.to_owned(), delay);
    }

    /// How many calls of `method` the proxy received.
    pub fn calls(&self, method: &str) -> usize {
        let script = self.script.lock().unwrap();
        script.calls.get(method).copied().unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's service: every `fan.agent.v1` call, forwarded as HTTP/2
/// unless the script says otherwise.
#[derive(Clone)]
struct Proxy {
    upstream: Channel,
    script: Arc<Mutex<Script>>,
}

impl NamedService for Proxy {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for Proxy {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or("");
        let (failure, delay) = {
            let mut script = self.script.lock().unwrap();
            *script.calls.entry(method.to_owned()).or_default() += 1;
            let failure = script
                .failures
                .get_mut(method)
                .and_then(VecDeque::pop_front);
            (failure, script.delays.get(method).copied())
        };
        let upstream = self.upstream.clone();
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = failure {
                return Ok(status.into_http());
            }
            match upstream.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(err) => Ok(Status::unavailable(format!("proxy: {err}")).into_http()),
            }
        })
    }
}
