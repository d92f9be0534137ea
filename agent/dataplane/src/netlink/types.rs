//! What the netlink helpers return and take: links, addresses, routes and
//! route changes, with the parsers from rtnetlink's messages and the error
//! mapping.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{
    InfoData, InfoNetkit, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::RouteMessageBuilder;

use crate::{DataplaneError, Result};

pub use netlink_packet_route::route::RouteScope;

/// The main routing table.
pub const TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = fan_core::names::MAX_DEVICE_NAME_LEN;

// errno values the helpers treat as "already done" (positive, as in libc).
pub(super) const EEXIST: i32 = libc::EEXIST;
pub(super) const ENODEV: i32 = libc::ENODEV;
pub(super) const ENOENT: i32 = libc::ENOENT;
pub(super) const ESRCH: i32 = libc::ESRCH;
pub(super) const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// The device group (IFLA_GROUP) every device fan creates is born in.
///
/// Ownership is the ifalias mark, but the kernel ignores IFLA_IFALIAS when it
/// creates a device, so the mark is a second request: a creator stopped in
/// between (SIGTERM mid-reconcile, a crash, a kill) leaves a device that
/// nothing owns. IFLA_GROUP, unlike the alias, is applied by the RTM_NEWLINK
/// that creates the device, so such a device is still recognisable: in this
/// group, without an ifalias ([`Link::unmarked_fan_birth`]). The value spells
/// "fan" in ASCII; nothing else puts devices in it.
pub const FAN_DEVICE_GROUP: u32 = 0x6661_6e00;

/// What the kernel reports about one network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// ARP disabled (IFF_NOARP).
    pub noarp: bool,
    /// The loopback device (IFF_LOOPBACK).
    pub loopback: bool,
    /// The ifalias, when set and not empty.
    pub alias: Option<String>,
    /// The rtnl link kind ("bridge", "veth", …); `None` for physical devices.
    pub kind: Option<String>,
    /// Index of the master device (bridge, bond), when enslaved.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's index.
    pub link: Option<u32>,
    /// The Ethernet address, when the device has one.
    pub mac: Option<[u8; 6]>,
    /// IFLA_LINK_NETNSID, set when the device's link (a veth's peer) lives
    /// in another network namespace: the id, in our namespace, of the namespace where
    /// the device's link (a veth's peer) lives.
    pub link_netnsid: Option<i32>,
    /// IFLA_GSO_IPV4_MAX_SIZE: the largest IPv4 GSO packet the stack builds
    /// for this device (above 64 KB: BIG TCP; Linux 6.3+, else `None`).
    pub gso_ipv4_max_size: Option<u32>,
    /// IFLA_GRO_IPV4_MAX_SIZE: the largest IPv4 packet GRO builds on it.
    pub gro_ipv4_max_size: Option<u32>,
    /// IFLA_TSO_MAX_SIZE: the most the device (its driver) accepts as GSO
    /// size; the kernel refuses a larger `gso_ipv4_max_size`.
    pub tso_max_size: Option<u32>,
    /// IFLA_NETKIT_PRIMARY of a netkit device: the primary end takes the
    /// BPF programs of both ends; `None` for other kinds.
    pub netkit_primary: Option<bool>,
    /// IFLA_GROUP, the device group (0, "default", unless set).
    pub group: u32,
}

impl Link {
    /// Created by fan (born in [`FAN_DEVICE_GROUP`]) but never marked: its
    /// creator stopped between creating it and setting its ifalias. Whoever
    /// expects a device of this name and kind may complete the creation by
    /// marking it ([`crate::netlink::Netlink::claim`]).
    pub fn unmarked_fan_birth(&self) -> bool {
        self.group == FAN_DEVICE_GROUP && self.alias.is_none()
    }

