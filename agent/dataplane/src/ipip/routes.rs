//! The routes of the ipip backend, as pure functions: what the fan map
//! implies, and the difference from what the kernel has.
//!
//! For a network on tunnel device T (index `t`):
//!
//! - one route per remote slice, `<slice> via <owner> dev T onlink src
//!   <gateway> proto 250 metric <host number>`, from
//!   [`FanMap::remote_slices`] (65,533 for a /8 overlay over a /16 underlay);
//! - the catch-all `<overlay> dev T src <gateway> proto 250`: overlay
//!   addresses no host can own (the slices of the underlay's network and
//!   broadcast addresses) die in the tunnel (no next hop: the kernel counts
//!   a tx error) instead of leaking out of the default route, and the
//!   host's own traffic into the overlay leaves from the gateway address.
//!
//! The local slice needs no route: the bridge's connected route is more
//! specific than the catch-all.
//!
//! Why each slice route has its own metric (the owner's host number in the
//! underlay, 27 for 172.30.0.27/16): the kernel keeps one `fib_info` per
//! distinct next hop and finds duplicates through a hash of (protocol,
//! scope, prefsrc, metric, device), which leaves the gateway out. With one
//! metric for all, every slice route lands in the same hash bucket and each
//! insert scans all earlier ones: 65,534 routes took 150 s on a 6.18
//! kernel. Distinct metrics spread them: 1.1 s. The metric changes nothing
//! else, as each destination has exactly one route of ours.
//!
//! Ours are the routes with protocol 250 through T whose destination lies
//! in the plan's overlay (a shared T also carries other networks' routes,
//! in other overlays). A route of anyone else to the same destination is
//! never replaced: it is reported as a conflict.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use fan_core::fan::FanMap;
use ipnetwork::Ipv4Network;

use crate::netlink::{Route4, RouteChange, RouteScope};
use crate::{DataplaneError, NetworkPlan, Result, ROUTE_PROTOCOL};

/// The fan map of the plan.
pub fn fan_map(plan: &NetworkPlan) -> Result<FanMap> {
    FanMap::new(plan.overlay, plan.underlay)
        .map_err(|e| DataplaneError::other(format!("fan map of network {}", plan.network_id), e))
}

/// The route to one remote slice; its metric is the owner's host number
/// in the underlay (see the module docs for why).
pub fn slice_route(
    plan: &NetworkPlan,
    tunnel_index: u32,
    owner: Ipv4Addr,
    slice: Ipv4Network,
) -> Route4 {
    let host_number = u32::from(owner).wrapping_sub(u32::from(plan.underlay.network()));
    Route4 {
        oif: Some(tunnel_index),
        via: Some(owner),
        src: Some(plan.gateway),
        protocol: ROUTE_PROTOCOL,
        scope: Some(RouteScope::Universe),
        onlink: true,
        metric: (host_number != 0).then_some(host_number),
        ..Route4::new(slice)
    }
}

/// Every route the plan implies through tunnel `tunnel_index`: the
/// catch-all first, then the remote slices in host order.
pub fn desired_routes(plan: &NetworkPlan, tunnel_index: u32) -> Result<Vec<Route4>> {
    let map = fan_map(plan)?;
    let mut routes = Vec::with_capacity(map.slice_count().min(1 << 20) as usize);
    routes.push(plan.overlay_route(tunnel_index));
    routes.extend(
        map.remote_slices(plan.local_underlay)
            .map(|(owner, slice)| slice_route(plan, tunnel_index, owner, slice)),
    );
    Ok(routes)
}

/// True when `route`'s destination lies inside `overlay`.
pub fn in_overlay(route: &Route4, overlay: Ipv4Network) -> bool {
    route.destination.prefix() >= overlay.prefix() && overlay.contains(route.destination.network())
}

/// True when `route` is one of ours on tunnel `tunnel_index` for `overlay`.
pub fn is_ours(route: &Route4, tunnel_index: u32, overlay: Ipv4Network) -> bool {
    route.protocol == ROUTE_PROTOCOL
        && route.oif == Some(tunnel_index)
        && in_overlay(route, overlay)
}

