//! The data-plane half of `fan-bench` (issue 14, item 3): five paths between
//! two hosts on the same underlay bridge, measured in alternating rounds of
//! one run so that the machine's background load hits them alike.
//!
//! - fan, fast path: agents with the eBPF egress fast path (the default);
//!   where the kernel has netkit (6.7+) its containers are plugged with
//!   netkit pairs, and a sixth path, the same with veth pairs, shows what
//!   containers of runtimes that make veths get;
//! - fan, slow path: a second pair of hosts whose agents run `--no-fast-path`
//!   (host routing + tunnel device);
//! - control: containers on a plain bridge, routed host to host over the same
//!   hops without encapsulation;
//! - underlay: host to host;
//! - kernel VXLAN, flannel-style: a `vxlan` device (VNI 42, port 4789) on each
//!   host and a route to the peer's container subnet through it.
//!
//! Per round and path: iperf3 with 1 stream (placed by the scheduler, then
//! pinned: client on CPU 0, server on CPU 1), with 4 streams as 4 processes
//! of one stream each, and with `-P 4` in one process (`seconds` each; for
//! reference only: Debian's iperf3 3.12 runs those 4 streams on one thread,
//! so that figure is mostly where the scheduler put it),
//! ping RTT (50 packets), UDP 64-byte datagrams per second (the per-packet
//! cost, at 64 KB only), and the CPU-seconds the whole machine spent per GB
//! received during the iperf runs (/proc/stat deltas; other load on the
//! machine counts too, which the alternation spreads evenly).

use std::io::IsTerminal;
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::gso::{set_ipv4_gso_gro, wait_for_ipv4_gso, LEGACY_GSO};
use fan_e2e::{IperfServer, Netns, PortKind, Testbed};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
const H28: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 28);
const H27: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 27);

/// One path: an iperf3/ping client namespace towards a server namespace.
struct Path {
    name: &'static str,
    client: Netns,
    server: Netns,
    address: Ipv4Addr,
}

/// Figures of one path over the rounds.
#[derive(Default)]
struct Figures {
    one: Vec<f64>,
    one_pinned: Vec<f64>,
    /// 4 streams: 4 iperf3 processes of one stream each.
    four: Vec<f64>,
    /// `-P 4`: 4 streams on one iperf3 thread.
    four_one_thread: Vec<f64>,
    rtt: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    /// Cores busy (machine-wide) during the unpinned 1-stream run: how far
    /// the scheduler spread one flow's work (1 = all on one core).
    one_cores: Vec<f64>,
    /// UDP datagrams of 64 bytes received per second (iperf3 -u -b 0):
    /// the per-packet cost of the path, which bulk TCP hides behind copies.
    udp_pps: Vec<f64>,
}

/// Busy (non-idle, non-iowait) CPU-seconds of the machine so far.
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 5 {
        bail!("/proc/stat: {line}");
    }
    // user nice system idle iowait irq softirq steal ...: USER_HZ is 100.
    let total: f64 = fields.iter().take(8).sum();
    Ok((total - fields[3] - fields[4]) / 100.0)
}

