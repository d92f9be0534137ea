//! The SDK's own types: what the agent API talks about, without protobuf.
//!
//! Every type here serializes with serde into the JSON shapes that
//! `fan-client -o json` prints (see the crate README). Optional values
//! serialize as `null`, never disappear, so every key is always present.
//! Time stamps serialize as RFC 3339 UTC strings (`"2025-01-31T12:00:00Z"`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// An IPv4 address with a prefix length, written `A.B.C.D/N`.
///
/// A plain value: host bits may be set (`172.30.0.28/16` names a host
/// address together with its underlay prefix). Use [`Ipv4Cidr::network`] for
/// the network address. Serializes as its string form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The address.
    pub address: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Builds a CIDR value; `None` when `prefix` is above 32.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Self { address, prefix })
    }

    /// The netmask as a 32-bit integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & self.mask())
    }

    /// Whether `addr` lies inside this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Why a string is not an [`Ipv4Cidr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {input:?}: expected A.B.C.D/N with N from 0 to 32")]
pub struct ParseCidrError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Ipv4Cidr {
    type Err = ParseCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCidrError {
            input: s.to_string(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let address: Ipv4Addr = addr.parse().map_err(|_| err())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Ipv4Cidr::new(address, prefix).ok_or_else(err)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The encapsulation that carries a network's overlay traffic.
///
/// Serializes as `"auto"`, `"kernel-fan"`, `"ebpf"`, `"ipip"` (or
/// `"unknown"` for a value this SDK does not know yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Backend {
    /// Pick the best available: kernel-fan, else ebpf, else ipip.
    #[default]
    Auto,
    /// Ubuntu's kernel fan map on an ipip device.
    KernelFan,
    /// A tc eBPF program that encapsulates and decapsulates IPIP.
    Ebpf,
    /// ipip.ko with one computed onlink route per remote slice.
    Ipip,
    /// A backend newer than this SDK. Sent back to the agent it means auto.
    Unknown,
}

impl Backend {
    /// The name used on the command line and in JSON (`"kernel-fan"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::KernelFan => "kernel-fan",
            Backend::Ebpf => "ebpf",
            Backend::Ipip => "ipip",
            Backend::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a [`Backend`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: expected auto, kernel-fan, ebpf or ipip")]
pub struct ParseBackendError(pub String);

impl FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Backend::Auto),
            "kernel-fan" => Ok(Backend::KernelFan),
            "ebpf" => Ok(Backend::Ebpf),
            "ipip" => Ok(Backend::Ipip),
            _ => Err(ParseBackendError(s.to_string())),
        }
    }
}

/// The lifecycle state of a network on one host.
///
/// Serializes as `"ready"`, `"degraded"`, `"failed"` or `"unknown"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum NetworkState {
    /// The data path is programmed and matches the desired state.
    Ready,
    /// The desired state is stored but the kernel does not match it (yet).
    Degraded,
    /// The network cannot be programmed on this host.
    Failed,
    /// Not set by the agent, or a state newer than this SDK.
    Unknown,
}