fn metric(route: &Route4) -> u32 {
    route.metric.unwrap_or(0)
}

fn same(have: &Route4, want: &Route4) -> bool {
    have.via == want.via
        && have.src == want.src
        && have.oif == want.oif
        && metric(have) == metric(want)
}

fn key(route: &Route4) -> (u32, u8) {
    (
        u32::from(route.destination.network()),
        route.destination.prefix(),
    )
}

/// The difference between the routes a plan wants and the kernel's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteDiff {
    /// Desired routes that are absent.
    pub missing: Vec<Route4>,
    /// Our routes whose next hop or source is wrong (replaced in place:
    /// same destination and metric).
    pub wrong: Vec<Route4>,
    /// Our routes the map no longer implies (to be deleted).
    pub stale: Vec<Route4>,
    /// Desired routes shadowed by someone else's route to the same
    /// destination with a lower or equal metric.
    pub conflicts: Vec<Route4>,
    /// Desired routes present and right.
    pub ok: usize,
}

impl RouteDiff {
    /// True when nothing needs doing and nothing is blocked.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.wrong.is_empty()
            && self.stale.is_empty()
            && self.conflicts.is_empty()
    }

    /// The changes that make the kernel match (stale deletes first).
    pub fn changes(&self) -> Vec<RouteChange> {
        let mut changes =
            Vec::with_capacity(self.stale.len() + self.wrong.len() + self.missing.len());
        changes.extend(self.stale.iter().cloned().map(RouteChange::Delete));
        changes.extend(self.wrong.iter().cloned().map(RouteChange::Replace));
        changes.extend(self.missing.iter().cloned().map(RouteChange::Add));
        changes
    }

    /// One line: "65534 ok, 3 missing (e.g. 250.0.27.0/24 via 172.30.0.27), …".
    pub fn summary(&self) -> String {
        let example = |routes: &[Route4]| {
            routes
                .first()
                .map(|r| {
                    let via = r.via.map(|v| format!(" via {v}")).unwrap_or_default();
                    format!(" (e.g. {}{via})", r.destination)
                })
                .unwrap_or_default()
        };
        let mut parts = vec![format!("{} present", self.ok)];
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing{}",
                self.missing.len(),
                example(&self.missing)
            ));
        }
        if !self.wrong.is_empty() {
            parts.push(format!(
                "{} with a wrong next hop or source{}",
                self.wrong.len(),
                example(&self.wrong)
            ));
        }
        if !self.stale.is_empty() {
            parts.push(format!(
                "{} stale{}",
                self.stale.len(),
                example(&self.stale)
            ));
        }
        if !self.conflicts.is_empty() {
            parts.push(format!(
                "{} shadowed by routes not made by fan{}",
                self.conflicts.len(),
                example(&self.conflicts)
            ));
        }
        parts.join(", ")
    }
}

/// Compares `desired` (all through tunnel `tunnel_index`) with `current`
/// (the main table, any routes). Only our routes inside `overlay` are
/// candidates for replacement or deletion.
pub fn diff(
    desired: Vec<Route4>,
    current: &[Route4],
    tunnel_index: u32,
    overlay: Ipv4Network,
) -> RouteDiff {
    let mut ours: HashMap<(u32, u8), Vec<&Route4>> = HashMap::new();
    // Lowest metric of someone else's routes per destination.
    let mut foreign: HashMap<(u32, u8), u32> = HashMap::new();
    let mut result = RouteDiff::default();
    for route in current.iter().filter(|r| in_overlay(r, overlay)) {
        if is_ours(route, tunnel_index, overlay) {
            ours.entry(key(route)).or_default().push(route);
        } else {
            let lowest = foreign.entry(key(route)).or_insert(u32::MAX);
            *lowest = (*lowest).min(metric(route));
        }
    }
    for want in desired {
        let k = key(&want);
        let mut have = ours.remove(&k).unwrap_or_default();
        if foreign.get(&k).is_some_and(|m| *m <= metric(&want)) {
            // Someone else's route wins over ours (present or not): report
            // it, and leave ours as they are.
            result.conflicts.push(want);
            continue;
        }
        if let Some(i) = have.iter().position(|h| same(h, &want)) {
            have.swap_remove(i);
            result.ok += 1;
        } else if let Some(i) = have.iter().position(|h| metric(h) == metric(&want)) {
            // Same kernel key (destination, metric): replace in place.
            have.swap_remove(i);
            result.wrong.push(want);
        } else {
            // Absent, or ours under another metric (deleted below).
            result.missing.push(want);
        }
        result.stale.extend(have.into_iter().map(delete_form));
    }
    let mut leftovers: Vec<&Route4> = ours.into_values().flatten().collect();
    leftovers.sort_by_key(|r| (key(r), metric(r)));
    result.stale.extend(leftovers.into_iter().map(delete_form));
    result
}

