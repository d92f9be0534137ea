//! `fan-cli`: what users run against a fan agent, built on the `fan_client`
//! SDK (`client/sdk`). Three binaries share this library:
//!
//! - `fan-client`, the command line for networks, addresses, events and
//!   clusters of agents (`src/bin/cli/`);
//! - `fan-ipam`, the CNI IPAM plugin for container runtimes ([`cni`]);
//! - `fan-docker-ipam`, Docker's remote IPAM plugin ([`docker`]).
//!
//! Depends on `fan-client` (every agent call), `fan-core` (fanctl's
//! `/etc/network/fan` lines and the overlay/underlay parsers) and the
//! binaries' own crates (clap, anyhow, hyper's HTTP/1 server). The SDK
//! depends on none of these, so SDK users do not compile them.

#![warn(missing_docs)]

pub mod cni;
pub mod docker;
