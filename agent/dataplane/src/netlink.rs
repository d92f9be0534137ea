//! The one place that owns the rtnetlink handle.
//!
//! [`Netlink`] wraps an [`rtnetlink::Handle`] whose connection task runs on the
//! tokio runtime that created it. Every helper is small and idempotent where the
//! operation allows it: deleting something already gone succeeds, adding an
//! address that is already there succeeds. Errors are
//! [`DataplaneError::Netlink`] whose `context` names the object
//! ("create bridge fan-250").
//!
//! The netlink socket lives in the network namespace of the thread that called
//! [`Netlink::new`], which is what lets tests run a whole data plane inside a
//! namespace entered by one thread.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::debug;

use crate::{DataplaneError, Result};

pub use netlink_packet_route::route::RouteScope;

/// The main routing table.
pub const TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

// errno values the helpers treat as "already done" (positive, as in libc).
const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

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
}

/// An IPv4 address on a device, as listed by [`Netlink::all_ipv4_addresses`].
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

    fn to_message(&self, for_delete: bool) -> RouteMessage {
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

    fn describe(&self) -> String {
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

fn check_ifname(name: &str, context: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
        return Err(DataplaneError::Netlink {
            context: context.to_string(),
            message: format!(
                "invalid interface name {name:?} (1 to {IFNAME_MAX} bytes, no '/' or spaces)"
            ),
        });
    }
    Ok(())
}

fn parse_link(msg: LinkMessage) -> Link {
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
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::IfAlias(alias) if !alias.is_empty() => link.alias = Some(alias),
            LinkAttribute::Controller(master) if master != 0 => link.master = Some(master),
            LinkAttribute::Link(peer) if peer != 0 => link.link = Some(peer),
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_address(msg: &AddressMessage) -> Option<Ipv4Network> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    // For IPv4, IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
    // peer on point-to-point links. Prefer LOCAL.
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    Ipv4Network::new(local.or(address)?, msg.header.prefix_len).ok()
}

fn parse_route(msg: RouteMessage) -> Option<Route4> {
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

/// Where a backend gets its netlink connection: the data plane's own,
/// injected once ([`crate::Encapsulation::use_netlink`]) and shared by every
/// operation, or, for a backend driven on its own (tests, each call on its
/// own runtime), a fresh connection per operation.
#[derive(Debug, Default)]
pub struct NetlinkSlot(std::sync::OnceLock<Netlink>);

impl NetlinkSlot {
    /// Uses `netlink` from now on (the first injection wins).
    pub fn set(&self, netlink: &Netlink) {
        let _ = self.0.set(netlink.clone());
    }

    /// The injected connection, or a new one.
    pub fn get(&self) -> Result<Netlink> {
        match self.0.get() {
            Some(netlink) => Ok(netlink.clone()),
            None => Netlink::new(),
        }
    }
}

/// The rtnetlink connection of the agent (cheap to clone: clones share one socket).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// A second NETLINK_ROUTE socket of the same namespace for
    /// [`Netlink::change_routes`] (opened here, so it is in the namespace
    /// of the thread that called [`Netlink::new`]).
    batch: std::sync::Arc<std::sync::Mutex<batch::BatchSocket>>,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace
    /// and spawns its connection task on the current tokio runtime (an error
    /// outside of one).
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| DataplaneError::other("open rtnetlink socket", e))?;
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DataplaneError::other("open rtnetlink socket", e))?;
        let batch = batch::BatchSocket::open()
            .map_err(|e| DataplaneError::other("open rtnetlink batch socket", e))?;
        runtime.spawn(connection);
        Ok(Netlink {
            handle,
            batch: std::sync::Arc::new(std::sync::Mutex::new(batch)),
        })
    }

    /// The raw rtnetlink handle, for requests these helpers do not cover (tc, neighbours).
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    // ---------------------------------------------------------------- links

    /// The device named `name`, or `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let context = format!("get link {name}");
        check_ifname(name, &context)?;
        let mut stream = self.handle.link().get().match_name(name).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(parse_link)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(context, e)),
        }
    }

    /// The device with index `index`, or `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(parse_link)),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("get link #{index}"), e)),
        }
    }

    /// Every device of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        self.handle
            .link()
            .get()
            // Statistics are most of a link message and [`Link`] has none.
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute()
            .map_ok(parse_link)
            .try_collect()
            .await
            .map_err(|e| netlink_error("list links", e))
    }

    /// The devices of one kind ("bridge", "veth"), filtered by the kernel
    /// (kernels that ignore the filter get the result filtered here).
    pub async fn links_of_kind(&self, kind: &str) -> Result<Vec<Link>> {
        let mut request = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::from(kind),
            )]));
        Ok(request
            .execute()
            .map_ok(parse_link)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| netlink_error(format!("list {kind} links"), e))?
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some(kind))
            .collect())
    }

    /// Like [`Netlink::link_by_name`] but absence is an error.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| DataplaneError::Netlink {
                context: format!("get link {name}"),
                message: "no such device".to_string(),
            })
    }

    /// Creates a bridge named `name`, left down. Idempotent: an existing
    /// bridge of that name is returned unchanged; a device of another kind
    /// is an error. Ownership checks are the caller's business.
    pub async fn create_bridge(&self, name: &str) -> Result<Link> {
        let context = format!("create bridge {name}");
        check_ifname(name, &context)?;
        if let Some(link) = self.link_by_name(name).await? {
            return expect_kind(link, "bridge", &context);
        }
        match self.add_bridge(name).await {
            Ok(Some(link)) => Ok(link),
            // Lost a race with another creator: take what is there.
            Ok(None) => expect_kind(self.require_link(name).await?, "bridge", &context),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge named `name`, left down, only if no device has that
    /// name: `Ok(None)` when one exists (EEXIST). Use this when the caller
    /// must know that the device is the one it created (ownership marks).
    pub async fn add_bridge(&self, name: &str) -> Result<Option<Link>> {
        let context = format!("create bridge {name}");
        check_ifname(name, &context)?;
        // LinkBridge::new sets IFF_UP; clear it so that the caller configures
        // MTU, addresses and its mark before the device carries traffic.
        let message = LinkBridge::new(name).down().build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => debug!(bridge = name, "created bridge"),
            Err(e) if errno(&e) == Some(EEXIST) => return Ok(None),
            Err(e) => return Err(netlink_error(context, e)),
        }
        let link = self.require_link(name).await?;
        expect_kind(link, "bridge", &context).map(Some)
    }

    /// Creates a veth pair `name` <-> `peer` (both down). Idempotent when
    /// `name` already exists as a veth whose peer is named `peer`.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(Link, Link)> {
        let context = format!("create veth {name} peer {peer}");
        check_ifname(name, &context)?;
        check_ifname(peer, &context)?;
        if self.link_by_name(name).await?.is_none() {
            let message = LinkVeth::new(name, peer).build();
            match self.handle.link().add(message).execute().await {
                Ok(()) => debug!(veth = name, peer, "created veth pair"),
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(netlink_error(context, e)),
            }
        }
        let link = expect_kind(self.require_link(name).await?, "veth", &context)?;
        let peer_link = match self.link_by_name(peer).await? {
            Some(p) if p.kind.as_deref() == Some("veth") && link.link == Some(p.index) => p,
            _ => {
                return Err(DataplaneError::Netlink {
                    context,
                    message: format!("{name} exists but its peer is not {peer}"),
                })
            }
        };
        Ok((link, peer_link))
    }

    /// "fan-250" for an existing device, "link #5" otherwise: error
    /// contexts name the object, and the lookup is only paid on failure.
    async fn label(&self, index: u32) -> String {
        match self.link_by_index(index).await {
            Ok(Some(link)) => link.name,
            _ => format!("link #{index}"),
        }
    }

    async fn set_link(
        &self,
        index: u32,
        context: impl FnOnce(&str) -> String,
        message: LinkMessage,
    ) -> Result<()> {
        match self.handle.link().set(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => Err(netlink_error(context(&self.label(index).await), e)),
        }
    }

    /// Sets the MTU of device `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(index, |l| format!("set mtu {mtu} on {l}"), message)
            .await
    }

    /// Sets the hardware address of device `index`.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(index, |l| format!("set MAC address on {l}"), message)
            .await
    }

    /// Sets device `index` administratively up or down.
    pub async fn set_up(&self, index: u32, up: bool) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index);
        let builder = if up { builder.up() } else { builder.down() };
        let state = if up { "up" } else { "down" };
        self.set_link(index, |l| format!("set {l} {state}"), builder.build())
            .await
    }

    /// Sets the ifalias of device `index` (the agent's ownership mark).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).alias(alias).build();
        self.set_link(index, |l| format!("set alias {alias:?} on {l}"), message)
            .await
    }

    /// Renames device `index` to `name` (the kernel refuses while it is up).
    pub async fn set_name(&self, index: u32, name: &str) -> Result<()> {
        check_ifname(name, &format!("rename #{index} to {name}"))?;
        let message = LinkUnspec::new_with_index(index)
            .name(name.to_owned())
            .build();
        self.set_link(index, |l| format!("rename {l} to {name}"), message)
            .await
    }

    /// Enslaves device `index` to `master`, or frees it with `None`.
    pub async fn set_master(&self, index: u32, master: Option<u32>) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index);
        match master {
            Some(m) => {
                let message = builder.controller(m).build();
                let result = self.handle.link().set(message).execute().await;
                match result {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let context = format!(
                            "set master {} on {}",
                            self.label(m).await,
                            self.label(index).await
                        );
                        Err(netlink_error(context, e))
                    }
                }
            }
            None => {
                let message = builder.nocontroller().build();
                self.set_link(index, |l| format!("clear master of {l}"), message)
                    .await
            }
        }
    }

    /// Turns ARP on or off on device `index` (IFF_NOARP).
    pub async fn set_arp(&self, index: u32, on: bool) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).arp(on).build();
        let state = if on { "on" } else { "off" };
        self.set_link(index, |l| format!("set arp {state} on {l}"), message)
            .await
    }

    /// Deletes device `index`; a device already gone is success.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(netlink_error(
                format!("delete {}", self.label(index).await),
                e,
            )),
        }
    }

    /// Deletes the device named `name`; returns false when there was none.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => {
                debug!(link = name, "deleted link");
                Ok(true)
            }
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(netlink_error(format!("delete link {name}"), e)),
        }
    }

    // ------------------------------------------------------------ addresses

    async fn dump_ipv4_addresses(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Network)>> {
        let mut request = self.handle.address().get();
        // The kernel dumps only the requested family.
        request.message_mut().header.family = AddressFamily::Inet;
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let messages: Vec<AddressMessage> = request.execute().try_collect().await.map_err(|e| {
            let context = match index {
                Some(i) => format!("list addresses of link #{i}"),
                None => "list addresses".to_string(),
            };
            netlink_error(context, e)
        })?;
        Ok(messages
            .iter()
            .filter_map(|m| parse_address(m).map(|a| (m.header.index, a)))
            .collect())
    }

    /// The IPv4 addresses of device `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Network>> {
        Ok(self
            .dump_ipv4_addresses(Some(index))
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    /// Adds `address` to device `index`; already present is success.
    pub async fn add_ipv4_address(&self, index: u32, address: Ipv4Network) -> Result<()> {
        let request = self
            .handle
            .address()
            .add(index, IpAddr::V4(address.ip()), address.prefix());
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(netlink_error(
                format!("add address {address} to {}", self.label(index).await),
                e,
            )),
        }
    }

    /// Removes `address` from device `index`; already absent is success.
    pub async fn delete_ipv4_address(&self, index: u32, address: Ipv4Network) -> Result<()> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address.ip(), address.prefix())
            .build();
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL | ENODEV | ENOENT)) => Ok(()),
            Err(e) => Err(netlink_error(
                format!("delete address {address} from {}", self.label(index).await),
                e,
            )),
        }
    }

    /// Every IPv4 address of every device, with the device's name and MTU.
    pub async fn all_ipv4_addresses(&self) -> Result<Vec<LinkAddress>> {
        let links: HashMap<u32, Link> = self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l))
            .collect();
        Ok(self
            .dump_ipv4_addresses(None)
            .await?
            .into_iter()
            .filter_map(|(index, address)| {
                // An address whose link vanished between the two dumps is skipped.
                let link = links.get(&index)?;
                Some(LinkAddress {
                    index,
                    interface: link.name.clone(),
                    mtu: link.mtu,
                    loopback: link.loopback,
                    address,
                })
            })
            .collect())
    }

    // --------------------------------------------------------------- routes

    /// Adds `route`; a route with the same key (destination, table, metric,
    /// tos) already present is left as is and counts as success. Use
    /// [`Netlink::replace_route`] to overwrite it.
    pub async fn add_route(&self, route: &Route4) -> Result<()> {
        match self
            .handle
            .route()
            .add(route.to_message(false))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(netlink_error(format!("add {}", route.describe()), e)),
        }
    }

    /// Adds `route` or replaces the route with the same key.
    pub async fn replace_route(&self, route: &Route4) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message(false))
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_error(format!("replace {}", route.describe()), e))
    }

    /// Deletes `route` (matched on destination, table, protocol and whatever
    /// else is set); already absent is success.
    pub async fn delete_route(&self, route: &Route4) -> Result<()> {
        match self
            .handle
            .route()
            .del(route.to_message(true))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT | ENODEV)) => Ok(()),
            Err(e) => Err(netlink_error(format!("delete {}", route.describe()), e)),
        }
    }

    /// IPv4 unicast routes, of one table or (with `None`) of every table.
    pub async fn ipv4_routes(&self, table: Option<u32>) -> Result<Vec<Route4>> {
        let mut filter = RouteMessage::default();
        filter.header.address_family = AddressFamily::Inet;
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("list routes", e))?;
        Ok(messages
            .into_iter()
            .filter_map(parse_route)
            // The dump is not filtered by the kernel without strict checking.
            .filter(|r| table.is_none_or(|t| r.table == t))
            .collect())
    }

    /// The device of the IPv4 default route of the main table (lowest metric), if any.
    pub async fn default_route_interface(&self) -> Result<Option<String>> {
        let best = self
            .ipv4_routes(Some(TABLE_MAIN))
            .await?
            .into_iter()
            .filter(|r| r.destination.prefix() == 0 && r.oif.is_some())
            .min_by_key(|r| r.metric.unwrap_or(0));
        let Some(oif) = best.and_then(|r| r.oif) else {
            return Ok(None);
        };
        Ok(self.link_by_index(oif).await?.map(|l| l.name))
    }
}

