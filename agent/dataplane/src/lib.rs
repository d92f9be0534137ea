//! The fan agent's side effects on the host kernel, behind one trait.
//!
//! The agent decides *what* a network needs (a [`NetworkPlan`], computed by pure
//! code from the stored spec and the host's addresses); this crate makes the kernel
//! match it. Every operation is idempotent: `apply` on start, on a timer and on
//! request all run the same code, so there is no separate restore path.
//!
//! Ownership: everything created here carries the agent's mark (device names from
//! the plan, the agent's nftables table, its route protocol number, pinned BPF
//! objects under its own bpffs directory, tc filters with its own priority and
//! name). `remove` deletes exactly those objects and nothing else.
//!
//! Layout: [`host`] (bridge, gateway address, MTU, sysctls, nftables masquerade;
//! shared by every backend) and one module per encapsulation backend; the tc
//! eBPF programs are in `agent/bpf/`. With the `fake` feature,
//! `fake::FakeDataplane`, an in-memory data plane for tests that run without
//! root. Depends on `fan-core` only among the fan crates; `fan-agent`
//! (`agent/daemon/`) is its one user.

use std::fmt;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use ipnetwork::Ipv4Network;

pub mod ebpf;
#[cfg(feature = "fake")]
pub mod fake;
pub mod host;
pub mod ipip;
pub mod iptun;
pub mod kernel;
pub mod kernel_fan;
pub mod netlink;
pub mod sysctl;
pub mod timing;

pub use kernel::KernelDataplane;

/// Route protocol number marking the agent's routes (`ip route ... proto 250`),
/// shared by every backend.
pub const ROUTE_PROTOCOL: u8 = 250;

/// Everything the data plane needs to program one fan network on this host.
///
/// Computed by the agent from the stored spec and the host's interfaces; the
/// data plane never parses user input itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The network id ("fan", "prod-250", …).
    pub network_id: String,
    /// A small number unique among this host's networks, stable for the
    /// network's lifetime: used to name devices and tc priorities that must
    /// not collide between networks.
    pub index: u16,
    /// The overlay network (e.g. 250.0.0.0/8).
    pub overlay: Ipv4Network,
    /// The underlay network (e.g. 172.30.0.0/16).
    pub underlay: Ipv4Network,
    /// This host's address inside the underlay.
    pub local_underlay: Ipv4Addr,
    /// The device carrying `local_underlay`.
    pub underlay_interface: String,
    /// The MTU of `underlay_interface`.
    pub underlay_mtu: u32,
    /// This host's slice of the overlay.
    pub slice: Ipv4Network,
    /// The slice's .1: the bridge address and the containers' gateway.
    pub gateway: Ipv4Addr,
    /// The bridge device name.
    pub bridge: String,
    /// MTU for the bridge, the tunnel device and containers.
    pub mtu: u32,
    /// Masquerade slice traffic leaving the overlay.
    pub masquerade: bool,
    /// Drop decapsulated packets whose inner source does not map to the outer source.
    pub anti_spoofing: bool,
    /// The encapsulation backend (never "auto": the agent resolves it).
    pub backend: BackendKind,
}

impl NetworkPlan {
    /// The overlay's catch-all route through a tunnel device (`overlay dev
    /// TUNNEL src GATEWAY proto 250`), the same for every backend that
    /// routes into a tunnel.
    pub fn overlay_route(&self, tunnel_index: u32) -> netlink::Route4 {
        netlink::Route4 {
            oif: Some(tunnel_index),
            src: Some(self.gateway),
            protocol: ROUTE_PROTOCOL,
            scope: Some(netlink::RouteScope::Link),
            ..netlink::Route4::new(self.overlay)
        }
    }
}

/// A concrete encapsulation backend. All produce the same wire format:
/// outer IPv4 with protocol 4 (RFC 2003), inner packet unchanged.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Ubuntu's kernel fan map on an ipip device.
    KernelFan,
    /// The tc eBPF IPIP program.
    Ebpf,
    /// ipip.ko plus one onlink route per remote slice.
    Ipip,
}

