//! Host setup against the real kernel, each test in a fresh network namespace.
//!
//! Each test body runs on a dedicated thread inside a fresh namespace (the
//! test kit's `in_fresh_netns`) on a current-thread tokio runtime, so the
//! netlink socket, /proc/sys/net and every child process (`ip`, `nft`) belong
//! to that namespace. The kit deletes the namespace even when the test
//! panics. Needs root; skipped (with a message) otherwise.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use fan_dataplane::host::{bridge_mark, HostSetup, Nft};
use fan_dataplane::netlink::{Netlink, Route4, RouteScope, FAN_DEVICE_GROUP};
use fan_dataplane::{
    sysctl, Availability, BackendKind, Dataplane, DataplaneError, Encapsulation, KernelDataplane,
    NetworkPlan, Observation,
};
use fan_testkit::sh;
use ipnetwork::Ipv4Network;
use serde_json::Value;

mod support;

// ------------------------------------------------------------------ harness

/// Runs `body` inside a fresh network namespace on its own thread (the
/// test kit's runner: deleted after, panic or not; skipped unless root).
fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    fan_testkit::in_fresh_netns("hb", body);
}

const UNDERLAY_DEV: &str = "fhb-u0";
const BRIDGE: &str = "fhb-250";
const NETWORK: &str = "fhb-test";
const TABLE: &str = "fan_fhb_test";

/// An underlay device (a veth, since this kernel has no dummy) with an address.
fn make_underlay() {
    sh(&[
        "ip",
        "link",
        "add",
        UNDERLAY_DEV,
        "type",
        "veth",
        "peer",
        "name",
        "fhb-u1",
    ]);
    sh(&["ip", "addr", "add", "172.30.0.28/16", "dev", UNDERLAY_DEV]);
    sh(&["ip", "link", "set", UNDERLAY_DEV, "up"]);
    sh(&["ip", "link", "set", "fhb-u1", "up"]);
    sh(&["ip", "link", "set", "lo", "up"]);
}

fn plan() -> NetworkPlan {
    support::host28_plan(NETWORK, BRIDGE, UNDERLAY_DEV, BackendKind::Ebpf)
}

fn setup() -> (Netlink, HostSetup) {
    make_underlay();
    let netlink = Netlink::new().expect("netlink");
    let host = HostSetup::new(netlink.clone());
    (netlink, host)
}

/// `nft -j list table ip <name>`, parsed; `None` when absent.
fn nft_table(name: &str) -> Option<Value> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", name])
        .output()
        .expect("run nft");
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("nft JSON"))
}

fn nft_items<'a>(listing: &'a Value, kind: &str) -> Vec<&'a Value> {
    listing["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|item| item.get(kind))
        .collect()
}

/// How many `ip` tables of that name exist (0 or 1, unless something is very wrong).
fn nft_table_count(name: &str) -> usize {
    let v: Value = serde_json::from_str(&sh(&["nft", "-j", "list", "tables", "ip"])).unwrap();
    nft_items(&v, "table")
        .iter()
        .filter(|t| t["name"] == name)
        .count()
}

fn assert_masquerade_table(slice: &str, overlay: &str) {
    let listing = nft_table(TABLE).expect("nft table present");
    let chains = nft_items(&listing, "chain");
    assert_eq!(chains.len(), 1, "one chain: {listing}");
    let chain = chains[0];
    assert_eq!(chain["name"], "postrouting");
    assert_eq!(chain["type"], "nat");
    assert_eq!(chain["hook"], "postrouting");
    assert_eq!(chain["prio"], 100, "priority srcnat");
    let rules = nft_items(&listing, "rule");
    assert_eq!(rules.len(), 1, "one rule: {listing}");
    let expr = rules[0]["expr"].as_array().unwrap();
    assert_eq!(expr.len(), 3, "{listing}");
    let (s_addr, s_len) = slice.split_once('/').unwrap();
    let (o_addr, o_len) = overlay.split_once('/').unwrap();
    assert_eq!(expr[0]["match"]["op"], "==");
    assert_eq!(expr[0]["match"]["left"]["payload"]["field"], "saddr");
    assert_eq!(expr[0]["match"]["right"]["prefix"]["addr"], s_addr);
    assert_eq!(
        expr[0]["match"]["right"]["prefix"]["len"],
        s_len.parse::<u64>().unwrap()
    );
    assert_eq!(expr[1]["match"]["op"], "!=");
    assert_eq!(expr[1]["match"]["left"]["payload"]["field"], "daddr");
    assert_eq!(expr[1]["match"]["right"]["prefix"]["addr"], o_addr);
    assert_eq!(
        expr[1]["match"]["right"]["prefix"]["len"],
        o_len.parse::<u64>().unwrap()
    );
    assert!(expr[2].get("masquerade").is_some(), "{listing}");
}

