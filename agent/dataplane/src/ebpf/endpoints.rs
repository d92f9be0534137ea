//! The peer fast path's endpoint map, filled from the kernel.
//!
//! After decapsulation the skb keeps the tunnel GSO state (`encapsulation`,
//! `SKB_GSO_IPXIP4`), so super-packets forwarded through the fan bridge get
//! segmented in software. The decap program avoids that by delivering
//! straight into the container's namespace with `bpf_redirect_peer`, for
//! destinations found in the endpoint map.
//!
//! The map is derived from what the kernel already knows, so containers
//! plugged by anyone (Docker, LXD, CNI, a test script) are covered:
//! the bridge's IPv4 neighbour entries (container IP -> MAC) joined with the
//! bridge FDB (MAC -> port) where the port is a veth or netkit device whose
//! peer lives in another namespace. Anything else (unresolved neighbours,
//! taps, ports of other bridges) stays on the slow path through the stack
//! and the bridge.
//!
//! Caveat: fast-path packets bypass the host's routing decision, FORWARD
//! chain and bridge netfilter; host firewall rules on forwarded overlay
//! traffic towards containers do not see them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use futures::{StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::MulticastGroup;
use tracing::{debug, warn};

use super::maps::{Endpoint, ENDPOINTS_MAP};
use super::ports::Port;
use crate::netlink::{netlink_error, Link, Netlink};
use crate::{DataplaneError, NetworkPlan, Result};

/// How often the endpoint map is re-synced even without netlink events.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Events arriving within this window are handled with one sync.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// A veth or netkit device whose peer lives in another namespace: a
/// container's link.
fn leads_to_container(link: &Link) -> bool {
    matches!(link.kind.as_deref(), Some("veth" | "netkit")) && link.link_in_other_netns()
}

async fn ports(nl: &Netlink) -> Result<HashMap<u32, Link>> {
    // From the link cache: no dump of every device per read.
    Ok(nl
        .links()
        .await?
        .into_iter()
        .map(|link| (link.index, link))
        .collect())
}

fn lladdr(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
        _ => None,
    })
}

/// The neighbour table of `family`; with `filter`, only the entries the
/// kernel selects by that attribute (NDA_IFINDEX: one device's neighbours,
/// NDA_MASTER: one bridge's FDB), so reading them does not grow with the
/// other bridges of the host.
async fn neighbours(
    nl: &Netlink,
    family: AddressFamily,
    filter: Option<NeighbourAttribute>,
) -> Result<Vec<NeighbourMessage>> {
    let mut request = nl.handle().neighbours().get().set_address_family(family);
    request.message_mut().attributes.extend(filter);
    request
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error(format!("list {family:?} neighbours"), e))
}

/// One read of the kernel tables the endpoint maps derive from (links,
/// bridge FDB, IPv4 neighbours): taken once and shared by every network.
pub struct Snapshot {
    ports: HashMap<u32, Link>,
    fdb: Vec<NeighbourMessage>,
    inet: Vec<NeighbourMessage>,
}

impl Snapshot {
    /// Reads the three tables.
    pub async fn take(nl: &Netlink) -> Result<Snapshot> {
        Ok(Snapshot {
            ports: ports(nl).await?,
            fdb: neighbours(nl, AddressFamily::Bridge, None).await?,
            inet: neighbours(nl, AddressFamily::Inet, None).await?,
        })
    }

    /// Like [`Snapshot::take`], but the neighbour tables only of the plan's
    /// bridge (filtered by the kernel): what one network's apply or
    /// removal needs, at a cost that does not grow with the other networks.
    pub async fn take_for(nl: &Netlink, plan: &NetworkPlan) -> Result<Snapshot> {
        let ports = ports(nl).await?;
        let bridge = ports
            .iter()
            .find(|(_, p)| p.name == plan.bridge)
            .map(|(index, _)| *index);
        let Some(bridge) = bridge else {
            // No bridge, no endpoints: nothing to read.
            return Ok(Snapshot {
                ports,
                fdb: Vec::new(),
                inet: Vec::new(),
            });
        };
        Ok(Snapshot {
            fdb: neighbours(
                nl,
                AddressFamily::Bridge,
                Some(NeighbourAttribute::Controller(bridge)),
            )
            .await?,
            inet: neighbours(
                nl,
                AddressFamily::Inet,
                Some(NeighbourAttribute::IfIndex(bridge)),
            )
            .await?,
            ports,
        })
    }

