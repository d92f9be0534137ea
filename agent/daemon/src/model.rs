//! The agent's domain records: what is persisted and what operations return.
//! No protobuf types here; `api::convert` maps between the two.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use fan_dataplane::{BackendKind, NetworkPlan};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// The backend a user asked for: a concrete one, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// kernel-fan, else ebpf, else ipip.
    Auto,
    /// Ubuntu's kernel fan map.
    KernelFan,
    /// The tc eBPF program.
    Ebpf,
    /// ipip.ko plus onlink routes.
    Ipip,
}

impl BackendChoice {
    /// The concrete backend, if one was named.
    pub fn concrete(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::KernelFan => Some(BackendKind::KernelFan),
            BackendChoice::Ebpf => Some(BackendKind::Ebpf),
            BackendChoice::Ipip => Some(BackendKind::Ipip),
        }
    }
}

/// A network's desired state, normalized: defaults filled in, strings canonical.
/// Two create requests are "the same" exactly when their normalized specs are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The overlay network.
    pub overlay: Ipv4Network,
    /// The underlay spec in canonical fanctl form ("172.30.0.0/16", "eth0/16", "default/16").
    pub underlay: String,
    /// Addresses .1 ..= .host_reserve of the slice are kept for the host.
    pub host_reserve: u32,
    /// Bridge device name.
    pub bridge: String,
    /// Requested MTU; 0 means underlay MTU − 20.
    pub mtu: u32,
    /// Requested backend.
    pub backend: BackendChoice,
    /// Masquerade slice traffic leaving the overlay.
    pub masquerade: bool,
    /// Drop decapsulated packets with a spoofed inner source.
    pub anti_spoofing: bool,
    /// Accept an overlay that overlaps the host's own addresses or routes.
    #[serde(default)]
    pub allow_overlap: bool,
    /// Serve DHCPv4 on the bridge from this network's allocations.
    #[serde(default)]
    pub dhcp: bool,
    /// DNS servers handed to DHCP clients (option 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_dns: Vec<Ipv4Addr>,
    /// DHCP lease time in seconds; 0 when `dhcp` is off.
    #[serde(default)]
    pub dhcp_lease_seconds: u32,
    /// Free-form labels (changeable with UpdateNetwork).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// Every field where `asked` differs from `self`, as
    /// `field existing -> asked` (for the "already exists" error).
    pub fn differences(&self, asked: &NetworkSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, have: String, want: String| {
            if have != want {
                out.push(format!("{name} {have} -> {want}"));
            }
        };
        field(
            "overlay",
            self.overlay.to_string(),
            asked.overlay.to_string(),
        );
        field("underlay", self.underlay.clone(), asked.underlay.clone());
        field(
            "host_reserve",
            self.host_reserve.to_string(),
            asked.host_reserve.to_string(),
        );
        field("bridge", self.bridge.clone(), asked.bridge.clone());
        let mtu = |m: u32| {
            if m == 0 {
                "auto".to_string()
            } else {
                m.to_string()
            }
        };
        field("mtu", mtu(self.mtu), mtu(asked.mtu));
        let backend = |b: BackendChoice| format!("{b:?}").to_lowercase();
        field("backend", backend(self.backend), backend(asked.backend));
        field(
            "masquerade",
            self.masquerade.to_string(),
            asked.masquerade.to_string(),
        );
        field(
            "anti_spoofing",
            self.anti_spoofing.to_string(),
            asked.anti_spoofing.to_string(),
        );
        out
    }
}

/// A persisted network: its spec plus what was resolved on this host at creation.
///
/// The resolution is stored, not recomputed, because the slice (and so every
/// allocation) depends on it: if the host's underlay address changes, the
/// network must report that instead of silently moving to another slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Network id.
    pub id: String,
    /// Small number unique among this host's networks (device names, tc priorities).
    pub index: u16,
    /// Desired state.
    pub spec: NetworkSpec,
    /// Underlay network (the spec's prefix applied to the local address).
    pub underlay_network: Ipv4Network,
    /// This host's underlay address.
    pub underlay_address: Ipv4Addr,
    /// Device carrying the underlay address.
    pub underlay_interface: String,
    /// MTU of that device at creation.
    pub underlay_mtu: u32,
    /// This host's slice.
    pub slice: Ipv4Network,
    /// The concrete backend chosen at creation.
    pub backend: BackendKind,
    /// Creation time, milliseconds since the Unix epoch.
    pub create_time_ms: u64,
    /// Slices this host owned before its underlay address changed, oldest
    /// first: allocations in them are stale (see `fan_core::host_change`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_slices: Vec<Ipv4Network>,
}

impl NetworkRecord {
    /// The slice's .1: bridge address and container gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.slice.network()) + 1)
    }

    /// The effective MTU: the requested one, or underlay MTU − 20.
    pub fn effective_mtu(&self) -> u32 {
        if self.spec.mtu != 0 {
            self.spec.mtu
        } else {
            self.underlay_mtu.saturating_sub(IPIP_OVERHEAD)
        }
    }

    /// What the data plane must program for this network.
    pub fn plan(&self) -> NetworkPlan {
        NetworkPlan {
            network_id: self.id.clone(),
            index: self.index,
            overlay: self.spec.overlay,
            underlay: self.underlay_network,
            local_underlay: self.underlay_address,
            underlay_interface: self.underlay_interface.clone(),
            underlay_mtu: self.underlay_mtu,
            slice: self.slice,
            gateway: self.gateway(),
            bridge: self.spec.bridge.clone(),
            mtu: self.effective_mtu(),
            masquerade: self.spec.masquerade,
            anti_spoofing: self.spec.anti_spoofing,
            backend: self.backend,
        }
    }
}

/// Bytes an IPIP outer header adds.
pub const IPIP_OVERHEAD: u32 = 20;

/// The default container interface name.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Who holds an address: one interface of one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Container id.
    pub container_id: String,
    /// Interface inside the container.
    pub interface: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.interface)
    }
}

/// One persisted allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    /// The address.
    pub address: Ipv4Addr,
    /// Its owner.
    pub owner: Owner,
    /// Labels given at allocation.
    pub labels: BTreeMap<String, String>,
    /// Allocation time, milliseconds since the Unix epoch.
    pub create_time_ms: u64,
}

/// Selects one allocation of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By owner.
    Owner(Owner),
    /// By address.
    Address(Ipv4Addr),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Owner(owner) => write!(f, "owner {owner}"),
            Selector::Address(address) => write!(f, "address {address}"),
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
