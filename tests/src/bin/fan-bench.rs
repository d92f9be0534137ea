//! `fan-bench`: prints (never asserts) the control- and data-plane figures, each
//! against a baseline measured in the same run on the same machine.
//!
//! - AllocateAddress latency p50/p99 and allocations/s at 1 and 16 concurrent
//!   clients over the unix socket (durable commits), against CNI host-local
//!   (one exec per allocation, as a container runtime calls it);
//! - the agent's RSS with one network and 250 allocations;
//! - TCP throughput (iperf3, 3 runs, median) and RTT (ping, 100 packets):
//!   underlay host↔host, container↔container routed over the same hops without
//!   encapsulation (the control), and over the fan;
//! - time from CreateNetwork to the first packet through;
//! - 100 networks on one agent: RSS, first vs last create time, idle CPU.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{iperf, IperfServer, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Latencies and throughput of one allocation run.
struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn report(&mut self, label: &str) -> f64 {
        self.latencies.sort();
        let rate = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "  {label:<38} p50 {:>8.3} ms   p99 {:>8.3} ms   {:>9.0} allocations/s  (n={})",
            percentile(&self.latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&self.latencies, 99.0).as_secs_f64() * 1e3,
            rate,
            self.latencies.len()
        );
        rate
    }
}

async fn agent_allocations(
    socket: &Path,
    network: &str,
    clients: usize,
    per_client: usize,
    tag: &str,
) -> Result<Run> {
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(
            fan_proto::v1::fan_agent_service_client::FanAgentServiceClient::new(
                fan_e2e::unix_channel(socket).await?,
            ),
        );
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut client) in connections.into_iter().enumerate() {
        let network = network.to_owned();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                client
                    .allocate_address(pb::AllocateAddressRequest {
                        network_id: network.clone(),
                        owner: Some(pb::Owner {
                            container_id: format!("{tag}-{c}-{i}"),
                            interface: String::new(),
                        }),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| anyhow!("allocate: {s}"))?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Run {
        latencies,
        elapsed: start.elapsed(),
    })
}

/// The floor under every call: a unary RPC over the same socket that does
/// pure arithmetic (no disk, no kernel), to read the allocation figures against.
async fn round_trip_floor(socket: &Path, calls: usize) -> Result<Run> {
    let mut client = fan_proto::v1::fan_agent_service_client::FanAgentServiceClient::new(
        fan_e2e::unix_channel(socket).await?,
    );
    let request = pb::ResolveAddressRequest {
        address: "250.0.28.9".into(),
        overlay: OVERLAY.into(),
        underlay: "172.30.0.0/16".into(),
        ..Default::default()
    };
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client
            .resolve_address(request.clone())
            .await
            .map_err(|s| anyhow!("resolve: {s}"))?;
        latencies.push(t.elapsed());
    }
    Ok(Run {
        latencies,
        elapsed: start.elapsed(),
    })
}

/// CNI host-local, one exec per ADD, as runtimes call it.
fn host_local_allocations(clients: usize, per_client: usize, dir: &Path, tag: &str) -> Result<Run> {
    let plugin = Path::new("/usr/lib/cni/host-local");
    if !plugin.exists() {
        bail!(
            "{} missing: apt-get install containernetworking-plugins",
            plugin.display()
        );
    }
    let data_dir = dir.join(format!("host-local-{tag}"));
    let config = Arc::new(format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-{tag}","type":"host-local","ipam":{{"type":"host-local","ranges":[[{{"subnet":"250.7.0.0/16"}}]],"dataDir":"{}"}}}}"#,
        data_dir.display()
    ));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let config = config.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let t = Instant::now();
                    let mut child = Command::new(plugin)
                        .env("CNI_COMMAND", "ADD")
                        .env("CNI_CONTAINERID", format!("{tag}-{c}-{i}"))
                        .env("CNI_NETNS", "/proc/self/ns/net")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", "/usr/lib/cni")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()?;
                    child
                        .stdin
                        .take()
                        .context("stdin")?
                        .write_all(config.as_bytes())?;
                    let out = child.wait_with_output()?;
                    if !out.status.success() {
                        bail!("host-local: {}", String::from_utf8_lossy(&out.stdout));
                    }
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for thread in threads {
        latencies.extend(
            thread
                .join()
                .map_err(|_| anyhow!("host-local thread panicked"))??,
        );
    }
    Ok(Run {
        latencies,
        elapsed: start.elapsed(),
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Median of 3 iperf3 runs of `seconds` each, in bit/s.
fn throughput(client: &Netns, server: &Netns, address: Ipv4Addr, seconds: u32) -> Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let _server = IperfServer::start(server, 5201)?;
        runs.push(iperf(client, address, 5201, seconds, false)?.bits_per_second);
    }
    Ok(median(runs))
}