    /// The index of the device named `name`.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.ports
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(index, _)| *index)
    }

    /// The ports of the plan's bridge that lead to a container (veths whose
    /// peer is in another namespace), by ifindex; none without the bridge.
    fn container_ports(&self, plan: &NetworkPlan) -> Vec<&Link> {
        let Some(bridge) = self.index_of(&plan.bridge) else {
            return Vec::new();
        };
        let mut ports: Vec<&Link> = self
            .ports
            .values()
            .filter(|p| p.master == Some(bridge) && leads_to_container(p))
            .collect();
        ports.sort_by_key(|p| p.index);
        ports
    }

    /// The container ports of the plan's bridge, for the egress fast path.
    pub fn bridge_ports(&self, plan: &NetworkPlan) -> Vec<Port> {
        self.container_ports(plan)
            .into_iter()
            .map(|p| Port {
                index: p.index,
                name: p.name.clone(),
                mac: p.mac,
                // Only the primary end takes programs; a netkit port that
                // is the peer end gets the tc filter as a veth does.
                netkit: p.kind.as_deref() == Some("netkit") && p.netkit_primary == Some(true),
            })
            .collect()
    }

    /// The plan's container ports whose IPv4 GSO/GRO limits must follow
    /// the underlay device's (BIG TCP, see [`super::big_tcp`]).
    pub fn big_tcp_resizes(&self, plan: &NetworkPlan) -> Vec<super::big_tcp::Resize> {
        let underlay = self
            .index_of(&plan.underlay_interface)
            .and_then(|i| self.ports.get(&i));
        match underlay {
            Some(underlay) => super::big_tcp::resizes(underlay, self.container_ports(plan)),
            None => Vec::new(),
        }
    }

    /// The containers of the plan's slice that the fast path can reach.
    pub fn endpoints(&self, plan: &NetworkPlan) -> BTreeMap<Ipv4Addr, Endpoint> {
        let mut out = BTreeMap::new();
        let Some(bridge) = self.index_of(&plan.bridge) else {
            return out;
        };
        let ports = &self.ports;
        let Some(gw_mac) = ports.get(&bridge).and_then(|p| p.mac) else {
            return out;
        };

        // MAC -> bridge port, from learned (or static) FDB entries of our bridge.
        let mut port_of_mac: HashMap<[u8; 6], u32> = HashMap::new();
        for msg in &self.fdb {
            let port = msg.header.ifindex;
            // Local entries are the bridge's and its ports' own addresses.
            if msg.header.state == NeighbourState::Permanent {
                continue;
            }
            let Some(info) = ports.get(&port) else {
                continue;
            };
            if info.master != Some(bridge) || !leads_to_container(info) {
                continue;
            }
            if let Some(mac) = lladdr(msg) {
                port_of_mac.insert(mac, port);
            }
        }

        for msg in &self.inet {
            if msg.header.ifindex != bridge {
                continue;
            }
            if !matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            ) {
                continue;
            }
            let ip = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let (Some(ip), Some(mac)) = (ip, lladdr(msg)) else {
                continue;
            };
            if !plan.slice.contains(ip) || ip == plan.gateway {
                continue;
            }
            if let Some(&ifindex) = port_of_mac.get(&mac) {
                out.insert(
                    ip,
                    Endpoint {
                        ifindex,
                        mac,
                        gw_mac,
                    },
                );
            }
        }
        out
    }
}

/// The containers of the plan's slice that the fast path can reach, from
/// the bridge's neighbour table and FDB.
pub async fn discover(nl: &Netlink, plan: &NetworkPlan) -> Result<BTreeMap<Ipv4Addr, Endpoint>> {
    Ok(Snapshot::take_for(nl, plan).await?.endpoints(plan))
}

/// The map key of a container address (network byte order, as in the packet).
pub fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn open_map(pin_dir: &Path) -> Result<BpfHashMap<MapData, u32, Endpoint>> {
    let path = pin_dir.join(ENDPOINTS_MAP);
    let context = || format!("open pinned map {}", path.display());
    let data = MapData::from_pin(&path).map_err(|e| DataplaneError::other(context(), e))?;
    let map = Map::from_map_data(data).map_err(|e| DataplaneError::other(context(), e))?;
    BpfHashMap::try_from(map).map_err(|e| DataplaneError::other(context(), e))
}