// ------------------------------------------------- batches, raw links, stats

/// One change in a [`Netlink::change_routes`] batch.
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
    fn route(&self) -> &Route4 {
        match self {
            RouteChange::Add(r) | RouteChange::Replace(r) | RouteChange::Delete(r) => r,
        }
    }

    fn verb(&self) -> &'static str {
        match self {
            RouteChange::Add(_) => "add",
            RouteChange::Replace(_) => "replace",
            RouteChange::Delete(_) => "delete",
        }
    }
}

/// What a [`Netlink::change_routes`] batch did.
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

/// Default number of route requests [`Netlink::change_routes`] sends per
/// system call (their acknowledgements must fit the receive buffer).
pub const ROUTE_BATCH_SIZE: usize = 128;

/// The raw socket behind [`Netlink::change_routes`].
mod batch {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
        NLM_F_REPLACE, NLM_F_REQUEST,
    };
    use netlink_packet_route::RouteNetlinkMessage;

    use std::net::Ipv4Addr;

    use ipnetwork::Ipv4Network;

    use super::{Route4, RouteChange, RouteScope};

    const NLMSG_HDRLEN: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const SOL_NETLINK: libc::c_int = 270;
    const NETLINK_CAP_ACK: libc::c_int = 10;
    /// How long to wait for acknowledgements the kernel owes us.
    const ACK_TIMEOUT_SECS: libc::time_t = 30;

    #[derive(Debug)]
    pub(super) struct BatchSocket {
        fd: OwnedFd,
        seq: u32,
    }

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn set_int(
        fd: &OwnedFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: a valid fd and a c_int option of the right size.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                &value as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    }

    impl BatchSocket {
        pub(super) fn open() -> io::Result<Self> {
            Self::open_protocol(libc::NETLINK_ROUTE)
        }

        fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
            // SAFETY: plain socket(2); the fd is owned right away.
            let raw = check(unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    protocol,
                )
            })?;
            // SAFETY: raw is a fresh fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Acks without a copy of the request; room for a batch of them.
            let _ = set_int(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
            if set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20).is_err() {
                let _ = set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
            }
            let timeout = libc::timeval {
                tv_sec: ACK_TIMEOUT_SECS,
                tv_usec: 0,
            };
            // SAFETY: a valid fd and a timeval of the right size.
            check(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &timeout as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
            // SAFETY: zeroed sockaddr_nl is valid; pid 0 lets the kernel pick.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            // SAFETY: addr is a valid sockaddr_nl of the given size.
            check(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            })?;
            Ok(BatchSocket { fd, seq: 0 })
        }

        /// Encodes `change` exactly as rtnetlink's requests do.
        pub(super) fn encode(change: &RouteChange, seq: u32, out: &mut Vec<u8>) {
            let (payload, flags) = match change {
                RouteChange::Add(r) => (
                    RouteNetlinkMessage::NewRoute(r.to_message(false)),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
                ),
                RouteChange::Replace(r) => (
                    RouteNetlinkMessage::NewRoute(r.to_message(false)),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
                ),
                RouteChange::Delete(r) => (
                    RouteNetlinkMessage::DelRoute(r.to_message(true)),
                    NLM_F_REQUEST | NLM_F_ACK,
                ),
            };
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = seq;
            let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
            message.finalize();
            let start = out.len();
            out.resize(start + message.buffer_len(), 0);
            message.serialize(&mut out[start..]);
            // Messages in one datagram start at 4-byte boundaries.
            out.resize((out.len() + 3) & !3, 0);
        }

        /// Sends every change; returns the errno of each (0: done).
        pub(super) fn run(
            &mut self,
            changes: &[RouteChange],
            batch: usize,
            mut progress: impl FnMut(usize, usize),
        ) -> Vec<i32> {
            let total = changes.len();
            let mut results = vec![0i32; total];
            let mut finished = 0;
            let mut out = Vec::with_capacity(batch * 128);
            let mut buf = vec![0u8; 1 << 16];
            for (chunk_index, chunk) in changes.chunks(batch).enumerate() {
                let first = chunk_index * batch;
                let base = self.seq;
                self.seq = self.seq.wrapping_add(chunk.len() as u32);
                out.clear();
                for (i, change) in chunk.iter().enumerate() {
                    Self::encode(change, base.wrapping_add(i as u32), &mut out);
                }
                let mut pending = vec![true; chunk.len()];
                let mut waiting = chunk.len();
                let failure = match self.send(&out) {
                    Err(e) => Some(e),
                    Ok(()) => loop {
                        if waiting == 0 {
                            break None;
                        }
                        match self.recv(&mut buf) {
                            Err(e) => break Some(e),
                            Ok(n) => {
                                for (seq, errno) in acks(&buf[..n]) {
                                    let i = seq.wrapping_sub(base) as usize;
                                    if i < chunk.len() && pending[i] {
                                        pending[i] = false;
                                        waiting -= 1;
                                        results[first + i] = errno;
                                        finished += 1;
                                        progress(finished, total);
                                    }
                                }
                            }
                        }
                    },
                };
                if let Some(e) = failure {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    for (i, p) in pending.iter().enumerate() {
                        if *p {
                            results[first + i] = errno;
                            finished += 1;
                            progress(finished, total);
                        }
                    }
                    // The socket may hold stale acks now: start afresh.
                    if let Ok(fresh) = BatchSocket::open() {
                        *self = BatchSocket {
                            seq: self.seq,
                            ..fresh
                        };
                    }
                }
            }
            results
        }

        fn send(&self, data: &[u8]) -> io::Result<()> {
            // SAFETY: zeroed sockaddr_nl is valid; pid 0 is the kernel.
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            loop {
                // SAFETY: data and addr are valid for the given lengths.
                let rc = unsafe {
                    libc::sendto(
                        self.fd.as_raw_fd(),
                        data.as_ptr() as *const libc::c_void,
                        data.len(),
                        0,
                        &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                    )
                };
                if rc >= 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }

        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                // SAFETY: buf is valid for its length.
                let rc = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if rc >= 0 {
                    return Ok(rc as usize);
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// The nf_tables ruleset generation (NFT_MSG_GETGEN): it changes with
    /// every committed nftables transaction in this network namespace.
    pub(super) fn nft_generation() -> io::Result<u32> {
        const NFNL_SUBSYS_NFTABLES: u16 = 10;
        const NFT_MSG_GETGEN: u16 = 16;
        const NFTA_GEN_ID: u16 = 1;
        const KIND: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
        // The socket's receive timeout (30 s) bounds a kernel that never answers.
        let socket = BatchSocket::open_protocol(libc::NETLINK_NETFILTER)?;
        // nlmsghdr + struct nfgenmsg { family AF_UNSPEC, version 0, res_id 0 }.
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + 4);
        request.extend_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        request.extend_from_slice(&KIND.to_ne_bytes());
        request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        request.extend_from_slice(&1u32.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&[0; 4]);
        socket.send(&request)?;
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut buf)?;
        parse_generation(&buf[..n], KIND, NFTA_GEN_ID)
    }

    /// NFTA_GEN_ID of a NEWGEN answer (or the errno of an NLMSG_ERROR).
    pub(super) fn parse_generation(data: &[u8], kind: u16, attr: u16) -> io::Result<u32> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        if data.len() < NLMSG_HDRLEN {
            return Err(invalid("short netlink answer"));
        }
        let len = (u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize)
            .clamp(NLMSG_HDRLEN, data.len());
        let msg_kind = u16::from_ne_bytes([data[4], data[5]]);
        let p = &data[NLMSG_HDRLEN..len];
        if msg_kind == NLMSG_ERROR {
            let error = p
                .get(0..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(-libc::EIO);
            return Err(io::Error::from_raw_os_error(error.saturating_abs().max(1)));
        }
        if msg_kind != kind || p.len() < 4 {
            return Err(invalid("unexpected nf_tables answer"));
        }
        // After struct nfgenmsg (4 bytes): attributes.
        let mut offset = 4;
        while offset + 4 <= p.len() {
            let alen = usize::from(u16::from_ne_bytes([p[offset], p[offset + 1]]));
            let akind = u16::from_ne_bytes([p[offset + 2], p[offset + 3]]) & 0x3fff;
            if alen < 4 || offset + alen > p.len() {
                break;
            }
            if akind == attr && alen >= 8 {
                let v = &p[offset + 4..offset + 8];
                return Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            }
            offset += (alen + 3) & !3;
        }
        Err(invalid("nf_tables answer without a generation id"))
    }

    impl BatchSocket {
        /// Dumps the IPv4 routes of every table (RTM_GETROUTE, NLM_F_DUMP)
        /// and parses them straight from the bytes.
        pub(super) fn dump_ipv4_routes(&mut self) -> io::Result<Vec<Route4>> {
            const RTM_GETROUTE: u16 = 26;
            const NLMSG_DONE: u16 = 3;
            const NLM_F_DUMP: u16 = 0x300;
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            // nlmsghdr + struct rtmsg { family AF_INET, rest 0 }.
            let mut request = Vec::with_capacity(NLMSG_HDRLEN + 12);
            request.extend_from_slice(&((NLMSG_HDRLEN + 12) as u32).to_ne_bytes());
            request.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
            request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
            request.extend_from_slice(&seq.to_ne_bytes());
            request.extend_from_slice(&0u32.to_ne_bytes());
            request.push(libc::AF_INET as u8);
            request.extend_from_slice(&[0; 11]);
            self.send(&request)?;
            let mut routes = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = self.recv(&mut buf)?;
                let mut offset = 0;
                while offset + NLMSG_HDRLEN <= n {
                    let h = &buf[offset..n];
                    let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                    let kind = u16::from_ne_bytes([h[4], h[5]]);
                    let msg_seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                    if len < NLMSG_HDRLEN || len > h.len() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "truncated netlink message",
                        ));
                    }
                    if msg_seq == seq {
                        match kind {
                            NLMSG_DONE => return Ok(routes),
                            NLMSG_ERROR => {
                                let p = &h[NLMSG_HDRLEN..len];
                                let error = p
                                    .get(0..4)
                                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                    .unwrap_or(-libc::EIO);
                                if error != 0 {
                                    return Err(io::Error::from_raw_os_error(
                                        error.saturating_abs(),
                                    ));
                                }
                            }
                            _ => routes.extend(parse_route_bytes(&h[NLMSG_HDRLEN..len])),
                        }
                    }
                    offset += (len + 3) & !3;
                }
            }
        }
    }

    /// A route from the payload of an RTM_NEWROUTE (struct rtmsg and its
    /// attributes), with the same rules as `parse_route`: IPv4 unicast only.
    pub(super) fn parse_route_bytes(p: &[u8]) -> Option<Route4> {
        const RTA_DST: u16 = 1;
        const RTA_OIF: u16 = 4;
        const RTA_GATEWAY: u16 = 5;
        const RTA_PRIORITY: u16 = 6;
        const RTA_PREFSRC: u16 = 7;
        const RTA_MULTIPATH: u16 = 9;
        const RTA_TABLE: u16 = 15;
        const RTN_UNICAST: u8 = 1;
        const RTNH_F_ONLINK: u32 = 4;
        if p.len() < 12 || p[0] != libc::AF_INET as u8 || p[7] != RTN_UNICAST {
            return None;
        }
        let ip = |v: &[u8]| (v.len() == 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        let int = |v: &[u8]| (v.len() >= 4).then(|| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
        let flags = u32::from_ne_bytes([p[8], p[9], p[10], p[11]]);
        let mut destination = Ipv4Addr::UNSPECIFIED;
        let mut route = Route4 {
            destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok()?,
            oif: None,
            via: None,
            src: None,
            table: u32::from(p[4]),
            protocol: p[5],
            scope: Some(RouteScope::from(p[6])),
            onlink: flags & RTNH_F_ONLINK != 0,
            metric: None,
        };
        let mut offset = 12;
        while offset + 4 <= p.len() {
            let len = usize::from(u16::from_ne_bytes([p[offset], p[offset + 1]]));
            let kind = u16::from_ne_bytes([p[offset + 2], p[offset + 3]]) & 0x3fff;
            if len < 4 || offset + len > p.len() {
                break;
            }
            let v = &p[offset + 4..offset + len];
            match kind {
                RTA_DST => destination = ip(v).unwrap_or(destination),
                RTA_TABLE => route.table = int(v).unwrap_or(route.table),
                RTA_OIF => route.oif = int(v).or(route.oif),
                RTA_GATEWAY => route.via = ip(v).or(route.via),
                RTA_PREFSRC => route.src = ip(v).or(route.src),
                RTA_PRIORITY => route.metric = int(v).or(route.metric),
                // struct rtnexthop { u16 len; u8 flags; u8 hops; int ifindex; }
                RTA_MULTIPATH if route.oif.is_none() => route.oif = v.get(4..8).and_then(int),
                _ => {}
            }
            offset += (len + 3) & !3;
        }
        route.destination = Ipv4Network::new(destination, p[1]).ok()?;
        Some(route)
    }

    /// (sequence number, errno) of every NLMSG_ERROR (ack) in a datagram.
    pub(super) fn acks(data: &[u8]) -> Vec<(u32, i32)> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset + NLMSG_HDRLEN <= data.len() {
            let h = &data[offset..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let kind = u16::from_ne_bytes([h[4], h[5]]);
            if len < NLMSG_HDRLEN || offset + len > data.len() {
                break;
            }
            // struct nlmsgerr: int error; struct nlmsghdr msg (the request's).
            if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN {
                let p = &h[NLMSG_HDRLEN..];
                let error = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                let seq = u32::from_ne_bytes([p[12], p[13], p[14], p[15]]);
                out.push((seq, error.saturating_abs()));
            }
            offset += (len + 3) & !3;
        }
        out
    }
}

/// The nf_tables ruleset generation of this network namespace: it changes
/// with every committed nftables transaction, so an unchanged generation
/// means an unchanged ruleset (used to skip `nft` listings).
pub fn nft_generation() -> Result<u32> {
    batch::nft_generation().map_err(|e| DataplaneError::other("nf_tables generation", e))
}

impl Netlink {
    /// Applies many route changes quickly: the requests go to the kernel
    /// `batch` at a time in one `sendmsg` on a socket of their own (the
    /// kernel handles each in that call and queues one acknowledgement per
    /// request), then the acknowledgements are read back, so a whole /16
    /// worth of routes costs a few hundred system calls. Runs on tokio's
    /// blocking pool. Carries on after failures and reports them all;
    /// `progress(finished, total)` is called after every change.
    pub async fn change_routes(
        &self,
        changes: Vec<RouteChange>,
        batch: usize,
        progress: impl FnMut(usize, usize) + Send + 'static,
    ) -> RouteBatchReport {
        let socket = self.batch.clone();
        let total = changes.len();
        let task = tokio::task::spawn_blocking(move || {
            // A panic elsewhere must not make the socket unusable.
            let mut socket = socket.lock().unwrap_or_else(|p| p.into_inner());
            let results = socket.run(&changes, batch.max(1), progress);
            let mut report = RouteBatchReport::default();
            for (change, errno) in changes.iter().zip(results) {
                match (change, errno) {
                    (_, 0) => report.done += 1,
                    (RouteChange::Add(_), EEXIST) => report.already += 1,
                    (RouteChange::Delete(_), ESRCH | ENOENT | ENODEV) => report.already += 1,
                    (change, errno) => {
                        report.failed += 1;
                        if report.errors.len() < RouteBatchReport::MAX_ERRORS {
                            report.errors.push(DataplaneError::Netlink {
                                context: format!("{} {}", change.verb(), change.route().describe()),
                                message: std::io::Error::from_raw_os_error(errno).to_string(),
                            });
                        }
                    }
                }
            }
            report
        });
        match task.await {
            Ok(report) => report,
            Err(e) => RouteBatchReport {
                failed: total,
                errors: vec![DataplaneError::other("route batch", e)],
                ..RouteBatchReport::default()
            },
        }
    }

    /// Like [`Netlink::ipv4_routes`] (same routes, same fields) for tables
    /// with tens of thousands of routes: dumped on the batch socket and
    /// parsed straight from the bytes, several times faster.
    pub async fn ipv4_routes_bulk(&self, table: Option<u32>) -> Result<Vec<Route4>> {
        let socket = self.batch.clone();
        let routes = tokio::task::spawn_blocking(move || {
            let mut socket = socket.lock().unwrap_or_else(|p| p.into_inner());
            socket.dump_ipv4_routes()
        })
        .await
        .map_err(|e| DataplaneError::other("list routes", e))?
        .map_err(|e| DataplaneError::other("list routes", e))?;
        Ok(routes
            .into_iter()
            .filter(|r| table.is_none_or(|t| r.table == t))
            .collect())
    }

    /// The raw RTM_GETLINK answer for device `index` (for attributes the
    /// [`Link`] summary leaves out, e.g. tunnel parameters), or `None`.
    pub async fn link_message(&self, index: u32) -> Result<Option<LinkMessage>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("get link #{index}"), e)),
        }
    }

    /// Every device of the namespace as raw RTM_GETLINK answers, with the
    /// [`Link`] summary of each.
    pub async fn link_messages(&self) -> Result<Vec<(Link, LinkMessage)>> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|msg| (parse_link(msg.clone()), msg))
            .try_collect()
            .await
            .map_err(|e| netlink_error("list links", e))
    }

    /// Creates a device from a complete RTM_NEWLINK message (kinds the
    /// helpers above do not cover). `Ok(false)` when the kernel answers
    /// EEXIST: the name is taken, or the kind refuses a duplicate (an ip
    /// tunnel with the same local, remote and underlay device).
    pub async fn add_link_message(&self, message: LinkMessage, context: &str) -> Result<bool> {
        match self.handle.link().add(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(netlink_error(context, e)),
        }
    }

    /// Changes an existing device with RTM_NEWLINK without NLM_F_CREATE, so
    /// that the kind's own `changelink` sees IFLA_LINKINFO (RTM_SETLINK
    /// ignores it).
    pub async fn change_link_message(&self, message: LinkMessage, context: &str) -> Result<()> {
        self.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(|e| netlink_error(context, e))
    }

    /// The packet counters of device `index`, when it exists and reports them.
    pub async fn link_stats(&self, index: u32) -> Result<Option<LinkStats>> {
        let Some(message) = self.link_message(index).await? else {
            return Ok(None);
        };
        Ok(message.attributes.into_iter().find_map(|attr| match attr {
            LinkAttribute::Stats64(s) => Some(LinkStats {
                rx_packets: s.rx_packets,
                tx_packets: s.tx_packets,
                rx_errors: s.rx_errors,
                tx_errors: s.tx_errors,
                rx_dropped: s.rx_dropped,
                tx_dropped: s.tx_dropped,
                collisions: s.collisions,
            }),
            _ => None,
        }))
    }
}