fn objects(observation: &Observation) -> Vec<String> {
    observation
        .drifts
        .iter()
        .map(|d| d.object.clone())
        .collect()
}

fn gateway_net() -> Ipv4Network {
    "250.0.28.1/24".parse().unwrap()
}

// -------------------------------------------------------------------- tests

#[test]
fn apply_creates_bridge_address_mtu_sysctls_and_nft_table() {
    in_netns(|| async {
        let (netlink, host) = setup();
        // Strict everywhere beforehand, as some distributions ship it.
        sysctl::write(&["conf", UNDERLAY_DEV, "rp_filter"], "1").unwrap();
        sysctl::write(&["ip_forward"], "0").unwrap();

        host.apply(&plan()).await.expect("apply");

        let bridge = netlink.link_by_name(BRIDGE).await.unwrap().expect("bridge");
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(bridge.up, "bridge up");
        assert_eq!(bridge.mtu, 1480);
        assert_eq!(bridge.alias.as_deref(), Some("fan:fhb-test"));
        assert_eq!(bridge.alias, Some(bridge_mark(NETWORK)));
        assert_eq!(
            netlink.ipv4_addresses(bridge.index).await.unwrap(),
            vec![gateway_net()]
        );

        assert_eq!(sysctl::read(&["ip_forward"]).unwrap(), "1");
        assert_eq!(sysctl::rp_filter(BRIDGE).unwrap(), 2);
        assert!(!sysctl::send_redirects(BRIDGE).unwrap());
        assert_eq!(sysctl::rp_filter(UNDERLAY_DEV).unwrap(), 2);

        assert_masquerade_table("250.0.28.0/24", "250.0.0.0/8");
        // The same, as the human-readable ruleset.
        let text = sh(&["nft", "list", "table", "ip", TABLE]);
        assert!(
            text.contains("ip saddr 250.0.28.0/24 ip daddr != 250.0.0.0/8 masquerade"),
            "{text}"
        );
        assert!(
            text.contains("type nat hook postrouting priority srcnat"),
            "{text}"
        );

        let observation = host.observe(&plan()).await.unwrap();
        assert_eq!(observation.drifts, vec![], "no drift right after apply");
    });
}

#[test]
fn apply_twice_is_idempotent() {
    in_netns(|| async {
        let (netlink, host) = setup();
        host.apply(&plan()).await.expect("first apply");
        let first = netlink.require_link(BRIDGE).await.unwrap();
        host.apply(&plan()).await.expect("second apply");
        host.apply(&plan()).await.expect("third apply");

        let bridge = netlink.require_link(BRIDGE).await.unwrap();
        assert_eq!(bridge.index, first.index, "bridge not recreated");
        assert_eq!(
            netlink.ipv4_addresses(bridge.index).await.unwrap(),
            vec![gateway_net()],
            "exactly one address"
        );
        assert_eq!(nft_table_count(TABLE), 1, "exactly one table");
        assert_masquerade_table("250.0.28.0/24", "250.0.0.0/8");
        assert!(host.observe(&plan()).await.unwrap().drifts.is_empty());
    });
}

