//! [`FanClient`]: connecting to an agent and the typed calls.

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_client::FanAgentServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::convert;
use crate::error::{one_line, Error};
use crate::types::*;
use crate::watch::{Allocated, AllocationFilter, NetworkUpdate, WatchEvent, WatchOptions};

/// The agent's default address: its unix socket.
pub const DEFAULT_TARGET: &str = "unix:///run/fan/agent.sock";

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default timeout for establishing the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an agent listens, parsed from a target string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A unix socket: `unix:///run/fan/agent.sock`, `unix:PATH`, or an
    /// absolute path alone.
    Unix(PathBuf),
    /// Plain-text HTTP/2: `http://host:port`.
    Http(String),
    /// TLS: `https://host:port`.
    Https(String),
}

impl Target {
    /// Parses a target string (see [`FanClient::connect`]).
    pub fn parse(target: &str) -> Result<Target, Error> {
        let invalid = |detail: &str| Error::InvalidTarget {
            target: target.to_string(),
            detail: detail.to_string(),
        };
        if let Some(rest) = target.strip_prefix("unix://") {
            if rest.is_empty() {
                return Err(invalid("no socket path"));
            }
            if !rest.starts_with('/') {
                return Err(invalid(
                    "unix:// takes an absolute path (unix:///run/fan/agent.sock); use unix:PATH for a relative one",
                ));
            }
            return Ok(Target::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = target.strip_prefix("unix:") {
            if rest.is_empty() {
                return Err(invalid("no socket path"));
            }
            return Ok(Target::Unix(PathBuf::from(rest)));
        }
        if target.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(target)));
        }
        for (scheme, tls) in [("http://", false), ("https://", true)] {
            if let Some(rest) = target.strip_prefix(scheme) {
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(invalid(
                        "expected host:port after the scheme, without a path",
                    ));
                }
                if authority.parse::<Uri>().is_err() {
                    return Err(invalid("not a valid host:port"));
                }
                let uri = format!("{scheme}{authority}");
                return Ok(if tls {
                    Target::Https(uri)
                } else {
                    Target::Http(uri)
                });
            }
        }
        Err(invalid(
            "expected unix:///PATH, unix:PATH, http://HOST:PORT or https://HOST:PORT",
        ))
    }
}

/// TLS settings for `https://` targets (needs the `tls` cargo feature).
///
/// Fields are public; build one from [`TlsConfig::default`] and set what
/// you need, so that new fields do not break your code.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM of the CA that signs the agent's certificate; `None` uses the
    /// system's root certificates.
    pub ca_certificate_pem: Option<Vec<u8>>,
    /// PEM of this client's certificate (mutual TLS), with
    /// `client_key_pem`.
    pub client_certificate_pem: Option<Vec<u8>>,
    /// PEM of this client's private key (mutual TLS).
    pub client_key_pem: Option<Vec<u8>>,
    /// The name to verify the agent's certificate against, when it is not
    /// the target's host.
    pub domain_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificate_pem", &self.ca_certificate_pem.is_some())
            .field(
                "client_certificate_pem",
                &self.client_certificate_pem.is_some(),
            )
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

/// When failed calls are tried again.
///
/// The rule: a call is retried only when it is idempotent AND it failed
/// with `UNAVAILABLE` (the agent is restarting, or the connection broke).
/// Idempotent calls are every read (GetAgentInfo, GetNetwork, ListNetworks,
/// CheckNetwork, GetAllocation, ListAllocations, ResolveAddress) and two
/// writes the API defines as idempotent: CreateNetwork (same spec, same
/// result) and AllocateAddress (same owner, same address). DeleteNetwork,
/// ReleaseAddress and GarbageCollectAllocations are never retried: their
/// second attempt could report a different outcome than the first one had.
/// Timeouts are never retried either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 disables retries).
    pub max_attempts: u32,
    /// The pause before the second attempt; it doubles for each further one.
    pub initial_backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms then 200 ms apart.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How to connect: timeouts, retries, TLS.
