//! The eBPF egress fast path end to end (issue 14, item 1): real agents
//! (eBPF backend on this kernel), two hosts on an underlay bridge.
//!
//! `fan_fastpath` on ingress of the fan bridge encapsulates container
//! packets for remote slices and hands them to the underlay device, so they
//! never cross the tunnel device `fantunN`. Whether a packet took the fast
//! path is read from the pinned counter map: the program counts it in
//! `encapsulated` and in the slot `FAST_PATH_ENCAPSULATED` (`fan_encap`,
//! the slow path, only in the first); with the agent started with
//! `--no-fast-path` the same traffic moves only `encapsulated`.
//!
//! Ingress: `fan_decap` delivers packets for containers it learned from the
//! kernel's tables (bridge neighbours and FDB) straight into them with
//! `bpf_redirect_peer`, counted in the slot `PEER_REDIRECTED`; the first
//! packets to a container nobody resolved yet take the stack and the bridge.
//! Either way the receiving host is one router hop (TTL), as on the slow
//! path. `--no-fast-path` turns this off too.
//!
//! The slow path stays the fallback: traffic leaving the overlay
//! (masqueraded), packets too big for the tunnel (ICMP fragmentation needed
//! with MTU 1480 comes from the host's stack) and TTL 1.
//!
//! The rest of the e2e suite runs both ways: `make test` runs it with the
//! fast path on; `FAN_AGENT_NO_FAST_PATH=1 cargo test -p fan-e2e --test
//! dataplane` (or any other file) runs it with the agents' fast path off (the
//! harness's agents inherit the environment). This file's agents always have
//! it on.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use fan_dataplane::ebpf::{maps, maps::slot, pin};
use fan_e2e::packets::{finish_capture, icmp_echo, start_capture};
use fan_e2e::{fan_spec, plug, spoofed_then_ping, two_host_fan, IperfServer, Netns, Testbed};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

/// Packets the egress fast path of `host` encapsulated (its pinned counter).
fn fast_path_packets(bed: &Testbed, host: &str) -> Result<u64> {
    bed.pinned_counter(host, "fan", slot::FAST_PATH_ENCAPSULATED)
}

/// Decapsulated packets `host` delivered straight into a container with
/// `bpf_redirect_peer` (its pinned counter): the ingress fast path.
fn peer_redirected(bed: &Testbed, host: &str) -> Result<u64> {
    bed.pinned_counter(host, "fan", slot::PEER_REDIRECTED)
}

/// The TTL a router hop on each host leaves visible, whichever path carries
/// the packets: an echo with TTL 2 expires on the receiving host (ICMP time
/// exceeded, not a reply); TTL 3 arrives; replies arrive with 64 - 2.
fn ttl_like_two_router_hops(client: &Netns, server_addr: Ipv4Addr) -> Result<()> {
    let server = server_addr.to_string();
    let out = client
        .command("ping")
        .args(["-c", "1", "-W", "2", "-t", "2", &server])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("Time to live exceeded"),
        "TTL 2 to {server}: {text}"
    );
    let out = client.exec("ping", &["-c", "1", "-W", "2", "-t", "3", &server])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ttl=62"), "TTL 3 to {server}: {text}");
    Ok(())
}

/// Waits until `fan_fastpath` is (or is not) on the ingress of `device`.
fn fast_path_filter_becomes(host: &Netns, device: &str, on: bool) -> Result<()> {
    fan_e2e::eventually(std::time::Duration::from_secs(10), || {
        if fast_path_filter(host, device)? != on {
            bail!("fan_fastpath on {device}: want {on}");
        }
        Ok(())
    })
}