#[test]
fn observe_reports_hand_made_drift_and_apply_repairs_it() {
    in_netns(|| async {
        let (netlink, host) = setup();
        let plan = plan();
        host.apply(&plan).await.expect("apply");

        sh(&["ip", "addr", "del", "250.0.28.1/24", "dev", BRIDGE]);
        sh(&["ip", "addr", "add", "10.9.9.9/24", "dev", BRIDGE]);
        sh(&["ip", "link", "set", BRIDGE, "mtu", "1400"]);
        sh(&["ip", "link", "set", BRIDGE, "down"]);
        sh(&["nft", "delete", "table", "ip", TABLE]);
        sysctl::write(&["ip_forward"], "0").unwrap();
        sysctl::write(&["conf", BRIDGE, "rp_filter"], "1").unwrap();
        sysctl::write(&["conf", BRIDGE, "send_redirects"], "1").unwrap();
        sysctl::write(&["conf", UNDERLAY_DEV, "rp_filter"], "1").unwrap();

        let observation = host.observe(&plan).await.unwrap();
        let found = objects(&observation);
        for expected in [
            "bridge fhb-250",
            "address 250.0.28.1/24 on fhb-250",
            "address 10.9.9.9/24 on fhb-250",
            "net.ipv4.ip_forward",
            "net.ipv4.conf.fhb-250.rp_filter",
            "net.ipv4.conf.fhb-250.send_redirects",
            "net.ipv4.conf.fhb-u0.rp_filter",
            "nft table ip fan_fhb_test",
        ] {
            assert!(
                found.iter().any(|o| o == expected),
                "{expected} in {observation:#?}"
            );
        }
        let bridge_drifts: Vec<_> = observation
            .drifts
            .iter()
            .filter(|d| d.object == "bridge fhb-250")
            .map(|d| (d.expected.as_str(), d.observed.as_str()))
            .collect();
        assert!(bridge_drifts.contains(&("up", "down")), "{bridge_drifts:?}");
        assert!(
            bridge_drifts.contains(&("mtu 1480", "mtu 1400")),
            "{bridge_drifts:?}"
        );
        let missing = observation
            .drifts
            .iter()
            .find(|d| d.object == "address 250.0.28.1/24 on fhb-250")
            .unwrap();
        assert_eq!(
            (missing.expected.as_str(), missing.observed.as_str()),
            ("present", "absent")
        );
        let rp = observation
            .drifts
            .iter()
            .find(|d| d.object == "net.ipv4.conf.fhb-u0.rp_filter")
            .unwrap();
        assert_eq!(rp.observed, "1 (strict)");
        let table = observation
            .drifts
            .iter()
            .find(|d| d.object == "nft table ip fan_fhb_test")
            .unwrap();
        assert_eq!(table.observed, "absent");

        host.apply(&plan).await.expect("repair");
        assert_eq!(host.observe(&plan).await.unwrap().drifts, vec![]);
        let bridge = netlink.require_link(BRIDGE).await.unwrap();
        assert!(bridge.up);
        assert_eq!(bridge.mtu, 1480);
        assert_eq!(
            netlink.ipv4_addresses(bridge.index).await.unwrap(),
            vec![gateway_net()]
        );
        assert_masquerade_table("250.0.28.0/24", "250.0.0.0/8");
    });
}

#[test]
fn observe_reports_a_tampered_nft_rule() {
    in_netns(|| async {
        let (_netlink, host) = setup();
        let plan = plan();
        host.apply(&plan).await.expect("apply");
        sh(&["nft", "flush", "chain", "ip", TABLE, "postrouting"]);
        sh(&[
            "nft",
            "add",
            "rule",
            "ip",
            TABLE,
            "postrouting",
            "ip",
            "saddr",
            "250.0.28.0/24",
            "masquerade",
        ]);
        let observation = host.observe(&plan).await.unwrap();
        assert_eq!(observation.drifts.len(), 1, "{observation:#?}");
        let d = &observation.drifts[0];
        assert_eq!(d.object, "nft table ip fan_fhb_test");
        assert!(d.expected.contains("ip daddr != 250.0.0.0/8"), "{d:?}");
        assert!(!d.observed.contains("ip daddr"), "{d:?}");
        host.apply(&plan).await.expect("repair");
        assert!(host.observe(&plan).await.unwrap().drifts.is_empty());
    });
}

#[test]
fn apply_adopts_a_changed_mtu_and_replaces_a_stale_slice() {
    in_netns(|| async {
        let (netlink, host) = setup();
        host.apply(&plan()).await.expect("apply");
        // The host's underlay address moved: new slice, new gateway, new MTU.
        let moved = NetworkPlan {
            slice: "250.0.29.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(250, 0, 29, 1),
            mtu: 1400,
            ..plan()
        };
        host.apply(&moved).await.expect("apply moved");
        let bridge = netlink.require_link(BRIDGE).await.unwrap();
        assert_eq!(bridge.mtu, 1400);
        assert_eq!(
            netlink.ipv4_addresses(bridge.index).await.unwrap(),
            vec!["250.0.29.1/24".parse::<Ipv4Network>().unwrap()]
        );
        assert_masquerade_table("250.0.29.0/24", "250.0.0.0/8");
        assert!(host.observe(&moved).await.unwrap().drifts.is_empty());
    });
}

