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
//!
//! Layout: [`Netlink`] (this file: the handle and its helpers), `types` (what
//! they return, the parsers, re-exported here) and `batch` (the raw sockets,
//! all of the `unsafe`).

mod batch;
mod link_cache;
mod netns;
pub mod nftables;
mod types;

pub use batch::nft_transaction;
pub use netns::within as within_netns;
pub use types::*;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{
    InfoData, InfoNetkit, InfoVeth, LinkAttribute, LinkInfo, LinkMessage, NetkitMode,
};
use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkNetkit, LinkUnspec, LinkVeth};
use tracing::{debug, warn};

use crate::{DataplaneError, Result};

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
    /// The namespace's links, dumped once and kept current by the kernel's
    /// notifications ([`link_cache`]): a lookup costs no dump.
    links: std::sync::Arc<std::sync::Mutex<link_cache::LinkCache>>,
    /// A third socket for the short dumps (addresses, routes), read on the
    /// caller's thread and parsed from the bytes: no hand-off, and never
    /// queued behind a long route batch.
    dumps: std::sync::Arc<std::sync::Mutex<batch::BatchSocket>>,
    /// While a read-only pass runs ([`Netlink::snapshot`]): the addresses
    /// and routes dumped once and shared by every lookup of the pass, so
    /// observing N networks costs a few dumps, not N of each.
    snapshot: std::sync::Arc<std::sync::Mutex<Option<Snapshot>>>,
}

/// The dumps of one read-only pass, each taken at its first use.
#[derive(Debug, Default)]
struct Snapshot {
    addresses: Option<Vec<(u32, Ipv4Network)>>,
    routes: Option<Vec<Route4>>,
    routing: Option<RoutingView>,
}