/// Makes the pinned endpoint map equal `desired`; returns (written, removed).
pub fn write_map(pin_dir: &Path, desired: &BTreeMap<Ipv4Addr, Endpoint>) -> Result<(usize, usize)> {
    let mut map = open_map(pin_dir)?;
    let context = "update endpoint map";
    let wanted: HashMap<u32, Endpoint> = desired.iter().map(|(ip, e)| (key(*ip), *e)).collect();
    let current: Vec<(u32, Endpoint)> = map
        .iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| DataplaneError::other(context, e))?;
    let mut removed = 0;
    for (k, _) in &current {
        if !wanted.contains_key(k) {
            map.remove(k)
                .map_err(|e| DataplaneError::other(context, e))?;
            removed += 1;
        }
    }
    let current: HashMap<u32, Endpoint> = current.into_iter().collect();
    let mut written = 0;
    for (k, e) in &wanted {
        if current.get(k) != Some(e) {
            map.insert(k, e, 0)
                .map_err(|e| DataplaneError::other(context, e))?;
            written += 1;
        }
    }
    Ok((written, removed))
}

/// Discovers the endpoints and syncs the map; returns the number of endpoints.
pub async fn refresh(nl: &Netlink, plan: &NetworkPlan, pin_dir: &Path) -> Result<usize> {
    let desired = discover(nl, plan).await?;
    let (written, removed) = write_map(pin_dir, &desired)?;
    if written + removed > 0 {
        debug!(network = %plan.network_id, endpoints = desired.len(), written, removed, "synced fast-path endpoints");
    }
    Ok(desired.len())
}

/// Writes one network's map from a snapshot; returns the number of endpoints.
fn sync_one(snapshot: &Snapshot, plan: &NetworkPlan, pin_dir: &Path) -> Result<usize> {
    let desired = snapshot.endpoints(plan);
    let (written, removed) = write_map(pin_dir, &desired)?;
    if written + removed > 0 {
        debug!(network = %plan.network_id, endpoints = desired.len(), written, removed, "synced fast-path endpoints");
    }
    Ok(desired.len())
}

/// What the refresher derives its work from: the networks' bridges and
/// underlay networks.
#[derive(Debug, Default)]
struct Watched {
    /// Indexes of the networks' bridges.
    bridges: Vec<u32>,
    /// The networks' underlay networks (whose routing the fast path's next
    /// hop follows).
    underlays: Vec<Ipv4Network>,
}

/// Whether an event can change what the refresher derives for `watched`:
/// a neighbour of one of the bridges, an FDB entry or a port of one of them
/// (the kernel names the bridge as the master in both), the bridge itself,
/// a route overlapping an underlay network, or a policy rule. Devices,
/// bridges, neighbours and routes of other owners (and the other networks
/// being created meanwhile) cost nothing; what an event cannot show (a port
/// deleted outright) the periodic resync catches.
fn relevant(payload: &NetlinkPayload<RouteNetlinkMessage>, watched: &Watched) -> bool {
    let bridges = &watched.bridges;
    match payload {
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
        ) => match n.header.family {
            AddressFamily::Inet => bridges.contains(&n.header.ifindex),
            AddressFamily::Bridge => n
                .attributes
                .iter()
                .any(|a| matches!(a, NeighbourAttribute::Controller(m) if bridges.contains(m))),
            _ => false,
        },
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
        ) => {
            bridges.contains(&l.header.index)
                || l.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Controller(m) if bridges.contains(m)))
        }
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
        ) => destination(r).is_some_and(|d| {
            watched
                .underlays
                .iter()
                .any(|u| u.contains(d.network()) || d.contains(u.network()))
        }),
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewRule(r) | RouteNetlinkMessage::DelRule(r),
        ) => r.header.family == AddressFamily::Inet,
        _ => false,
    }
}

/// The destination of an IPv4 route message.
fn destination(route: &RouteMessage) -> Option<Ipv4Network> {
    if route.header.address_family != AddressFamily::Inet {
        return None;
    }
    let address = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    Ipv4Network::new(address, route.header.destination_prefix_length).ok()
}

/// The registered networks' bridges (indexes, from the link cache) and
/// underlay networks.
async fn watched(nl: &Netlink, registry: &Registry) -> Watched {
    let mut watched = Watched::default();
    for f in registered(registry) {
        if let Ok(Some(link)) = nl.link_by_name(&f.plan.bridge).await {
            watched.bridges.push(link.index);
        }
        if f.ports.is_some() {
            watched.underlays.push(f.plan.underlay);
        }
    }
    watched
}