#[test]
fn foreign_device_with_the_bridge_name_is_refused_and_untouched() {
    in_netns(|| async {
        let (netlink, host) = setup();
        sh(&["ip", "link", "add", BRIDGE, "mtu", "1300", "type", "bridge"]);
        sh(&["ip", "addr", "add", "192.168.77.1/24", "dev", BRIDGE]);
        let before = netlink.require_link(BRIDGE).await.unwrap();

        let err = host.apply(&plan()).await.expect_err("apply must refuse");
        let message = err.to_string();
        assert!(
            message.contains("device fhb-250 exists and is not managed by fan"),
            "{message}"
        );
        assert!(matches!(err, DataplaneError::Other { .. }), "{err:?}");

        let observation = host.observe(&plan()).await.unwrap();
        assert!(
            observation
                .drifts
                .iter()
                .any(|d| d.object == "bridge fhb-250" && d.observed.contains("not managed")),
            "{observation:#?}"
        );

        host.remove(&plan())
            .await
            .expect("remove ignores foreign device");

        let after = netlink.require_link(BRIDGE).await.unwrap();
        assert_eq!(after, before, "foreign device untouched");
        assert_eq!(
            netlink.ipv4_addresses(after.index).await.unwrap(),
            vec!["192.168.77.1/24".parse::<Ipv4Network>().unwrap()]
        );
        assert_eq!(
            nft_table_count(TABLE),
            0,
            "no table made for a refused apply"
        );

        // A device with another network's mark is just as foreign.
        sh(&["ip", "link", "set", BRIDGE, "alias", "fan:other"]);
        let err = host
            .apply(&plan())
            .await
            .expect_err("other network's bridge");
        assert!(err.to_string().contains("not managed by fan"), "{err}");
        host.remove(&plan()).await.unwrap();
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_some());
    });
}

/// The agent stopped between creating the bridge and marking it (SIGTERM
/// mid-reconcile, a crash): the bridge it left was born in the fan device
/// group, so the next apply completes the creation instead of refusing a
/// "foreign" device forever; remove deletes such a bridge too.
#[test]
fn a_bridge_left_unmarked_by_an_interrupted_creation_is_claimed() {
    in_netns(|| async {
        let (netlink, host) = setup();
        // What the agent's apply does first: the bridge, not yet marked.
        let born = netlink.add_bridge(BRIDGE).await.unwrap().expect("created");
        assert_eq!(born.group, FAN_DEVICE_GROUP, "born in the fan group");
        assert_eq!(born.alias, None);
        let observation = host.observe(&plan()).await.unwrap();
        assert!(
            observation
                .drifts
                .iter()
                .any(|d| d.object == "bridge fhb-250"
                    && d.observed
                        .contains("created by fan, its creator stopped before marking it")),
            "{observation:#?}"
        );

        host.apply(&plan()).await.expect("apply claims it");
        let bridge = netlink.require_link(BRIDGE).await.unwrap();
        assert_eq!(bridge.index, born.index, "the same device, not a new one");
        assert_eq!(bridge.alias, Some(bridge_mark(NETWORK)));
        assert!(host.observe(&plan()).await.unwrap().drifts.is_empty());

        // Remove takes an unmarked birth of the bridge's name too.
        host.remove(&plan()).await.unwrap();
        netlink.add_bridge(BRIDGE).await.unwrap().expect("created");
        host.remove(&plan()).await.unwrap();
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_none());

        // The group alone is not ownership: a marked device of another
        // network in the fan group stays foreign.
        let other = netlink.add_bridge(BRIDGE).await.unwrap().expect("created");
        netlink.set_alias(other.index, "fan:other").await.unwrap();
        let err = host.apply(&plan()).await.expect_err("another network's");
        assert!(err.to_string().contains("not managed by fan"), "{err}");
        host.remove(&plan()).await.unwrap();
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_some());
    });
}

#[test]
fn observe_reports_a_missing_underlay_device() {
    in_netns(|| async {
        let (_netlink, host) = setup();
        host.apply(&plan()).await.expect("apply");
        sh(&["ip", "link", "del", UNDERLAY_DEV]);
        let observation = host.observe(&plan()).await.unwrap();
        assert_eq!(objects(&observation), vec!["underlay device fhb-u0"]);
        let err = host.apply(&plan()).await.unwrap_err();
        assert!(
            err.to_string().contains("net.ipv4.conf.fhb-u0.rp_filter"),
            "{err}"
        );
    });
}

#[test]
fn foreign_device_of_another_kind_is_refused() {
    in_netns(|| async {
        let (netlink, host) = setup();
        sh(&[
            "ip", "link", "add", BRIDGE, "type", "veth", "peer", "name", "fhb-peer",
        ]);
        let err = host.apply(&plan()).await.expect_err("refuse veth");
        assert!(err.to_string().contains("not managed by fan"), "{err}");
        host.remove(&plan()).await.unwrap();
        let link = netlink.require_link(BRIDGE).await.unwrap();
        assert_eq!(link.kind.as_deref(), Some("veth"));
    });
}

