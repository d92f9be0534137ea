//! The egress fast path's next hop on the underlay.
//!
//! `bpf_redirect_neigh` given no next hop looks the outer destination up in
//! the routing tables for every packet it sends: about 2 % of a flow's CPU
//! with 64 KB packets (issue 14). When the host's routing sends every
//! address of the fan's underlay straight out of the underlay device, with
//! no gateway, that lookup can only answer "the remote host itself,
//! on-link". The agent then sets [`FLAG_UNDERLAY_ON_LINK`] and the fast path
//! hands the remote host's address to `bpf_redirect_neigh` as the next hop,
//! which skips the lookup and still resolves the neighbour as before.
//!
//! The check is narrow on purpose: whatever it does not fully understand
//! (policy rules beyond the default three, a more specific route, a
//! gateway, several next hops, a route for one TOS, another local address
//! inside the underlay) means "let the kernel look it up", as before. It is
//! made again on every route or rule change (the endpoint refresher follows
//! them) and on every apply and reconcile pass.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::maps::{FanConfig, FLAG_EGRESS_FASTPATH, FLAG_UNDERLAY_ON_LINK};
use crate::netlink::{
    RouteEntry, RoutingView, RTN_BROADCAST, RTN_LOCAL, RTN_UNICAST, TABLE_DEFAULT, TABLE_LOCAL,
    TABLE_MAIN,
};

/// The rules every IPv4 host starts with: (priority, table).
const DEFAULT_RULES: [(u32, u32); 3] = [
    (0, TABLE_LOCAL),
    (32766, TABLE_MAIN),
    (32767, TABLE_DEFAULT),
];

/// `Ok` when the kernel's route lookup for every host address of `underlay`
/// (other than `local`, this host's own) is the address itself, on-link out
/// of device `device`; otherwise why not.
pub fn on_link(
    view: &RoutingView,
    underlay: Ipv4Network,
    device: u32,
    local: Ipv4Addr,
) -> Result<(), String> {
    // Only the default rules: the main table decides for every packet
    // whatever its mark, source or interface (the local table first).
    for rule in &view.rules {
        if !rule.plain || !DEFAULT_RULES.contains(&(rule.priority, rule.table)) {
            return Err(format!(
                "policy rule {} (table {}) besides the default ones",
                rule.priority, rule.table
            ));
        }
    }
    if !view.rules.iter().any(|r| r.table == TABLE_MAIN) {
        return Err("no rule looks up the main table".into());
    }

    // The main table's most specific route covering the whole underlay,
    // and nothing more specific inside it.
    let main = || view.routes.iter().filter(|e| e.route.table == TABLE_MAIN);
    let covering = main()
        .map(|e| e.route.destination)
        .filter(|d| d.prefix() <= underlay.prefix() && d.contains(underlay.network()))
        .max_by_key(|d| d.prefix())
        .ok_or_else(|| format!("no route of the main table covers {underlay}"))?;
    if let Some(e) = main().find(|e| {
        overlaps(e.route.destination, underlay) && e.route.destination.prefix() > covering.prefix()
    }) {
        return Err(format!(
            "route {} is more specific than {covering}",
            e.route.destination
        ));
    }
    // Whichever of several routes to that prefix wins, it must be on-link.
    for e in main().filter(|e| e.route.destination == covering) {
        if !plain_on_link(e, device) {
            return Err(format!(
                "route {covering} is not straight out of the underlay device (type {}, tos {}, gateway {:?}, device {:?}{})",
                e.kind,
                e.tos,
                e.route.via,
                e.route.oif,
                if e.more_next_hops { ", other next hops" } else { "" }
            ));
        }
    }

    // The local table answers first: only this host's own address and the
    // broadcast addresses may be there, and the fast path sends to neither
    // (its own slice is local; the underlay's network and broadcast
    // addresses are no host's).
    let broadcasts = [
        underlay.network(),
        underlay.broadcast(),
        covering.network(),
        covering.broadcast(),
    ];
    for e in view
        .routes
        .iter()
        .filter(|e| e.route.table == TABLE_LOCAL && overlaps(e.route.destination, underlay))
    {
        let address = e.route.destination.network();
        let expected = e.route.destination.prefix() == 32
            && ((e.kind == RTN_LOCAL && address == local)
                || (e.kind == RTN_BROADCAST && broadcasts.contains(&address)));
        if !expected {
            return Err(format!(
                "{} is the host's own (local table, type {})",
                e.route.destination, e.kind
            ));
        }
    }
    Ok(())
}