/// Ends the snapshot of [`Netlink::snapshot`] when dropped.
#[derive(Debug)]
pub struct SnapshotGuard {
    snapshot: std::sync::Arc<std::sync::Mutex<Option<Snapshot>>>,
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
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
        let links = link_cache::LinkCache::open()
            .map_err(|e| DataplaneError::other("subscribe to link notifications", e))?;
        let dumps = batch::BatchSocket::open()
            .map_err(|e| DataplaneError::other("open rtnetlink dump socket", e))?;
        runtime.spawn(connection);
        Ok(Netlink {
            dumps: std::sync::Arc::new(std::sync::Mutex::new(dumps)),
            handle,
            batch: std::sync::Arc::new(std::sync::Mutex::new(batch)),
            links: std::sync::Arc::new(std::sync::Mutex::new(links)),
            snapshot: Default::default(),
        })
    }

    /// Until the guard drops, link, address and route lookups (on this
    /// connection and its clones) answer from one dump of each, taken at
    /// first use. Only for passes that change nothing (observing many
    /// networks) and that no other caller interleaves with (the data
    /// plane's lock): a change made meanwhile would not be seen.
    pub fn snapshot(&self) -> SnapshotGuard {
        *self.lock_snapshot() = Some(Snapshot::default());
        SnapshotGuard {
            snapshot: self.snapshot.clone(),
        }
    }

    fn lock_snapshot(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the current links (see [`link_cache`]).
    fn with_links<T>(
        &self,
        f: impl FnOnce(&std::collections::BTreeMap<u32, Link>) -> T,
    ) -> Result<T> {
        let _phase = crate::timing::phase("netlink.links");
        let mut cache = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let links = cache
            .links()
            .map_err(|e| DataplaneError::other("list links", e))?;
        Ok(f(links))
    }

    /// The raw rtnetlink handle, for requests these helpers do not cover (tc, neighbours).
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    // ---------------------------------------------------------------- links

    /// The device named `name`, or `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        check_ifname(name, &format!("get link {name}"))?;
        self.with_links(|links| links.values().find(|l| l.name == name).cloned())
    }

    /// The device with index `index`, or `None` when there is none.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        self.with_links(|links| links.get(&index).cloned())
    }

    /// Every device of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        self.with_links(|links| links.values().cloned().collect())
    }

    /// The devices of one kind ("bridge", "veth").
    pub async fn links_of_kind(&self, kind: &str) -> Result<Vec<Link>> {
        self.with_links(|links| {
            links
                .values()
                .filter(|l| l.kind.as_deref() == Some(kind))
                .cloned()
                .collect()
        })
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
        let message = born_in_fan_group(LinkBridge::new(name).down().build());
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
        self.create_pair("veth", LinkVeth::new(name, peer).build(), name, peer)
            .await
    }

    /// Creates a netkit pair (Linux 6.7+) in L2 mode, both ends passing
    /// traffic by default: `name` is the primary, where the programs of both
    /// directions attach, `peer` the end for a container. Idempotent as
    /// [`Netlink::create_veth`]. A kernel without netkit refuses the kind
    /// ("Operation not supported").
    pub async fn create_netkit(&self, name: &str, peer: &str) -> Result<(Link, Link)> {
        let message = LinkNetkit::new(name, peer, NetkitMode::L2).build();
        self.create_pair("netkit", message, name, peer).await
    }

    async fn create_pair(
        &self,
        kind: &str,
        message: LinkMessage,
        name: &str,
        peer: &str,
    ) -> Result<(Link, Link)> {
        let context = format!("create {kind} {name} peer {peer}");
        check_ifname(name, &context)?;
        check_ifname(peer, &context)?;
        if self.link_by_name(name).await?.is_none() {
            let message = born_in_fan_group(message);
            match self.handle.link().add(message).execute().await {
                Ok(()) => debug!(kind, name, peer, "created pair"),
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(netlink_error(context, e)),
            }
        }
        let link = expect_kind(self.require_link(name).await?, kind, &context)?;
        let peer_link = match self.link_by_name(peer).await? {
            Some(p) if p.kind.as_deref() == Some(kind) && link.link == Some(p.index) => p,
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
        let result = self.handle.link().set(message).execute().await;
        self.touched(index);
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(netlink_error(context(&self.label(index).await), e)),
        }
    }

    /// Notes that device `index` was just changed by us: the link cache
    /// reads it again at the next lookup, since the kernel does not announce
    /// every change (an alias set on a device that is down goes unannounced).
    fn touched(&self, index: u32) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_again(index);
    }

    /// Makes the next lookup read device `index` afresh: for a change the
    /// kernel does not announce (IPv4 GSO/GRO limits), made by anyone.
    pub fn reread_link(&self, index: u32) {
        self.touched(index);
    }

    /// Makes the next link lookup dump every link again: bounds how long a
    /// change the kernel did not announce, made by someone else, can go
    /// unseen (the reconcile pass calls this once per pass).
    pub fn reread_links(&self) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget();
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

    /// Whether `link`, found where a device marked `mark` is expected, is
    /// ours ([`Link::owned_by`]); an unmarked fan birth's creation is
    /// completed here by setting the mark (`link.alias` follows). Anything
    /// else is someone else's: `false`, and nothing is changed.
    pub async fn claim(&self, link: &mut Link, mark: &str) -> Result<bool> {
        if !link.owned_by(mark) {
            return Ok(false);
        }
        if link.alias.as_deref() == Some(mark) {
            return Ok(true);
        }
        self.set_alias(link.index, mark).await?;
        warn!(device = %link.name, mark, "completed the creation of a device whose creator stopped before marking it");
        link.alias = Some(mark.to_string());
        Ok(true)
    }

    /// Sets the IPv4 GSO and GRO size limits (BIG TCP above 64 KB) of
    /// device `index`.
    pub async fn set_ipv4_gso_gro_max_size(&self, index: u32, size: u32) -> Result<()> {
        let mut message = LinkUnspec::new_with_index(index).build();
        message.attributes.extend([
            LinkAttribute::GsoIpv4MaxSize(size),
            LinkAttribute::GroIpv4MaxSize(size),
        ]);
        // The kernel does not announce this change: `set_link` marks it.
        self.set_link(
            index,
            |l| format!("set IPv4 GSO/GRO max size {size} on {l}"),
            message,
        )
        .await
    }

    /// The same for devices in other namespaces (a veth's peer in a
    /// container), each given as (the namespace's id here, the device's
    /// index there, size): the result of each, in order.
    pub fn set_ipv4_gso_gro_max_sizes_elsewhere(changes: &[(i32, u32, u32)]) -> Vec<Result<()>> {
        let results = blocking(|| netns::set_ipv4_gso_gro_max_sizes(changes));
        changes
            .iter()
            .zip(results)
            .map(|((id, index, size), result)| {
                result.map_err(|e| {
                    DataplaneError::other(
                        format!("set IPv4 GSO/GRO max size {size} on #{index} in netns id {id}"),
                        e,
                    )
                })
            })
            .collect()
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

    /// Moves device `index` into the network namespace open as `netns`
    /// (its index there may differ; find it by name).
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns: std::os::fd::BorrowedFd<'_>,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let message = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.set_link(index, |l| format!("move {l} to another namespace"), message)
            .await
    }

    /// Enslaves device `index` to `master`, or frees it with `None`.
    pub async fn set_master(&self, index: u32, master: Option<u32>) -> Result<()> {
        let builder = LinkUnspec::new_with_index(index);
        match master {
            Some(m) => {
                let message = builder.controller(m).build();
                let result = self.handle.link().set(message).execute().await;
                self.touched(index);
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
        let all = self.snapshot_or_dump(
            |s| &mut s.addresses,
            || {
                let _phase = crate::timing::phase("netlink.addresses");
                blocking(|| self.lock_dumps().dump_ipv4_addresses())
                    .map_err(|e| DataplaneError::other("list addresses", e))
            },
        )?;
        Ok(all
            .into_iter()
            .filter(|(i, _)| index.is_none_or(|x| x == *i))
            .collect())
    }

    /// The dump `field` of the active snapshot (taken with `dump` at its
    /// first use), or, with no snapshot active, a fresh `dump`.
    fn snapshot_or_dump<T: Clone>(
        &self,
        field: fn(&mut Snapshot) -> &mut Option<T>,
        dump: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // The lock is not held while dumping.
        let cached = self.lock_snapshot().as_mut().map(|s| field(s).clone());
        let all = match cached {
            None => return dump(),
            Some(Some(all)) => return Ok(all),
            Some(None) => dump()?,
        };
        if let Some(snapshot) = self.lock_snapshot().as_mut() {
            *field(snapshot) = Some(all.clone());
        }
        Ok(all)
    }

    fn lock_dumps(&self) -> std::sync::MutexGuard<'_, batch::BatchSocket> {
        self.dumps.lock().unwrap_or_else(|e| e.into_inner())
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
        let all = self.snapshot_or_dump(|s| &mut s.routes, || self.dump_ipv4_routes())?;
        Ok(all
            .into_iter()
            .filter(|r| table.is_none_or(|t| r.table == t))
            .collect())
    }

    /// Every IPv4 unicast route of every table, dumped on the dump socket
    /// and parsed straight from the bytes (a few times cheaper than parsing
    /// every attribute of every route).
    fn dump_ipv4_routes(&self) -> Result<Vec<Route4>> {
        let _phase = crate::timing::phase("netlink.routes");
        blocking(|| self.lock_dumps().dump_ipv4_routes())
            .map_err(|e| DataplaneError::other("list routes", e))
    }

    /// Every IPv4 route (of every type and table) and policy rule: what
    /// the underlay's on-link check decides from. Read afresh, or once per
    /// [`Netlink::snapshot`].
    pub fn ipv4_routing(&self) -> Result<RoutingView> {
        self.snapshot_or_dump(|s| &mut s.routing, || self.ipv4_routing_now())
    }

    /// [`Netlink::ipv4_routing`] read afresh even during a snapshot: for
    /// whoever follows routing events, which a snapshot may predate.
    pub fn ipv4_routing_now(&self) -> Result<RoutingView> {
        let _phase = crate::timing::phase("netlink.routing");
        blocking(|| self.lock_dumps().dump_ipv4_routing())
            .map_err(|e| DataplaneError::other("list routes and rules", e))
    }

    /// Every IPv4 unicast route, dumped and parsed by rtnetlink: what the
    /// raw dump is checked against.
    #[cfg(test)]
    pub(crate) async fn ipv4_routes_by_rtnetlink(&self) -> Result<Vec<Route4>> {
        use netlink_packet_route::route::RouteMessage;
        use netlink_packet_route::AddressFamily;
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
        Ok(messages.into_iter().filter_map(parse_route).collect())
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

/// Runs a blocking netlink exchange (the agent's own sockets answer on the
/// calling thread). The kernel may make it wait for its rtnl lock, for a
/// long time while it dismantles a namespace full of devices; on a
/// multi-thread runtime the worker's other tasks (health, allocations) are
/// handed to another thread meanwhile, so the agent keeps answering.
pub(crate) fn blocking<T>(exchange: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(exchange)
        }
        _ => exchange(),
    }
}