impl NetworkState {
    /// The lower-case name (`"ready"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            NetworkState::Ready => "ready",
            NetworkState::Degraded => "degraded",
            NetworkState::Failed => "failed",
            NetworkState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for NetworkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is asked for when creating a network.
///
/// `None` fields take the agent's defaults (host reserve 1, bridge derived
/// from the overlay, MTU = underlay MTU - 20, masquerade and anti-spoofing
/// on). A network returned by the agent has its defaults filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    /// The overlay, CIDR (`"250.0.0.0/8"`); a bare first octet (`"250"`) is
    /// accepted by the agent as that octet's /8.
    pub overlay: String,
    /// The underlay as fanctl names it: `A.B.C.D/N`, `A.B.C.D` (/16),
    /// `IFACE/N` or `default/N`.
    pub underlay: String,
    /// How many addresses at the start of the slice are kept for the host.
    pub host_reserve: Option<u32>,
    /// The bridge device name.
    pub bridge: Option<String>,
    /// The MTU of the bridge and the containers.
    pub mtu: Option<u32>,
    /// The data-plane backend.
    pub backend: Backend,
    /// Masquerade traffic leaving the overlay behind the underlay address.
    pub masquerade: Option<bool>,
    /// Drop decapsulated packets whose inner source does not match the outer.
    pub anti_spoofing: Option<bool>,
    /// Accept an overlay that overlaps the host's own addresses or routes
    /// (refused with `OVERLAY_OVERLAPS_HOST` otherwise). Omitted from JSON
    /// when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_overlap: bool,
    /// Serve DHCPv4 on the bridge from the agent's allocations (fanctl's
    /// `dhcp` flag). Omitted from JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// DNS servers handed to DHCP clients. Omitted from JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dhcp_dns: Vec<String>,
    /// DHCP lease time in seconds (None: the agent's default, 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp_lease_seconds: Option<u32>,
    /// The network's labels (changeable with `update_network`). Omitted
    /// from JSON when empty.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl NetworkSpec {
    /// A spec with the given overlay and underlay and every other field at
    /// the agent's default.
    pub fn new(overlay: impl Into<String>, underlay: impl Into<String>) -> Self {
        Self {
            overlay: overlay.into(),
            underlay: underlay.into(),
            ..Self::default()
        }
    }
}

/// Data-plane packet counters of one network on one host (wire packets).
/// Every `dropped_*` counter counts only packets the data plane discarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DataplaneCounters {
    /// Packets encapsulated towards another host.
    pub encapsulated: u64,
    /// Packets decapsulated and delivered into the local slice.
    pub decapsulated: u64,
    /// Incoming packets dropped by anti-spoofing at decapsulation: inner
    /// source not of the outer source's slice, or outer source the
    /// underlay's network or broadcast address.
    pub dropped_spoofed: u64,
    /// Outer fragments, which cannot be decapsulated.
    pub dropped_fragment: u64,
    /// Packets dropped for any other reason (malformed, no remote host, no
    /// room for the header; ipip/kernel-fan: the tunnel device's errors and drops).
    pub dropped_other: u64,
    /// Outgoing packets dropped by anti-spoofing before encapsulation: their
    /// source is not in this host's slice.
    pub dropped_spoofed_egress: u64,
}

/// What the agent observes of a network on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkStatus {
    /// The local underlay address the host uses for the network.
    pub underlay_address: Option<Ipv4Addr>,
    /// The underlay device carrying that address.
    pub underlay_interface: String,
    /// This host's slice of the overlay.
    pub slice: Option<Ipv4Cidr>,
    /// The gateway (the slice's .1) on the bridge.
    pub gateway: Option<Ipv4Addr>,
    /// The bridge device name.
    pub bridge: String,
    /// The effective MTU.
    pub mtu: u32,
    /// The backend in use; `None` while none is programmed.
    pub backend: Option<Backend>,
    /// The lifecycle state.
    pub state: NetworkState,
    /// Why the network is not ready; empty when ready.
    pub reason: String,
    /// Addresses currently allocated.
    pub allocated: u32,
    /// Addresses the slice offers to containers in total.
    pub capacity: u32,
    /// Data-plane counters, when the backend provides them.
    pub counters: Option<DataplaneCounters>,
}

/// A fan network on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Network {
    /// The network id (`"fan-250"`).
    pub id: String,
    /// The resource name (`"networks/fan-250"`).
    pub name: String,
    /// The desired state, with defaults filled in.
    pub spec: NetworkSpec,
    /// The observed state.
    pub status: NetworkStatus,
    /// When the network was created.
    #[serde(serialize_with = "serialize_time")]
    pub create_time: Option<SystemTime>,
}

/// Who holds an address: one interface of one container.
///
/// Written `CONTAINER[/INTERFACE]` on the command line; see
/// [`Owner::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Owner {
    /// The container id (1 to 256 printable characters).
    pub container_id: String,
    /// The interface inside the container (`"eth0"` when not given).
    pub interface: String,
}

/// The interface an [`Owner`] has when none is named.
pub const DEFAULT_INTERFACE: &str = "eth0";