/// A unicast route for every TOS, out of `device`, with no gateway and no
/// other next hop.
fn plain_on_link(e: &RouteEntry, device: u32) -> bool {
    e.kind == RTN_UNICAST
        && e.tos == 0
        && !e.more_next_hops
        && e.route.via.is_none()
        && e.route.oif == Some(device)
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Sets [`FLAG_UNDERLAY_ON_LINK`] in `config` when its egress fast path is
/// on and [`on_link`] holds for its underlay in `view`, clears it otherwise
/// (also when the routing could not be read: `None`). Returns why not.
pub fn set_flag(config: &mut FanConfig, view: Option<&RoutingView>) -> Result<(), String> {
    config.flags &= !FLAG_UNDERLAY_ON_LINK;
    if config.flags & FLAG_EGRESS_FASTPATH == 0 {
        return Err("the egress fast path is off".into());
    }
    let view = view.ok_or("the routing tables could not be read")?;
    let underlay = Ipv4Network::with_netmask(
        Ipv4Addr::from(config.underlay_net),
        Ipv4Addr::from(config.underlay_mask),
    )
    .map_err(|e| format!("underlay network: {e}"))?;
    on_link(
        view,
        underlay,
        config.underlay_ifindex,
        Ipv4Addr::from(config.local_underlay),
    )?;
    config.flags |= FLAG_UNDERLAY_ON_LINK;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::netlink::{Route4, RuleEntry};

    const DEVICE: u32 = 2;
    const RTN_BLACKHOLE: u8 = 6;
    const RTN_THROW: u8 = 9;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn entry(table: u32, kind: u8, destination: &str, oif: u32, via: Option<&str>) -> RouteEntry {
        RouteEntry {
            route: Route4 {
                table,
                oif: Some(oif),
                via: via.map(|v| v.parse().unwrap()),
                ..Route4::new(net(destination))
            },
            kind,
            tos: 0,
            more_next_hops: false,
        }
    }

    fn default_rules() -> Vec<RuleEntry> {
        DEFAULT_RULES
            .iter()
            .map(|&(priority, table)| RuleEntry {
                priority,
                table,
                plain: true,
            })
            .collect()
    }

    /// A host at 172.30.0.28/16 on device 2, a default route through a
    /// gateway and Docker's bridge.
    fn host() -> RoutingView {
        RoutingView {
            routes: vec![
                entry(
                    TABLE_MAIN,
                    RTN_UNICAST,
                    "0.0.0.0/0",
                    DEVICE,
                    Some("172.30.0.1"),
                ),
                entry(TABLE_MAIN, RTN_UNICAST, "172.30.0.0/16", DEVICE, None),
                entry(TABLE_MAIN, RTN_UNICAST, "172.17.0.0/16", 5, None),
                entry(TABLE_LOCAL, RTN_LOCAL, "172.30.0.28/32", DEVICE, None),
                entry(
                    TABLE_LOCAL,
                    RTN_BROADCAST,
                    "172.30.255.255/32",
                    DEVICE,
                    None,
                ),
                entry(TABLE_LOCAL, RTN_LOCAL, "127.0.0.0/8", 1, None),
                entry(TABLE_LOCAL, RTN_LOCAL, "172.17.0.1/32", 5, None),
            ],
            rules: default_rules(),
        }
    }

    fn verdict(view: &RoutingView) -> Result<(), String> {
        on_link(
            view,
            net("172.30.0.0/16"),
            DEVICE,
            "172.30.0.28".parse().unwrap(),
        )
    }

    #[test]
    fn a_plain_host_is_on_link() {
        assert_eq!(verdict(&host()), Ok(()));
        // A wider connected route covers the underlay too.
        let mut wide = host();
        wide.routes[1].route.destination = net("172.16.0.0/12");
        wide.routes[4].route.destination = net("172.31.255.255/32");
        assert_eq!(verdict(&wide), Ok(()));
    }

    #[test]
    fn anything_else_is_looked_up() {
        type Change = Box<dyn Fn(&mut RoutingView)>;
        let adding = |e: RouteEntry| -> Change { Box::new(move |v| v.routes.push(e.clone())) };
        let gateway = Some("172.30.9.1");
        let cases: Vec<(&str, Change)> = vec![
            (
                "a policy rule",
                Box::new(|v| {
                    v.rules.push(RuleEntry {
                        priority: 100,
                        table: 52,
                        plain: true,
                    })
                }),
            ),
            (
                "a default rule with a selector",
                Box::new(|v| v.rules[1].plain = false),
            ),
            (
                "a gateway route inside",
                adding(entry(
                    TABLE_MAIN,
                    RTN_UNICAST,
                    "172.30.0.27/32",
                    DEVICE,
                    gateway,
                )),
            ),
            (
                "a blackhole inside",
                adding(entry(TABLE_MAIN, RTN_BLACKHOLE, "172.30.5.0/24", 0, None)),
            ),
            (
                "a narrower connected route",
                Box::new(|v| v.routes[1].route.destination = net("172.30.0.0/24")),
            ),
            (
                "the underlay through a gateway",
                Box::new(|v| v.routes[1].route.via = Some("172.30.0.1".parse().unwrap())),
            ),
            (
                "another device",
                Box::new(|v| v.routes[1].route.oif = Some(7)),
            ),
            (
                "several next hops",
                Box::new(|v| v.routes[1].more_next_hops = true),
            ),
            ("a route for one TOS", Box::new(|v| v.routes[1].tos = 16)),
            (
                "a second route to the prefix via a gateway",
                adding(entry(
                    TABLE_MAIN,
                    RTN_UNICAST,
                    "172.30.0.0/16",
                    DEVICE,
                    gateway,
                )),
            ),
            (
                "another local address inside",
                adding(entry(
                    TABLE_LOCAL,
                    RTN_LOCAL,
                    "172.30.0.99/32",
                    DEVICE,
                    None,
                )),
            ),
            (
                "a local route for a range",
                adding(entry(TABLE_LOCAL, RTN_LOCAL, "172.30.8.0/24", 1, None)),
            ),
            (
                "only the default route",
                Box::new(|v| {
                    v.routes.remove(1);
                }),
            ),
        ];
        for (what, change) in cases {
            let mut view = host();
            change(&mut view);
            assert!(verdict(&view).is_err(), "{what}: {view:?}");
        }
        let mut no_main = host();
        no_main.rules.retain(|r| r.table != TABLE_MAIN);
        assert!(verdict(&no_main).is_err());
    }

    #[test]
    fn the_flag_follows_the_fast_path_and_the_routing() {
        let mut config = FanConfig {
            underlay_net: u32::from(Ipv4Addr::new(172, 30, 0, 0)),
            underlay_mask: u32::from(Ipv4Addr::new(255, 255, 0, 0)),
            local_underlay: u32::from(Ipv4Addr::new(172, 30, 0, 28)),
            underlay_ifindex: DEVICE,
            flags: FLAG_EGRESS_FASTPATH,
            ..FanConfig::default()
        };
        assert_eq!(set_flag(&mut config, Some(&host())), Ok(()));
        assert_ne!(config.flags & FLAG_UNDERLAY_ON_LINK, 0);
        assert!(set_flag(&mut config, None).is_err());
        assert_eq!(config.flags & FLAG_UNDERLAY_ON_LINK, 0);
        config.flags |= FLAG_UNDERLAY_ON_LINK;
        config.flags &= !FLAG_EGRESS_FASTPATH;
        assert!(set_flag(&mut config, Some(&host())).is_err());
        assert_eq!(config.flags & FLAG_UNDERLAY_ON_LINK, 0);
    }

    /// What the kernel's lookup makes of a packet to `address` with TOS
    /// `tos` under the default rules: `true` when it is sent to the address
    /// itself, on-link out of DEVICE. Ambiguity (routes of one prefix
    /// disagreeing) counts as not on-link.
    fn reference(view: &RoutingView, address: Ipv4Addr, tos: u8) -> bool {
        let mut rules = view.rules.clone();
        rules.sort_by_key(|r| r.priority);
        for rule in rules {
            let matching: Vec<&RouteEntry> = view
                .routes
                .iter()
                .filter(|e| e.route.table == rule.table && e.route.destination.contains(address))
                .filter(|e| e.tos == 0 || e.tos == tos)
                .collect();
            let Some(longest) = matching.iter().map(|e| e.route.destination.prefix()).max() else {
                continue;
            };
            let winners: Vec<&&RouteEntry> = matching
                .iter()
                .filter(|e| e.route.destination.prefix() == longest)
                .collect();
            if winners.iter().all(|e| e.kind == RTN_THROW) {
                continue;
            }
            return winners.iter().all(|e| plain_on_link(e, DEVICE));
        }
        false
    }

    fn arbitrary_entry() -> impl Strategy<Value = RouteEntry> {
        (
            prop_oneof![
                Just(TABLE_MAIN),
                Just(TABLE_MAIN),
                Just(TABLE_LOCAL),
                Just(100u32)
            ],
            prop_oneof![
                Just(RTN_UNICAST),
                Just(RTN_UNICAST),
                Just(RTN_LOCAL),
                Just(RTN_BROADCAST),
                Just(RTN_BLACKHOLE),
                Just(RTN_THROW)
            ],
            (0u32..1024, 20u8..=32),
            prop_oneof![Just(DEVICE), Just(DEVICE), Just(3u32)],
            prop_oneof![
                Just(None),
                Just(None),
                Just(Some(Ipv4Addr::new(10, 0, 0, 1)))
            ],
            prop_oneof![Just(0u8), Just(0u8), Just(0u8), Just(16u8)],
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(table, kind, (offset, prefix), oif, via, tos, more)| {
                let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + offset;
                let destination = Ipv4Network::new(Ipv4Addr::from(base), prefix).unwrap();
                let destination = Ipv4Network::new(destination.network(), prefix).unwrap();
                RouteEntry {
                    route: Route4 {
                        table,
                        oif: Some(oif),
                        via,
                        ..Route4::new(destination)
                    },
                    kind,
                    tos,
                    more_next_hops: more,
                }
            })
    }

    proptest! {
        /// Soundness: when the check says on-link, the kernel's lookup (a
        /// brute-force model of it) sends every remote host of the
        /// underlay, at any TOS, straight to itself out of the device.
        #[test]
        fn on_link_means_every_remote_is_on_link(
            mut routes in proptest::collection::vec(arbitrary_entry(), 0..8),
            connected in any::<bool>(),
            extra_rule in proptest::option::weighted(0.2, (1u32..32766, any::<bool>())),
        ) {
            let underlay = net("10.0.0.0/24");
            let local = Ipv4Addr::new(10, 0, 0, 5);
            if connected {
                routes.push(entry(TABLE_MAIN, RTN_UNICAST, "10.0.0.0/23", DEVICE, None));
                routes.push(entry(TABLE_LOCAL, RTN_LOCAL, "10.0.0.5/32", DEVICE, None));
            }
            let mut rules = default_rules();
            if let Some((priority, plain)) = extra_rule {
                rules.push(RuleEntry { priority, table: 100, plain });
            }
            let view = RoutingView { routes, rules };
            if on_link(&view, underlay, DEVICE, local).is_ok() {
                for host in underlay.iter() {
                    if host == underlay.network() || host == underlay.broadcast() || host == local {
                        continue;
                    }
                    for tos in [0, 16] {
                        prop_assert!(reference(&view, host, tos), "{host} tos {tos}: {view:?}");
                    }
                }
            }
        }
    }
}