    /// Whether this device, found where one marked `mark` is expected, is
    /// fan's: it carries the mark, or it is an [unmarked fan
    /// birth](Link::unmarked_fan_birth).
    pub fn owned_by(&self, mark: &str) -> bool {
        self.alias.as_deref() == Some(mark) || self.unmarked_fan_birth()
    }

    /// The device's link (a veth's peer) lives in another network namespace.
    pub fn link_in_other_netns(&self) -> bool {
        self.link_netnsid.is_some()
    }
}

/// An IPv4 address on a device, as listed by [`Netlink::all_ipv4_addresses`](super::Netlink::all_ipv4_addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub interface: String,
    /// Device MTU.
    pub mtu: u32,
    /// True for the loopback device.
    pub loopback: bool,
    /// The address with its prefix length.
    pub address: Ipv4Network,
}

/// `rtm_type` of a unicast route (a gateway or a device).
pub const RTN_UNICAST: u8 = 1;
/// `rtm_type` of a route to one of the host's own addresses (local table).
pub const RTN_LOCAL: u8 = 2;
/// `rtm_type` of a broadcast address (local table).
pub const RTN_BROADCAST: u8 = 3;
/// The local table: the host's own and broadcast addresses.
pub const TABLE_LOCAL: u32 = 255;
/// The default table, looked up last.
pub const TABLE_DEFAULT: u32 = 253;

/// An IPv4 route of any type (unicast, local, broadcast, blackhole, …) as
/// the kernel's route lookup sees it; what the underlay's on-link check
/// reads (`ebpf::next_hop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination, table, device, gateway and metric. `via` is the IPv4
    /// gateway only; other kinds of next hop set `more_next_hops`.
    pub route: Route4,
    /// `rtm_type`: [`RTN_UNICAST`], [`RTN_LOCAL`], [`RTN_BROADCAST`], or
    /// another (blackhole, unreachable, prohibit, throw, …).
    pub kind: u8,
    /// `rtm_tos`: the route matches packets of this TOS only (0: all).
    pub tos: u8,
    /// The route has next hops beyond `oif` and `via`: several
    /// (RTA_MULTIPATH), a nexthop object (RTA_NH_ID), an IPv6 gateway
    /// (RTA_VIA) or a lightweight tunnel (RTA_ENCAP).
    pub more_next_hops: bool,
}

/// An IPv4 policy routing rule (`ip rule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleEntry {
    /// Priority ("pref"): rules are tried from the lowest.
    pub priority: u32,
    /// The table it looks up.
    pub table: u32,
    /// The rule looks up `table` for every packet: no selector (source,
    /// destination, TOS, mark, interfaces, ports, protocol, UID range, …),
    /// action "lookup", not inverted, nothing suppressed.
    pub plain: bool,
}

/// The host's IPv4 routing: every route of every table and every rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingView {
    /// Routes of every table, of every type.
    pub routes: Vec<RouteEntry>,
    /// Policy rules.
    pub rules: Vec<RuleEntry>,
}

/// An IPv4 unicast route, for adding, replacing, deleting and listing.
///
/// Build with [`Route4::new`] and struct update syntax:
/// `Route4 { oif: Some(idx), src: Some(gw), ..Route4::new(overlay) }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Destination network.
    pub destination: Ipv4Network,
    /// Output device index.
    pub oif: Option<u32>,
    /// Gateway ("via").
    pub via: Option<Ipv4Addr>,
    /// Preferred source address ("src").
    pub src: Option<Ipv4Addr>,
    /// Routing table id ([`TABLE_MAIN`] by default).
    pub table: u32,
    /// Route protocol number: the agent marks its routes with its own.
    pub protocol: u8,
    /// Scope; `None` picks what `ip route` picks: link without a gateway,
    /// universe with one. On delete, `None` matches any scope.
    pub scope: Option<RouteScope>,
    /// The gateway is on-link even if no address covers it ("onlink").
    pub onlink: bool,
    /// Metric ("priority"); `None` for the kernel default (0).
    pub metric: Option<u32>,
}

