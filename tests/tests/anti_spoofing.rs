//! Data-plane anti-spoofing end to end (issue 9, items 9 and 12): real agents
//! (eBPF backend on this kernel), hosts on an underlay bridge, packets built
//! by hand and sent through raw sockets from inside the namespaces.
//!
//! - A container that sends with a source outside its host's slice (another
//!   host's slice, or any address when the host has a default route) is
//!   stopped by its own host, counted in `dropped_spoofed_egress`; with
//!   `anti_spoofing = false` the packet leaves.
//! - An IPIP packet whose outer source is the underlay's network or
//!   broadcast address is dropped at decapsulation, counted in
//!   `dropped_spoofed`.
//! - `dropped_other` counts drops only: normal traffic and a packet left to
//!   the stack (outer IP options) do not move it.
//!
//! Whether a packet left a host is read from tcpdump on the host's underlay
//! device: the spoofed packets are sent first, then a legitimate ping whose
//! two packets end the capture, so a leaked packet would be in it.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use fan_e2e::packets::{finish_capture, icmp_echo, ipip, send_raw, start_capture};
use fan_e2e::{eventually, fan_spec, spoofed_then_ping, two_host_fan, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

/// An ICMP echo from `inner_src` to `to` inside IPIP from `outer_src` to
/// `outer_dst` with the outer IP `options`.
fn echo_in_ipip(
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    options: &[u8],
    inner_src: &str,
    to: Ipv4Addr,
) -> Vec<u8> {
    ipip(
        outer_src,
        outer_dst,
        options,
        &icmp_echo(addr(inner_src), to),
    )
}

// ------------------------------------------------------------------ agents

fn counters_now(bed: &Testbed, host: &str) -> Result<pb::DataplaneCounters> {
    tokio::runtime::Handle::current().block_on(bed.counters(host, "fan"))
}

/// `host`'s counters once `ready` holds of them (10 s at most).
fn counters_once(
    bed: &Testbed,
    host: &str,
    ready: impl Fn(&pb::DataplaneCounters) -> bool,
) -> Result<pb::DataplaneCounters> {
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(10), || {
            let now = counters_now(bed, host)?;
            if ready(&now) {
                Ok(now)
            } else {
                bail!("{host}: {now:?}")
            }
        })
    })
}