/// The nf_tables ruleset generation of this network namespace: it changes
/// with every committed nftables transaction, so an unchanged generation
/// means an unchanged ruleset (used to skip `nft` listings).
pub fn nft_generation() -> Result<u32> {
    blocking(batch::nft_generation).map_err(|e| DataplaneError::other("nf_tables generation", e))
}

/// The names of this network namespace's nftables tables of family `ip`
/// (a netlink dump: no `nft` process).
pub fn nft_ip_tables() -> Result<Vec<String>> {
    blocking(batch::nft_ip_tables).map_err(|e| DataplaneError::other("list nf_tables tables", e))
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

    /// Like [`Netlink::ipv4_routes`] (same routes, same fields), but always
    /// a fresh dump, never a snapshot's: for the tables with tens of
    /// thousands of routes that route batches just changed.
    pub async fn ipv4_routes_bulk(&self, table: Option<u32>) -> Result<Vec<Route4>> {
        Ok(self
            .dump_ipv4_routes()?
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
        let message = born_in_fan_group(message);
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
        let index = message.header.index;
        let result = self.handle.link().change(message).execute().await;
        self.touched(index);
        result.map_err(|e| netlink_error(context, e))
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

/// Puts the device(s) `message` creates in [`FAN_DEVICE_GROUP`]: the
/// creating request itself stamps them as fan's, so an interrupted creation
/// is recognised later. A veth's or netkit's peer is stamped too.
fn born_in_fan_group(mut message: LinkMessage) -> LinkMessage {
    for attribute in &mut message.attributes {
        if let LinkAttribute::LinkInfo(infos) = attribute {
            for info in infos {
                match info {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) => {
                        peer.attributes.push(LinkAttribute::Group(FAN_DEVICE_GROUP));
                    }
                    LinkInfo::Data(InfoData::Netkit(items)) => {
                        for item in items {
                            if let InfoNetkit::Peer(peer) = item {
                                peer.attributes.push(LinkAttribute::Group(FAN_DEVICE_GROUP));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    message
        .attributes
        .push(LinkAttribute::Group(FAN_DEVICE_GROUP));
    message
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
    use netlink_packet_route::route::RouteFlags;

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

    /// struct fib_rule_hdr (AF_INET, action lookup) and attributes.
    fn rule_bytes(attributes: &[(u16, u32)]) -> Vec<u8> {
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0];
        for (kind, value) in attributes {
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(&value.to_ne_bytes());
        }
        p
    }

    #[test]
    fn rules_that_select_nothing_are_plain() {
        const FRA_PRIORITY: u16 = 6;
        const FRA_FWMARK: u16 = 10;
        const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
        const FRA_TABLE: u16 = 15;
        // The main rule as the kernel reports it.
        let main = rule_bytes(&[
            (FRA_TABLE, 254),
            (FRA_SUPPRESS_PREFIXLEN, u32::MAX),
            (FRA_PRIORITY, 32766),
        ]);
        assert_eq!(
            batch::parse_rule_bytes(&main),
            Some(RuleEntry {
                priority: 32766,
                table: 254,
                plain: true
            })
        );
        // A mark, a suppression, a source prefix: not plain.
        let marked = rule_bytes(&[(FRA_TABLE, 99), (FRA_FWMARK, 0x99), (FRA_PRIORITY, 100)]);
        assert!(!batch::parse_rule_bytes(&marked).unwrap().plain);
        let suppressing = rule_bytes(&[(FRA_TABLE, 254), (FRA_SUPPRESS_PREFIXLEN, 0)]);
        assert!(!batch::parse_rule_bytes(&suppressing).unwrap().plain);
        let mut from = rule_bytes(&[(FRA_TABLE, 254)]);
        from[2] = 24;
        assert!(!batch::parse_rule_bytes(&from).unwrap().plain);
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

    /// Needs nf_tables in the kernel and CAP_NET_ADMIN, as the agent does.
    #[test]
    fn nft_generation_and_tables_are_read() {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's user.
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            eprintln!("skipped: nf_tables requests need root");
            return;
        }
        let generation = nft_generation().expect("nf_tables generation");
        // Nothing committed in between: the same generation.
        if nft_generation().unwrap() == generation {
            nft_ip_tables().expect("nf_tables table names");
        }
    }

    #[test]
    fn nft_generation_answers_parse() {
        // NFT_MSG_NEWGEN, the answer to NFT_MSG_GETGEN.
        const KIND: u16 = 0x0a0f;
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
