//! Pure fan logic (no I/O): overlay/underlay arithmetic, validation, underlay specs, names,
//! `/etc/network/fan` lines and the slice allocator.
//!
//! Everything here is deterministic and side-effect free so the agent, the client and the
//! tests share one definition of the fan (proto/core/FAN.md §1-§3). It lives under
//! `proto/`, beside the API contract, because both sides use it: `fan-agent` and
//! `fan-dataplane` validate and compute with it, the `fan-cli` binaries parse fanctl's
//! lines with it. It depends on no other fan crate; the SDK (`fan-client`) does not
//! depend on it.

#![deny(missing_docs)]

pub mod config;
pub mod fan;
pub mod host_change;
pub mod ipam;
pub mod names;
pub mod underlay;

pub use config::{parse_fan_config, ConfigError, FanConfigEntry};
pub use fan::{parse_network, parse_overlay, routed_overlap_warning, FanError, FanMap};
pub use ipam::{Allocated, Allocator, IpamError, SlicePool};
pub use names::NameError;
pub use underlay::{HostInterfaceAddress, ResolvedUnderlay, UnderlaySpec};

/// Re-export so callers use the same network type as this crate.
pub use ipnetwork::Ipv4Network;
