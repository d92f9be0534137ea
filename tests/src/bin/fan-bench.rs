//! `fan-bench`: prints (never asserts) the control- and data-plane figures, each
//! against a baseline measured in the same run on the same machine.
//!
//! - AllocateAddress latency p50/p99 and allocations/s at 1 and 16 concurrent
//!   clients over the unix socket (durable commits), against CNI host-local
//!   (one exec per allocation, as a container runtime calls it);
//! - the agent's RSS with one network and 250 allocations, and the time of a
//!   `/metrics` scrape there;
//! - TCP throughput (iperf3, 1 and 4 streams), RTT and CPU-seconds per GB in
//!   alternating rounds: the fan's fast and slow paths, the control (plain
//!   routing over the same hops), the underlay and kernel VXLAN (see
//!   `bench_dataplane.rs`; FAN_BENCH_ROUNDS, FAN_BENCH_SECONDS);
//! - time from CreateNetwork to the first packet through;
//! - 100 networks on one agent: RSS, first vs last create time, idle CPU;
//! - `docker run` with its network set up by the fan IPAM plugin
//!   (`fan-docker-ipam`) against Docker's built-in IPAM, same daemon, p50
//!   (when docker.io is installed; `fan-bench docker` runs only this).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{Netns, Testbed};
use fan_proto::v1 as pb;

