//! The kernel data planes on a stock kernel with ipip.ko: real agents per
//! host, containers, ping and TCP, mixed backends on one fan.
//!
//! This project's CI kernel has no ipip module, so these tests are
//! `#[ignore]`d; `make test-kernels` (tests/vm/run-kernel-suite.sh) runs
//! them inside a VM booting Debian's stock 6.1 kernel, with `--ignored`
//! and FAN_KERNEL_SUITE=1. With that variable set a missing ipip module
//! fails the tests; without it they print "skipped" and pass, so a plain
//! `cargo test -- --ignored` on a host without ipip does not fail on them.
//!
//! Benchmarks print lines starting with `BENCH` (figures are not asserted).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{iperf, Client, IperfServer, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";

/// True inside the kernel suite (then ipip.ko must be there); false, with
/// a message, elsewhere.
fn kernel_suite() -> bool {
    if std::env::var("FAN_KERNEL_SUITE").as_deref() != Ok("1") {
        eprintln!("skipped: needs ipip.ko (run make test-kernels)");
        return false;
    }
    let _ = std::process::Command::new("modprobe").arg("ipip").status();
    assert!(
        std::path::Path::new("/sys/module/ipip").exists(),
        "FAN_KERNEL_SUITE=1 but the kernel has no ipip module (CONFIG_NET_IPIP)"
    );
    true
}

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn status(client: &mut Client, network: &str) -> Result<pb::NetworkStatus> {
    fan_e2e::network_status(client, network).await
}

/// The network is READY on `host` with `backend`.
async fn assert_ready(
    bed: &Testbed,
    host: &str,
    network: &str,
    backend: pb::Backend,
) -> Result<()> {
    let mut client = bed.host(host).client().await?;
    let s = status(&mut client, network).await?;
    if s.state != pb::NetworkState::Ready as i32 || s.backend != backend as i32 {
        bail!(
            "{network} on {host}: state {:?} backend {:?} (want READY {backend:?}): {}",
            pb::NetworkState::try_from(s.state),
            pb::Backend::try_from(s.backend),
            s.reason
        );
    }
    Ok(())
}

/// One short TCP run each way (at least 1e5 bit/s).
fn tcp_both_ways(client: &Netns, server: &Netns, server_addr: Ipv4Addr) -> Result<()> {
    fan_e2e::tcp_both_ways(client, server, server_addr, 1e5)
}

/// Containers "a" and "b" ping each other, then TCP runs both ways from each side.
fn ping_and_tcp_both_ways(bed: &Testbed) -> Result<()> {
    let (a, b) = (bed.container("a"), bed.container("b"));
    a.netns.ping(b.address, 2)?;
    b.netns.ping(a.address, 2)?;
    tcp_both_ways(&a.netns, &b.netns, b.address)?;
    tcp_both_ways(&b.netns, &a.netns, a.address)
}

/// Mbit/s of a TCP stream of `seconds` from `client` to `server_addr`.
fn throughput(client: &Netns, server: &Netns, server_addr: Ipv4Addr, seconds: u32) -> Result<f64> {
    let _server = IperfServer::start(server, 5202)?;
    Ok(iperf(client, server_addr, 5202, seconds, false)?.bits_per_second / 1e6)
}

/// Lines of `ip -n NS ARGS` output.
fn ip_lines(ns: &Netns, args: &[&str]) -> Result<Vec<String>> {
    Ok(ns.ip(args)?.lines().map(str::to_string).collect())
}