/// One iperf3 run: (bit/s, bytes received). With `pinned`, the client
/// runs on CPU 0 and the server on CPU 1 (iperf3 `-A 0,1`).
fn iperf(path: &Path, streams: u32, seconds: u32, pinned: bool) -> Result<(f64, f64)> {
    let _server = IperfServer::start(&path.server, 5201)?;
    let mut args = client_args(path, 5201, streams, seconds);
    if pinned {
        args.extend(["-A".to_string(), "0,1".to_string()]);
    }
    let out = path.client.exec(
        "iperf3",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    received(path, &out.stdout)
}

/// `processes` iperf3 clients at once, one stream each, towards as many
/// servers: (bit/s, bytes received), summed. Debian's iperf3 (3.12) runs
/// all the streams of one process on one thread, so `-P 4` is still one
/// sender thread; separate processes load every core.
fn iperf_processes(path: &Path, processes: u16, seconds: u32) -> Result<(f64, f64)> {
    let ports: Vec<u16> = (0..processes).map(|i| 5201 + i).collect();
    let _servers = ports
        .iter()
        .map(|port| IperfServer::start(&path.server, *port))
        .collect::<Result<Vec<_>>>()?;
    let clients = ports
        .iter()
        .map(|port| {
            path.client
                .command("iperf3")
                .args(client_args(path, *port, 1, seconds))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("spawn iperf3 -c")
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut bps, mut bytes) = (0.0, 0.0);
    for client in clients {
        let out = client.wait_with_output().context("iperf3 -c")?;
        let (b, n) = received(path, &out.stdout)?;
        bps += b;
        bytes += n;
    }
    Ok((bps, bytes))
}

/// The arguments of an iperf3 client towards `path` on `port`.
fn client_args(path: &Path, port: u16, streams: u32, seconds: u32) -> Vec<String> {
    [
        "-c",
        &path.address.to_string(),
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ]
    .map(str::to_string)
    .to_vec()
}

/// iperf3's JSON report, or the error it reports.
fn report(path: &Path, stdout: &[u8]) -> Result<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(stdout).context("iperf3 -J output")?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3 {}: {error}", path.name);
    }
    Ok(json)
}

/// (bit/s, bytes) received, from iperf3's JSON report.
fn received(path: &Path, stdout: &[u8]) -> Result<(f64, f64)> {
    let json = report(path, stdout)?;
    let sum = &json["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 output without end.sum_received"))?;
    let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps, bytes))
}