impl BackendKind {
    /// Every backend, in the order `auto` prefers them.
    pub const ALL: [BackendKind; 3] =
        [BackendKind::KernelFan, BackendKind::Ebpf, BackendKind::Ipip];

    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::KernelFan => "kernel-fan",
            BackendKind::Ebpf => "ebpf",
            BackendKind::Ipip => "ipip",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a backend can run on this host, and why (not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// The backend.
    pub backend: BackendKind,
    /// True when the backend can be used here.
    pub available: bool,
    /// A human-readable reason, e.g. "kernel has no ipip module (CONFIG_NET_IPIP)".
    pub reason: String,
}

/// One difference between the desired and the observed kernel state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The object, e.g. "bridge fan-250" or "nft table ip fan_fan".
    pub object: String,
    /// What the plan wants.
    pub expected: String,
    /// What the kernel has ("absent" when missing).
    pub observed: String,
}

/// Per-network data-plane packet counters (wire packets: a GSO super-packet
/// counts as its segments). Every `dropped_*` counter counts only packets
/// the data plane itself discarded, never packets it left to the stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets encapsulated towards another host.
    pub encapsulated: u64,
    /// Packets decapsulated into the local slice.
    pub decapsulated: u64,
    /// Dropped at decap (anti-spoofing): the inner source does not map to
    /// the outer source, or the outer source is the underlay's network or
    /// broadcast address.
    pub dropped_spoofed: u64,
    /// Dropped at decap: outer fragments (cannot be decapsulated at tc).
    pub dropped_fragment: u64,
    /// Dropped for any other reason: eBPF: not IPv4, a destination outside
    /// the overlay, in our own slice or in the slice of the underlay's
    /// network/broadcast address, no room for the header; ipip/kernel-fan:
    /// the tunnel device's error and drop counts.
    pub dropped_other: u64,
    /// Dropped at encap (egress anti-spoofing): a local packet for the
    /// overlay whose source is not in this host's slice. eBPF: in the encap
    /// program; ipip/kernel-fan: the nftables rule on the bridge.
    pub dropped_spoofed_egress: u64,
}

impl Counters {
    /// The field-by-field sum.
    pub fn plus(&self, other: &Counters) -> Counters {
        Counters {
            encapsulated: self.encapsulated + other.encapsulated,
            decapsulated: self.decapsulated + other.decapsulated,
            dropped_spoofed: self.dropped_spoofed + other.dropped_spoofed,
            dropped_fragment: self.dropped_fragment + other.dropped_fragment,
            dropped_other: self.dropped_other + other.dropped_other,
            dropped_spoofed_egress: self.dropped_spoofed_egress + other.dropped_spoofed_egress,
        }
    }
}

/// What `observe` found for one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Every difference from the plan; empty when the kernel matches.
    pub drifts: Vec<Drift>,
    /// Packet counters, when the backend keeps them.
    pub counters: Option<Counters>,
}

impl Observation {
    /// Appends the backend's observation to the host part's. Counters are
    /// the backend's, plus the host part's (its nftables anti-spoofing
    /// rules) when the backend keeps counters: a host-part count alone would
    /// read as a network that encapsulates nothing.
    pub fn merge(&mut self, other: Observation) {
        self.drifts.extend(other.drifts);
        self.counters = match (self.counters, other.counters) {
            (Some(host), Some(backend)) => Some(backend.plus(&host)),
            (_, backend) => backend,
        };
    }
}

/// An IPv4 address configured on a host interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    /// Device name.
    pub interface: String,
    /// The address and its prefix.
    pub address: Ipv4Network,
    /// Device MTU.
    pub mtu: u32,
}

/// Errors of the data plane. Each says what object failed and why.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The backend cannot run on this host.
    #[error("backend {backend} is not available on this host: {reason}")]
    Unavailable {
        /// The backend asked for.
        backend: BackendKind,
        /// What is missing.
        reason: String,
    },
    /// A netlink request failed.
    #[error("netlink: {context}: {message}")]
    Netlink {
        /// What was being done ("create bridge fan-250").
        context: String,
        /// The kernel's answer.
        message: String,
    },
    /// Another failure, with context.
    #[error("{context}: {message}")]
    Other {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// Several steps failed; teardown carries on after an error and reports all.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<DataplaneError>),
}

