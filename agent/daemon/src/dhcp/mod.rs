//! DHCPv4 on the fan bridge, served from the agent's own allocations.
//!
//! One server per network whose spec has `dhcp` set, on that network's
//! bridge only: a UDP socket on port 67 bound to the bridge with
//! `SO_BINDTODEVICE`, so nothing on the underlay or any other interface is
//! ever answered, and relayed packets (giaddr set) are dropped. The
//! [`DhcpService`] supervisor starts and stops the servers as networks come
//! and go (created, deleted, agent restart) and sweeps expired leases; its
//! tasks stop when the agent shuts down.
//!
//! Leases ARE allocations, in the same durable store and through the same
//! allocator as the API's, so the two can never collide:
//! - owner: container id `dhcp:<client id>` (option 61 in lowercase
//!   colon-separated hex; without it `01:` + the hardware address), interface
//!   `dhcp`. The same client gets the same address back: allocation is
//!   idempotent per owner (renewals, reboots, agent restarts).
//! - labels: `fan.dhcp/lease` (`offered`, `bound`, `declined`),
//!   `fan.dhcp/expires` (RFC 3339 UTC), `fan.dhcp/hwaddr`,
//!   `fan.dhcp/hostname`; `fan-client address list` shows them.
//! - DISCOVER allocates (durably) with a [`OFFER_HOLD`] expiry and OFFERs
//!   that address; REQUEST makes it `bound` for the lease time (a durable
//!   relabel, or an allocation of the requested address when free) and only
//!   then ACKs. A REQUEST for an address another owner holds, outside the
//!   leasable range, or while the client holds another address, is NAKed.
//! - leases expire by time: the sweep releases them [`SWEEP_EVERY`].
//! - DECLINE moves the address to owner `dhcp-declined:<address>` for
//!   [`DECLINE_HOLD`], after which the sweep frees it.
//! - exhaustion: no OFFER (and a NAK for a REQUEST), logged with the reason.
//!
//! Replies are broadcast on the bridge (the client has no address yet),
//! unicast to ciaddr when the client has one (renewal, INFORM). Each
//! hardware address is rate-limited by a token bucket ([`ratelimit`]).
//! Malformed, truncated, oversized or unexpected packets are dropped and
//! counted per reason ([`Counters`]), logged at debug.
//!
//! The packet path is pure ([`packet::parse`], [`packet::plan`],
//! [`packet::reply`]), unit-tested and fuzzed without sockets.

pub mod packet;
pub mod ratelimit;
mod server;

pub use server::{Counters, DhcpService, DECLINE_HOLD, OFFER_HOLD, SWEEP_EVERY};
