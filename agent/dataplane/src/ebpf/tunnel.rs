//! The tunnel device (a veth pair the overlay route points at) and the
//! overlay route, built on the shared [`Netlink`] helpers.
//!
//! Why a veth pair: the encap program needs a device whose egress sees every
//! overlay packet before any neighbour resolution. A route straight to the
//! underlay device would make the kernel ARP for every overlay address. With
//! ARP off the kernel hands packets to the veth's egress at once; the
//! program then redirects them, so the peer never sees traffic.

use crate::netlink::{Link, Netlink, Route4};
use crate::{sysctl, DataplaneError, NetworkPlan, Result};

use super::ROUTE_PROTOCOL;

/// The ifalias marking a tunnel device as the agent's for `network_id`.
pub fn tunnel_mark(network_id: &str) -> String {
    format!("fan:{network_id}")
}

/// The tunnel device of network `index`: `fantun<index>`.
pub fn tunnel_name(index: u16) -> String {
    format!("fantun{index}")
}

/// The (idle) veth peer of the tunnel device: `fantun<index>p`.
pub fn tunnel_peer_name(index: u16) -> String {
    format!("fantun{index}p")
}

/// The tunnel device if it exists and carries our mark; an error when a
/// device of that name belongs to someone else.
pub async fn owned_tunnel(nl: &Netlink, plan: &NetworkPlan) -> Result<Option<Link>> {
    let name = tunnel_name(plan.index);
    let Some(link) = nl.link_by_name(&name).await? else {
        return Ok(None);
    };
    let mark = tunnel_mark(&plan.network_id);
    // An unmarked fan birth is ours too (its creator stopped before marking
    // it): ensure_tunnel marks it.
    if !link.owned_by(&mark) || link.kind.as_deref() != Some("veth") {
        return Err(DataplaneError::other(
            format!("tunnel device {name}"),
            format!(
                "device {name} exists and is not fan's tunnel for network {} (kind {}, ifalias {:?}; expected veth with ifalias {mark:?})",
                plan.network_id,
                link.kind.as_deref().unwrap_or("none"),
                link.alias
            ),
        ));
    }
    Ok(Some(link))
}

fn disable_ipv6(dev: &str) {
    // The tunnel carries IPv4 only; without this the kernel would send
    // router solicitations into it. Absent when IPv6 is disabled: fine.
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    let _ = std::fs::write(path, "1");
}

/// Creates or fixes the tunnel pair: marked, MTU `plan.mtu`, ARP off, up.
/// Returns the tunnel device (not the peer).
pub async fn ensure_tunnel(nl: &Netlink, plan: &NetworkPlan) -> Result<Link> {
    let name = tunnel_name(plan.index);
    let peer_name = tunnel_peer_name(plan.index);
    let mark = tunnel_mark(&plan.network_id);
    let absent = owned_tunnel(nl, plan).await?.is_none();
    // Creates the pair, or checks that the existing tunnel's peer is its own.
    let (link, peer) = nl.create_veth(&name, &peer_name).await?;
    if absent {
        tracing::info!(tunnel = %name, network = %plan.network_id, "created tunnel device");
    }
    // Marked here, also when a stop between creating and marking (or
    // between the two marks) left either end without it.
    for dev in [&link, &peer] {
        if dev.alias.as_deref() != Some(mark.as_str()) {
            nl.set_alias(dev.index, &mark).await?;
        }
    }
    for dev in [&link, &peer] {
        if dev.mtu != plan.mtu {
            nl.set_mtu(dev.index, plan.mtu).await?;
        }
        if !dev.noarp {
            nl.set_arp(dev.index, false).await?;
        }
        disable_ipv6(&dev.name);
    }
    sysctl::set_rp_filter(&name, sysctl::RP_FILTER_LOOSE)?;
    sysctl::set_send_redirects(&name, false)?;
    for dev in [&peer, &link] {
        if !dev.up {
            nl.set_up(dev.index, true).await?;
        }
    }
    nl.require_link(&name).await
}

/// Adds or corrects the overlay route through the tunnel.
pub async fn ensure_route(nl: &Netlink, plan: &NetworkPlan, tunnel_index: u32) -> Result<()> {
    let want = plan.overlay_route(tunnel_index);
    let present = nl
        .ipv4_routes(Some(want.table))
        .await?
        .into_iter()
        .any(|r| route_matches(&r, &want));
    if !present {
        nl.replace_route(&want).await?;
    }
    Ok(())
}

/// True when `route` is the overlay route `want` (metric and scope aside).
pub fn route_matches(route: &Route4, want: &Route4) -> bool {
    route.destination == want.destination
        && route.oif == want.oif
        && route.src == want.src
        && route.protocol == want.protocol
        && route.via.is_none()
}

/// The routes to the overlay in the main table, for observe.
pub async fn overlay_routes(nl: &Netlink, plan: &NetworkPlan) -> Result<Vec<Route4>> {
    Ok(nl
        .ipv4_routes(Some(crate::netlink::TABLE_MAIN))
        .await?
        .into_iter()
        .filter(|r| r.destination == plan.overlay)
        .collect())
}

/// Deletes our overlay route (matched on our protocol); absent is success.
pub async fn delete_route(nl: &Netlink, plan: &NetworkPlan) -> Result<()> {
    let route = Route4 {
        protocol: ROUTE_PROTOCOL,
        scope: None,
        ..Route4::new(plan.overlay)
    };
    nl.delete_route(&route).await
}

/// Describes a route for drift reports.
pub fn describe_route(route: &Route4, name_of: impl Fn(u32) -> String) -> String {
    let mut s = String::new();
    if let Some(via) = route.via {
        s.push_str(&format!("via {via} "));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!("dev {} ", name_of(oif)));
    }
    let src = route
        .src
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    s.push_str(&format!("src {src} proto {}", route.protocol));
    s
}