/// How the refresher follows one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// The network's plan.
    pub plan: NetworkPlan,
    /// Its pin directory.
    pub pin_dir: PathBuf,
    /// Sync the endpoint map (the ingress fast path is on).
    pub endpoints: bool,
    /// Attach the egress fast path to new bridge ports at this tc priority.
    pub ports: Option<u16>,
    /// Keep the ports' IPv4 GSO/GRO limits at the underlay's (BIG TCP).
    pub big_tcp: bool,
}

/// The networks whose endpoint maps and bridge ports are kept in sync: network id -> how.
pub type Registry = std::sync::Arc<std::sync::Mutex<BTreeMap<String, Followed>>>;

/// The bridge ports known to run the egress fast path, per network id: put
/// there by whoever attached it (an apply, the refresher). A port in here
/// without the filter lost it behind the agent's back (drift); a port not
/// in here yet is one the refresher has still to learn (its traffic takes
/// the bridge's filter meanwhile), which is not drift.
pub type PortsRunning = std::sync::Arc<std::sync::Mutex<HashMap<String, HashSet<Port>>>>;

/// Locks `ports` (a panic elsewhere must not make it unusable).
pub fn lock_ports(
    ports: &PortsRunning,
) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<Port>>> {
    ports.lock().unwrap_or_else(|p| p.into_inner())
}

fn registered(registry: &Registry) -> Vec<Followed> {
    registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect()
}

/// Makes the next snapshot read the underlay device `name` afresh: the
/// kernel does not announce a change of its IPv4 GSO/GRO limits, which
/// BIG TCP follows.
pub async fn reread_underlay(nl: &Netlink, name: &str) {
    if let Ok(Some(underlay)) = nl.link_by_name(name).await {
        nl.reread_link(underlay.index);
    }
}

