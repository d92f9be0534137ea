//! Prometheus metrics, served read-only on `--metrics-listen` (off by default).
//!
//! Process-wide counters and histograms (gRPC calls, state-store commits,
//! reconcile passes, drifts, build info) live in one registry, updated where
//! the work happens. Per-network figures (allocations, state, data-plane
//! packet counters) are read at scrape time through the agent's own status
//! path ([`Agent::list_networks`]), never on a timer, so a scrape shows the
//! kernel's counters as they are.
//!
//! The listener is a deliberately small HTTP/1.1 responder: `GET` or `HEAD`
//! of `/metrics` only, one request per connection, a bounded request head,
//! short timeouts and a cap on connections, so it cannot be used to load or
//! stall the agent.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::{HeaderMap, Request, Response};

use crate::agent::{Agent, NetworkHealth, NetworkView};

/// Most scrape connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers) read, in bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the per-network part of a scrape may take before it is left out.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most time spent reading what a client still sends after its response.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read (and dropped) after a response.
const LINGER_BYTES: usize = 64 * 1024;

/// The Prometheus text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process-wide metrics.
pub struct Metrics {
    registry: Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    store_commit_duration: Histogram,
    store_commit_failures: IntCounter,
    reconcile_runs: IntCounter,
    reconcile_network_failures: IntCounter,
    drifts_found: IntCounterVec,
    drifts_repaired: IntCounter,
    scrape_failures: IntCounter,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics (always recorded: a few atomic increments).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Latency buckets in seconds, 100 µs to ~26 s.
fn latency_buckets() -> Vec<f64> {
    (0..19).map(|i| 0.0001 * 2f64.powi(i)).collect()
}

impl Metrics {
    // Every name, label set and help text below is fixed: registration
    // cannot fail, and a failure would be a programming error caught by the
    // unit tests.
    #[allow(clippy::expect_used)]
    fn new() -> Metrics {
        let registry = Registry::new();
        let rpc_requests = IntCounterVec::new(
            Opts::new(
                "fan_grpc_requests_total",
                "gRPC calls handled, by service, method and gRPC status code (streams by the status they start with)",
            ),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "fan_grpc_request_duration_seconds",
                "Time from a gRPC request's arrival to its status (unary) or to the start of its response (streams)",
            )
            .buckets(latency_buckets()),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let store_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "fan_store_commit_duration_seconds",
                "Time to durably commit one batch of state changes (one redb transaction)",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        let store_commit_failures = IntCounter::new(
            "fan_store_commit_failures_total",
            "State-store commits that failed (a batch: refused and undone; a checkpoint: the store turns unwritable)",
        )
        .expect("valid metric");
        let reconcile_runs = IntCounter::new(
            "fan_reconcile_runs_total",
            "Reconcile passes over every stored network (at start and on the reconcile timer)",
        )
        .expect("valid metric");
        let reconcile_network_failures = IntCounter::new(
            "fan_reconcile_network_failures_total",
            "Networks a reconcile pass could not program",
        )
        .expect("valid metric");
        let drifts_found = IntCounterVec::new(
            Opts::new(
                "fan_drifts_found_total",
                "Differences between the kernel and the desired state, found by a reconcile pass (source=reconcile) or by CheckNetwork (source=check)",
            ),
            &["source"],
        )
        .expect("valid metric");
        let drifts_repaired = IntCounter::new(
            "fan_drifts_repaired_total",
            "Drifts a reconcile pass found and then repaired by programming the network again",
        )
        .expect("valid metric");
        let scrape_failures = IntCounter::new(
            "fan_metrics_network_read_failures_total",
            "Scrapes whose per-network figures could not be read (failed or timed out) and were left out",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "fan_build_info",
                "Always 1; the agent's version in the version label",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(rpc_requests.clone()),
            Box::new(rpc_duration.clone()),
            Box::new(store_commit_duration.clone()),
            Box::new(store_commit_failures.clone()),
            Box::new(reconcile_runs.clone()),
            Box::new(reconcile_network_failures.clone()),
            Box::new(drifts_found.clone()),
            Box::new(drifts_repaired.clone()),
            Box::new(scrape_failures.clone()),
            Box::new(build_info),
        ];
        for collector in collectors {
            registry.register(collector).expect("unique metric");
        }
        Metrics {
            registry,
            rpc_requests,
            rpc_duration,
            store_commit_duration,
            store_commit_failures,
            reconcile_runs,
            reconcile_network_failures,
            drifts_found,
            drifts_repaired,
            scrape_failures,
        }
    }