#[test]
fn remove_leaves_nothing_and_is_idempotent() {
    in_netns(|| async {
        let (netlink, host) = setup();
        host.apply(&plan()).await.expect("apply");
        // A bridge of someone else next to ours must survive.
        sh(&["ip", "link", "add", "fhb-other", "type", "bridge"]);
        sh(&["nft", "add", "table", "ip", "fhb_other"]);

        host.remove(&plan()).await.expect("remove");
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_none());
        assert!(nft_table(TABLE).is_none());
        assert!(netlink.link_by_name("fhb-other").await.unwrap().is_some());
        assert!(nft_table("fhb_other").is_some());
        assert!(netlink.link_by_name(UNDERLAY_DEV).await.unwrap().is_some());

        host.remove(&plan()).await.expect("remove again");
        let observation = host.observe(&plan()).await.unwrap();
        assert!(objects(&observation).contains(&"bridge fhb-250".to_string()));
    });
}

#[test]
fn masquerade_off_means_no_table() {
    in_netns(|| async {
        let (netlink, host) = setup();
        let off = NetworkPlan {
            masquerade: false,
            ..plan()
        };
        host.apply(&off).await.expect("apply without masquerade");
        assert!(nft_table(TABLE).is_none());
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_some());
        assert!(host.observe(&off).await.unwrap().drifts.is_empty());

        // Turning it on and off again removes the table.
        host.apply(&plan()).await.unwrap();
        assert!(nft_table(TABLE).is_some());
        let observation = host.observe(&off).await.unwrap();
        assert_eq!(objects(&observation), vec!["nft table ip fan_fhb_test"]);
        host.apply(&off).await.unwrap();
        assert!(nft_table(TABLE).is_none());
        assert!(host.observe(&off).await.unwrap().drifts.is_empty());
    });
}

/// Sends a UDP packet with a slice source to an address outside the overlay
/// and checks with an nft counter that it left masqueraded with the underlay
/// address.
#[test]
fn masquerade_rewrites_the_source_of_outbound_packets() {
    in_netns(|| async {
        let (_netlink, host) = setup();
        // A socket bound to the gateway address stands in for a container:
        // its packet leaves with a source in the slice, so our postrouting
        // rule applies, and a later-priority counter sees the rewritten source.
        let neighbour = |address: &str, mac: &str| {
            sh(&[
                "ip",
                "neigh",
                "add",
                address,
                "lladdr",
                mac,
                "dev",
                UNDERLAY_DEV,
            ]);
        };
        // A counting rule of the probe chain matching `matches`.
        let counting_rule = |matches: &str| {
            let mut args = vec!["nft", "add", "rule", "ip", "fhb_probe", "out"];
            args.extend(matches.split_whitespace());
            args.push("counter");
            sh(&args);
        };
        neighbour("172.30.0.1", "02:00:00:00:00:01");
        sh(&["nft", "add", "table", "ip", "fhb_probe"]);
        sh(&[
            "nft",
            "add",
            "chain",
            "ip",
            "fhb_probe",
            "out",
            "{ type filter hook postrouting priority 200; }",
        ]);
        counting_rule("ip saddr 172.30.0.28 udp dport 9999");
        let masqueraded = || {
            let listing = nft_table("fhb_probe").unwrap();
            let rule = nft_items(&listing, "rule")[0].clone();
            rule["expr"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e.get("counter").cloned())
                .unwrap()["packets"]
                .as_u64()
                .unwrap()
        };
        let send = || {
            let socket = std::net::UdpSocket::bind("250.0.28.1:0").unwrap();
            socket.send_to(b"fan", "172.30.0.1:9999").unwrap();
        };

        // Control: without masquerade the source stays in the slice.
        host.apply(&NetworkPlan {
            masquerade: false,
            ..plan()
        })
        .await
        .unwrap();
        send();
        assert_eq!(masqueraded(), 0);

        host.apply(&plan()).await.unwrap();
        send();
        assert_eq!(masqueraded(), 1, "packet left with the underlay address");

        // Overlay destinations are never NATed.
        sh(&["ip", "route", "add", "250.0.0.0/8", "dev", UNDERLAY_DEV]);
        counting_rule("ip daddr 250.0.27.5 ip saddr 250.0.28.1");
        neighbour("250.0.27.5", "02:00:00:00:00:02");
        let socket = std::net::UdpSocket::bind("250.0.28.1:0").unwrap();
        socket.send_to(b"fan", "250.0.27.5:9999").unwrap();
        let listing = nft_table("fhb_probe").unwrap();
        let rules = nft_items(&listing, "rule");
        let kept = rules[1]["expr"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("counter"))
            .unwrap()["packets"]
            .clone();
        assert_eq!(kept, 1, "overlay traffic keeps its slice source: {listing}");
    });
}