impl Owner {
    /// The owner `container_id` on interface `eth0`.
    pub fn new(container_id: impl Into<String>) -> Self {
        Self::with_interface(container_id, DEFAULT_INTERFACE)
    }

    /// The owner `container_id` on `interface`.
    pub fn with_interface(container_id: impl Into<String>, interface: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            interface: interface.into(),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.interface)
    }
}

/// Why a string is not an [`Owner`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid owner {0:?}: expected CONTAINER or CONTAINER/INTERFACE")]
pub struct ParseOwnerError(pub String);

impl FromStr for Owner {
    type Err = ParseOwnerError;

    /// Parses `CONTAINER` (interface `eth0`) or `CONTAINER/INTERFACE`. The
    /// split is at the last `/`, since interface names cannot contain one:
    /// a container id that contains `/` must be written with its interface.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, iface) = match s.rsplit_once('/') {
            Some((id, iface)) => (id, iface),
            None => (s, DEFAULT_INTERFACE),
        };
        if id.is_empty() || iface.is_empty() {
            return Err(ParseOwnerError(s.to_string()));
        }
        Ok(Owner::with_interface(id, iface))
    }
}

/// One address allocated to one owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allocation {
    /// The resource name (`"networks/fan-250/allocations/250.0.28.2"`).
    pub name: String,
    /// The network the address belongs to.
    pub network_id: String,
    /// The owner.
    pub owner: Owner,
    /// The allocated address.
    pub address: Ipv4Addr,
    /// The prefix length of the slice (the container's netmask).
    pub prefix_length: u8,
    /// The gateway the container routes through.
    pub gateway: Ipv4Addr,
    /// The MTU the container interface must use.
    pub mtu: u32,
    /// Labels given at allocation time.
    pub labels: BTreeMap<String, String>,
    /// When the address was allocated.
    #[serde(serialize_with = "serialize_time")]
    pub create_time: Option<SystemTime>,
}

impl Allocation {
    /// The address with the slice prefix (`250.0.28.2/24`), as a container
    /// interface is configured.
    pub fn cidr(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            address: self.address,
            prefix: self.prefix_length,
        }
    }
}

/// What to allocate: for whom, optionally which address, with which labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationRequest {
    /// Who the address is for.
    pub owner: Owner,
    /// A specific address; `None` for the next free one.
    pub address: Option<Ipv4Addr>,
    /// Free-form labels stored with the allocation.
    pub labels: BTreeMap<String, String>,
}

impl AllocationRequest {
    /// The next free address for `owner`, no labels.
    pub fn new(owner: Owner) -> Self {
        Self {
            owner,
            address: None,
            labels: BTreeMap::new(),
        }
    }

    /// Asks for one specific address.
    pub fn address(mut self, address: Ipv4Addr) -> Self {
        self.address = Some(address);
        self
    }

    /// Adds one label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// Selects one allocation of a network: by owner or by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The allocation of this owner.
    Owner(Owner),
    /// The allocation of this address.
    Address(Ipv4Addr),
}

impl From<Owner> for Selector {
    fn from(owner: Owner) -> Self {
        Selector::Owner(owner)
    }
}

impl From<Ipv4Addr> for Selector {
    fn from(address: Ipv4Addr) -> Self {
        Selector::Address(address)
    }
}

/// The result of deleting a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteOutcome {
    /// Whether a network was deleted (false only with `allow_missing`).
    pub deleted: bool,
    /// How many allocations were released with it.
    pub released_allocations: u32,
}

/// One difference between a network's desired and observed kernel state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The object that differs (`"bridge fan-250"`).
    pub object: String,
    /// What was expected.
    pub expected: String,
    /// What was found.
    pub observed: String,
}

/// One backend and whether it can run on the agent's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendAvailability {
    /// The backend.
    pub backend: Backend,
    /// Whether it can run there.
    pub available: bool,
    /// Why (not).
    pub reason: String,
}

/// One IPv4 address of the agent's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostAddress {
    /// The device.
    pub interface: String,
    /// The address with its prefix.
    pub address: Ipv4Cidr,
    /// The device MTU.
    pub mtu: u32,
}

