//! The nftables anti-spoofing rules of the host part (the ipip and kernel-fan
//! backends' egress and decap checks) against the real kernel. The backends
//! themselves need ipip.ko, which this kernel lacks; the rules do not: they
//! match on the bridge and the underlay device, whatever carries the packet on.
//!
//! Three namespaces, named `<kit unique id>-{h,c,p}` and deleted by the test
//! kit's guards even when a test panics: the host `h` (the host part applied
//! for an ipip plan, the overlay routed to the peer over the underlay veth), a
//! container `c` plugged into the bridge, and an underlay peer `p`. Needs
//! root; skipped (with a message) otherwise.

use std::net::Ipv4Addr;
use std::process::Child;

use fan_dataplane::host::HostSetup;
use fan_dataplane::netlink::Netlink;
use fan_dataplane::{BackendKind, Counters, NetworkPlan, Observation};
use fan_testkit::packets::{finish_capture, icmp_echo, ipip, send_raw, start_capture};
use fan_testkit::{sh, try_sh, veth_pair, Netns};

mod support;

const BRIDGE: &str = "fhn-250";
const NETWORK: &str = "fhn-test";
const TABLE: &str = "fan_fhn_test";
const CONTAINER: Ipv4Addr = Ipv4Addr::new(250, 0, 28, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(250, 0, 27, 2);
const HOST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 28);
const PEER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 27);

/// The three namespaces (names), each deleted on drop by its kit guard.
struct World {
    host: String,
    container: String,
    peer: String,
    guards: Vec<Netns>,
}

impl World {
    /// The world with the host part applied for `plan(anti_spoofing)`, the
    /// container plugged into the bridge when `plug`; None without root.
    fn applied(anti_spoofing: bool, plug: bool) -> Option<(World, NetworkPlan)> {
        let world = World::new()?;
        let plan = plan(anti_spoofing);
        world.apply(&plan, plug);
        Some((world, plan))
    }

    /// `nft list table` of the plan's table in the host, None when it is absent.
    fn table(&self) -> Option<String> {
        let (ok, listing) = try_sh(&[
            "ip", "netns", "exec", &self.host, "nft", "list", "table", "ip", TABLE,
        ]);
        ok.then_some(listing)
    }

    fn new() -> Option<World> {
        if fan_testkit::skip_unless_root() {
            return None;
        }
        let base = fan_testkit::unique_id();
        let guards: Vec<Netns> = ["h", "c", "p"]
            .iter()
            .map(|role| Netns::new(&format!("{base}-{role}")).expect("create namespace"))
            .collect();
        let w = World {
            host: guards[0].name.clone(),
            container: guards[1].name.clone(),
            peer: guards[2].name.clone(),
            guards,
        };
        // Underlay: host .28 <-> peer .27.
        veth_pair(&w.guards[0], "ul0", &w.guards[2], "ul0").expect("underlay veth");
        ip_in(&w.host, "addr add 172.30.0.28/16 dev ul0");
        ip_in(&w.peer, "addr add 172.30.0.27/16 dev ul0");
        ip_in(&w.host, "link set ul0 up");
        ip_in(&w.peer, "link set ul0 up");
        // The peer answers for its slice (it stands for the remote host).
        ip_in(&w.peer, "addr add 250.0.27.2/24 dev lo");
        ip_in(&w.peer, "route add 250.0.28.0/24 via 172.30.0.28");
        Some(w)
    }

    /// Applies the host part of `plan` in the host namespace; the first time
    /// also plugs the container and routes the overlay to the peer (standing
    /// in for the ipip device's computed routes).
    fn apply(&self, plan: &NetworkPlan, plug: bool) {
        let plan = plan.clone();
        Netns::existing(&self.host).block_on(move || async move {
            let host = HostSetup::new(Netlink::new().expect("netlink"));
            host.apply(&plan).await.expect("apply host part");
        });
        if plug {
            ip_in(
                &self.host,
                &format!(
                    "link add c0 type veth peer name eth0 netns {}",
                    self.container
                ),
            );
            ip_in(&self.host, &format!("link set c0 master {BRIDGE} up"));
            ip_in(&self.container, "addr add 250.0.28.2/24 dev eth0");
            ip_in(&self.container, "link set eth0 up");
            ip_in(&self.container, "route add default via 250.0.28.1");
            ip_in(&self.host, "route add 250.0.0.0/8 via 172.30.0.27");
        }
    }

    fn observe(&self, plan: &NetworkPlan) -> Observation {
        let plan = plan.clone();
        Netns::existing(&self.host).block_on(move || async move {
            let host = HostSetup::new(Netlink::new().expect("netlink"));
            host.observe(&plan).await.expect("observe host part")
        })
    }

    fn remove(&self, plan: &NetworkPlan) {
        let plan = plan.clone();
        Netns::existing(&self.host).block_on(move || async move {
            let host = HostSetup::new(Netlink::new().expect("netlink"));
            host.remove(&plan).await.expect("remove host part")
        })
    }
}