#[test]
fn netlink_helpers_veth_master_arp_routes() {
    in_netns(|| async {
        make_underlay();
        let nl = Netlink::new().unwrap();
        let (a, b) = nl.create_veth("fhb-va", "fhb-vb").await.unwrap();
        let (a2, _) = nl
            .create_veth("fhb-va", "fhb-vb")
            .await
            .expect("idempotent");
        assert_eq!(a.index, a2.index);
        assert_eq!(a.link, Some(b.index));
        assert!(a.mac.is_some_and(|m| m != [0; 6]), "{a:?}");
        assert!(nl.create_veth("fhb-va", "fhb-other").await.is_err());

        let br = nl.create_bridge("fhb-br").await.unwrap();
        assert_eq!(nl.create_bridge("fhb-br").await.unwrap().index, br.index);
        let err = nl.create_bridge("fhb-va").await.unwrap_err();
        assert!(err.to_string().contains("create bridge fhb-va"), "{err}");

        // Errors name the object, not just an index.
        let err = nl.set_mtu(br.index, 10).await.unwrap_err();
        assert!(
            matches!(&err, DataplaneError::Netlink { context, .. } if context == "set mtu 10 on fhb-br"),
            "{err:?}"
        );
        assert!(
            nl.add_bridge("fhb-br").await.unwrap().is_none(),
            "strict add sees EEXIST"
        );

        nl.set_master(b.index, Some(br.index)).await.unwrap();
        nl.set_arp(a.index, false).await.unwrap();
        nl.set_mtu(a.index, 1480).await.unwrap();
        nl.set_alias(a.index, "fan:x").await.unwrap();
        nl.set_up(a.index, true).await.unwrap();
        let a = nl.require_link("fhb-va").await.unwrap();
        assert!(a.noarp && a.up);
        assert_eq!(a.mtu, 1480);
        assert_eq!(a.alias.as_deref(), Some("fan:x"));
        assert_eq!(
            nl.require_link("fhb-vb").await.unwrap().master,
            Some(br.index)
        );
        nl.set_master(b.index, None).await.unwrap();
        assert_eq!(nl.require_link("fhb-vb").await.unwrap().master, None);

        // Addresses: add twice, delete twice.
        let addr: Ipv4Network = "250.0.28.1/24".parse().unwrap();
        nl.add_ipv4_address(a.index, addr).await.unwrap();
        nl.add_ipv4_address(a.index, addr).await.unwrap();
        assert_eq!(nl.ipv4_addresses(a.index).await.unwrap(), vec![addr]);
        let all = nl.all_ipv4_addresses().await.unwrap();
        assert!(all
            .iter()
            .any(|x| x.interface == "fhb-va" && x.address == addr && x.mtu == 1480));
        assert!(all.iter().any(|x| x.interface == "lo" && x.loopback));
        nl.delete_ipv4_address(a.index, addr).await.unwrap();
        nl.delete_ipv4_address(a.index, addr).await.unwrap();
        assert!(nl.ipv4_addresses(a.index).await.unwrap().is_empty());
        nl.add_ipv4_address(a.index, addr).await.unwrap();

        // Routes: a dev route with src, an onlink via route in another table.
        let u0 = nl.require_link(UNDERLAY_DEV).await.unwrap();
        let dev_route = Route4 {
            oif: Some(a.index),
            src: Some(Ipv4Addr::new(250, 0, 28, 1)),
            protocol: 77,
            ..Route4::new("250.0.0.0/8".parse().unwrap())
        };
        nl.add_route(&dev_route).await.unwrap();
        nl.add_route(&dev_route).await.expect("add is idempotent");
        let onlink = Route4 {
            oif: Some(u0.index),
            via: Some(Ipv4Addr::new(172, 31, 0, 27)),
            onlink: true,
            table: 1234,
            protocol: 77,
            ..Route4::new("250.1.27.0/24".parse().unwrap())
        };
        nl.replace_route(&onlink).await.unwrap();
        nl.replace_route(&onlink).await.unwrap();
        let main = nl
            .ipv4_routes(Some(fan_dataplane::netlink::TABLE_MAIN))
            .await
            .unwrap();
        let got = main
            .iter()
            .find(|r| r.destination == dev_route.destination)
            .expect("dev route listed");
        assert_eq!(got.protocol, 77);
        assert_eq!(got.src, dev_route.src);
        assert_eq!(got.oif, Some(a.index));
        assert_eq!(got.scope, Some(RouteScope::Link));
        let other = nl.ipv4_routes(Some(1234)).await.unwrap();
        assert_eq!(other.len(), 1, "{other:?}");
        assert_eq!(other[0].via, onlink.via);
        assert!(other[0].onlink);
        let text = sh(&["ip", "route", "show", "table", "1234"]);
        assert!(
            text.contains("250.1.27.0/24 via 172.31.0.27 dev fhb-u0 proto 77 onlink"),
            "{text}"
        );

        nl.delete_route(&onlink).await.unwrap();
        nl.delete_route(&onlink)
            .await
            .expect("delete is idempotent");
        assert!(nl.ipv4_routes(Some(1234)).await.unwrap().is_empty());
        nl.delete_route(&dev_route).await.unwrap();
        assert!(!nl
            .ipv4_routes(None)
            .await
            .unwrap()
            .iter()
            .any(|r| r.destination == dev_route.destination));

        // Default route interface.
        assert_eq!(nl.default_route_interface().await.unwrap(), None);
        let via = ["via", "172.30.0.1", "dev", UNDERLAY_DEV];
        sh(&[&["ip", "route", "add", "default"][..], &via].concat());
        assert_eq!(
            nl.default_route_interface().await.unwrap().as_deref(),
            Some(UNDERLAY_DEV)
        );

        // Deleting links: by name twice, by index when gone.
        assert!(nl.delete_link_by_name("fhb-va").await.unwrap());
        assert!(!nl.delete_link_by_name("fhb-va").await.unwrap());
        nl.delete_link(a.index).await.expect("gone is success");
        assert!(
            nl.link_by_name("fhb-vb").await.unwrap().is_none(),
            "peer went too"
        );
    });
}