#[path = "../bench_dataplane.rs"]
mod bench_dataplane;

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
    if (only.is_empty() && Path::new(DOCKERD).exists()) || only == "docker" {
        docker_ipam(scratch).await?;
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
    bed.add_host_with(
        "h28",
        "172.30.0.28".parse()?,
        &["--metrics-listen", METRICS_LISTEN],
        &[],
    )?;
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
    metrics_scrapes(&bed.host("h28").netns, 50)?;
    // The scrape reads each network's status as GetNetwork does: its floor.
    let mut client = bed.host("h28").client().await?;
    let mut latencies = Vec::with_capacity(50);
    for _ in 0..50 {
        let t = Instant::now();
        client
            .get_network(pb::GetNetworkRequest {
                network_id: "rss".into(),
            })
            .await
            .map_err(|s| anyhow!("get network: {s}"))?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "  GetNetwork (the same status read), baseline: p50 {:.3} ms   p99 {:.3} ms  (n=50)",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Where the RSS host's agent serves metrics (inside its namespace).
const METRICS_LISTEN: &str = "127.0.0.1:9464";

/// `/metrics` scrape time (curl's own request time, process start excluded)
/// with the RSS host's one network and 250 allocations.
fn metrics_scrapes(host: &Netns, scrapes: usize) -> Result<()> {
    let url = format!("http://{METRICS_LISTEN}/metrics");
    let mut latencies = Vec::with_capacity(scrapes);
    let mut bytes = 0.0;
    for _ in 0..scrapes {
        let output = host.exec(
            "curl",
            &[
                "-sS",
                "-f",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download}",
                &url,
            ],
        )?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (time, size) = text
            .split_once(' ')
            .ok_or_else(|| anyhow!("curl printed {text:?}"))?;
        latencies.push(Duration::from_secs_f64(time.trim().parse()?));
        bytes = size.trim().parse()?;
    }
    latencies.sort();
    println!(
        "  GET /metrics, 1 network, 250 allocations: p50 {:.3} ms   p99 {:.3} ms  ({bytes:.0} bytes, n={scrapes})",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
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
    match first_packet {
        Some(first) => println!(
            "  CreateNetwork → first packet through: {:.1} ms (the RPC itself {:.1} ms; one ping exec on a ready path costs {:.1} ms of that)",
            first.as_secs_f64() * 1e3,
            created.as_secs_f64() * 1e3,
            ping_cost.as_secs_f64() * 1e3
        ),
        None => println!("  CreateNetwork → first packet through: no packet within 5 s"),
    }
    drop(bed);
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    bench_dataplane::compare(
        env("FAN_BENCH_ROUNDS", 5) as usize,
        env("FAN_BENCH_SECONDS", 3),
    )
    .await
}

const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";

/// Processes the Docker section started, killed (by pid) on drop with what
/// they left mounted under the scratch directory.
struct DockerBench {
    children: Vec<std::process::Child>,
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Drop for DockerBench {
    fn drop(&mut self) {
        let sock = format!("unix://{}/docker.sock", self.dir.display());
        if let Ok(out) = Command::new(DOCKER)
            .args(["-H", &sock, "ps", "-aq"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new(DOCKER)
                    .args(["-H", &sock, "rm", "-f", id])
                    .output();
            }
        }
        while let Some(mut c) = self.children.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let prefix = format!("{}/", self.dir.display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `docker run --rm … true` on a network whose addresses come from the fan
/// IPAM plugin, and on one with Docker's built-in IPAM, interleaved.
async fn docker_ipam(scratch: &Path) -> Result<()> {
    println!("\n== Docker: docker run --rm (network set up and torn down), fan IPAM plugin vs built-in IPAM");
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    bed.create_network_everywhere("fan-250", OVERLAY, "172.30.0.0/16")
        .await?;
    let host = bed.host("h28");
    let dir = scratch.join("docker");
    std::fs::create_dir_all(dir.join("rootfs/bin"))?;
    let plugin = format!("{}-bench", bed.id);
    let mut guard = DockerBench {
        children: Vec::new(),
        dir: dir.clone(),
        socket: format!("/run/docker/plugins/{plugin}.sock").into(),
    };
    let bin = fan_e2e::bin_dir();
    guard.children.push(
        Command::new(bin.join("fan-docker-ipam"))
            .arg("--agent")
            .arg(format!("unix://{}", host.agent.socket.display()))
            .arg("--socket")
            .arg(&guard.socket)
            .stderr(Stdio::null())
            .spawn()
            .context("spawn fan-docker-ipam (cargo build --release --workspace --bins)")?,
    );
    let d = dir.display().to_string();
    let sock = format!("unix://{d}/docker.sock");
    guard.children.push(
        host.netns
            .command(DOCKERD)
            .args([
                "--data-root",
                &format!("{d}/data"),
                "--exec-root",
                &format!("{d}/x"),
            ])
            .args(["-H", &sock, "--pidfile", &format!("{d}/docker.pid")])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--storage-driver",
                "vfs",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log"))?)
            .spawn()?,
    );
    let docker = |args: &[&str]| -> Result<String> {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(&sock)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker(&["version"]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "dockerd did not start: see {}",
                dir.join("dockerd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin/true"))?;
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar failed");
    }
    docker(&["import", &tar.to_string_lossy(), "fanbox:bench"])?;
    docker(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--ipam-driver",
        &plugin,
        "--ipam-opt",
        "fan-network=fan-250",
        "--subnet",
        "250.0.28.0/24",
        "-o",
        "com.docker.network.bridge.name=fan-250",
        "-o",
        "com.docker.network.driver.mtu=1480",
        "-o",
        "com.docker.network.bridge.enable_ip_masquerade=false",
        "fan",
    ])?;
    docker(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        "10.99.0.0/24",
        "-o",
        "com.docker.network.bridge.name=dkbench0",
        "-o",
        "com.docker.network.driver.mtu=1480",
        "builtin",
    ])?;
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let rounds = 20;
    for i in 0..=rounds {
        for (k, net) in ["fan", "builtin"].iter().enumerate() {
            let t = Instant::now();
            docker(&["run", "--rm", "--network", net, "fanbox:bench", "true"])?;
            // Round 0 warms the image and the plugin connection up.
            if i > 0 {
                times[k].push(t.elapsed());
            }
        }
    }
    for t in &mut times {
        t.sort();
    }
    let p50 = |t: &[Duration]| percentile(t, 50.0).as_secs_f64() * 1e3;
    println!(
        "  {:<38} p50 {:>8.1} ms   p90 {:>8.1} ms  (n={rounds})",
        "fan IPAM plugin (fan-docker-ipam)",
        p50(&times[0]),
        percentile(&times[0], 90.0).as_secs_f64() * 1e3
    );
    println!(
        "  {:<38} p50 {:>8.1} ms   p90 {:>8.1} ms  (n={rounds})",
        "Docker's built-in IPAM",
        p50(&times[1]),
        percentile(&times[1], 90.0).as_secs_f64() * 1e3
    );
    println!(
        "  {:<38} {:>+8.1} ms at p50",
        "plugin - built-in",
        p50(&times[0]) - p50(&times[1])
    );
    drop(guard);
    drop(bed);
    Ok(())
}