    /// Counts one reconcile pass and the networks it could not program.
    pub fn reconcile_run(&self, failed: usize) {
        self.reconcile_runs.inc();
        self.reconcile_network_failures.inc_by(failed as u64);
    }

    /// Counts drifts CheckNetwork found.
    pub fn drifts_checked(&self, found: usize) {
        self.drifts_found
            .with_label_values(&["check"])
            .inc_by(found as u64);
    }

    /// Counts drifts a reconcile pass found before repairing.
    pub fn reconcile_drifts_found(&self, found: usize) {
        self.drifts_found
            .with_label_values(&["reconcile"])
            .inc_by(found as u64);
    }

    /// Counts drifts a reconcile pass repaired.
    pub fn drifts_repaired(&self, repaired: usize) {
        self.drifts_repaired.inc_by(repaired as u64);
    }

    fn rpc(&self, method: &MethodInfo, code: i32, elapsed: Duration) {
        let labels = [
            method.service.as_str(),
            method.method.as_str(),
            code_name(code),
        ];
        self.rpc_requests.with_label_values(&labels).inc();
        self.rpc_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Times one state-store commit (the writer loop wraps its commit in this).
pub fn time_commit<T, E>(commit: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let result = commit();
    let metrics = get();
    metrics
        .store_commit_duration
        .observe(start.elapsed().as_secs_f64());
    if result.is_err() {
        metrics.store_commit_failures.inc();
    }
    result
}

/// The canonical name of a gRPC status code, as Prometheus exporters label it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        // Not a code a server may send: reported as UNKNOWN, as clients do.
        _ => "UNKNOWN",
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------- gRPC layer

/// Labels of one gRPC method.
#[derive(Debug)]
struct MethodInfo {
    service: String,
    method: String,
    /// Server-streaming: counted when the response starts.
    streaming: bool,
}

/// The methods the agent serves, from the descriptor sets it registers for
/// reflection; any other path is labelled `unknown`, so a caller cannot
/// create series at will.
#[derive(Debug)]
struct Methods {
    by_path: HashMap<String, Arc<MethodInfo>>,
    unknown: Arc<MethodInfo>,
}

impl Methods {
    fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut by_path = HashMap::new();
        for set in sets {
            // The sets are compiled in; one that does not decode adds nothing.
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        by_path.insert(
                            format!("/{full}/{}", method.name()),
                            Arc::new(MethodInfo {
                                service: full.clone(),
                                method: method.name().to_owned(),
                                streaming: method.server_streaming(),
                            }),
                        );
                    }
                }
            }
        }
        Methods {
            by_path,
            unknown: Arc::new(MethodInfo {
                service: "unknown".to_owned(),
                method: "unknown".to_owned(),
                streaming: false,
            }),
        }
    }

    fn lookup(&self, path: &str) -> Arc<MethodInfo> {
        self.by_path.get(path).unwrap_or(&self.unknown).clone()
    }
}

/// A tower layer counting and timing every gRPC call by service, method and
/// status code (`fan_grpc_requests_total`, `fan_grpc_request_duration_seconds`).
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    methods: Arc<Methods>,
}

impl RpcMetricsLayer {
    /// Knows the methods of the given encoded descriptor sets.
    pub fn new(descriptor_sets: &[&[u8]]) -> RpcMetricsLayer {
        RpcMetricsLayer {
            methods: Arc::new(Methods::from_descriptor_sets(descriptor_sets)),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    methods: Arc<Methods>,
}

/// A call whose status is not known yet.
struct Pending {
    method: Arc<MethodInfo>,
    start: Instant,
}

impl Pending {
    fn record(self, code: i32) {
        get().rpc(&self.method, code, self.start.elapsed());
    }
}

impl<S, B, RB> tower::Service<Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let pending = Pending {
            method: self.methods.lookup(request.uri().path()),
            start: Instant::now(),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            // A status in the headers is a trailers-only response (every
            // refusal); a stream is labelled by the status it starts with;
            // a unary call's status comes in the trailers after its message.
            let pending = match (grpc_status(&parts.headers), pending.method.streaming) {
                (Some(code), _) => {
                    pending.record(code);
                    None
                }
                (None, true) => {
                    pending.record(0);
                    None
                }
                (None, false) => Some(pending),
            };
            Ok(Response::from_parts(
                parts,
                MeteredBody {
                    inner: body,
                    pending,
                },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the grpc-status trailer
    /// passes (or CANCELLED when the body is dropped before it: the client left).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.record(1);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(pending) = this.pending.take() {
                        pending.record(grpc_status(trailers).unwrap_or(2));
                    }
                }
            }
            // The body failed or ended without a status: UNKNOWN, as a client sees it.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(pending) = this.pending.take() {
                    pending.record(2);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- exposition

/// Renders every metric in the text exposition format: the process-wide
/// registry plus the per-network figures read now.
pub async fn render(agent: &Agent) -> String {
    let metrics = get();
    let views = match tokio::time::timeout(GATHER_TIMEOUT, network_views(agent)).await {
        Ok(Ok(views)) => Some(views),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "metrics: reading the networks failed; left out of this scrape");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: reading the networks timed out; left out of this scrape");
            None
        }
    };
    if views.is_none() {
        metrics.scrape_failures.inc();
    }
    let mut families = metrics.registry.gather();
    match network_registry(views.as_deref().unwrap_or_default()) {
        Ok(networks) => families.extend(networks.gather()),
        Err(err) => tracing::warn!(error = %err, "metrics: building the network metrics failed"),
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = String::new();
    if let Err(err) = prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
        tracing::warn!(error = %err, "metrics: encoding failed");
    }
    text
}