// ------------------------------------------------------- KernelDataplane

/// Whether a device exists in this thread's namespace. (/sys/class/net shows
/// the namespace sysfs was mounted in, /proc/sys/net the caller's.)
fn bridge_exists(name: &str) -> bool {
    std::path::Path::new("/proc/sys/net/ipv4/conf")
        .join(name)
        .exists()
}

/// A backend that records calls and owns nothing.
struct FakeBackend {
    kind: BackendKind,
    calls: Arc<Mutex<Vec<String>>>,
    fail_remove: bool,
}

#[async_trait]
impl Encapsulation for FakeBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }
    async fn availability(&self) -> Availability {
        Availability {
            backend: self.kind,
            available: true,
            reason: "fake".to_string(),
        }
    }
    async fn apply(&self, plan: &NetworkPlan) -> fan_dataplane::Result<()> {
        // The host part must be in place already.
        self.record("apply", plan);
        Ok(())
    }
    async fn observe(&self, _plan: &NetworkPlan) -> fan_dataplane::Result<Observation> {
        Ok(Observation {
            drifts: vec![fan_dataplane::Drift {
                object: "fake tunnel".into(),
                expected: "present".into(),
                observed: "absent".into(),
            }],
            counters: Some(Default::default()),
        })
    }
    async fn remove(&self, plan: &NetworkPlan) -> fan_dataplane::Result<()> {
        self.record("remove", plan);
        if self.fail_remove {
            return Err(DataplaneError::other("fake tunnel", "refused"));
        }
        Ok(())
    }
}

impl FakeBackend {
    /// Records `call` and whether the plan's bridge existed at that moment.
    fn record(&self, call: &str, plan: &NetworkPlan) {
        let bridge_exists = bridge_exists(&plan.bridge);
        self.calls
            .lock()
            .unwrap()
            .push(format!("{call} bridge_exists={bridge_exists}"));
    }
}

/// The underlay, and a kernel dataplane whose only backend is a fake
/// (failing its removes when `fail_remove`) recording its calls.
fn kernel_dataplane_on_fake(fail_remove: bool) -> (KernelDataplane, Arc<Mutex<Vec<String>>>) {
    make_underlay();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let dp = KernelDataplane::new(vec![Box::new(FakeBackend {
        kind: BackendKind::Ebpf,
        calls: calls.clone(),
        fail_remove,
    })])
    .unwrap();
    (dp, calls)
}

