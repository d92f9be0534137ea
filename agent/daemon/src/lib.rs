//! The fan agent: one per host.
//!
//! It stores fan networks and container address allocations durably, programs
//! the kernel data plane (host part + IPIP encapsulation) for each network, and
//! serves the `fan.agent.v1` gRPC API on a unix socket.
//!
//! Modules, from the middle out: [`model`] (domain records), [`validate`] (request
//! rules), [`state`] (redb, group commit), [`agent`] (the operations), [`api`]
//! (protobuf conversion and the one error-to-status map), [`server`] (listeners,
//! health, reflection, readiness). [`caller`] says who made a request, for
//! both the server (which tags TLS peers) and the API (which audits). Pure fan
//! arithmetic and the allocator live in `fan-core` (`proto/core/`); kernel side
//! effects in `fan-dataplane` (`agent/dataplane/`); the API's messages in
//! `fan-proto` (`proto/rust/`). With the `testing` feature, `testing` serves the
//! real agent and API on an in-memory data plane over a temporary unix socket,
//! for tests without root.
//!
//! This crate is `agent/daemon/`: the library and the `fan-agent` binary
//! (`src/main.rs`). Nothing on the client side depends on it (the SDK's tests
//! use it as a dev-dependency).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod agent;
pub mod api;
pub mod caller;
pub mod dhcp;
pub mod error;
pub mod events;
pub mod metrics;
pub mod model;
pub mod page_token;
pub mod reason;
pub mod server;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;