/// The route as a delete request: matched on destination, device,
/// protocol and metric, any scope.
pub fn delete_form(route: &Route4) -> Route4 {
    Route4 {
        scope: None,
        src: None,
        onlink: false,
        ..route.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendKind;

    fn plan(overlay: &str, underlay: &str, local: &str) -> NetworkPlan {
        let overlay: Ipv4Network = overlay.parse().unwrap();
        let underlay: Ipv4Network = underlay.parse().unwrap();
        let local: Ipv4Addr = local.parse().unwrap();
        let map = FanMap::new(overlay, underlay).unwrap();
        let slice = map.slice_of(local).unwrap();
        NetworkPlan {
            network_id: "fan".into(),
            index: 1,
            overlay,
            underlay,
            local_underlay: local,
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            slice,
            gateway: Ipv4Addr::from(u32::from(slice.network()) + 1),
            bridge: "fan-250".into(),
            mtu: 1480,
            masquerade: true,
            anti_spoofing: true,
            backend: BackendKind::Ipip,
        }
    }

    #[test]
    fn a_slash_16_underlay_gives_65534_slice_routes() {
        let p = plan("250.0.0.0/8", "172.30.0.0/16", "172.30.0.28");
        let routes = desired_routes(&p, 9).unwrap();
        // The catch-all + one per host but the network, broadcast and local addresses.
        assert_eq!(routes.len(), 1 + 65_533);
        assert_eq!(routes[0], p.overlay_route(9));
        let r = routes
            .iter()
            .find(|r| r.destination == "250.0.27.0/24".parse::<Ipv4Network>().unwrap())
            .unwrap();
        assert_eq!(r.via, Some(Ipv4Addr::new(172, 30, 0, 27)));
        assert_eq!(r.src, Some(Ipv4Addr::new(250, 0, 28, 1)));
        assert!(r.onlink);
        assert_eq!(r.protocol, 250);
        assert_eq!(r.metric, Some(27));
        let far = routes
            .iter()
            .find(|r| r.via == Some(Ipv4Addr::new(172, 30, 255, 254)))
            .unwrap();
        assert_eq!(far.metric, Some(65_534));
        assert_eq!(routes[0].metric, None);
        let metrics: std::collections::HashSet<Option<u32>> =
            routes.iter().map(|r| r.metric).collect();
        assert_eq!(
            metrics.len(),
            routes.len(),
            "every route has its own metric"
        );
        assert!(!routes
            .iter()
            .any(|r| r.destination == "250.0.28.0/24".parse::<Ipv4Network>().unwrap()));
    }

    #[test]
    fn other_shapes_follow_the_map() {
        // 99/8 over 10.99.224.0/20: /20 slices, 4094 hosts.
        let p = plan("99.0.0.0/8", "10.99.224.0/20", "10.99.238.5");
        let routes = desired_routes(&p, 1).unwrap();
        assert_eq!(routes.len(), 1 + 4094 - 1);
        assert!(routes.iter().skip(1).all(|r| r.destination.prefix() == 20));
        let to = routes
            .iter()
            .find(|r| r.via == Some(Ipv4Addr::new(10, 99, 224, 1)))
            .unwrap();
        assert_eq!(
            to.destination,
            "99.0.16.0/20".parse::<Ipv4Network>().unwrap()
        );
    }

    fn dst(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn diff_adopts_replaces_removes_and_leaves_others_alone() {
        let p = plan("250.0.0.0/8", "172.30.0.0/24", "172.30.0.28");
        let desired = desired_routes(&p, 9).unwrap();
        assert_eq!(desired.len(), 1 + 253);
        let good = desired[1].clone();
        let mut wrong = desired[2].clone();
        wrong.via = Some(Ipv4Addr::new(172, 30, 0, 99));
        let stale = slice_route(&p, 9, Ipv4Addr::new(172, 30, 0, 28), dst("250.0.28.0/24"));
        let foreign_same_dst = Route4 {
            protocol: 4,
            ..desired[3].clone()
        };
        let other_network = Route4 {
            oif: Some(9),
            protocol: ROUTE_PROTOCOL,
            ..Route4::new(dst("251.0.1.0/24"))
        };
        let other_device = Route4 {
            oif: Some(5),
            ..desired[4].clone()
        };
        let current = vec![
            good.clone(),
            wrong.clone(),
            stale.clone(),
            foreign_same_dst,
            other_network,
            other_device,
        ];
        let d = diff(desired.clone(), &current, 9, p.overlay);
        assert_eq!(d.ok, 1);
        assert_eq!(d.wrong, vec![desired[2].clone()]);
        assert_eq!(d.stale, vec![delete_form(&stale)]);
        // A route through another device is someone else's: a conflict too.
        assert_eq!(d.conflicts, vec![desired[3].clone(), desired[4].clone()]);
        assert_eq!(d.missing.len(), desired.len() - 4);
        let changes = d.changes();
        assert!(matches!(changes[0], RouteChange::Delete(_)));
        assert!(
            d.summary()
                .contains("1 stale (e.g. 250.0.28.0/24 via 172.30.0.28)"),
            "{}",
            d.summary()
        );

        // Someone else's route with a higher metric loses to ours: no conflict.
        let loser = Route4 {
            protocol: 4,
            metric: Some(100_000),
            ..desired[5].clone()
        };
        let d3 = diff(desired.clone(), &[loser], 9, p.overlay);
        assert!(d3.conflicts.is_empty());
        assert!(d3.missing.contains(&desired[5]));
        // Ours present but shadowed by a better foreign route: a conflict, ours kept.
        let winner = Route4 {
            protocol: 4,
            metric: None,
            ..desired[5].clone()
        };
        let d4 = diff(desired.clone(), &[desired[5].clone(), winner], 9, p.overlay);
        assert_eq!(d4.conflicts, vec![desired[5].clone()]);
        assert!(d4.stale.is_empty());

        // Applied: clean.
        let d2 = diff(desired.clone(), &desired, 9, p.overlay);
        assert!(d2.is_clean());
        assert_eq!(d2.ok, desired.len());
    }

    #[test]
    fn duplicate_and_odd_metric_routes_of_ours_are_stale() {
        let p = plan("250.0.0.0/8", "172.30.0.0/24", "172.30.0.28");
        let desired = desired_routes(&p, 9).unwrap();
        let other_metric = Route4 {
            metric: Some(1000),
            ..desired[1].clone()
        };
        let current = vec![desired[1].clone(), other_metric.clone()];
        let d = diff(desired.clone(), &current, 9, p.overlay);
        assert_eq!(d.stale, vec![delete_form(&other_metric)]);
        assert_eq!(d.ok, 1);
        // Only under another metric: deleted, and the right one added.
        let d = diff(
            desired.clone(),
            std::slice::from_ref(&other_metric),
            9,
            p.overlay,
        );
        assert_eq!(d.stale, vec![delete_form(&other_metric)]);
        assert!(d.missing.contains(&desired[1]));
        assert!(d.wrong.is_empty());
    }
}