#[test]
fn kernel_dataplane_composes_host_and_backend() {
    in_netns(|| async {
        let (dp, calls) = kernel_dataplane_on_fake(false);

        let availability = dp.availability().await;
        assert_eq!(availability.len(), 1);
        assert_eq!(availability[0].backend, BackendKind::Ebpf);

        let addresses = dp.host_addresses().await.unwrap();
        assert!(
            addresses.iter().all(|a| a.interface != "lo"),
            "{addresses:?}"
        );
        assert!(addresses.iter().any(|a| a.interface == UNDERLAY_DEV
            && a.address == "172.30.0.28/16".parse::<Ipv4Network>().unwrap()
            && a.mtu == 1500));
        assert_eq!(dp.default_route_interface().await.unwrap(), None);
        sh(&["ip", "route", "add", "default", "via", "172.30.0.1"]);
        assert_eq!(
            dp.default_route_interface().await.unwrap().as_deref(),
            Some(UNDERLAY_DEV)
        );

        dp.apply(&plan()).await.expect("apply");
        let observation = dp.observe(&plan()).await.unwrap();
        assert_eq!(
            objects(&observation),
            vec!["fake tunnel"],
            "host clean, backend merged"
        );
        assert!(observation.counters.is_some());
        dp.remove(&plan()).await.expect("remove");
        assert_eq!(
            *calls.lock().unwrap(),
            vec!["apply bridge_exists=true", "remove bridge_exists=true"],
            "host before backend on apply, backend before host on remove"
        );
        assert!(dp.netlink().link_by_name(BRIDGE).await.unwrap().is_none());

        // A backend that is not registered.
        let ipip = NetworkPlan {
            backend: BackendKind::Ipip,
            ..plan()
        };
        let err = dp.apply(&ipip).await.unwrap_err();
        assert!(
            matches!(
                err,
                DataplaneError::Unavailable {
                    backend: BackendKind::Ipip,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            dp.netlink().link_by_name(BRIDGE).await.unwrap().is_none(),
            "nothing built"
        );
    });
}

#[test]
fn kernel_dataplane_remove_collects_errors_and_carries_on() {
    in_netns(|| async {
        let (dp, _calls) = kernel_dataplane_on_fake(true);
        dp.apply(&plan()).await.unwrap();
        let err = dp.remove(&plan()).await.unwrap_err();
        assert!(err.to_string().contains("fake tunnel: refused"), "{err}");
        // The host part was removed despite the backend's failure.
        assert!(dp.netlink().link_by_name(BRIDGE).await.unwrap().is_none());
        assert!(nft_table(TABLE).is_none());

        // Unregistered backend: reported, host part still removed.
        dp.apply(&plan()).await.unwrap();
        let ipip = NetworkPlan {
            backend: BackendKind::Ipip,
            ..plan()
        };
        let err = dp.remove(&ipip).await.unwrap_err();
        assert!(matches!(err, DataplaneError::Unavailable { .. }), "{err:?}");
        assert!(dp.netlink().link_by_name(BRIDGE).await.unwrap().is_none());
    });
}

#[test]
fn teardown_reports_every_failure_and_still_removes_the_rest() {
    in_netns(|| async {
        make_underlay();
        let netlink = Netlink::new().unwrap();
        // Build the network, then tear it down with an nft binary that
        // always fails (only listings use it: the table goes by netlink)
        // and a backend that fails.
        HostSetup::new(netlink.clone())
            .apply(&plan())
            .await
            .unwrap();
        let broken_host = HostSetup::with_nft(netlink.clone(), Nft::with_program("false"));
        let dp = KernelDataplane::with_parts(
            netlink.clone(),
            broken_host,
            vec![Box::new(FakeBackend {
                kind: BackendKind::Ebpf,
                calls: Arc::new(Mutex::new(Vec::new())),
                fail_remove: true,
            })],
        );
        let err = dp.remove(&plan()).await.unwrap_err();
        assert!(err.to_string().contains("fake tunnel: refused"), "{err}");
        assert!(!err.to_string().contains("nft table"), "{err}");
        // The bridge and the table went anyway.
        assert!(netlink.link_by_name(BRIDGE).await.unwrap().is_none());
        assert!(nft_table(TABLE).is_none());
        HostSetup::new(netlink).remove(&plan()).await.unwrap();
        assert!(nft_table(TABLE).is_none());
    });
}