/// The agent, its host and its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    /// The agent's version (semver).
    pub version: String,
    /// The host name.
    pub hostname: String,
    /// The kernel release (`uname -r`).
    pub kernel_release: String,
    /// The host's IPv4 addresses, loopback excluded.
    pub addresses: Vec<HostAddress>,
    /// Every backend with its availability.
    pub backends: Vec<BackendAvailability>,
    /// What `auto` resolves to on the host; `None` when nothing can run.
    pub auto_backend: Option<Backend>,
}

/// Where [`crate::FanClient::resolve_address`] looks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ResolveScope {
    /// Every network of the agent.
    #[default]
    AllNetworks,
    /// One network of the agent, by id.
    Network(String),
    /// An ad hoc fan that need not exist anywhere.
    AdHoc {
        /// The overlay network.
        overlay: Ipv4Cidr,
        /// The underlay network.
        underlay: Ipv4Cidr,
    },
}

/// How one address resolves in one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The network id; `None` for an ad hoc fan.
    pub network_id: Option<String>,
    /// Whether the address is an overlay address (else an underlay one).
    pub is_overlay: bool,
    /// The underlay host that owns the slice.
    pub underlay_host: Ipv4Addr,
    /// The slice.
    pub slice: Ipv4Cidr,
}

/// One page of a paginated list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
    /// The event revision the page reflects: [`crate::FanClient::watch_events`]
    /// from it receives every later change.
    pub revision: u64,
}

/// Formats a time as RFC 3339 UTC with seconds, and the fraction of a
/// second without trailing zeros when there is one: `2025-01-31T12:00:00Z`,
/// `2025-01-31T12:00:00.131Z`. Times before 1970 print as the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        format!("{y:04}-{m:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        let frac = format!("{nanos:09}");
        let frac = frac.trim_end_matches('0');
        format!("{y:04}-{m:02}-{day:02}T{hh:02}:{mm:02}:{ss:02}.{frac}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn serialize_time<S: Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_display() {
        let c: Ipv4Cidr = "172.30.0.28/16".parse().unwrap();
        assert_eq!(c.to_string(), "172.30.0.28/16");
        assert_eq!(c.network(), Ipv4Addr::new(172, 30, 0, 0));
        assert!(c.contains(Ipv4Addr::new(172, 30, 9, 9)));
        assert!(!c.contains(Ipv4Addr::new(172, 31, 0, 1)));
        let zero: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains(Ipv4Addr::new(8, 8, 8, 8)));
        for bad in [
            "250",
            "250.0.0.0",
            "250.0.0.0/33",
            "250.0.0/8",
            "1.2.3.4/+8",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn owner_parse() {
        assert_eq!("c1".parse::<Owner>().unwrap(), Owner::new("c1"));
        assert_eq!(
            "c1/net1".parse::<Owner>().unwrap(),
            Owner::with_interface("c1", "net1")
        );
        assert_eq!(
            "pod/x/eth1".parse::<Owner>().unwrap(),
            Owner::with_interface("pod/x", "eth1")
        );
        assert!("".parse::<Owner>().is_err());
        assert!("c1/".parse::<Owner>().is_err());
        assert!("/eth0".parse::<Owner>().is_err());
        assert_eq!(Owner::new("c1").to_string(), "c1/eth0");
    }

    #[test]
    fn backend_names_round_trip() {
        for b in [
            Backend::Auto,
            Backend::KernelFan,
            Backend::Ebpf,
            Backend::Ipip,
        ] {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), b);
            assert_eq!(
                serde_json::to_value(b).unwrap(),
                serde_json::Value::String(b.as_str().into())
            );
        }
        assert!("unknown".parse::<Backend>().is_err());
        assert!("KERNEL_FAN".parse::<Backend>().is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_rfc3339(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_735_689_599, 5); // 2024-12-31T23:59:59
        assert_eq!(format_rfc3339(t), "2024-12-31T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::new(1_735_689_599, 131_000_000);
        assert_eq!(format_rfc3339(t), "2024-12-31T23:59:59.131Z");
    }
}