async fn network_views(agent: &Agent) -> crate::error::Result<Vec<NetworkView>> {
    let mut views = Vec::new();
    let mut token = String::new();
    loop {
        let page = agent.list_networks(0, &token).await?;
        views.extend(page.items);
        if page.next_page_token.is_empty() {
            return Ok(views);
        }
        token = page.next_page_token;
    }
}

/// Per-network figures as a registry of their own, built for one scrape.
fn network_registry(views: &[NetworkView]) -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let allocations = IntGaugeVec::new(
        Opts::new(
            "fan_allocations",
            "Addresses allocated in a network (stale allocations of a former slice not included)",
        ),
        &["network"],
    )?;
    let capacity = IntGaugeVec::new(
        Opts::new(
            "fan_allocations_capacity",
            "Assignable addresses of a network's slice in total",
        ),
        &["network"],
    )?;
    let stale = IntGaugeVec::new(
        Opts::new(
            "fan_allocations_stale",
            "Allocations left from a former slice of the network (the host's underlay address moved)",
        ),
        &["network"],
    )?;
    let state = IntGaugeVec::new(
        Opts::new(
            "fan_network_state",
            "1 for the state a network is in (ready, degraded or failed), 0 for the others",
        ),
        &["network", "state"],
    )?;
    let encapsulated = IntCounterVec::new(
        Opts::new(
            "fan_dataplane_encapsulated_packets_total",
            "Packets a network's data plane encapsulated towards another host (as the kernel counts them; absent when the backend keeps no counters)",
        ),
        &["network"],
    )?;
    let decapsulated = IntCounterVec::new(
        Opts::new(
            "fan_dataplane_decapsulated_packets_total",
            "Packets a network's data plane decapsulated into the local slice",
        ),
        &["network"],
    )?;
    let dropped = IntCounterVec::new(
        Opts::new(
            "fan_dataplane_dropped_packets_total",
            "Packets a network's data plane dropped, by reason: spoofed (decap anti-spoofing), fragment (outer fragments at decap), spoofed_egress (egress anti-spoofing), other",
        ),
        &["network", "reason"],
    )?;
    let networks = IntGauge::new("fan_networks", "Networks stored on this agent")?;
    networks.set(views.len() as i64);
    for view in views {
        let id = view.record.id.as_str();
        let status = &view.status;
        allocations
            .with_label_values(&[id])
            .set(i64::from(status.allocated));
        capacity
            .with_label_values(&[id])
            .set(i64::from(status.capacity));
        stale
            .with_label_values(&[id])
            .set(i64::from(status.stale_allocations));
        for (name, value) in [
            ("ready", NetworkHealth::Ready),
            ("degraded", NetworkHealth::Degraded),
            ("failed", NetworkHealth::Failed),
        ] {
            state
                .with_label_values(&[id, name])
                .set(i64::from(status.state == value));
        }
        if let Some(counters) = &status.counters {
            encapsulated
                .with_label_values(&[id])
                .inc_by(counters.encapsulated);
            decapsulated
                .with_label_values(&[id])
                .inc_by(counters.decapsulated);
            for (reason, value) in [
                ("spoofed", counters.dropped_spoofed),
                ("fragment", counters.dropped_fragment),
                ("spoofed_egress", counters.dropped_spoofed_egress),
                ("other", counters.dropped_other),
            ] {
                dropped.with_label_values(&[id, reason]).inc_by(value);
            }
        }
    }
    registry.register(Box::new(allocations))?;
    registry.register(Box::new(capacity))?;
    registry.register(Box::new(stale))?;
    registry.register(Box::new(state))?;
    registry.register(Box::new(encapsulated))?;
    registry.register(Box::new(decapsulated))?;
    registry.register(Box::new(dropped))?;
    registry.register(Box::new(networks))?;
    Ok(registry)
}

