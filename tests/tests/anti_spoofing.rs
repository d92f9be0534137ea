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

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{eventually, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

// ------------------------------------------------------------ raw packets

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (DF, TTL 64) with `options` (a multiple of 4 bytes).
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IP options are 32-bit words");
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(options);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(payload);
    ip
}

/// An ICMP echo request from `src` to `dst`.
fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0xfa, 0x09, 0, 1];
    icmp.extend(std::iter::repeat_n(0xab, 32));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, &[], &icmp)
}

/// An IPIP packet (outer `outer_src` > `outer_dst`) around `inner`.
fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, options: &[u8], inner: &[u8]) -> Vec<u8> {
    ipv4(outer_src, outer_dst, IPPROTO_IPIP, options, inner)
}

/// Sends complete IPv4 packets (headers included, sources as written) from
/// namespace `ns` through a raw IPPROTO_RAW socket, in order.
fn send_raw(ns: &Netns, packets: &[Vec<u8>]) -> Result<()> {
    const SENDER: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
        for p in sys.argv[1:]:\n\
        \x20   b = bytes.fromhex(p)\n\
        \x20   s.sendto(b, (socket.inet_ntoa(b[16:20]), 0))\n";
    let hex: Vec<String> = packets
        .iter()
        .map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut args = vec!["-c", SENDER];
    args.extend(hex.iter().map(String::as_str));
    ns.exec("python3", &args)
        .context("send raw packets (python3)")?;
    Ok(())
}

// ---------------------------------------------------------------- capture

/// tcpdump on `ns`'s eth0 until `count` packets matched `filter`; returned
/// once it listens.
fn start_capture(ns: &Netns, filter: &str, count: usize) -> Result<Child> {
    let mut child = ns
        .command("timeout")
        .args(["20", "tcpdump", "-n", "-v", "-l", "-i", "eth0", "-c"])
        .arg(count.to_string())
        .arg(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("tcpdump")?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("tcpdump did not start"))?;
    Ok(child)
}