fn plan(anti_spoofing: bool) -> NetworkPlan {
    NetworkPlan {
        anti_spoofing,
        ..support::host28_plan(NETWORK, BRIDGE, "ul0", BackendKind::Ipip)
    }
}

/// tcpdump on `ns`'s ul0 for `count` packets matching `filter`; returned
/// once it listens.
fn capture_on(ns: &str, filter: &str, count: usize) -> Child {
    start_capture(&Netns::existing(ns), "ul0", filter, count).expect("tcpdump")
}

/// Sends complete IPv4 packets (sources as written) from namespace `ns`.
fn send_from(ns: &str, packets: &[Vec<u8>]) {
    send_raw(&Netns::existing(ns), packets).expect("raw send");
}

/// `ip -n ns ARGS` (`args` split at whitespace), failing with its output.
fn ip_in(ns: &str, args: &str) {
    let mut command = vec!["ip", "-n", ns];
    command.extend(args.split_whitespace());
    sh(&command);
}

fn counters(obs: &Observation) -> Counters {
    obs.counters.expect("the anti-spoofing rules' counters")
}

// ------------------------------------------------------------------- tests

#[test]
fn nft_drops_and_counts_forwarded_packets_from_foreign_sources() {
    let Some((w, plan)) = World::applied(true, true) else {
        return;
    };
    let obs = w.observe(&plan);
    assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
    assert_eq!(counters(&obs), Counters::default());
    let listing = w.table().expect("the table");
    assert!(
        listing.contains(
            "iifname \"fhn-250\" ip daddr 250.0.0.0/8 ip saddr != 250.0.28.0/24 counter packets 0 bytes 0 drop"
        ),
        "{listing}"
    );

    // Spoofed first, then the legitimate packet whose echo reply ends the
    // capture at the peer: a leaked spoofed packet would be in it.
    let capture = capture_on(&w.peer, "icmp", 2);
    send_from(
        &w.container,
        &[
            icmp_echo(Ipv4Addr::new(250, 0, 26, 9), REMOTE),
            icmp_echo(Ipv4Addr::new(250, 0, 26, 9), REMOTE),
            icmp_echo(CONTAINER, REMOTE),
        ],
    );
    let dump = finish_capture(capture).expect("tcpdump");
    assert!(
        dump.contains("250.0.28.2 > 250.0.27.2: ICMP echo request")
            && dump.contains("250.0.27.2 > 250.0.28.2: ICMP echo reply"),
        "{dump}"
    );
    assert!(
        !dump.contains("250.0.26.9"),
        "no spoofed packet left: {dump}"
    );
    let c = counters(&w.observe(&plan));
    assert_eq!(c.dropped_spoofed_egress, 2, "{c:?}");

    // Counter values are not drift, and remove takes the table away.
    assert!(w.observe(&plan).drifts.is_empty());
    w.remove(&plan);
    assert_eq!(w.table(), None, "table removed");
}

#[test]
fn without_anti_spoofing_nft_lets_foreign_sources_through() {
    let Some((w, plan)) = World::applied(false, true) else {
        return;
    };
    let listing = w.table().expect("the table");
    assert!(!listing.contains("drop"), "masquerade only: {listing}");
    let obs = w.observe(&plan);
    assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
    assert_eq!(obs.counters, None, "no anti-spoofing rules, no counters");

    let capture = capture_on(&w.peer, "icmp", 1);
    send_from(
        &w.container,
        &[icmp_echo(Ipv4Addr::new(250, 0, 26, 9), REMOTE)],
    );
    let dump = finish_capture(capture).expect("tcpdump");
    assert!(
        dump.contains("250.0.26.9 > 250.0.27.2: ICMP echo request"),
        "{dump}"
    );
}

#[test]
fn nft_drops_ipip_from_the_underlay_network_and_broadcast_address() {
    let Some((w, plan)) = World::applied(true, false) else {
        return;
    };
    let inner = icmp_echo(Ipv4Addr::new(250, 0, 0, 9), CONTAINER);
    // The host has no IPIP handler: the stack answers the real host's packet
    // (sent last) with an ICMP unreachable, proof that all three were seen.
    let capture = capture_on(&w.peer, "icmp and src host 172.30.0.28", 1);
    send_from(
        &w.peer,
        &[
            ipip(Ipv4Addr::new(172, 30, 0, 0), HOST, &[], &inner),
            ipip(Ipv4Addr::new(172, 30, 255, 255), HOST, &[], &inner),
            // A real host's IPIP is not this rule's business.
            ipip(PEER, HOST, &[], &inner),
        ],
    );
    let dump = finish_capture(capture).expect("tcpdump");
    assert!(dump.contains("unreachable"), "{dump}");
    assert_eq!(counters(&w.observe(&plan)).dropped_spoofed, 2);
    let listing = w.table().expect("the table");
    assert!(
        listing.contains(
            "ip protocol ipencap ip saddr { 172.30.0.0, 172.30.255.255 } counter packets 2 "
        ),
        "{listing}"
    );
}