impl Route4 {
    /// A route to `destination` in the main table, protocol static, nothing else set.
    pub fn new(destination: Ipv4Network) -> Self {
        Route4 {
            destination,
            oif: None,
            via: None,
            src: None,
            table: TABLE_MAIN,
            protocol: u8::from(RouteProtocol::Static),
            scope: None,
            onlink: false,
            metric: None,
        }
    }

    pub(super) fn to_message(&self, for_delete: bool) -> RouteMessage {
        let scope = match (self.scope, for_delete) {
            (Some(scope), _) => scope,
            // RT_SCOPE_NOWHERE on delete means "any scope" to the kernel.
            (None, true) => RouteScope::NoWhere,
            (None, false) if self.via.is_none() => RouteScope::Link,
            (None, false) => RouteScope::Universe,
        };
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.destination.network(), self.destination.prefix())
            .table_id(self.table)
            .protocol(RouteProtocol::from(self.protocol))
            .scope(scope)
            .kind(RouteType::Unicast);
        if let Some(oif) = self.oif {
            builder = builder.output_interface(oif);
        }
        if let Some(via) = self.via {
            builder = builder.gateway(via);
        }
        if let Some(src) = self.src {
            builder = builder.pref_source(src);
        }
        if let Some(metric) = self.metric {
            builder = builder.priority(metric);
        }
        if self.onlink {
            builder = builder.onlink();
        }
        builder.build()
    }

    pub(super) fn describe(&self) -> String {
        let mut s = format!("route {}", self.destination);
        if let Some(via) = self.via {
            s.push_str(&format!(" via {via}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" oif {oif}"));
        }
        if self.table != TABLE_MAIN {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }
}

/// The kernel's errno (positive) inside an rtnetlink error, if it carries one.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

/// Maps an rtnetlink error to [`DataplaneError::Netlink`] with `context`.
pub fn netlink_error(context: impl Into<String>, error: rtnetlink::Error) -> DataplaneError {
    let message = match &error {
        // to_io() gives "File exists (os error 17)" instead of a Debug dump.
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    };
    DataplaneError::Netlink {
        context: context.into(),
        message,
    }
}

/// Refuses a name before it reaches the kernel, by the one device-name rule
/// the API and the CNI plugin apply too (fan-core).
pub(super) fn check_ifname(name: &str, context: &str) -> Result<()> {
    fan_core::names::validate_device_name(name).map_err(|e| DataplaneError::Netlink {
        context: context.to_string(),
        message: e.to_string(),
    })
}

pub(super) fn parse_link(msg: LinkMessage) -> Link {
    let flags = msg.header.flags;
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        up: flags.contains(LinkFlags::Up),
        noarp: flags.contains(LinkFlags::Noarp),
        loopback: flags.contains(LinkFlags::Loopback),
        alias: None,
        kind: None,
        master: None,
        link: None,
        mac: None,
        link_netnsid: None,
        gso_ipv4_max_size: None,
        gro_ipv4_max_size: None,
        tso_max_size: None,
        netkit_primary: None,
        group: 0,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::IfAlias(alias) if !alias.is_empty() => link.alias = Some(alias),
            LinkAttribute::Controller(master) if master != 0 => link.master = Some(master),
            LinkAttribute::Link(peer) if peer != 0 => link.link = Some(peer),
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
            LinkAttribute::GsoIpv4MaxSize(size) => link.gso_ipv4_max_size = Some(size),
            LinkAttribute::GroIpv4MaxSize(size) => link.gro_ipv4_max_size = Some(size),
            LinkAttribute::TsoMaxSize(size) => link.tso_max_size = Some(size),
            LinkAttribute::Group(group) => link.group = group,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Netkit(data)) => {
                            for item in data {
                                if let InfoNetkit::Primary(primary) = item {
                                    link.netkit_primary = Some(primary);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The rtnetlink-parsed reference for the raw parser (`batch`).
#[cfg(test)]
pub(super) fn parse_route(msg: RouteMessage) -> Option<Route4> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags};
    use netlink_packet_route::AddressFamily;
    let header = &msg.header;
    if header.address_family != AddressFamily::Inet || header.kind != RouteType::Unicast {
        return None;
    }
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut table = u32::from(header.table);
    let mut route = Route4 {
        destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok()?,
        oif: None,
        via: None,
        src: None,
        table,
        protocol: u8::from(header.protocol),
        scope: Some(header.scope),
        onlink: header.flags.contains(RouteFlags::Onlink),
        metric: None,
    };
    for attr in msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => destination = a,
            RouteAttribute::Table(t) => table = t,
            RouteAttribute::Oif(i) => route.oif = Some(i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.via = Some(a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.src = Some(a),
            RouteAttribute::Priority(p) => route.metric = Some(p),
            RouteAttribute::MultiPath(hops) if route.oif.is_none() => {
                // Multipath: report the first next hop's device.
                route.oif = hops.first().map(|h| h.interface_index);
            }
            _ => {}
        }
    }
    route.table = table;
    route.destination = Ipv4Network::new(destination, header.destination_prefix_length).ok()?;
    Some(route)
}

// ------------------------------------------------- batches, raw links, stats

/// One change in a [`Netlink::change_routes`](super::Netlink::change_routes) batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Add the route (NLM_F_EXCL); a route with the same key already there
    /// counts as [`RouteBatchReport::already`], not as a failure.
    Add(Route4),
    /// Add or overwrite the route with the same key (NLM_F_REPLACE).
    Replace(Route4),
    /// Delete the route; already absent counts as [`RouteBatchReport::already`].
    Delete(Route4),
}

impl RouteChange {
    pub(super) fn route(&self) -> &Route4 {
        match self {
            RouteChange::Add(r) | RouteChange::Replace(r) | RouteChange::Delete(r) => r,
        }
    }

    pub(super) fn verb(&self) -> &'static str {
        match self {
            RouteChange::Add(_) => "add",
            RouteChange::Replace(_) => "replace",
            RouteChange::Delete(_) => "delete",
        }
    }
}

/// What a [`Netlink::change_routes`](super::Netlink::change_routes) batch did.
#[derive(Debug, Default)]
pub struct RouteBatchReport {
    /// Changes the kernel applied.
    pub done: usize,
    /// Adds whose key already existed (EEXIST) and deletes of routes
    /// already gone: nothing to do.
    pub already: usize,
    /// Changes that failed, with the kernel's answer (at most
    /// [`RouteBatchReport::MAX_ERRORS`] kept; `failed` counts them all).
    pub errors: Vec<DataplaneError>,
    /// Number of failed changes.
    pub failed: usize,
}

impl RouteBatchReport {
    /// How many errors are kept in [`RouteBatchReport::errors`].
    pub const MAX_ERRORS: usize = 8;

    /// Ok when nothing failed; otherwise one error naming the count and
    /// the first failures.
    pub fn into_result(self, context: &str) -> Result<()> {
        if self.failed == 0 {
            return Ok(());
        }
        let examples = self
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Err(DataplaneError::other(
            context.to_string(),
            format!(
                "{} of {} route changes failed (first: {examples})",
                self.failed,
                self.done + self.already + self.failed
            ),
        ))
    }
}

/// Packet counters of a device (IFLA_STATS64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors (for ip tunnels: no route, loops, no fan map).
    pub tx_errors: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
    /// For ip tunnels: packets whose outer route pointed back into the tunnel.
    pub collisions: u64,
}

/// Default number of route requests [`Netlink::change_routes`](super::Netlink::change_routes) sends per
/// system call (their acknowledgements must fit the receive buffer).
pub const ROUTE_BATCH_SIZE: usize = 128;