/// Average RTT of 100 pings, in ms.
fn rtt(client: &Netns, address: Ipv4Addr) -> Result<f64> {
    let out = client.exec(
        "ping",
        &["-c", "100", "-i", "0.01", "-q", &address.to_string()],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = 0.031/0.045/0.090/0.010 ms
    let stats = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| anyhow!("ping: {text}"))?;
    let values = stats
        .split('=')
        .nth(1)
        .ok_or_else(|| anyhow!("ping: {stats}"))?;
    values
        .trim()
        .split('/')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("ping: {stats}"))
}

/// The control: on each host a plain bridge + container on 10.200.<h>.0/24 and a
/// route to the other host's subnet via its underlay address. Same hops as the
/// fan, no encapsulation.
fn build_control(bed: &Testbed, hosts: [(&str, u8, Ipv4Addr); 2]) -> Result<Vec<Netns>> {
    let mut containers = Vec::new();
    for (i, (name, octet, _)) in hosts.iter().enumerate() {
        let host = &bed.host(name).netns;
        let (_, other_octet, other_addr) = hosts[1 - i];
        host.ip(&["link", "add", "ctl0", "type", "bridge"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("10.200.{octet}.1/24"),
            "dev",
            "ctl0",
        ])?;
        host.ip(&["link", "set", "ctl0", "mtu", "1480", "up"])?;
        host.ip(&[
            "route",
            "add",
            &format!("10.200.{other_octet}.0/24"),
            "via",
            &other_addr.to_string(),
        ])?;
        let netns = Netns::new(&format!("{}-ctl{octet}", bed.id))?;
        let outside = format!("{}k{octet}", bed.id);
        let cidr = format!("10.200.{octet}.2/24");
        fan_e2e::plug(
            host,
            "ctl0",
            &outside,
            &netns,
            &cidr,
            &format!("10.200.{octet}.1"),
            1480,
        )?;
        containers.push(netns);
    }
    Ok(containers)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("fan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run(&scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn run(scratch: &Path) -> Result<()> {
    println!("fan-bench: figures are printed, not asserted; baselines measured in this run.\n");
    // `fan-bench control`, `fan-bench dataplane` or `fan-bench networks` runs one part.
    let only = std::env::args().nth(1).unwrap_or_default();
    if only.is_empty() || only == "control" {
        control_plane(scratch).await?;
    }
    if only.is_empty() || only == "dataplane" {
        data_plane().await?;
    }
    if only.is_empty() || only == "networks" {
        networks_at_scale().await?;
    }
    Ok(())
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // USER_HZ is 100 on every Linux architecture.
    Ok(ticks / 100.0)
}

/// Per-network cost: 100 networks on one agent (issue targets printed beside
/// the figures): RSS, create time of the first against the last, and idle CPU
/// with the reconcile timer running.
async fn networks_at_scale() -> Result<()> {
    // FAN_BENCH_NETWORKS (default 100, at least 10) for quicker iterations.
    let networks: usize = std::env::var("FAN_BENCH_NETWORKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100usize)
        .max(10);
    const RECONCILE_SECONDS: u64 = 10;
    const IDLE_SECONDS: u64 = 30;
    println!("\n== Networks at scale: {networks} networks on one agent (eBPF backend)");
    let mut bed = Testbed::new(16)?;
    bed.add_host_with(
        "h28",
        "172.30.0.28".parse()?,
        &["--reconcile-interval", &RECONCILE_SECONDS.to_string()],
        &[],
    )?;
    let pid = bed.host("h28").agent.pid().context("agent pid")?;
    let idle_rss = rss_kib(pid)?;
    let mut client = bed.host("h28").client().await?;
    let mut creates = Vec::with_capacity(networks);
    for i in 0..networks {
        // /12 overlays over the /16 underlay: a /28 slice per network, 16 per /8.
        let overlay = format!("{}.{}.0.0/12", 160 + i / 16, (i % 16) * 16);
        let started = Instant::now();
        client
            .create_network(pb::CreateNetworkRequest {
                network_id: format!("s{i}"),
                spec: Some(pb::NetworkSpec {
                    overlay,
                    underlay: "172.30.0.0/16".into(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow!("create network s{i}: {s}"))?;
        creates.push(started.elapsed());
    }
    let loaded_rss = rss_kib(pid)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut first_ten: Vec<Duration> = creates[..10].to_vec();
    let mut last_ten: Vec<Duration> = creates[networks - 10..].to_vec();
    first_ten.sort();
    last_ten.sort();
    let (early, late) = (percentile(&first_ten, 50.0), percentile(&last_ten, 50.0));
    println!(
        "  RSS: {:.1} MiB idle, {:.1} MiB with {networks} networks ({:.0} KiB per network)   (target ≤ 40 MiB)",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        (loaded_rss.saturating_sub(idle_rss)) as f64 / networks as f64
    );
    println!(
        "  CreateNetwork: first {:.1} ms, last {:.1} ms; median of the first 10 {:.1} ms, of the last 10 {:.1} ms: ratio {:.2}   (target ≤ 2.0)",
        ms(creates[0]),
        ms(creates[networks - 1]),
        ms(early),
        ms(late),
        late.as_secs_f64() / early.as_secs_f64()
    );
    let before = cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(IDLE_SECONDS)).await;
    let used = cpu_seconds(pid)? - before;
    println!(
        "  idle CPU over {IDLE_SECONDS} s with reconcile every {RECONCILE_SECONDS} s: {:.2} CPU-s = {:.2} % of a core   (target < 1 %)",
        used,
        used / IDLE_SECONDS as f64 * 100.0
    );
    let started = Instant::now();
    bed.host("h28")
        .client()
        .await?
        .list_networks(pb::ListNetworksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?;
    println!(
        "  ListNetworks of {networks} (observes each data path): {:.1} ms",
        ms(started.elapsed())
    );
    Ok(())
}

async fn control_plane(scratch: &Path) -> Result<()> {
    println!("== Control plane: AllocateAddress over the unix socket, durable commits");
    let mut bed = Testbed::new(24)?;
    bed.add_host("h7", "10.1.2.7".parse()?)?;
    // /8 over /24: a /16 slice holds every allocation of the run.
    bed.create_network_everywhere("bench", OVERLAY, "10.1.2.0/24")
        .await?;
    let socket = bed.host("h7").agent.socket.clone();
    agent_allocations(&socket, "bench", 1, 200, "warm").await?;
    round_trip_floor(&socket, 2000)
        .await?
        .report("gRPC round trip, no I/O (ResolveAddress)");
    let agent_1 = agent_allocations(&socket, "bench", 1, 2000, "one")
        .await?
        .report("fan-agent, 1 client");
    let agent_16 = agent_allocations(&socket, "bench", 16, 1000, "sixteen")
        .await?
        .report("fan-agent, 16 clients");
    let local_1 =
        host_local_allocations(1, 200, scratch, "one")?.report("CNI host-local (exec), 1 client");
    let local_16 = host_local_allocations(16, 50, scratch, "sixteen")?
        .report("CNI host-local (exec), 16 clients");
    println!(
        "  ratio fan/host-local: {:.1}x with 1 client, {:.1}x with 16 clients",
        agent_1 / local_1,
        agent_16 / local_16
    );
    drop(bed);

    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    let idle = rss_kib(bed.host("h28").agent.pid().context("agent pid")?)?;
    bed.create_network_everywhere("rss", OVERLAY, "172.30.0.0/16")
        .await?;
    agent_allocations(&bed.host("h28").agent.socket, "rss", 1, 250, "rss").await?;
    let loaded = rss_kib(bed.host("h28").agent.pid().context("agent pid")?)?;
    println!(
        "  agent RSS: {:.1} MiB idle, {:.1} MiB with one network and 250 allocations",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0
    );
    Ok(())
}

async fn data_plane() -> Result<()> {
    println!("\n== Data plane: two hosts on an underlay bridge (veth), eBPF backend");
    let mut bed = Testbed::new(16)?;
    let h28: Ipv4Addr = "172.30.0.28".parse()?;
    let h27: Ipv4Addr = "172.30.0.27".parse()?;
    bed.add_host("h28", h28)?;
    bed.add_host("h27", h27)?;
    // Create on h27 first; h28's create is timed to its first packet through.
    let mut c27 = bed.host("h27").client().await?;
    c27.create_network(pb::CreateNetworkRequest {
        network_id: "fan".into(),
        spec: Some(pb::NetworkSpec {
            overlay: OVERLAY.into(),
            underlay: "172.30.0.0/16".into(),
            ..Default::default()
        }),
    })
    .await?;
    bed.add_container("h27", "fan", "b").await?;
    let b = bed.container("b").address;
    let mut c28 = bed.host("h28").client().await?;
    let t0 = Instant::now();
    c28.create_network(pb::CreateNetworkRequest {
        network_id: "fan".into(),
        spec: Some(pb::NetworkSpec {
            overlay: OVERLAY.into(),
            underlay: "172.30.0.0/16".into(),
            ..Default::default()
        }),
    })
    .await?;
    let created = t0.elapsed();
    let host28 = Netns::existing(&bed.host("h28").netns.name);
    let mut first_packet = None;
    while t0.elapsed() < Duration::from_secs(5) {
        let ok = host28
            .command("ping")
            .args(["-c", "1", "-W", "0.2", "-I", "250.0.28.1", &b.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            first_packet = Some(t0.elapsed());
            break;
        }
    }
    // What one ping exec costs on a ready path, to read the figure above fairly.
    let t = Instant::now();
    host28.exec(
        "ping",
        &["-c", "1", "-W", "1", "-I", "250.0.28.1", &b.to_string()],
    )?;
    let ping_cost = t.elapsed();
    bed.add_container("h28", "fan", "a").await?;
    let a = &bed.container("a").netns;
    let b_ns = &bed.container("b").netns;
    let control = build_control(&bed, [("h28", 28, h28), ("h27", 27, h27)])?;

    let seconds = 3;
    let underlay_bps = throughput(&bed.host("h28").netns, &bed.host("h27").netns, h27, seconds)
        .context("underlay throughput")?;
    if std::env::var_os("FAN_BENCH_DEBUG").is_some() {
        let hosts = [
            ("h28", &bed.host("h28").netns),
            ("h27", &bed.host("h27").netns),
        ];
        for (name, ns) in hosts
            .into_iter()
            .chain([("c28", &control[0]), ("c27", &control[1])])
        {
            for args in [&["route"][..], &["neigh"][..], &["-br", "addr"][..]] {
                eprintln!(
                    "{name} ip {args:?}:\n{}",
                    ns.ip(args).unwrap_or_else(|e| e.to_string())
                );
            }
        }
        eprintln!("ping: {:?}", control[0].ping("10.200.27.2".parse()?, 1));
        eprintln!("ping h27: {:?}", control[0].ping(h27, 1));
    }
    let control_bps = throughput(&control[0], &control[1], "10.200.27.2".parse()?, seconds)
        .context("control throughput")?;
    let fan_bps = throughput(a, b_ns, b, seconds).context("fan throughput")?;
    let underlay_rtt = rtt(&bed.host("h28").netns, h27)?;
    let control_rtt = rtt(&control[0], "10.200.27.2".parse()?)?;
    let fan_rtt = rtt(a, b)?;
    println!("  TCP throughput (iperf3, {seconds} s, median of 3):");
    println!(
        "    underlay host↔host            {:>8.2} Gbit/s",
        underlay_bps / 1e9
    );
    println!(
        "    control (routed, no encap)    {:>8.2} Gbit/s",
        control_bps / 1e9
    );
    println!(
        "    fan container↔container       {:>8.2} Gbit/s",
        fan_bps / 1e9
    );
    println!(
        "    fan/control {:.2}   fan/underlay {:.2}   (target fan/control ≥ 0.95)",
        fan_bps / control_bps,
        fan_bps / underlay_bps
    );
    println!("  RTT (ping, 100 packets, average):");
    println!(
        "    underlay {underlay_rtt:.3} ms   control {control_rtt:.3} ms   fan {fan_rtt:.3} ms"
    );
    println!(
        "    fan/control {:.2}   (target ≤ 1.10)",
        fan_rtt / control_rtt
    );
    match first_packet {
        Some(first) => println!(
            "  CreateNetwork → first packet through: {:.1} ms (the RPC itself {:.1} ms; one ping exec on a ready path costs {:.1} ms of that)",
            first.as_secs_f64() * 1e3,
            created.as_secs_f64() * 1e3,
            ping_cost.as_secs_f64() * 1e3
        ),
        None => println!("  CreateNetwork → first packet through: no packet within 5 s"),
    }
    drop(control);
    Ok(())
}