// ---------------------------------------------------------------- HTTP

/// Binds the metrics listener (a taken or invalid address stops the start-up).
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let _ = get();
    if let Ok(local) = listener.local_addr() {
        tracing::info!(listen = %local, "serving metrics (GET /metrics)");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // One scrape reads the networks at a time; others wait their turn.
    let gather = Arc::new(tokio::sync::Mutex::new(()));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the cap the newcomer is closed at once: scrapers retry.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let agent = agent.clone();
        let gather = gather.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = respond(stream, &agent, &gather).await {
                tracing::debug!(error = %err, "metrics: connection ended");
            }
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// GET (or HEAD when `head_only`) /metrics.
    Metrics { head_only: bool },
    /// The path exists, the method is not allowed.
    MethodNotAllowed,
    /// No such path.
    NotFound,
    /// Not an HTTP/1 request line.
    BadRequest,
}

/// Routes a request head's first line.
fn route(request_line: &str) -> Route {
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

async fn respond(
    mut stream: TcpStream,
    agent: &Agent,
    gather: &tokio::sync::Mutex<()>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                false,
            )
            .await;
        }
        Ok(Err(err)) => return Err(err),
        Err(_) => {
            return write(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                b"request timed out\n",
                false,
            )
            .await;
        }
    };
    let request_line = head.lines().next().unwrap_or_default();
    match route(request_line) {
        Route::Metrics { head_only } => {
            let body = {
                let _turn = gather.lock().await;
                render(agent).await
            };
            write(
                &mut stream,
                "200 OK",
                CONTENT_TYPE,
                body.as_bytes(),
                head_only,
            )
            .await
        }
        Route::MethodNotAllowed => {
            write(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                b"only GET and HEAD of /metrics\n",
                false,
            )
            .await
        }
        Route::NotFound => {
            write(
                &mut stream,
                "404 Not Found",
                "text/plain",
                b"only /metrics is served\n",
                false,
            )
            .await
        }
        Route::BadRequest => {
            write(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                b"not an HTTP/1 request\n",
                false,
            )
            .await
        }
    }
}

/// Reads up to the end of the request head; None when it exceeds the limit.
/// A body, if any, is never read (the connection closes after the response).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buffer) {
            return Ok(Some(String::from_utf8_lossy(&buffer[..end]).into_owned()));
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

fn find_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buffer.windows(2).position(|w| w == b"\n\n"))
}

async fn write(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Closing with unread input (a refused oversized head, a body) makes the
    // kernel send a reset that can destroy the response before the client
    // reads it: read and drop what is still coming, briefly and boundedly.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_get_and_head_of_metrics() {
        assert_eq!(
            route("GET /metrics HTTP/1.1"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("GET /metrics?x=1 HTTP/1.0"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("DELETE /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metrics/x HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metrics"), Route::BadRequest);
        assert_eq!(route("PRI * HTTP/2.0"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }

    #[test]
    fn methods_come_from_the_descriptor_sets() {
        let methods = Methods::from_descriptor_sets(&[fan_proto::FILE_DESCRIPTOR_SET]);
        let allocate = methods.lookup("/fan.agent.v1.FanAgentService/AllocateAddress");
        assert_eq!(allocate.service, "fan.agent.v1.FanAgentService");
        assert_eq!(allocate.method, "AllocateAddress");
        assert!(!allocate.streaming);
        let other = methods.lookup("/fan.agent.v1.FanAgentService/NoSuchMethod");
        assert_eq!(other.method, "unknown");
        let health = Methods::from_descriptor_sets(&[tonic_health::pb::FILE_DESCRIPTOR_SET]);
        assert!(health.lookup("/grpc.health.v1.Health/Watch").streaming);
        assert!(!health.lookup("/grpc.health.v1.Health/Check").streaming);
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }

    #[test]
    fn the_registry_encodes_with_help_and_types() {
        time_commit(|| Ok::<(), ()>(())).unwrap();
        let _ = time_commit(|| Err::<(), ()>(()));
        let families = get().registry.gather();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap();
        assert!(text.contains("# TYPE fan_store_commit_duration_seconds histogram"));
        assert!(text.contains("# TYPE fan_store_commit_failures_total counter"));
        assert!(text.contains(&format!(
            "fan_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        let empty = network_registry(&[]).unwrap().gather();
        assert!(empty.iter().any(|f| f.name() == "fan_networks"));
    }
}