/// UDP datagrams of 64 bytes the server received per second, the client
/// sending as fast as it can.
fn udp_pps(path: &Path, seconds: u32) -> Result<f64> {
    let _server = IperfServer::start(&path.server, 5201)?;
    let mut args = client_args(path, 5201, 1, seconds);
    args.extend(["-u", "-b", "0", "-l", "64"].map(str::to_string));
    let out = path.client.exec(
        "iperf3",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let json = report(path, &out.stdout)?;
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_f64().context("no end.sum.packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(f64::from(seconds));
    Ok((packets - lost) / secs)
}

/// Median RTT of 50 pings, in ms. The median, not ping's average: at tens
/// of microseconds one ping that finds a core asleep doubles the mean.
fn rtt(path: &Path) -> Result<f64> {
    let out = path.client.exec(
        "ping",
        &["-c", "50", "-i", "0.01", &path.address.to_string()],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // 64 bytes from 250.0.27.2: icmp_seq=1 ttl=63 time=0.045 ms
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .collect();
    if times.is_empty() {
        bail!("ping {}: no replies: {text}", path.name);
    }
    Ok(median(&times))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(values), min, max)
}

fn show(values: &[f64], scale: f64, digits: usize) -> String {
    let (m, lo, hi) = spread(values);
    format!(
        "{:.d$} [{:.d$}–{:.d$}]",
        m / scale,
        lo / scale,
        hi / scale,
        d = digits
    )
}

/// Per-round ratios a/b.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// A plain bridge `bridge` on `host` with `subnet`.1/24, MTU `mtu`, and a
/// container at `subnet`.2 plugged into it.
fn bridged_container(
    bed: &Testbed,
    host: &Netns,
    bridge: &str,
    subnet: &str,
    tag: &str,
    mtu: u32,
) -> Result<Netns> {
    host.ip(&["link", "add", bridge, "type", "bridge"])?;
    host.ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", bridge])?;
    host.ip(&["link", "set", bridge, "mtu", &mtu.to_string(), "up"])?;
    let netns = Netns::new(&format!("{}-{tag}", bed.id))?;
    fan_e2e::plug(
        host,
        bridge,
        &format!("{}{tag}", bed.id),
        &netns,
        &format!("{subnet}.2/24"),
        &format!("{subnet}.1"),
        mtu,
    )?;
    Ok(netns)
}

/// The control: plain bridges on 10.200.<host>.0/24, routed via the peer's
/// underlay address. Same hops as the fan, no encapsulation.
fn control(bed: &Testbed) -> Result<[Netns; 2]> {
    let mut out = Vec::new();
    for (name, octet, other_octet, other) in [("h28", 28, 27, H27), ("h27", 27, 28, H28)] {
        let host = &bed.host(name).netns;
        let c = bridged_container(
            bed,
            host,
            "ctl0",
            &format!("10.200.{octet}"),
            &format!("k{octet}"),
            1480,
        )?;
        host.ip(&[
            "route",
            "add",
            &format!("10.200.{other_octet}.0/24"),
            "via",
            &other.to_string(),
        ])?;
        out.push(c);
    }
    out.try_into().map_err(|_| anyhow!("two hosts"))
}

/// Flannel-style kernel VXLAN: `vxl0` (VNI 42, UDP 4789) between the hosts,
/// 10.202.0.<host>/24 on it, bridges on 10.201.<host>.0/24 and a route to the
/// peer's subnet through the peer's VXLAN address.
fn vxlan(bed: &Testbed) -> Result<[Netns; 2]> {
    let mut out = Vec::new();
    for (name, me, octet, other_octet, other) in
        [("h28", H28, 28, 27, H27), ("h27", H27, 27, 28, H28)]
    {
        let host = &bed.host(name).netns;
        host.ip(&[
            "link",
            "add",
            "vxl0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            &me.to_string(),
            "remote",
            &other.to_string(),
            "dev",
            "eth0",
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("10.202.0.{octet}/24"),
            "dev",
            "vxl0",
        ])?;
        host.ip(&["link", "set", "vxl0", "mtu", "1450", "up"])?;
        let c = bridged_container(
            bed,
            host,
            "vxb0",
            &format!("10.201.{octet}"),
            &format!("v{octet}"),
            1450,
        )?;
        host.ip(&[
            "route",
            "add",
            &format!("10.201.{other_octet}.0/24"),
            "via",
            &format!("10.202.0.{other_octet}"),
            "dev",
            "vxl0",
        ])?;
        out.push(c);
    }
    out.try_into().map_err(|_| anyhow!("two hosts"))
}

/// Two hosts, the fan on both, container "a" on .28 and "b" on .27; the
/// agents get `agent_args`.
async fn fan_bed(agent_args: &[&str]) -> Result<Testbed> {
    fan_bed_on(PortKind::Veth, agent_args).await
}

/// [`fan_bed`] with the containers plugged by pairs of `kind`.
async fn fan_bed_on(kind: PortKind, agent_args: &[&str]) -> Result<Testbed> {
    let spec = fan_e2e::fan_spec(OVERLAY, UNDERLAY);
    fan_e2e::two_host_fan_on(kind, agent_args, &[], [spec.clone(), spec]).await
}

fn existing(ns: &Netns) -> Netns {
    Netns::existing(&ns.name)
}

/// Raises the IPv4 GSO/GRO limits of every device in `devices` to `size`;
/// when one refuses (its driver's TSO limit) all go back to the default and
/// the refusing one is returned: a path is compared whole or not at all.
fn raise(devices: &[(&Netns, String)], size: u32) -> Result<Option<String>> {
    for (ns, device) in devices {
        if !set_ipv4_gso_gro(ns, device, size)? {
            for (ns, device) in devices {
                set_ipv4_gso_gro(ns, device, LEGACY_GSO)?;
            }
            return Ok(Some(device.clone()));
        }
    }
    Ok(None)
}

/// BIG TCP on every path that gains from it: the underlay of both testbeds
/// (the hosts' NICs and the switch's ports, as an administrator would raise
/// them; the agents then raise their containers' veths themselves, which is
/// waited for), and every device of the control path (what a
/// BIG-TCP-aware plugin would do for it).
async fn big_tcp_everywhere(fans: &[&Testbed], control: &[Netns; 2], size: u32) -> Result<()> {
    for bed in fans {
        let mut devices = Vec::new();
        for host in ["h28", "h27"] {
            devices.push((&bed.host(host).netns, "eth0".to_string()));
            devices.push((&bed.underlay, format!("{}{host}", bed.id)));
        }
        if let Some(device) = raise(&devices, size)? {
            bail!("the underlay's {device} refuses an IPv4 GSO limit of {size}");
        }
        for c in ["a", "b"] {
            wait_for_ipv4_gso(&bed.container(c).netns, "eth0", size).await?;
        }
    }
    let mut devices = Vec::new();
    for (container, (host, tag)) in control.iter().zip([("h28", "k28"), ("h27", "k27")]) {
        let host = &fans[0].host(host).netns;
        devices.push((container, "eth0".to_string()));
        devices.push((host, format!("{}{tag}", fans[0].id)));
        devices.push((host, "ctl0".to_string()));
    }
    if let Some(device) = raise(&devices, size)? {
        println!("  control: stays at 64 KB ({device} refuses {size})");
    }
    // Kernel VXLAN stays at 64 KB: its devices take the limit, but the
    // UDP tunnel then carries TCP at 0.4-0.8 Gbit/s (measured), far below
    // what it does at 64 KB, so the comparison keeps it at its best.
    println!("  kernel VXLAN: left at 64 KB (with BIG TCP it measured 0.4-0.8 Gbit/s)");
    Ok(())
}

/// Builds every path, runs `rounds` alternating rounds and prints the table
/// and the issue's targets; with `big_tcp`, every path first gets that
/// IPv4 GSO/GRO limit where its devices take it. Nothing is asserted.
pub async fn compare(rounds: usize, seconds: u32, big_tcp: Option<u32>) -> Result<()> {
    println!(
        "\n== Data plane: fast path vs slow path vs plain routing vs underlay vs kernel VXLAN{}",
        match big_tcp {
            Some(size) => format!(", BIG TCP ({size}-byte IPv4 GSO limit)"),
            None => String::from(", 64 KB GSO packets (the kernel's default)"),
        }
    );
    // Where the kernel has netkit, the fast path's containers are plugged
    // with netkit pairs (the program runs in their transmit) and a second
    // pair of hosts with veths shows what runtimes that make veths get.
    let netkit = fan_e2e::netkit_supported()?;
    println!(
        "  fan containers: {}",
        if netkit {
            "netkit pairs (fast path in the container's transmit); veth pairs for reference"
        } else {
            "veth pairs (this kernel has no netkit)"
        }
    );
    let kind = if netkit {
        PortKind::Netkit
    } else {
        PortKind::Veth
    };
    let fast = fan_bed_on(kind, &[]).await?;
    let fast_veth = if netkit {
        Some(fan_bed(&[]).await?)
    } else {
        None
    };
    let slow = fan_bed(&["--no-fast-path"]).await?;
    let control = control(&fast)?;
    let vxlan = vxlan(&fast)?;
    if let Some(size) = big_tcp {
        let fans: Vec<&Testbed> = [Some(&fast), fast_veth.as_ref(), Some(&slow)]
            .into_iter()
            .flatten()
            .collect();
        big_tcp_everywhere(&fans, &control, size).await?;
    }
    let mut paths = vec![
        Path {
            name: "fan, fast path",
            client: existing(&fast.container("a").netns),
            server: existing(&fast.container("b").netns),
            address: fast.container("b").address,
        },
        Path {
            name: "fan, slow path",
            client: existing(&slow.container("a").netns),
            server: existing(&slow.container("b").netns),
            address: slow.container("b").address,
        },
        Path {
            name: "control (routed, no encap)",
            client: existing(&control[0]),
            server: existing(&control[1]),
            address: "10.200.27.2".parse()?,
        },
        Path {
            name: "underlay host↔host",
            client: existing(&fast.host("h28").netns),
            server: existing(&fast.host("h27").netns),
            address: H27,
        },
        Path {
            name: "kernel VXLAN (flannel-style)",
            client: existing(&vxlan[0]),
            server: existing(&vxlan[1]),
            address: "10.201.27.2".parse()?,
        },
    ];
    if let Some(bed) = &fast_veth {
        paths[0].name = "fan, fast path, netkit";
        paths.push(Path {
            name: "fan, fast path, veth",
            client: existing(&bed.container("a").netns),
            server: existing(&bed.container("b").netns),
            address: bed.container("b").address,
        });
    }
    // Warm-up: ARP/neighbours on every path.
    for p in &paths {
        p.client
            .ping(p.address, 1)
            .with_context(|| format!("warm-up ping over {}", p.name))?;
    }
    let mut figures: Vec<Figures> = paths.iter().map(|_| Figures::default()).collect();
    let progress = std::io::stderr().is_terminal();
    // One stream again with the client on CPU 0 and the server on CPU 1,
    // as on two machines: left to the scheduler, a single flow's figure
    // depends on where its two ends land (plain routing measured 20-34
    // Gbit/s within one run), more than on the path.
    let pin = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    for round in 0..rounds {
        if progress {
            eprint!("  round {}/{rounds}\r", round + 1);
        }
        // Rotate the order so no path always runs first or last.
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let p = &paths[i];
            let cpu0 = busy_cpu_seconds()?;
            let (one, bytes1) = iperf(p, 1, seconds, false)?;
            let one_cores = (busy_cpu_seconds()? - cpu0) / f64::from(seconds);
            let (pinned, bytes_pinned) = if pin {
                iperf(p, 1, seconds, true)?
            } else {
                (f64::NAN, 0.0)
            };
            let (one_thread, bytes4) = iperf(p, 4, seconds, false)?;
            let (processes, bytes_processes) = iperf_processes(p, 4, seconds)?;
            let cpu = busy_cpu_seconds()? - cpu0;
            let f = &mut figures[i];
            f.one.push(one);
            f.one_cores.push(one_cores);
            f.one_pinned.push(pinned);
            f.four.push(processes);
            f.four_one_thread.push(one_thread);
            f.cpu_per_gb
                .push(cpu / ((bytes1 + bytes_pinned + bytes4 + bytes_processes) / 1e9));
            f.rtt.push(rtt(p)?);
            // Small packets do not change with the GSO limit: once, at 64 KB.
            if big_tcp.is_none() {
                f.udp_pps.push(udp_pps(p, seconds)?);
            }
        }
    }
    if progress {
        eprint!("{:24}\r", "");
    }
    println!(
        "  {rounds} alternating rounds; median [min–max]; iperf3 {seconds} s per run; RTT = median of 50 pings; CPU = whole machine"
    );
    println!(
        "  {:<30} {:>22} {:>22} {:>22} {:>22} {:>20} {:>20}",
        "path",
        "1 stream Gbit/s",
        "1 pinned Gbit/s",
        "4 streams Gbit/s",
        "-P 4, 1 thread Gbit/s",
        "RTT ms",
        "CPU s per GB"
    );
    for (p, f) in paths.iter().zip(&figures) {
        println!(
            "  {:<30} {:>22} {:>22} {:>22} {:>22} {:>20} {:>20}",
            p.name,
            show(&f.one, 1e9, 2),
            show(&f.one_pinned, 1e9, 2),
            show(&f.four, 1e9, 2),
            show(&f.four_one_thread, 1e9, 2),
            show(&f.rtt, 1.0, 3),
            show(&f.cpu_per_gb, 1.0, 2)
        );
    }
    if !pin {
        println!("  (one CPU: the pinned runs are skipped)");
    }
    // Where one stream's figure comes from: a flow whose work the scheduler
    // spread over both cores (ACKs handled on the receiver's core send new
    // data from there) measures faster than its path's cost per byte says.
    if big_tcp.is_none() {
        println!("  UDP, 64-byte datagrams received per second (per-packet cost), thousands:");
        for (p, f) in paths.iter().zip(&figures) {
            println!("  {:<30} {:>22}", p.name, show(&f.udp_pps, 1e3, 1));
        }
    }
    println!("  cores busy during the 1-stream run (1.0 = one core's worth):");
    for (p, f) in paths.iter().zip(&figures) {
        println!("  {:<30} {:>22}", p.name, show(&f.one_cores, 1.0, 2));
    }
    let [fan, slow_f, ctl, under, vx] = [0, 1, 2, 3, 4].map(|i| &figures[i]);
    println!("  ratios (per round, median [min–max]) against the issue's targets:");
    // (what, numerator, denominator, '≥' or '≤', the goal for the median)
    for (name, num, den, cmp, goal) in [
        ("fan/control, 1 stream", &fan.one, &ctl.one, '≥', 1.05),
        (
            "fan/control, 1 stream pinned",
            &fan.one_pinned,
            &ctl.one_pinned,
            '≥',
            1.05,
        ),
        ("fan/underlay, 1 stream", &fan.one, &under.one, '≥', 0.95),
        (
            "fan/underlay, 1 stream pinned",
            &fan.one_pinned,
            &under.one_pinned,
            '≥',
            0.95,
        ),
        ("fan/underlay, 4 streams", &fan.four, &under.four, '≥', 0.95),
        ("RTT fan/control", &fan.rtt, &ctl.rtt, '≤', 1.0),
        (
            "CPU per GB fan/control",
            &fan.cpu_per_gb,
            &ctl.cpu_per_gb,
            '≤',
            1.0,
        ),
    ] {
        let values = ratios(num, den);
        let m = median(&values);
        let met = if cmp == '≥' { m >= goal } else { m <= goal };
        let target = format!("{cmp} {goal:?}");
        println!(
            "  {name:<34} {:<22} target {target:<7} {}",
            show(&values, 1.0, 2),
            if met { "met" } else { "NOT met" }
        );
    }
    println!("  for reference:");
    for (name, values) in [
        ("fan/control, 4 streams", ratios(&fan.four, &ctl.four)),
        ("fast/slow path, 1 stream", ratios(&fan.one, &slow_f.one)),
        ("fast/slow path, 4 streams", ratios(&fan.four, &slow_f.four)),
        ("fan/VXLAN, 1 stream", ratios(&fan.one, &vx.one)),
        ("fan/VXLAN, 4 streams", ratios(&fan.four, &vx.four)),
        (
            "fan/underlay, -P 4, 1 thread",
            ratios(&fan.four_one_thread, &under.four_one_thread),
        ),
        ("RTT fast/slow path", ratios(&fan.rtt, &slow_f.rtt)),
        (
            "fan/underlay, UDP 64 B packets/s",
            ratios(&fan.udp_pps, &under.udp_pps),
        ),
        (
            "fan/control, UDP 64 B packets/s",
            ratios(&fan.udp_pps, &ctl.udp_pps),
        ),
    ]
    .into_iter()
    .chain(figures.get(5).into_iter().flat_map(|veth| {
        [
            ("veth fan/underlay, 1 stream", ratios(&veth.one, &under.one)),
            (
                "veth fan/underlay, 4 streams",
                ratios(&veth.four, &under.four),
            ),
            ("veth fan/control, 1 stream", ratios(&veth.one, &ctl.one)),
            ("netkit/veth fan, 1 stream", ratios(&fan.one, &veth.one)),
            ("netkit/veth fan, 4 streams", ratios(&fan.four, &veth.four)),
            (
                "netkit/veth fan, CPU per GB",
                ratios(&fan.cpu_per_gb, &veth.cpu_per_gb),
            ),
            (
                "netkit/veth fan, UDP 64 B packets/s",
                ratios(&fan.udp_pps, &veth.udp_pps),
            ),
            (
                "veth fan/underlay, UDP 64 B packets/s",
                ratios(&veth.udp_pps, &under.udp_pps),
            ),
        ]
    })) {
        // The UDP rows are measured at 64 KB only.
        if values.is_empty() {
            continue;
        }
        println!("  {name:<34} {}", show(&values, 1.0, 2));
    }
    drop(paths);
    drop(vxlan);
    drop(control);
    drop(slow);
    drop(fast_veth);
    drop(fast);
    Ok(())
}