///
/// Fields are public; start from [`ConnectOptions::default`] and set what
/// you need, so that new fields do not break your code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The timeout of every call, each attempt separately (default 10 s).
    pub timeout: Duration,
    /// The timeout for establishing the connection (default 5 s).
    pub connect_timeout: Duration,
    /// When calls are retried.
    pub retry: RetryPolicy,
    /// TLS for `https://` targets; `None` there uses the system roots.
    pub tls: Option<TlsConfig>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            tls: None,
        }
    }
}

impl ConnectOptions {
    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the connection timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the TLS configuration.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Options of [`FanClient::delete_network`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteNetworkOptions {
    /// Delete even while allocations exist (they are released).
    pub force: bool,
    /// Succeed when the network does not exist.
    pub allow_missing: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idempotency {
    /// Safe to send twice.
    Idempotent,
    /// Never sent twice.
    Once,
}

/// A connection to one fan agent.
///
/// Cheap to clone; clones share the connection, and calls take `&self`, so
/// one client can serve many concurrent tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), fan_client::Error> {
/// use fan_client::{FanClient, NetworkSpec, AllocationRequest, Owner, Selector};
///
/// let client = FanClient::connect(fan_client::DEFAULT_TARGET).await?;
/// let net = client
///     .create_network("fan-250", &NetworkSpec::new("250.0.0.0/8", "eth0/16"))
///     .await?;
/// let a = client
///     .allocate_address(&net.id, &AllocationRequest::new(Owner::new("c1")))
///     .await?;
/// println!("{} via {}", a.cidr(), a.gateway);
/// client
///     .release_address(&net.id, &Selector::Owner(Owner::new("c1")), false)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FanClient {
    inner: FanAgentServiceClient<Channel>,
    target: String,
    timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for FanClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanClient")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Whether a status is tonic's own client-side deadline (the grpc-timeout
/// of the request expired before the answer came).
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// When a status was made by tonic's transport rather than sent by the
/// agent (no ErrorInfo, a transport error in its source chain): that
/// error's chain, one line.
fn transport_failure(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    if status.get_error_details().error_info().is_some() {
        return None;
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return Some(chain(e));
        }
        source = e.source();
    }
    None
}

/// The error chain of a transport error, one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        source = e.source();
    }
    // "transport error" alone says nothing when a cause follows.
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    one_line(&parts.join(": "))
}

impl FanClient {
    /// Connects to the agent at `target` with default options.
    ///
    /// `target` is `unix:///run/fan/agent.sock` ([`DEFAULT_TARGET`]),
    /// `unix:PATH` (relative or absolute), an absolute socket path,
    /// `http://HOST:PORT`, or `https://HOST:PORT` (with the `tls` feature).
    pub async fn connect(target: &str) -> Result<FanClient, Error> {
        Self::connect_with(target, ConnectOptions::default()).await
    }

