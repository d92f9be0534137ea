//! The Rust SDK of the fan agent (`fan.agent.v1`).
//!
//! One agent runs per host and serves its gRPC API on a unix socket
//! ([`DEFAULT_TARGET`]) and optionally on TCP. [`FanClient`] connects to
//! one agent and offers one typed async method per RPC, taking and
//! returning this crate's own types ([`NetworkSpec`], [`Network`],
//! [`Allocation`], …) rather than protobuf messages.
//!
//! ```no_run
//! use fan_client::{AllocationRequest, FanClient, NetworkSpec, Owner};
//!
//! # async fn demo() -> Result<(), fan_client::Error> {
//! let client = FanClient::connect("unix:///run/fan/agent.sock").await?;
//! let info = client.get_agent_info().await?;
//! println!("agent {} on {}", info.version, info.hostname);
//! let net = client
//!     .create_network("fan-250", &NetworkSpec::new("250.0.0.0/8", "eth0/16"))
//!     .await?;
//! let alloc = client
//!     .allocate_address(&net.id, &AllocationRequest::new(Owner::new("web-1")))
//!     .await?;
//! println!("web-1 gets {} (gateway {}, mtu {})", alloc.cidr(), alloc.gateway, alloc.mtu);
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! Every call returns [`Error`], which keeps the gRPC code, the message and
//! the `google.rpc.ErrorInfo` reason the agent sent; its `Display` is one
//! line: `<message> (<REASON>)`.
//!
//! # Timeouts and retries
//!
//! Every call has a timeout (10 s by default, [`ConnectOptions::timeout`]).
//! Idempotent calls are retried when the agent is `UNAVAILABLE`; see
//! [`RetryPolicy`] for the exact rule. Release, delete and garbage
//! collection are never retried.
//!
//! # Features
//!
//! - `tls` (on by default; agents serve TCP only with mutual TLS): `https://` targets with TLS or mutual TLS
//!   (rustls with ring), configured by [`TlsConfig`]. Without it such a
//!   target fails with [`Error::TlsUnsupported`].
//!
//! The JSON shapes that the `fan-client` binary prints from these types are
//! documented in the crate README.
//!
//! # Crate layout
//!
//! This crate (`client/sdk/`) is the library only and depends on `fan-proto`
//! (the generated API) among the fan crates. The binaries that use it — the
//! `fan-client` CLI, the `fan-ipam` CNI plugin and the `fan-docker-ipam`
//! Docker plugin — are the `fan-cli` crate (`client/cli/`), which also holds
//! their plugin logic (`fan_cli::cni`, `fan_cli::docker`) and their
//! dependencies (clap, anyhow, fan-core, hyper's server).

#![warn(missing_docs)]

mod client;
mod convert;
mod error;
mod types;
mod watch;

pub use client::{
    ConnectOptions, DeleteNetworkOptions, FanClient, RetryPolicy, Target, TlsConfig,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TARGET, DEFAULT_TIMEOUT,
};
pub use error::{
    code_name, reason, Error, FieldViolation, PreconditionViolation, ResourceInfo, RpcDetails,
};
pub use tonic::Code;
pub use types::*;
pub use watch::{Allocated, AllocationFilter, EventKind, NetworkUpdate, WatchEvent, WatchOptions};