fn finish_capture(child: Child) -> Result<String> {
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ------------------------------------------------------------------ agents

async fn counters(bed: &Testbed, host: &str) -> Result<pb::DataplaneCounters> {
    let mut client = bed.host(host).client().await?;
    client
        .get_network(pb::GetNetworkRequest {
            network_id: "fan".into(),
        })
        .await
        .map_err(|s| anyhow!("get fan on {host}: {s}"))?
        .into_inner()
        .network
        .and_then(|n| n.status)
        .and_then(|s| s.counters)
        .ok_or_else(|| anyhow!("{host}: no counters"))
}

fn counters_now(bed: &Testbed, host: &str) -> Result<pb::DataplaneCounters> {
    tokio::runtime::Handle::current().block_on(counters(bed, host))
}

/// Hosts .28 and .27, network "fan" with `anti_spoofing` on each, a
/// container "a" on .28 and "b" on .27.
async fn two_hosts(anti_spoofing: [bool; 2]) -> Result<Testbed> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    bed.add_host("h27", addr("172.30.0.27"))?;
    for (host, anti_spoofing) in ["h28", "h27"].into_iter().zip(anti_spoofing) {
        let mut client = bed.host(host).client().await?;
        client
            .create_network(pb::CreateNetworkRequest {
                network_id: "fan".into(),
                spec: Some(pb::NetworkSpec {
                    overlay: OVERLAY.into(),
                    underlay: UNDERLAY.into(),
                    anti_spoofing: Some(anti_spoofing),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow!("create fan on {host}: {s}"))?;
    }
    bed.add_container("h28", "fan", "a").await?;
    bed.add_container("h27", "fan", "b").await?;
    Ok(bed)
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sending_host_drops_and_counts_sources_outside_its_slice() -> Result<()> {
    let bed = two_hosts([true, true]).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    // With a default route, loose rp_filter lets any source in from the
    // bridge: the fan must still not carry it.
    h28.ip(&["route", "add", "default", "via", "172.30.0.1", "dev", "eth0"])?;
    let (s28, s27) = (counters(&bed, "h28").await?, counters(&bed, "h27").await?);

    let third_host = addr("250.0.26.9"); // the slice of 172.30.0.26
    let made_up = addr("10.99.0.1"); // outside the overlay altogether
    let capture = start_capture(h28, "ip proto 4", 2)?;
    send_raw(
        &a.netns,
        &[
            icmp_echo(third_host, b.address),
            icmp_echo(third_host, b.address),
            icmp_echo(third_host, b.address),
            icmp_echo(made_up, b.address),
        ],
    )?;
    // The legitimate request and its reply end the capture.
    a.netns.ping(b.address, 1)?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains(&format!("{} > {}", a.address, b.address)),
        "the legitimate ping crossed: {dump}"
    );
    assert!(
        !dump.contains(&third_host.to_string()) && !dump.contains(&made_up.to_string()),
        "no spoofed packet left the host: {dump}"
    );

    let (e28, e27) = (counters(&bed, "h28").await?, counters(&bed, "h27").await?);
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
    let (s28, s27) = (counters(&bed, "h28").await?, counters(&bed, "h27").await?);

    let third_host = addr("250.0.26.9");
    let capture = start_capture(h28, "ip proto 4", 1)?;
    send_raw(&a.netns, &[icmp_echo(third_host, b.address)])?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains("172.30.0.28 > 172.30.0.27")
            && dump.contains(&format!("{third_host} > {}", b.address)),
        "the spoofed packet left encapsulated: {dump}"
    );
    let e28 = counters(&bed, "h28").await?;
    assert_eq!(e28.dropped_spoofed_egress, s28.dropped_spoofed_egress);
    assert_eq!(e28.encapsulated - s28.encapsulated, 1, "{e28:?}");
    // The receiver's decap check stops it.
    tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(10), || {
            let e27 = counters_now(&bed, "h27")?;
            if e27.dropped_spoofed == s27.dropped_spoofed + 1 {
                Ok(())
            } else {
                bail!("h27 {s27:?} -> {e27:?}")
            }
        })
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipip_from_the_underlay_network_or_broadcast_address_is_dropped_at_decap() -> Result<()> {
    let bed = two_hosts([true, true]).await?;
    let a = bed.container("a");
    let h27 = &bed.host("h27").netns;
    let h28_address = bed.host("h28").address;
    let before = counters(&bed, "h28").await?;

    // The fan formula maps these inner sources to exactly these outer
    // sources (172.30.0.0 owns 250.0.0.0/24, 172.30.255.255 owns
    // 250.255.255.0/24), but neither address is a host.
    let network = addr("172.30.0.0");
    let broadcast = addr("172.30.255.255");
    send_raw(
        h27,
        &[
            ipip(network, h28_address, &[], &icmp_echo(addr("250.0.0.9"), a.address)),
            ipip(
                broadcast,
                h28_address,
                &[],
                &icmp_echo(addr("250.255.255.9"), a.address),
            ),
        ],
    )?;
    let after = tokio::task::block_in_place(|| {
        eventually(Duration::from_secs(10), || {
            let now = counters_now(&bed, "h28")?;
            if now.dropped_spoofed >= before.dropped_spoofed + 2 {
                Ok(now)
            } else {
                bail!("h28 {before:?} -> {now:?}")
            }
        })
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
    let capture = start_capture(h27, "ip proto 4 and src host 172.30.0.28", 1)?;
    send_raw(
        h27,
        &[ipip(
            bed.host("h27").address,
            h28_address,
            &[],
            &icmp_echo(addr("250.0.27.77"), a.address),
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
    let (s28, s27) = (counters(&bed, "h28").await?, counters(&bed, "h27").await?);

    // Normal traffic both ways.
    a.netns.ping(b.address, 3)?;
    b.netns.ping(a.address, 3)?;

    // An IPIP packet with outer IP options (NOPs): the decap program leaves
    // it to the stack, which has no IPIP handler here and answers with an
    // ICMP unreachable. That answer proves h28 is done with the packet.
    let capture = start_capture(
        h27,
        "icmp[icmptype] == icmp-unreach and src host 172.30.0.28",
        1,
    )?;
    send_raw(
        h27,
        &[ipip(
            bed.host("h27").address,
            bed.host("h28").address,
            &[1, 1, 1, 1],
            &icmp_echo(addr("250.0.27.78"), a.address),
        )],
    )?;
    let dump = finish_capture(capture)?;
    assert!(dump.contains("unreachable"), "{dump}");

    let (e28, e27) = (counters(&bed, "h28").await?, counters(&bed, "h27").await?);
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