    /// Connects to the agent at `target` with `options`.
    pub async fn connect_with(target: &str, options: ConnectOptions) -> Result<FanClient, Error> {
        let parsed = Target::parse(target)?;
        let connect_err = |e: &dyn std::error::Error| Error::Connect {
            target: target.to_string(),
            detail: chain(e),
        };
        let channel_fut = async {
            match &parsed {
                Target::Unix(path) => {
                    if options.tls.is_some() {
                        return Err(Error::InvalidTarget {
                            target: target.to_string(),
                            detail: "TLS is only for https:// targets".into(),
                        });
                    }
                    let path = Arc::new(path.clone());
                    // The URI is not used by the connector; it sets :authority.
                    Endpoint::from_static("http://localhost")
                        .connect_timeout(options.connect_timeout)
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let path = Arc::clone(&path);
                            async move {
                                let stream = tokio::net::UnixStream::connect(&*path).await?;
                                Ok::<_, std::io::Error>(TokioIo::new(stream))
                            }
                        }))
                        .await
                        .map_err(|e| connect_err(&e))
                }
                Target::Http(uri) => {
                    if options.tls.is_some() {
                        return Err(Error::InvalidTarget {
                            target: target.to_string(),
                            detail: "TLS options given for an http:// target; use https://".into(),
                        });
                    }
                    Endpoint::from_shared(uri.clone())
                        .map_err(|e| Error::InvalidTarget {
                            target: target.to_string(),
                            detail: chain(&e),
                        })?
                        .connect_timeout(options.connect_timeout)
                        .connect()
                        .await
                        .map_err(|e| connect_err(&e))
                }
                Target::Https(uri) => {
                    let endpoint = Endpoint::from_shared(uri.clone())
                        .map_err(|e| Error::InvalidTarget {
                            target: target.to_string(),
                            detail: chain(&e),
                        })?
                        .connect_timeout(options.connect_timeout);
                    let endpoint =
                        tls_endpoint(endpoint, options.tls.clone().unwrap_or_default(), target)?;
                    endpoint.connect().await.map_err(|e| connect_err(&e))
                }
            }
        };
        let channel = tokio::time::timeout(options.connect_timeout, channel_fut)
            .await
            .map_err(|_| Error::Connect {
                target: target.to_string(),
                detail: format!("timed out after {}s", options.connect_timeout.as_secs_f64()),
            })??;
        Ok(FanClient {
            inner: FanAgentServiceClient::new(channel),
            target: target.to_string(),
            timeout: options.timeout,
            retry: options.retry,
        })
    }

    /// The target this client was connected with.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A clone of this client (same connection) with another per-call
    /// timeout.
    pub fn with_timeout(&self, timeout: Duration) -> FanClient {
        FanClient {
            timeout,
            ..self.clone()
        }
    }

    /// Sends one request, with the timeout and the retry rule of
    /// [`RetryPolicy`].
    async fn call<Q, R, F, Fut>(&self, kind: Idempotency, req: Q, send: F) -> Result<R, Error>
    where
        Q: Clone,
        F: Fn(FanAgentServiceClient<Channel>, tonic::Request<Q>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let attempts = match kind {
            Idempotency::Idempotent => self.retry.max_attempts.max(1),
            Idempotency::Once => 1,
        };
        let mut attempt = 1;
        let mut first_transport_error: Option<Error> = None;
        loop {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(self.timeout);
            let result = tokio::time::timeout(self.timeout, send(self.inner.clone(), request))
                .await
                .map_err(|_| Error::Timeout {
                    after: self.timeout,
                })
                .and_then(|r| {
                    r.map_err(|status| {
                        if timed_out(&status) {
                            Error::Timeout {
                                after: self.timeout,
                            }
                        } else if let Some(detail) = transport_failure(&status) {
                            Error::Transport {
                                target: self.target.clone(),
                                detail,
                            }
                        } else {
                            Error::from(status)
                        }
                    })
                });
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(err) if attempt < attempts && err.is_retryable() => {
                    if matches!(err, Error::Transport { .. }) && first_transport_error.is_none() {
                        first_transport_error = Some(err);
                    }
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                // When every attempt broke the connection, the first break
                // usually names the cause (a TLS alert); later ones only
                // say the pipe is broken.
                Err(err @ Error::Transport { .. }) => {
                    return Err(first_transport_error.unwrap_or(err))
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Describes the agent, its host and its backends. Retried.
    pub async fn get_agent_info(&self) -> Result<AgentInfo, Error> {
        let r = self
            .call(
                Idempotency::Idempotent,
                pb::GetAgentInfoRequest {},
                |mut c, r| async move { c.get_agent_info(r).await },
            )
            .await?;
        convert::agent_info_from_pb(r)
    }

    /// Creates network `network_id`, or returns it when it exists with the
    /// same spec (`ALREADY_EXISTS` when the spec differs). Retried on
    /// `UNAVAILABLE` only, which is safe because it is idempotent.
    pub async fn create_network(
        &self,
        network_id: &str,
        spec: &NetworkSpec,
    ) -> Result<Network, Error> {
        let req = pb::CreateNetworkRequest {
            network_id: network_id.to_string(),
            spec: Some(convert::spec_to_pb(spec)),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.create_network(r).await
            })
            .await?;
        convert::required_network(r.network)
    }

    /// Returns one network with its observed status. Retried.
    pub async fn get_network(&self, network_id: &str) -> Result<Network, Error> {
        let req = pb::GetNetworkRequest {
            network_id: network_id.to_string(),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.get_network(r).await
            })
            .await?;
        convert::required_network(r.network)
    }

    /// Returns one page of networks in id order. `page_size` 0 means the
    /// agent's default (100); `page_token` is `None` for the first page.
    /// Retried.
    pub async fn list_networks_page(
        &self,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<Page<Network>, Error> {
        let req = pb::ListNetworksRequest {
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.list_networks(r).await
            })
            .await?;
        Ok(Page {
            items: r
                .networks
                .into_iter()
                .map(convert::network_from_pb)
                .collect::<Result<_, _>>()?,
            next_page_token: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
            revision: r.revision,
        })
    }

    /// Returns every network, following all pages.
    pub async fn list_networks(&self) -> Result<Vec<Network>, Error> {
        all_pages(|token| async move { self.list_networks_page(0, token.as_deref()).await }).await
    }

    /// Deletes a network. Refused with `FAILED_PRECONDITION` while
    /// allocations exist unless `force`. Never retried.
    pub async fn delete_network(
        &self,
        network_id: &str,
        options: DeleteNetworkOptions,
    ) -> Result<DeleteOutcome, Error> {
        let req = pb::DeleteNetworkRequest {
            network_id: network_id.to_string(),
            force: options.force,
            allow_missing: options.allow_missing,
        };
        let r = self
            .call(Idempotency::Once, req, |mut c, r| async move {
                c.delete_network(r).await
            })
            .await?;
        Ok(DeleteOutcome {
            deleted: r.deleted,
            released_allocations: r.released_allocations,
        })
    }

    /// Compares the kernel with the network's desired state; an empty list
    /// means no drift. Retried.
    pub async fn check_network(&self, network_id: &str) -> Result<Vec<Drift>, Error> {
        let req = pb::CheckNetworkRequest {
            network_id: network_id.to_string(),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.check_network(r).await
            })
            .await?;
        Ok(r.drifts.into_iter().map(convert::drift_from_pb).collect())
    }

    /// Allocates an address in `network_id` for the request's owner; an
    /// owner that already has one gets it back. Retried on `UNAVAILABLE`
    /// only, which is safe because it is idempotent per owner.
    pub async fn allocate_address(
        &self,
        network_id: &str,
        request: &AllocationRequest,
    ) -> Result<Allocation, Error> {
        let req = convert::allocate_to_pb(network_id, request);
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.allocate_address(r).await
            })
            .await?;
        convert::required_allocation(r.allocation)
    }

    /// Returns one allocation, by owner or by address. Retried.
    pub async fn get_allocation(
        &self,
        network_id: &str,
        selector: &Selector,
    ) -> Result<Allocation, Error> {
        let req = pb::GetAllocationRequest {
            network_id: network_id.to_string(),
            selector: Some(convert::selector_to_pb(selector)),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.get_allocation(r).await
            })
            .await?;
        convert::required_allocation(r.allocation)
    }

    /// Releases one allocation, by owner or by address, and returns it;
    /// `None` when nothing was allocated and `allow_missing` is set. Never
    /// retried.
    pub async fn release_address(
        &self,
        network_id: &str,
        selector: &Selector,
        allow_missing: bool,
    ) -> Result<Option<Allocation>, Error> {
        let req = pb::ReleaseAddressRequest {
            network_id: network_id.to_string(),
            selector: Some(convert::selector_to_pb(selector)),
            allow_missing,
        };
        let r = self
            .call(Idempotency::Once, req, |mut c, r| async move {
                c.release_address(r).await
            })
            .await?;
        r.allocation.map(convert::allocation_from_pb).transpose()
    }

    /// Returns one page of a network's allocations in address order.
    /// `page_size` 0 means the agent's default (100). Retried.
    pub async fn list_allocations_page(
        &self,
        network_id: &str,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<Page<Allocation>, Error> {
        let filter = AllocationFilter {
            network_id: network_id.to_string(),
            ..Default::default()
        };
        self.list_allocations_filtered_page(&filter, page_size, page_token)
            .await
    }

    /// Returns one page of allocations in (network id, address) order: of
    /// one network or all (empty `filter.network_id`), by owner container
    /// id and label selector. `page_token` must come from the same filter.
    /// Retried.
    pub async fn list_allocations_filtered_page(
        &self,
        filter: &AllocationFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<Page<Allocation>, Error> {
        let req = pb::ListAllocationsRequest {
            network_id: filter.network_id.clone(),
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
            owner_container_id: filter.owner_container_id.clone(),
            label_selector: filter.label_selector.clone(),
        };
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.list_allocations(r).await
            })
            .await?;
        Ok(Page {
            items: r
                .allocations
                .into_iter()
                .map(convert::allocation_from_pb)
                .collect::<Result<_, _>>()?,
            next_page_token: (!r.next_page_token.is_empty()).then_some(r.next_page_token),
            revision: r.revision,
        })
    }

    /// Returns every allocation of a network, following all pages.
    pub async fn list_allocations(&self, network_id: &str) -> Result<Vec<Allocation>, Error> {
        all_pages(|token| async move {
            self.list_allocations_page(network_id, 0, token.as_deref())
                .await
        })
        .await
    }

    /// Like [`FanClient::allocate_address`], and says whether this call
    /// created the allocation. The same owner asking again with another
    /// address or other labels is refused (`OWNER_HAS_OTHER_ADDRESS`,
    /// `OWNER_LABELS_DIFFER`). Retried on `UNAVAILABLE` only.
    pub async fn allocate(
        &self,
        network_id: &str,
        request: &AllocationRequest,
    ) -> Result<Allocated, Error> {
        let req = convert::allocate_to_pb(network_id, request);
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.allocate_address(r).await
            })
            .await?;
        Ok(Allocated {
            allocation: convert::required_allocation(r.allocation)?,
            created: r.created,
        })
    }

    /// Changes the given spec fields of a network live, keeping its
    /// allocations; returns the network and whether anything changed.
    /// Retried (setting the same values again changes nothing).
    pub async fn update_network(
        &self,
        network_id: &str,
        update: &NetworkUpdate,
    ) -> Result<(Network, bool), Error> {
        let req = update.to_pb(network_id);
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.update_network(r).await
            })
            .await?;
        Ok((convert::required_network(r.network)?, r.changed))
    }

    /// Streams the agent's events from `options.start_revision` on. The
    /// stream has no timeout; it ends with an error when the agent stops
    /// (`UNAVAILABLE`), when the start is too old (`OUT_OF_RANGE`,
    /// `REVISION_COMPACTED`: list again) or when the consumer falls too far
    /// behind (`RESOURCE_EXHAUSTED`, `WATCHER_TOO_SLOW`: resume from the
    /// last revision received).
    pub async fn watch_events(
        &self,
        options: &WatchOptions,
    ) -> Result<impl futures::Stream<Item = Result<WatchEvent, Error>> + Send + 'static, Error>
    {
        let req = pb::WatchEventsRequest {
            network_id: options.network_id.clone(),
            kinds: options.kinds.iter().map(|k| k.to_pb() as i32).collect(),
            start_revision: options.start_revision,
        };
        let mut inner = self.inner.clone();
        let stream = tokio::time::timeout(self.timeout, inner.watch_events(req))
            .await
            .map_err(|_| Error::Timeout {
                after: self.timeout,
            })?
            .map_err(Error::from)?
            .into_inner();
        Ok(futures::StreamExt::map(stream, |item| {
            item.map_err(Error::from).and_then(|r| match r.event {
                Some(event) => WatchEvent::from_pb(event),
                None => Err(Error::bad_response("an event message without its event")),
            })
        }))
    }

    /// Releases every allocation of the network whose owner is not in
    /// `valid_owners` (CNI GC semantics) and returns them; with `dry_run`
    /// only returns what would be released. An empty `valid_owners`
    /// releases everything. Never retried.
    pub async fn garbage_collect_allocations(
        &self,
        network_id: &str,
        valid_owners: &[Owner],
        dry_run: bool,
    ) -> Result<Vec<Allocation>, Error> {
        let req = pb::GarbageCollectAllocationsRequest {
            network_id: network_id.to_string(),
            valid_owners: valid_owners.iter().map(convert::owner_to_pb).collect(),
            dry_run,
        };
        let r = self
            .call(Idempotency::Once, req, |mut c, r| async move {
                c.garbage_collect_allocations(r).await
            })
            .await?;
        r.released
            .into_iter()
            .map(convert::allocation_from_pb)
            .collect()
    }

    /// Resolves an overlay address to the underlay host owning it, or an
    /// underlay address to its slices, in `scope`. Retried.
    pub async fn resolve_address(
        &self,
        address: Ipv4Addr,
        scope: &ResolveScope,
    ) -> Result<Vec<Resolution>, Error> {
        let req = convert::resolve_to_pb(address, scope);
        let r = self
            .call(Idempotency::Idempotent, req, |mut c, r| async move {
                c.resolve_address(r).await
            })
            .await?;
        r.resolutions
            .into_iter()
            .map(convert::resolution_from_pb)
            .collect()
    }
}