/// Hosts .28 and .27, network "fan" with `anti_spoofing` on each, a
/// container "a" on .28 and "b" on .27.
async fn two_hosts(anti_spoofing: [bool; 2]) -> Result<Testbed> {
    let specs = anti_spoofing.map(|on| pb::NetworkSpec {
        anti_spoofing: Some(on),
        ..fan_spec(OVERLAY, UNDERLAY)
    });
    two_host_fan(&[], &[], specs).await
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_host_drops_and_counts_sources_outside_its_slice() -> Result<()> {
    let bed = two_hosts([true, true]).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    // With a default route, loose rp_filter lets any source in from the
    // bridge: the fan must still not carry it.
    let default_route = "route add default via 172.30.0.1 dev eth0";
    h28.ip(&default_route.split(' ').collect::<Vec<_>>())?;
    let [s28, s27] = bed.counters_of(["h28", "h27"], "fan").await?;

    let third_host = addr("250.0.26.9"); // the slice of 172.30.0.26
    let made_up = addr("10.99.0.1"); // outside the overlay altogether
    let spoofed = [
        icmp_echo(third_host, b.address),
        icmp_echo(third_host, b.address),
        icmp_echo(third_host, b.address),
        icmp_echo(made_up, b.address),
    ];
    // The legitimate request and its reply end the capture.
    let dump = spoofed_then_ping(h28, a, b.address, &spoofed)?;
    assert!(
        dump.contains(&format!("{} > {}", a.address, b.address)),
        "the legitimate ping crossed: {dump}"
    );
    assert!(
        !dump.contains(&third_host.to_string()) && !dump.contains(&made_up.to_string()),
        "no spoofed packet left the host: {dump}"
    );

    let [e28, e27] = bed.counters_of(["h28", "h27"], "fan").await?;
    assert_eq!(
        e28.dropped_spoofed_egress - s28.dropped_spoofed_egress,
        4,
        "{s28:?} -> {e28:?}"
    );
    assert_eq!(
        e27.dropped_spoofed, s27.dropped_spoofed,
        "nothing reached the receiver's check: {e27:?}"
    );
    assert_eq!(e28.dropped_other, s28.dropped_other, "{e28:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_anti_spoofing_off_the_sender_lets_foreign_sources_leave() -> Result<()> {
    // The sender does not check; the receiver still does.
    let bed = two_hosts([false, true]).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    let [s28, s27] = bed.counters_of(["h28", "h27"], "fan").await?;

    let third_host = addr("250.0.26.9");
    let capture = start_capture(h28, "eth0", "ip proto 4", 1)?;
    send_raw(&a.netns, &[icmp_echo(third_host, b.address)])?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains("172.30.0.28 > 172.30.0.27")
            && dump.contains(&format!("{third_host} > {}", b.address)),
        "the spoofed packet left encapsulated: {dump}"
    );
    let e28 = bed.counters("h28", "fan").await?;
    assert_eq!(e28.dropped_spoofed_egress, s28.dropped_spoofed_egress);
    assert_eq!(e28.encapsulated - s28.encapsulated, 1, "{e28:?}");
    // The receiver's decap check stops it.
    counters_once(&bed, "h27", |e27| {
        e27.dropped_spoofed == s27.dropped_spoofed + 1
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipip_from_the_underlay_network_or_broadcast_address_is_dropped_at_decap() -> Result<()> {
    let bed = two_hosts([true, true]).await?;
    let a = bed.container("a");
    let h27 = &bed.host("h27").netns;
    let (h27_address, h28_address) = (bed.host("h27").address, bed.host("h28").address);
    let before = bed.counters("h28", "fan").await?;

    // The fan formula maps these inner sources to exactly these outer
    // sources (172.30.0.0 owns 250.0.0.0/24, 172.30.255.255 owns
    // 250.255.255.0/24), but neither address is a host.
    let network = addr("172.30.0.0");
    let broadcast = addr("172.30.255.255");
    send_raw(
        h27,
        &[
            echo_in_ipip(network, h28_address, &[], "250.0.0.9", a.address),
            echo_in_ipip(broadcast, h28_address, &[], "250.255.255.9", a.address),
        ],
    )?;
    let after = counters_once(&bed, "h28", |now| {
        now.dropped_spoofed >= before.dropped_spoofed + 2
    })?;
    assert_eq!(
        after.dropped_spoofed - before.dropped_spoofed,
        2,
        "{after:?}"
    );
    assert_eq!(
        after.decapsulated, before.decapsulated,
        "nothing was decapsulated"
    );

    // A real host's packet still goes through.
    let capture = start_capture(h27, "eth0", "ip proto 4 and src host 172.30.0.28", 1)?;
    send_raw(
        h27,
        &[echo_in_ipip(
            h27_address,
            h28_address,
            &[],
            "250.0.27.77",
            a.address,
        )],
    )?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains(&format!("{} > 250.0.27.77", a.address)) && dump.contains("echo reply"),
        "{dump}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_other_counts_only_dropped_packets() -> Result<()> {
    let bed = two_hosts([true, true]).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h27 = &bed.host("h27").netns;
    let (h27_address, h28_address) = (bed.host("h27").address, bed.host("h28").address);
    let [s28, s27] = bed.counters_of(["h28", "h27"], "fan").await?;

    // Normal traffic both ways.
    a.netns.ping(b.address, 3)?;
    b.netns.ping(a.address, 3)?;

    // An IPIP packet with outer IP options (NOPs): the decap program leaves
    // it to the stack, which has no IPIP handler here and answers with an
    // ICMP unreachable. That answer proves h28 is done with the packet.
    let capture = start_capture(
        h27,
        "eth0",
        "icmp[icmptype] == icmp-unreach and src host 172.30.0.28",
        1,
    )?;
    send_raw(
        h27,
        &[echo_in_ipip(
            h27_address,
            h28_address,
            &[1, 1, 1, 1],
            "250.0.27.78",
            a.address,
        )],
    )?;
    let dump = finish_capture(capture)?;
    assert!(dump.contains("unreachable"), "{dump}");

    let [e28, e27] = bed.counters_of(["h28", "h27"], "fan").await?;
    assert!(
        e28.encapsulated - s28.encapsulated >= 3 && e28.decapsulated - s28.decapsulated >= 3,
        "the traffic was carried: {e28:?}"
    );
    assert_eq!(
        e28.dropped_other, s28.dropped_other,
        "a packet passed to the stack is not a drop: {s28:?} -> {e28:?}"
    );
    assert_eq!(e27.dropped_other, s27.dropped_other, "{s27:?} -> {e27:?}");
    Ok(())
}