/// Whether `fan_fastpath` is attached on the ingress of `bridge`.
fn fast_path_filter(host: &Netns, bridge: &str) -> Result<bool> {
    let out = host.exec("tc", &["filter", "show", "dev", bridge, "ingress"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("fan_fastpath"))
}

async fn bridge_of(bed: &Testbed, host: &str) -> Result<String> {
    Ok(bed.network_status(host, "fan").await?.bridge)
}

/// Hosts .28 and .27 with the fan, container "a" on .28 and "b" on .27.
async fn two_hosts() -> Result<Testbed> {
    // On whatever the suite's environment says (FAN_AGENT_NO_FAST_PATH=1
    // runs the other files on the slow path): this file tests the fast path.
    let fast_path_on = [("FAN_AGENT_NO_FAST_PATH", "false")];
    let spec = fan_spec(OVERLAY, UNDERLAY);
    two_host_fan(&[], &fast_path_on, [spec.clone(), spec]).await
}

/// One short TCP run each way (at least 1e6 bit/s).
fn tcp_both_ways(client: &Netns, server: &Netns, server_addr: Ipv4Addr) -> Result<()> {
    fan_e2e::tcp_both_ways(client, server, server_addr, 1e6)
}

/// A short iperf3 UDP run; returns the datagrams the server received.
fn udp_received(client: &Netns, server: &Netns, server_addr: Ipv4Addr) -> Result<u64> {
    let _server = IperfServer::start(server, 5202)?;
    let out = client.exec(
        "iperf3",
        &[
            "-c",
            &server_addr.to_string(),
            "-p",
            "5202",
            "-u",
            "-b",
            "10M",
            "-t",
            "1",
            "-J",
        ],
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3 -u: {error}");
    }
    // The server's view (received and lost), as the client reports it.
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_u64().context("no end.sum.packets")?;
    let lost = sum["lost_packets"].as_u64().unwrap_or(0);
    Ok(packets.saturating_sub(lost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_tcp_and_udp_cross_hosts_on_the_fast_path() -> Result<()> {
    let bed = two_hosts().await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    assert!(fast_path_filter(h28, &bridge_of(&bed, "h28").await?)?);
    // And on the port of container "a" (host side of its veth), learned
    // from the link event of its plugging.
    fast_path_filter_becomes(h28, &format!("{}c0", bed.id), true)?;
    let (t28, t27) = (
        fast_path_packets(&bed, "h28")?,
        fast_path_packets(&bed, "h27")?,
    );
    let [c28, c27] = bed.counters_of(["h28", "h27"], "fan").await?;
    let (p28, p27) = (peer_redirected(&bed, "h28")?, peer_redirected(&bed, "h27")?);

    tokio::task::block_in_place(|| -> Result<()> {
        a.netns.ping(b.address, 3)?;
        b.netns.ping(a.address, 3)?;
        ttl_like_two_router_hops(&a.netns, b.address)?;
        ttl_like_two_router_hops(&b.netns, a.address)?;
        tcp_both_ways(&a.netns, &b.netns, b.address)?;
        let received = udp_received(&a.netns, &b.netns, b.address)?;
        assert!(received > 100, "UDP datagrams received: {received}");
        // TTL: each host is one hop; an expiring packet goes to the stack,
        // which answers with ICMP time exceeded from the gateway.
        let expired = a
            .netns
            .command("ping")
            .args(["-c", "1", "-W", "2", "-t", "1", &b.address.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&expired.stdout);
        assert!(
            !expired.status.success()
                && text.contains("250.0.28.1")
                && text.contains("Time to live exceeded"),
            "{text}"
        );
        a.netns.exec(
            "ping",
            &["-c", "1", "-W", "2", "-t", "3", &b.address.to_string()],
        )?;
        Ok(())
    })?;

    let [e28, e27] = bed.counters_of(["h28", "h27"], "fan").await?;
    // Both hosts encapsulated (pings, TCP data and acks, UDP)...
    assert!(
        e28.encapsulated - c28.encapsulated > 1000,
        "{c28:?} -> {e28:?}"
    );
    assert!(
        e27.encapsulated - c27.encapsulated > 6,
        "{c27:?} -> {e27:?}"
    );
    assert!(e27.decapsulated - c27.decapsulated > 1000, "{e27:?}");
    // ...and the fast path encapsulated all of it but the one ICMP time
    // exceeded each host's own stack sent (through the tunnel device's
    // fan_encap) for the TTL-2 echo that expired there.
    assert_eq!(
        fast_path_packets(&bed, "h28")? - t28 + 1,
        e28.encapsulated - c28.encapsulated,
        "h28: {e28:?}"
    );
    assert_eq!(
        fast_path_packets(&bed, "h27")? - t27 + 1,
        e27.encapsulated - c27.encapsulated,
        "h27: {e27:?}"
    );
    assert_eq!(e28.dropped_other, c28.dropped_other, "{e28:?}");
    assert_eq!(e28.dropped_spoofed_egress, c28.dropped_spoofed_egress);
    // Ingress: once each host learned its container (the first packets go
    // through the stack, which resolves it), decapsulated packets go
    // straight into the container (TCP data both ways, the UDP datagrams).
    let (r28, r27) = (
        peer_redirected(&bed, "h28")? - p28,
        peer_redirected(&bed, "h27")? - p27,
    );
    assert!(r28 > 1000, "h28 redirected {r28}: {e28:?}");
    assert!(r27 > 1000, "h27 redirected {r27}: {e27:?}");
    assert!(r27 <= e27.decapsulated - c27.decapsulated, "{r27} {e27:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outside_is_reached_masqueraded_through_the_stack() -> Result<()> {
    let bed = two_hosts().await?;
    let a = bed.container("a");
    // A machine on the underlay with no route to the overlay: its replies
    // can only come back if the host masqueraded the container.
    let outside = Netns::new(&format!("{}-out", bed.id))?;
    let port = format!("{}out", bed.id);
    outside.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", &port])?;
    outside.ip(&["link", "set", &port, "netns", &bed.underlay.name])?;
    bed.underlay
        .ip(&["link", "set", &port, "master", "br0", "up"])?;
    outside.ip(&["addr", "add", "172.30.0.99/16", "dev", "eth0"])?;
    outside.ip(&["link", "set", "eth0", "up"])?;
    let t28 = fast_path_packets(&bed, "h28")?;
    let c28 = bed.counters("h28", "fan").await?;

    tokio::task::block_in_place(|| -> Result<()> {
        let capture = start_capture(&outside, "eth0", "icmp", 2)?;
        a.netns.ping(addr("172.30.0.99"), 1)?;
        let dump = finish_capture(capture)?;
        assert!(
            dump.contains("172.30.0.28 > 172.30.0.99"),
            "masqueraded to the host's address: {dump}"
        );
        tcp_both_ways(&a.netns, &outside, addr("172.30.0.99"))
    })?;
    let e28 = bed.counters("h28", "fan").await?;
    assert_eq!(e28.encapsulated, c28.encapsulated, "nothing encapsulated");
    assert_eq!(fast_path_packets(&bed, "h28")?, t28);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_df_packet_too_big_for_the_tunnel_gets_frag_needed_1480() -> Result<()> {
    let bed = two_hosts().await?;
    let b = bed.container("b");
    let h28 = &bed.host("h28").netns;
    // A container plugged by a runtime that ignores the allocation's MTU
    // (1500 on both ends of its veth): its 1500-byte packets reach the host.
    let mut client = bed.host("h28").client().await?;
    let allocation = fan_e2e::allocate_eth0(&mut client, "fan", &format!("{}-big", bed.id))
        .await
        .map_err(|s| anyhow!("allocate: {s}"))?;
    assert_eq!(allocation.mtu, 1480);
    let big = Netns::new(&format!("{}-big", bed.id))?;
    plug(
        h28,
        &bridge_of(&bed, "h28").await?,
        &format!("{}big", bed.id),
        &big,
        &format!("{}/{}", allocation.address, allocation.prefix_length),
        &allocation.gateway,
        1500,
    )?;
    let ping = |size: &str| {
        big.command("ping")
            .args(["-c", "1", "-W", "2", "-M", "do", "-s", size])
            .arg(b.address.to_string())
            .output()
    };
    tokio::task::block_in_place(|| -> Result<()> {
        let out = ping("1472")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "1500 bytes with DF crossed: {text}");
        assert!(
            text.contains("Frag needed") && text.contains("mtu = 1480"),
            "ICMP fragmentation needed, MTU 1480, from the host: {text}"
        );
        // The container learnt the path MTU: it now refuses locally.
        let again = ping("1472")?;
        let text = String::from_utf8_lossy(&again.stderr).to_string()
            + &String::from_utf8_lossy(&again.stdout);
        assert!(
            !again.status.success() && text.contains("1480"),
            "path MTU 1480 cached: {text}"
        );
        let fits = ping("1452")?;
        assert!(
            fits.status.success(),
            "1480 bytes with DF cross: {}",
            String::from_utf8_lossy(&fits.stdout)
        );
        // A container with the allocation's MTU refuses the big one itself.
        let small = bed
            .container("a")
            .netns
            .command("ping")
            .args(["-c", "1", "-W", "2", "-M", "do", "-s", "1472"])
            .arg(b.address.to_string())
            .output()?;
        let text = String::from_utf8_lossy(&small.stderr).to_string()
            + &String::from_utf8_lossy(&small.stdout);
        assert!(
            !small.status.success() && text.contains("message too long"),
            "{text}"
        );
        bed.container("a").netns.exec(
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1452",
                &b.address.to_string(),
            ],
        )?;
        Ok(())
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_sources_are_dropped_and_counted_on_the_fast_path() -> Result<()> {
    let bed = two_hosts().await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    let [s28, s27] = bed.counters_of(["h28", "h27"], "fan").await?;
    let third_host = addr("250.0.26.9"); // the slice of 172.30.0.26
    let made_up = addr("10.99.0.1"); // outside the overlay
    tokio::task::block_in_place(|| -> Result<()> {
        let spoofed = [
            icmp_echo(third_host, b.address),
            icmp_echo(third_host, b.address),
            icmp_echo(made_up, b.address),
        ];
        let dump = spoofed_then_ping(h28, a, b.address, &spoofed)?;
        assert!(
            !dump.contains(&third_host.to_string()) && !dump.contains(&made_up.to_string()),
            "no spoofed packet left the host: {dump}"
        );
        Ok(())
    })?;
    let [e28, e27] = bed.counters_of(["h28", "h27"], "fan").await?;
    assert_eq!(
        e28.dropped_spoofed_egress - s28.dropped_spoofed_egress,
        3,
        "{s28:?} -> {e28:?}"
    );
    assert_eq!(e27.dropped_spoofed, s27.dropped_spoofed, "{e27:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_plugged_behind_the_agents_back_uses_the_fast_path() -> Result<()> {
    let bed = two_hosts().await?;
    let b = bed.container("b");
    let h28 = &bed.host("h28").netns;
    // Plugged by hand at an address the agent never allocated (the top of
    // the slice): the fast path needs no knowledge of the container.
    let stray = Netns::new(&format!("{}-stray", bed.id))?;
    plug(
        h28,
        &bridge_of(&bed, "h28").await?,
        &format!("{}stray", bed.id),
        &stray,
        "250.0.28.250/24",
        "250.0.28.1",
        1480,
    )?;
    // Its port gets the egress fast path once the agent saw it appear.
    fast_path_filter_becomes(h28, &format!("{}stray", bed.id), true)?;
    let t28 = fast_path_packets(&bed, "h28")?;
    let p28 = peer_redirected(&bed, "h28")?;
    let c28 = bed.counters("h28", "fan").await?;
    tokio::task::block_in_place(|| -> Result<()> {
        stray.ping(b.address, 2)?;
        b.netns.ping(addr("250.0.28.250"), 2)?;
        tcp_both_ways(&stray, &b.netns, b.address)?;
        ttl_like_two_router_hops(&b.netns, addr("250.0.28.250"))
    })?;
    let e28 = bed.counters("h28", "fan").await?;
    let fast = fast_path_packets(&bed, "h28")? - t28;
    assert!(fast >= 4, "{fast} on the fast path");
    // All but the ICMP time exceeded h28's stack sent for the TTL-2 echo.
    assert_eq!(fast + 1, e28.encapsulated - c28.encapsulated, "{e28:?}");
    // Learned from the kernel's tables once the stack resolved it: the
    // reverse TCP run's data went straight into the stray container.
    let redirected = peer_redirected(&bed, "h28")? - p28;
    assert!(redirected > 100, "{redirected} redirected into the stray");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_the_slow_path_carries_everything() -> Result<()> {
    let mut bed = two_hosts().await?;
    let bridge = bridge_of(&bed, "h28").await?;
    let port = format!("{}c0", bed.id);
    fast_path_filter_becomes(&bed.host("h28").netns, &port, true)?;
    // Someone else's filter on the port (after ours, matching nothing):
    // the agent leaves it alone.
    bed.host("h28").netns.exec(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            &port,
            "ingress",
            "pref",
            "65000",
            "protocol",
            "ip",
            "u32",
            "match",
            "u32",
            "0xffffffff",
            "0xffffffff",
            "at",
            "0",
        ],
    )?;
    {
        let host = bed.host_mut("h28");
        host.agent.extra_args.push("--no-fast-path".into());
        host.agent.terminate()?;
        host.start_agent()?;
    }
    let h28 = &bed.host("h28").netns;
    // The restarted agent detached the program from the bridge and port.
    fast_path_filter_becomes(h28, &bridge, false)?;
    fast_path_filter_becomes(h28, &port, false)?;
    let out = h28.exec("tc", &["filter", "show", "dev", &port, "ingress"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("u32"),
        "the foreign filter went"
    );
    let dir = pin::network_dir(&bed.host("h28").agent.bpffs_dir, "fan")?;
    let flags = fan_dataplane::ebpf::pinned_config(&dir)
        .context("no config pinned")?
        .flags;
    assert_eq!(
        flags & (maps::FLAG_PEER_FASTPATH | maps::FLAG_EGRESS_FASTPATH),
        0,
        "{flags:#x}"
    );
    let (a, b) = (bed.container("a"), bed.container("b"));
    let t28 = fast_path_packets(&bed, "h28")?;
    let p28 = peer_redirected(&bed, "h28")?;
    let c28 = bed.counters("h28", "fan").await?;
    tokio::task::block_in_place(|| -> Result<()> {
        a.netns.ping(b.address, 3)?;
        tcp_both_ways(&a.netns, &b.netns, b.address)?;
        ttl_like_two_router_hops(&a.netns, b.address)?;
        ttl_like_two_router_hops(&b.netns, a.address)
    })?;
    let e28 = bed.counters("h28", "fan").await?;
    // fan_encap on the tunnel device encapsulated it all...
    assert!(
        e28.encapsulated - c28.encapsulated > 100,
        "{c28:?} -> {e28:?}"
    );
    assert_eq!(fast_path_packets(&bed, "h28")?, t28);
    // ...and the stack and the bridge delivered everything decapsulated.
    assert!(e28.decapsulated - c28.decapsulated > 100, "{e28:?}");
    assert_eq!(peer_redirected(&bed, "h28")?, p28);

    // Back on: the filter returns and carries the traffic again.
    {
        let host = bed.host_mut("h28");
        host.agent.extra_args.clear();
        host.agent.terminate()?;
        host.start_agent()?;
    }
    let h28 = &bed.host("h28").netns;
    fast_path_filter_becomes(h28, &bridge, true)?;
    fast_path_filter_becomes(h28, &port, true)?;
    let t28 = fast_path_packets(&bed, "h28")?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    tokio::task::block_in_place(|| a.netns.ping(b.address, 3))?;
    assert_eq!(fast_path_packets(&bed, "h28")? - t28, 3);
    Ok(())
}

/// Whether the fast path of `host` hands the kernel the remote host as next
/// hop (the agent found the whole underlay on-link).
fn next_hop_given(bed: &Testbed, host: &str) -> Result<bool> {
    let dir = pin::network_dir(&bed.host(host).agent.bpffs_dir, "fan")?;
    let config = fan_dataplane::ebpf::pinned_config(&dir).context("no pinned config")?;
    Ok(config.flags & maps::FLAG_UNDERLAY_ON_LINK != 0)
}

/// Waits until the next hop is (or is not) given on `host`; returns how long it took.
fn next_hop_becomes(bed: &Testbed, host: &str, given: bool) -> Result<std::time::Duration> {
    let start = std::time::Instant::now();
    fan_e2e::eventually(std::time::Duration::from_secs(30), || {
        if next_hop_given(bed, host)? != given {
            bail!("next hop given on {host}: want {given}");
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_hop_follows_route_and_rule_changes() -> Result<()> {
    let bed = two_hosts().await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let (h28, h27) = (&bed.host("h28").netns, &bed.host("h27").netns);
    let ip = |ns: &Netns, args: &[&str]| -> Result<()> {
        let out = ns.command("ip").args(args).output()?;
        if !out.status.success() {
            bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    tokio::task::block_in_place(|| -> Result<()> {
        // A flat underlay: every host on-link out of eth0.
        next_hop_becomes(&bed, "h28", true)?;
        let before = fast_path_packets(&bed, "h28")?;
        a.netns.ping(b.address, 2)?;
        assert!(fast_path_packets(&bed, "h28")? > before);

        // h27 is now reached through a gateway (172.30.9.1, an address of
        // h27 itself), and h27's own MAC is replaced by one nobody has: a
        // fast path still giving h27 as next hop would lose everything.
        ip(h27, &["addr", "add", "172.30.9.1/32", "dev", "eth0"])?;
        ip(
            h28,
            &[
                "route",
                "add",
                "172.30.0.27/32",
                "via",
                "172.30.9.1",
                "dev",
                "eth0",
                "onlink",
            ],
        )?;
        ip(
            h28,
            &[
                "neigh",
                "replace",
                "172.30.0.27",
                "lladdr",
                "02:00:00:00:00:99",
                "nud",
                "permanent",
                "dev",
                "eth0",
            ],
        )?;
        let took = next_hop_becomes(&bed, "h28", false)?;
        println!("route through a gateway followed in {took:?}");
        let before = fast_path_packets(&bed, "h28")?;
        a.netns.ping(b.address, 2)?;
        tcp_both_ways(&a.netns, &b.netns, b.address)?;
        assert!(
            fast_path_packets(&bed, "h28")? > before,
            "still the fast path"
        );

        // Undone: the next hop is given again.
        ip(h28, &["route", "del", "172.30.0.27/32"])?;
        ip(h28, &["neigh", "del", "172.30.0.27", "dev", "eth0"])?;
        let took = next_hop_becomes(&bed, "h28", true)?;
        println!("route removal followed in {took:?}");
        a.netns.ping(b.address, 2)?;

        // A policy rule: the main table may no longer decide.
        ip(
            h28,
            &[
                "rule", "add", "fwmark", "0x99", "lookup", "99", "pref", "100",
            ],
        )?;
        let took = next_hop_becomes(&bed, "h28", false)?;
        println!("policy rule followed in {took:?}");
        a.netns.ping(b.address, 2)?;
        ip(h28, &["rule", "del", "pref", "100"])?;
        next_hop_becomes(&bed, "h28", true)?;
        a.netns.ping(b.address, 2)?;
        Ok(())
    })
}