impl DataplaneError {
    /// Shorthand for [`DataplaneError::Other`].
    pub fn other(context: impl Into<String>, message: impl fmt::Display) -> Self {
        DataplaneError::Other {
            context: context.into(),
            message: message.to_string(),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// One encapsulation backend: the part of a network that differs between
/// kernel-fan, eBPF and ipip. The host part ([`host`]) is applied before it.
#[async_trait]
pub trait Encapsulation: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Gives the backend the data plane's netlink connection, used by
    /// every later operation instead of a connection of its own (its
    /// calls are serialized by the data plane, see [`KernelDataplane`]).
    fn use_netlink(&self, _netlink: &netlink::Netlink) {}
    /// Probes the kernel: can this backend run here?
    async fn availability(&self) -> Availability;
    /// Makes the kernel match the plan's encapsulation; idempotent, adopts
    /// objects a previous agent process made instead of duplicating them.
    ///
    /// Serialisation: `apply`, `observe` and `remove` of the backends of one
    /// network namespace must not overlap (networks of the ipip and
    /// kernel-fan backends share tunnel devices, whose ifalias records the
    /// users: a read-modify-write). [`KernelDataplane`] runs every call
    /// under its one lock; code driving backends itself does the same.
    async fn apply(&self, plan: &NetworkPlan) -> Result<()>;
    /// Reports differences from the plan, and counters.
    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation>;
    /// Removes exactly what `apply` made; carries on after errors and
    /// reports them all. Succeeds when nothing is left.
    async fn remove(&self, plan: &NetworkPlan) -> Result<()>;
}

/// The agent's view of the data plane: host setup plus the backends.
/// Implemented by [`KernelDataplane`]; the agent's unit tests use
/// `fake::FakeDataplane` (feature `fake`).
#[async_trait]
pub trait Dataplane: Send + Sync {
    /// Every backend with its availability on this host.
    async fn availability(&self) -> Vec<Availability>;
    /// The host's IPv4 addresses, loopback excluded.
    async fn host_addresses(&self) -> Result<Vec<HostAddress>>;
    /// The device of the IPv4 default route, if any.
    async fn default_route_interface(&self) -> Result<Option<String>>;
    /// Programs the whole network (host part, then encapsulation).
    async fn apply(&self, plan: &NetworkPlan) -> Result<()>;
    /// Compares the kernel with the plan.
    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation>;
    /// [`Dataplane::observe`] of each plan, in order (a reconcile pass):
    /// the kernel data plane reads the host's links, addresses and routes
    /// once for all of them instead of once per network.
    async fn observe_all(&self, plans: &[NetworkPlan]) -> Vec<Result<Observation>> {
        let mut observations = Vec::with_capacity(plans.len());
        for plan in plans {
            observations.push(self.observe(plan).await);
        }
        observations
    }
    /// Removes the whole network (encapsulation, then host part).
    async fn remove(&self, plan: &NetworkPlan) -> Result<()>;
    /// Subscribes to changes of the host's IPv4 addresses (netlink
    /// RTNLGRP_IPV4_IFADDR): the receiver wakes once per burst of changes.
    /// `None` when this data plane cannot watch (fakes); the agent then
    /// relies on its reconcile timer.
    async fn watch_addresses(&self) -> Result<Option<tokio::sync::mpsc::Receiver<()>>> {
        Ok(None)
    }
    /// The host's addresses and main-table routes that the agent did not
    /// make (loopback, devices marked `fan:…` and routes of protocol
    /// [`ROUTE_PROTOCOL`] left out): what an overlay must not overlap.
    async fn host_prefixes(&self) -> Result<Vec<fan_core::host_change::HostPrefix>> {
        Ok(Vec::new())
    }
    /// [`Dataplane::host_addresses`], [`Dataplane::default_route_interface`]
    /// and [`Dataplane::host_prefixes`] together: the kernel data plane
    /// reads the host's links, addresses and routes once for all three.
    async fn host_view(&self) -> Result<HostView> {
        Ok(HostView {
            addresses: self.host_addresses().await?,
            default_interface: self.default_route_interface().await?,
            prefixes: self.host_prefixes().await?,
        })
    }
}

/// What the agent reads of the host's own network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// See [`Dataplane::host_addresses`].
    pub addresses: Vec<HostAddress>,
    /// See [`Dataplane::default_route_interface`].
    pub default_interface: Option<String>,
    /// See [`Dataplane::host_prefixes`].
    pub prefixes: Vec<fan_core::host_change::HostPrefix>,
}