/// Two hosts on a /24 underlay with a container each in network `fan`,
/// created with `backends[i]` on host i.
async fn two_hosts(backends: [pb::Backend; 2]) -> Result<Testbed> {
    let mut bed = Testbed::new(24)?;
    bed.add_host("h7", addr("10.1.2.7"))?;
    bed.add_host("h9", addr("10.1.2.9"))?;
    for (host, backend) in ["h7", "h9"].into_iter().zip(backends) {
        bed.create_network_on(host, "fan", OVERLAY, "10.1.2.0/24", backend)
            .await?;
    }
    bed.add_container("h7", "fan", "a").await?;
    bed.add_container("h9", "fan", "b").await?;
    Ok(bed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn ipip_backend_two_hosts_ping_and_tcp() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    let bed = two_hosts([pb::Backend::Ipip, pb::Backend::Ipip]).await?;
    for host in ["h7", "h9"] {
        assert_ready(&bed, host, "fan", pb::Backend::Ipip).await?;
    }
    let h7 = &bed.host("h7").netns;
    let link = h7.ip(&["-d", "link", "show", "fanipip1"])?;
    assert!(
        link.contains("ipip") && link.contains("local 10.1.2.7") && link.contains("alias fan:fan"),
        "{link}"
    );
    let routes = ip_lines(h7, &["route", "show", "proto", "250"])?;
    assert_eq!(routes.len(), 1 + 253, "{routes:?}");
    assert!(
        routes.iter().any(
            |r| r.starts_with("250.9.0.0/16 via 10.1.2.9 dev fanipip1") && r.contains("onlink")
        ),
        "{routes:?}"
    );

    ping_and_tcp_both_ways(&bed)?;

    // The tunnel's counters are the network's.
    let counters = bed.counters("h7", "fan").await?;
    assert!(
        counters.encapsulated > 0 && counters.decapsulated > 0,
        "{counters:?}"
    );
    let mut client = bed.host("h7").client().await?;

    // Deleting the network leaves no device and no route of ours.
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            force: true,
            allow_missing: false,
        })
        .await
        .map_err(|s| anyhow!("delete: {s}"))?;
    assert!(ip_lines(h7, &["route", "show", "proto", "250"])?.is_empty());
    assert!(!h7.ip(&["link", "show"])?.contains("fanipip"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn ebpf_and_ipip_hosts_interoperate_both_ways() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    // h7 encapsulates with the eBPF program and decapsulates what ipip.ko
    // built on h9; h9's kernel decapsulates what the program built.
    let bed = two_hosts([pb::Backend::Ebpf, pb::Backend::Ipip]).await?;
    assert_ready(&bed, "h7", "fan", pb::Backend::Ebpf).await?;
    assert_ready(&bed, "h9", "fan", pb::Backend::Ipip).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    ping_and_tcp_both_ways(&bed)?;

    for (host, side) in [("h7", "eBPF"), ("h9", "ipip.ko")] {
        let counters = bed.counters(host, "fan").await?;
        assert!(
            counters.encapsulated > 0 && counters.decapsulated > 0,
            "the {side} side encapsulated and decapsulated: {counters:?}"
        );
    }
    // The egress fast path loads on this kernel and, the underlay being
    // flat, hands bpf_redirect_neigh the remote host as next hop.
    let fast = bed.pinned_counter(
        "h7",
        "fan",
        fan_dataplane::ebpf::maps::slot::FAST_PATH_ENCAPSULATED,
    )?;
    assert!(fast > 0, "the eBPF side's fast path carried nothing");
    let dir = fan_dataplane::ebpf::pin::network_dir(&bed.host("h7").agent.bpffs_dir, "fan")?;
    let config = fan_dataplane::ebpf::pinned_config(&dir).context("no pinned config on h7")?;
    assert_ne!(
        config.flags & fan_dataplane::ebpf::maps::FLAG_UNDERLAY_ON_LINK,
        0,
        "next hop not given on a flat underlay: {config:?}"
    );
    let there = throughput(&a.netns, &b.netns, b.address, 2)?;
    let back = throughput(&b.netns, &a.netns, a.address, 2)?;
    eprintln!(
        "BENCH TCP eBPF host -> ipip.ko host {there:.0} Mbit/s, ipip.ko host -> eBPF host {back:.0} Mbit/s (kernel {})",
        kernel()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn ebpf_backend_alone_on_the_stock_kernel() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    let bed = two_hosts([pb::Backend::Auto, pb::Backend::Auto]).await?;
    // No fan patch here: auto picks eBPF, and the agent says why.
    let mut client = bed.host("h7").client().await?;
    let info = client
        .get_agent_info(pb::GetAgentInfoRequest {})
        .await
        .map_err(|s| anyhow!("agent info: {s}"))?
        .into_inner();
    assert_eq!(info.auto_backend, pb::Backend::Ebpf as i32, "{info:?}");
    let find = |b: pb::Backend| {
        info.backends
            .iter()
            .find(|a| a.backend == b as i32)
            .cloned()
            .unwrap_or_else(|| panic!("{b:?} not listed: {info:?}"))
    };
    let kernel_fan = find(pb::Backend::KernelFan);
    assert!(
        !kernel_fan.available && kernel_fan.reason.contains("no Ubuntu fan patch"),
        "{kernel_fan:?}"
    );
    assert!(find(pb::Backend::Ipip).available, "{info:?}");
    assert!(find(pb::Backend::Ebpf).available, "{info:?}");
    for host in ["h7", "h9"] {
        assert_ready(&bed, host, "fan", pb::Backend::Ebpf).await?;
    }

    ping_and_tcp_both_ways(&bed)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn forcing_the_kernel_fan_on_a_stock_kernel_fails_clearly() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    let mut bed = Testbed::new(24)?;
    bed.add_host("h7", addr("10.1.2.7"))?;
    let err = bed
        .create_network_on("h7", "fan", OVERLAY, "10.1.2.0/24", pb::Backend::KernelFan)
        .await
        .expect_err("kernel-fan must be refused without the fan patch");
    let text = format!("{err:#}");
    assert!(
        text.contains("kernel-fan") && text.contains("no Ubuntu fan patch"),
        "{text}"
    );
    let h7 = &bed.host("h7").netns;
    assert!(!h7.ip(&["link", "show"])?.contains("fanmap"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn bench_tcp_ipip_vs_ebpf_side_by_side() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    // Two fans on the same two hosts, one per backend (they coexist: the
    // eBPF decap passes other networks' packets on to ipip.ko), measured
    // alternately so that both see the same machine load.
    let mut bed = Testbed::new(24)?;
    bed.add_host("h7", addr("10.1.2.7"))?;
    bed.add_host("h9", addr("10.1.2.9"))?;
    for (network, overlay, backend) in [
        ("viaipip", "250.0.0.0/8", pb::Backend::Ipip),
        ("viaebpf", "251.0.0.0/8", pb::Backend::Ebpf),
    ] {
        for host in ["h7", "h9"] {
            bed.create_network_on(host, network, overlay, "10.1.2.0/24", backend)
                .await?;
            assert_ready(&bed, host, network, backend).await?;
        }
        bed.add_container("h7", network, &format!("{network}-a"))
            .await?;
        bed.add_container("h9", network, &format!("{network}-b"))
            .await?;
    }
    let mut figures: Vec<(&str, Vec<f64>)> = vec![("ipip.ko", Vec::new()), ("eBPF", Vec::new())];
    for _round in 0..2 {
        for (i, network) in ["viaipip", "viaebpf"].into_iter().enumerate() {
            let a = bed.container(&format!("{network}-a"));
            let b = bed.container(&format!("{network}-b"));
            a.netns.ping(b.address, 1)?;
            figures[i]
                .1
                .push(throughput(&a.netns, &b.netns, b.address, 2)?);
        }
    }
    eprintln!(
        "BENCH TCP container->container, 2 s runs alternating (kernel {}, qemu TCG):",
        kernel()
    );
    for (name, runs) in &figures {
        let list = runs
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let best = runs.iter().cloned().fold(0.0, f64::max);
        eprintln!("BENCH   {name:<8} best {best:>6.0} Mbit/s (runs: {list})");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn bench_ipip_slash16_through_the_agent() -> Result<()> {
    if !kernel_suite() {
        return Ok(());
    }
    // A /8 over a /16: the ipip backend installs 65,533 slice routes and
    // the overlay catch-all. CreateNetwork returns once they are in and
    // observed; DeleteNetwork once they are gone.
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    let start = Instant::now();
    let network = bed
        .create_network_on("h28", "big", OVERLAY, "172.30.0.0/16", pb::Backend::Ipip)
        .await?;
    let created = start.elapsed();
    let state = network.status.as_ref().map(|s| s.state);
    assert_eq!(state, Some(pb::NetworkState::Ready as i32), "{network:?}");
    let h28 = &bed.host("h28").netns;
    let count = h28.ip(&["route", "show", "proto", "250"])?.lines().count();
    assert_eq!(count, 65_534);
    let mut client = bed.host("h28").client().await?;
    let start = Instant::now();
    status(&mut client, "big").await?;
    let observed = start.elapsed();
    let start = Instant::now();
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "big".into(),
            force: true,
            allow_missing: false,
        })
        .await
        .map_err(|s| anyhow!("delete: {s}"))?;
    let deleted = start.elapsed();
    assert_eq!(
        h28.ip(&["route", "show", "proto", "250"])?.lines().count(),
        0
    );
    let log = strip_ansi(&std::fs::read_to_string(&bed.host("h28").agent.log).unwrap_or_default());
    // The agent's own figure for the route batch ("route changes finished ... elapsed_ms=N").
    let batch_ms = log
        .lines()
        .find(|l| l.contains("route changes finished"))
        .and_then(|l| l.split("elapsed_ms=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    eprintln!("BENCH ipip /16 through the agent (kernel {}):", kernel());
    eprintln!(
        "BENCH   CreateNetwork (65,534 routes installed + observed) {:>8.0} ms",
        ms(created)
    );
    eprintln!(
        "BENCH   GetNetwork (dump + diff of 65,534 routes)          {:>8.0} ms",
        ms(observed)
    );
    eprintln!(
        "BENCH   DeleteNetwork (device and routes removed)          {:>8.0} ms",
        ms(deleted)
    );
    eprintln!("BENCH   of which the route batch (agent log)               {batch_ms:>8} ms");
    Ok(())
}

/// The text without terminal colour sequences (the agent logs in colour).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ipip.ko: run make test-kernels"]
async fn ipip_host_drops_spoofed_sources_with_its_nft_rules() -> Result<()> {
    use fan_e2e::packets::{finish_capture, icmp_echo, ipip, send_raw, start_capture};
    if !kernel_suite() {
        return Ok(());
    }
    // h7 runs ipip.ko (its anti-spoofing is the nft table), h9 eBPF.
    let bed = two_hosts([pb::Backend::Ipip, pb::Backend::Ebpf]).await?;
    assert_ready(&bed, "h7", "fan", pb::Backend::Ipip).await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    let (h7, h9) = (&bed.host("h7").netns, &bed.host("h9").netns);
    let start = bed.counters("h7", "fan").await?;

    // Egress: a source from 10.1.2.5's slice never leaves h7. The spoofed
    // packets go first; the legitimate ping's request and reply end the capture.
    let spoofed = addr("250.5.0.9");
    let capture = start_capture(h7, "eth0", "ip proto 4", 2)?;
    send_raw(
        &a.netns,
        &[icmp_echo(spoofed, b.address), icmp_echo(spoofed, b.address)],
    )?;
    a.netns.ping(b.address, 1)?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains(&format!("{} > {}", a.address, b.address)),
        "{dump}"
    );
    assert!(
        !dump.contains(&spoofed.to_string()),
        "nothing spoofed left: {dump}"
    );
    let mid = bed.counters("h7", "fan").await?;
    assert_eq!(
        mid.dropped_spoofed_egress - start.dropped_spoofed_egress,
        2,
        "{mid:?}"
    );

    // Decap: ipip.ko takes IPIP from any source; the nft rule drops the
    // underlay's network and broadcast addresses first. A real host's
    // packet, sent last, is decapsulated and answered: the answer ends the
    // capture on h9.
    let capture = start_capture(h9, "eth0", "ip proto 4 and src host 10.1.2.7", 1)?;
    send_raw(
        h9,
        &[
            ipip(
                addr("10.1.2.0"),
                addr("10.1.2.7"),
                &[],
                &icmp_echo(addr("250.0.0.9"), a.address),
            ),
            ipip(
                addr("10.1.2.255"),
                addr("10.1.2.7"),
                &[],
                &icmp_echo(addr("250.255.0.9"), a.address),
            ),
            ipip(
                addr("10.1.2.9"),
                addr("10.1.2.7"),
                &[],
                &icmp_echo(addr("250.9.0.77"), a.address),
            ),
        ],
    )?;
    let dump = finish_capture(capture)?;
    assert!(
        dump.contains(&format!("{} > 250.9.0.77", a.address)),
        "{dump}"
    );
    let end = bed.counters("h7", "fan").await?;
    assert_eq!(end.dropped_spoofed - mid.dropped_spoofed, 2, "{end:?}");
    assert_eq!(end.decapsulated - mid.decapsulated, 1, "{end:?}");
    Ok(())
}