#[cfg(feature = "tls")]
fn tls_endpoint(endpoint: Endpoint, tls: TlsConfig, target: &str) -> Result<Endpoint, Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_certificate_pem {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
        None => config.with_native_roots(),
    };
    match (&tls.client_certificate_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => {
            return Err(Error::InvalidTarget {
                target: target.to_string(),
                detail: "a client certificate needs its key, and a key its certificate".into(),
            })
        }
    }
    if let Some(domain) = &tls.domain_name {
        config = config.domain_name(domain.clone());
    }
    endpoint
        .tls_config(config)
        .map_err(|e| Error::InvalidTarget {
            target: target.to_string(),
            detail: chain(&e),
        })
}

#[cfg(not(feature = "tls"))]
fn tls_endpoint(_endpoint: Endpoint, _tls: TlsConfig, target: &str) -> Result<Endpoint, Error> {
    Err(Error::TlsUnsupported {
        target: target.to_string(),
    })
}

/// Follows pages from the first to the last; a token that repeats would loop
/// forever, so it is refused as a bad response.
async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, Error>>,
{
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = fetch(token.clone()).await?;
        all.extend(page.items);
        match page.next_page_token {
            Some(next) if Some(&next) == token.as_ref() => {
                return Err(Error::bad_response("the same page token twice"));
            }
            Some(next) => token = Some(next),
            None => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse(DEFAULT_TARGET).unwrap(),
            Target::Unix("/run/fan/agent.sock".into())
        );
        assert_eq!(
            Target::parse("unix:agent.sock").unwrap(),
            Target::Unix("agent.sock".into())
        );
        assert_eq!(
            Target::parse("unix:/tmp/a.sock").unwrap(),
            Target::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Target::parse("/tmp/a.sock").unwrap(),
            Target::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            Target::parse("http://10.0.0.1:7946").unwrap(),
            Target::Http("http://10.0.0.1:7946".into())
        );
        assert_eq!(
            Target::parse("https://agent.example:7946/").unwrap(),
            Target::Https("https://agent.example:7946".into())
        );
        for bad in [
            "",
            "unix://",
            "unix:",
            "unix://run/fan.sock",
            "ftp://x:1",
            "http://",
            "http://h:1/path",
            "agent.sock",
            "10.0.0.1:7946",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.reason(), "INVALID_TARGET", "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(30), Duration::from_secs(1));
    }

    #[test]
    fn tls_config_debug_redacts_key() {
        let tls = TlsConfig {
            client_key_pem: Some(b"SECRET".to_vec()),
            ..TlsConfig::default()
        };
        assert!(!format!("{tls:?}").contains("SECRET"));
    }
}