fn expect_kind(link: Link, kind: &str, context: &str) -> Result<Link> {
    if link.kind.as_deref() == Some(kind) {
        Ok(link)
    } else {
        Err(DataplaneError::Netlink {
            context: context.to_string(),
            message: format!(
                "device {} exists and is a {}, not a {kind}",
                link.name,
                link.kind.as_deref().unwrap_or("device without rtnl kind")
            ),
        })
    }
}

/// The overlay's catch-all route through a tunnel device (`overlay dev TUNNEL
/// src GATEWAY proto 250`), the same for every backend that routes into a tunnel.
pub fn overlay_route(plan: &crate::NetworkPlan, tunnel_index: u32) -> Route4 {
    Route4 {
        oif: Some(tunnel_index),
        src: Some(plan.gateway),
        protocol: crate::ROUTE_PROTOCOL,
        scope: Some(RouteScope::Link),
        ..Route4::new(plan.overlay)
    }
}

/// Subscribes to the kernel's IPv4 address changes (RTNLGRP_IPV4_IFADDR) in
/// the calling thread's network namespace. The receiver gets one `()` per
/// burst of changes (coalesced: a full channel means a wake-up is pending
/// already); it closes when the subscription socket fails. Must run inside a
/// tokio runtime.
pub fn watch_ipv4_addresses() -> Result<tokio::sync::mpsc::Receiver<()>> {
    use futures::StreamExt;
    use netlink_packet_core::NetlinkPayload;
    use netlink_packet_route::RouteNetlinkMessage;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| DataplaneError::other("subscribe to address changes", e))?;
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Ipv4Ifaddr])
            .map_err(|e| DataplaneError::other("subscribe to address changes", e))?;
    runtime.spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    runtime.spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
            ) = message.payload
            {
                match tx.try_send(()) {
                    Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => break,
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_scope_defaults_like_iproute2() {
        let dst: Ipv4Network = "250.0.0.0/8".parse().unwrap();
        let dev_route = Route4 {
            oif: Some(3),
            ..Route4::new(dst)
        };
        assert_eq!(dev_route.to_message(false).header.scope, RouteScope::Link);
        assert_eq!(dev_route.to_message(true).header.scope, RouteScope::NoWhere);
        let via_route = Route4 {
            via: Some(Ipv4Addr::new(172, 30, 0, 27)),
            onlink: true,
            ..Route4::new(dst)
        };
        let msg = via_route.to_message(false);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
    }

    #[test]
    fn parse_route_round_trips() {
        let route = Route4 {
            oif: Some(7),
            src: Some(Ipv4Addr::new(250, 0, 28, 1)),
            table: 1000,
            protocol: 99,
            scope: Some(RouteScope::Link),
            metric: Some(5),
            ..Route4::new("250.0.0.0/8".parse().unwrap())
        };
        assert_eq!(parse_route(route.to_message(false)), Some(route));
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        let err = Netlink::new().unwrap_err();
        assert!(err.to_string().contains("open rtnetlink socket"), "{err}");
    }

    #[test]
    fn batch_messages_are_whole_and_acks_parse() {
        let route = Route4 {
            oif: Some(7),
            via: Some(Ipv4Addr::new(172, 30, 0, 27)),
            src: Some(Ipv4Addr::new(250, 0, 28, 1)),
            protocol: 250,
            onlink: true,
            metric: Some(27),
            ..Route4::new("250.0.27.0/24".parse().unwrap())
        };
        let mut out = Vec::new();
        batch::BatchSocket::encode(&RouteChange::Add(route.clone()), 41, &mut out);
        let first = out.len();
        batch::BatchSocket::encode(&RouteChange::Delete(route), 42, &mut out);
        assert_eq!(first % 4, 0);
        let len = u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, first);
        assert_eq!(u16::from_ne_bytes([out[4], out[5]]), 24); // RTM_NEWROUTE
        assert_eq!(u16::from_ne_bytes([out[6], out[7]]), 0x0605); // REQUEST|ACK|EXCL|CREATE
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 41);
        assert_eq!(u16::from_ne_bytes([out[first + 4], out[first + 5]]), 25); // RTM_DELROUTE
        assert_eq!(u16::from_ne_bytes([out[first + 6], out[first + 7]]), 0x0005);

        // Two acks as the kernel sends them with NETLINK_CAP_ACK: an error
        // header, the errno, the request's header.
        let ack = |seq: u32, error: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(&error.to_ne_bytes());
            m.extend_from_slice(&[0; 8]);
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&[0; 4]);
            m
        };
        let mut data = ack(41, 0);
        data.extend(ack(42, -17));
        assert_eq!(batch::acks(&data), vec![(41, 0), (42, 17)]);
        assert_eq!(batch::acks(&data[..30]), vec![]);
    }

    #[test]
    fn nft_generation_answers_parse() {
        const KIND: u16 = 0x0a10;
        // NEWGEN: header, nfgenmsg, NFTA_GEN_ID (big endian), NFTA_GEN_PROC_PID.
        let mut answer = Vec::new();
        answer.extend_from_slice(&36u32.to_ne_bytes());
        answer.extend_from_slice(&KIND.to_ne_bytes());
        answer.extend_from_slice(&[0; 10]);
        answer.extend_from_slice(&[0; 4]);
        answer.extend_from_slice(&8u16.to_ne_bytes());
        answer.extend_from_slice(&1u16.to_ne_bytes());
        answer.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        answer.extend_from_slice(&8u16.to_ne_bytes());
        answer.extend_from_slice(&2u16.to_ne_bytes());
        answer.extend_from_slice(&77u32.to_be_bytes());
        assert_eq!(
            batch::parse_generation(&answer, KIND, 1).unwrap(),
            0x0102_0304
        );
        // Without the attribute, another message kind, an error answer.
        assert!(batch::parse_generation(&answer[..20], KIND, 1).is_err());
        assert!(batch::parse_generation(&answer, KIND + 1, 1).is_err());
        let mut error = Vec::new();
        error.extend_from_slice(&20u32.to_ne_bytes());
        error.extend_from_slice(&2u16.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = batch::parse_generation(&error, KIND, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("fan-250", "x").is_ok());
        assert!(check_ifname("a-name-that-is-too-long", "x").is_err());
        assert!(check_ifname("", "x").is_err());
        assert!(check_ifname("a/b", "x").is_err());
    }
}