/// Spawns the one task keeping the endpoint maps of every network in
/// `registry` in sync, and the egress fast path attached to every port of
/// their bridges: on every neighbour or link event (debounced) and
/// every [`RESYNC_INTERVAL`], one read of the kernel tables serves all
/// networks (a task per network made each event cost O(networks) dumps).
/// Sockets are opened here, in the caller's network namespace.
pub fn spawn_refresher(
    nl: Netlink,
    registry: Registry,
    running: PortsRunning,
) -> Result<tokio::task::JoinHandle<()>> {
    let (connection, _handle, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Neigh,
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv4Rule,
    ])
    .map_err(|e| DataplaneError::other("subscribe to neighbour, link, route and rule events", e))?;
    Ok(tokio::spawn(async move {
        let work = async move {
            loop {
                tokio::select! {
                    event = events.next() => {
                        let Some((event, _)) = event else {
                            warn!("netlink event stream ended; endpoint sync stops");
                            return;
                        };
                        // Read afresh: a network registered a moment ago counts.
                        if !relevant(&event.payload, &watched(&nl, &registry).await) {
                            continue;
                        }
                        // Coalesce a burst (a container start is several events).
                        let deadline = tokio::time::sleep(DEBOUNCE);
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                _ = &mut deadline => break,
                                more = events.next() => if more.is_none() { break },
                            }
                        }
                    }
                    _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
                }
                let networks = registered(&registry);
                if networks.is_empty() {
                    continue;
                }
                // Once per underlay device, however many networks share it.
                let underlays: BTreeSet<&str> = networks
                    .iter()
                    .filter(|f| f.big_tcp)
                    .map(|f| f.plan.underlay_interface.as_str())
                    .collect();
                for name in underlays {
                    reread_underlay(&nl, name).await;
                }
                let snapshot = match Snapshot::take(&nl).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "fast-path endpoint sync failed");
                        continue;
                    }
                };
                lock_ports(&running)
                    .retain(|id, _| networks.iter().any(|f| &f.plan.network_id == id));
                // The fast path's next hop follows the routing (one read
                // serves every network).
                let on_fast_path: Vec<(&Path, &str)> = networks
                    .iter()
                    .filter(|f| f.ports.is_some())
                    .map(|f| (f.pin_dir.as_path(), f.plan.network_id.as_str()))
                    .collect();
                if !on_fast_path.is_empty() {
                    super::follow_routing(&nl, &on_fast_path);
                }
                for f in &networks {
                    if f.endpoints {
                        if let Err(e) = sync_one(&snapshot, &f.plan, &f.pin_dir) {
                            warn!(network = %f.plan.network_id, error = %e, "fast-path endpoint sync failed");
                        }
                    }
                    if f.big_tcp {
                        let resizes = snapshot.big_tcp_resizes(&f.plan);
                        super::big_tcp::apply(&nl, &f.plan.network_id, &resizes).await;
                    }
                    let Some(priority) = f.ports else {
                        lock_ports(&running).remove(&f.plan.network_id);
                        continue;
                    };
                    let ports = snapshot.bridge_ports(&f.plan);
                    let known = {
                        let mut all = lock_ports(&running);
                        let known = all.entry(f.plan.network_id.clone()).or_default();
                        // Forget ports that went (their ifindex may come back).
                        known.retain(|p| ports.contains(p));
                        known.clone()
                    };
                    match super::ports::attach(&nl, &ports, &f.pin_dir, priority, &known).await {
                        Ok(done) => lock_ports(&running)
                            .entry(f.plan.network_id.clone())
                            .or_default()
                            .extend(done),
                        Err(e) => {
                            warn!(network = %f.plan.network_id, error = %e, "egress fast path on bridge ports failed")
                        }
                    }
                }
            }
        };
        // The connection runs inside this task so aborting it closes the socket.
        tokio::select! {
            _ = connection => {}
            _ = work => {}
        }
    }))
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkMessage;

    use super::*;

    fn link_event(
        index: u32,
        master: Option<u32>,
        deleted: bool,
    ) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes
            .extend(master.map(LinkAttribute::Controller));
        NetlinkPayload::InnerMessage(if deleted {
            RouteNetlinkMessage::DelLink(link)
        } else {
            RouteNetlinkMessage::NewLink(link)
        })
    }

    fn neighbour_event(
        family: AddressFamily,
        ifindex: u32,
        master: Option<u32>,
    ) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut neighbour = NeighbourMessage::default();
        neighbour.header.family = family;
        neighbour.header.ifindex = ifindex;
        neighbour
            .attributes
            .extend(master.map(NeighbourAttribute::Controller));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour))
    }

    #[test]
    fn only_events_of_the_networks_bridges_wake_the_refresher() {
        let bridges = Watched {
            bridges: vec![10, 20],
            underlays: vec!["172.30.0.0/16".parse().unwrap()],
        };
        // The bridge itself, a port joining or leaving (it names its master).
        assert!(relevant(&link_event(10, None, false), &bridges));
        assert!(relevant(&link_event(31, Some(20), false), &bridges));
        assert!(relevant(&link_event(31, Some(20), true), &bridges));
        // Another network's new bridge, a device of someone else's bridge.
        assert!(!relevant(&link_event(40, None, false), &bridges));
        assert!(!relevant(&link_event(31, Some(99), false), &bridges));
        // IPv4 neighbours of our bridge only; FDB entries of our bridge only.
        assert!(relevant(
            &neighbour_event(AddressFamily::Inet, 10, None),
            &bridges
        ));
        assert!(!relevant(
            &neighbour_event(AddressFamily::Inet, 11, None),
            &bridges
        ));
        assert!(relevant(
            &neighbour_event(AddressFamily::Bridge, 31, Some(20)),
            &bridges
        ));
        assert!(!relevant(
            &neighbour_event(AddressFamily::Bridge, 31, Some(99)),
            &bridges
        ));
        assert!(!relevant(
            &neighbour_event(AddressFamily::Inet6, 10, None),
            &bridges
        ));
    }

    fn route_event(destination: &str) -> NetlinkPayload<RouteNetlinkMessage> {
        let destination: Ipv4Network = destination.parse().unwrap();
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.destination_prefix_length = destination.prefix();
        if destination.prefix() > 0 {
            route
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    destination.network(),
                )));
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route))
    }

    #[test]
    fn routes_of_the_underlay_and_rules_wake_the_refresher() {
        let watched = Watched {
            bridges: vec![10],
            underlays: vec!["172.30.0.0/16".parse().unwrap()],
        };
        // Inside the underlay, covering it (the default route), a rule.
        assert!(relevant(&route_event("172.30.0.27/32"), &watched));
        assert!(relevant(&route_event("0.0.0.0/0"), &watched));
        assert!(relevant(&route_event("172.16.0.0/12"), &watched));
        let mut rule = netlink_packet_route::rule::RuleMessage::default();
        rule.header.family = AddressFamily::Inet;
        assert!(relevant(
            &NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(rule)),
            &watched
        ));
        // Elsewhere: another network's routes (the overlay, a Docker bridge).
        assert!(!relevant(&route_event("250.0.0.0/8"), &watched));
        assert!(!relevant(&route_event("172.17.0.0/16"), &watched));
    }
}
