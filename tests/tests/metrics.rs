//! `fan-agent --metrics-listen`: real agents in namespaces, scraped over
//! HTTP from inside the host namespace, the output checked by Debian's
//! `promtool check metrics` and by series values, and scraped by a real
//! `prometheus` server whose query API must return the agent's series.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::pki::Pki;
use fan_e2e::{binary, eventually, Client, Netns, Testbed};
use fan_proto::v1 as pb;

const METRICS: &str = "127.0.0.1:9464";
const TLS_LISTEN: &str = "172.30.0.28:7443";
const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn addr(s: &str) -> Ipv4Addr {
    s.parse().expect("address literal")
}

/// `curl` inside `netns`: (HTTP status, body).
fn http(netns: &Netns, method: &str, url: &str) -> Result<(u16, String)> {
    let mut args = vec!["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"];
    match method {
        "HEAD" => args.push("-I"),
        _ => args.extend(["-X", method]),
    }
    args.push(url);
    let output = netns.exec("curl", &args)?;
    let text = String::from_utf8(output.stdout).context("curl output is not UTF-8")?;
    let (body, code) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow!("no status from curl: {text}"))?;
    Ok((code.trim().parse()?, body.to_owned()))
}

fn scrape(netns: &Netns) -> Result<String> {
    let (code, body) = http(netns, "GET", &format!("http://{METRICS}/metrics"))?;
    if code != 200 {
        bail!("GET /metrics: HTTP {code}: {body}");
    }
    Ok(body)
}

/// Runs `promtool check metrics` on `text`; fails with what it reports.
fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool (scripts/install-deps.sh installs Debian's prometheus)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("promtool stdin"))?
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "promtool check metrics failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The value of the series `name` whose labels include every pair of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            all.then(|| value.parse().ok()).flatten()
        })
}

fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    value(text, name, labels).ok_or_else(|| anyhow!("no series {name}{labels:?} in:\n{text}"))
}

async fn allocate(client: &mut Client, network: &str, owner: &str) -> Result<(), tonic::Status> {
    fan_e2e::allocate_eth0(client, network, owner)
        .await
        .map(|_| ())
}

const RPC: (&str, &str) = ("service", "fan.agent.v1.FanAgentService");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_allocations_rpcs_and_traffic_and_pass_promtool() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host_with(
        "h28",
        addr("172.30.0.28"),
        &["--metrics-listen", METRICS],
        &[],
    )?;
    bed.add_host("h27", addr("172.30.0.27"))?;
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;
    bed.add_container("h28", "fan", "a").await?;
    bed.add_container("h27", "fan", "b").await?;
    let b = bed.container("b").address;
    bed.container("a").netns.ping(b, 3)?;

    let mut client = bed.host("h28").client().await?;
    for i in 0..5 {
        allocate(&mut client, "fan", &format!("{}-extra{i}", bed.id))
            .await
            .map_err(|s| anyhow!("allocate: {s}"))?;
    }
    let missing = allocate(&mut client, "no-such-network", "x").await;
    assert_eq!(missing.map_err(|s| s.code()), Err(tonic::Code::NotFound));
    let status = fan_e2e::network_status(&mut client, "fan").await?;

    // Health: a unary Check and a Watch stream (counted when it starts).
    let socket = bed.host("h28").agent.socket.clone();
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(fan_e2e::unix_channel(&socket).await?);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    health.check(request.clone()).await?;
    let mut watch = health.watch(request).await?.into_inner();
    watch.message().await?;
    drop(watch);
    // A method the agent does not serve is counted under `unknown`, so
    // callers cannot create series at will.
    let mut grpc = tonic::client::Grpc::new(fan_e2e::unix_channel(&socket).await?);
    grpc.ready().await?;
    let unknown = grpc
        .unary::<(), (), _>(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/fan.agent.v1.FanAgentService/NoSuchMethod",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(
        unknown.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unimplemented)
    );

    let host = &bed.host("h28").netns;
    let text = scrape(host)?;
    promtool_check(&text)?;

    let net = ("network", "fan");
    assert_eq!(must(&text, "fan_allocations", &[net])?, 6.0, "a + 5 extra");
    assert_eq!(
        must(&text, "fan_allocations_capacity", &[net])?,
        f64::from(status.capacity)
    );
    assert_eq!(
        must(&text, "fan_network_state", &[net, ("state", "ready")])?,
        1.0
    );
    assert_eq!(
        must(&text, "fan_network_state", &[net, ("state", "failed")])?,
        0.0
    );
    assert_eq!(must(&text, "fan_networks", &[])?, 1.0);
    let ok = [RPC, ("method", "AllocateAddress"), ("code", "OK")];
    assert!(must(&text, "fan_grpc_requests_total", &ok)? >= 6.0);
    assert!(must(&text, "fan_grpc_request_duration_seconds_count", &ok)? >= 6.0);
    let not_found = [RPC, ("method", "AllocateAddress"), ("code", "NOT_FOUND")];
    assert_eq!(must(&text, "fan_grpc_requests_total", &not_found)?, 1.0);
    let health = ("service", "grpc.health.v1.Health");
    assert!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[health, ("method", "Check"), ("code", "OK")]
        )? >= 1.0
    );
    assert!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[health, ("method", "Watch"), ("code", "OK")]
        )? >= 1.0
    );
    assert_eq!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[
                ("service", "unknown"),
                ("method", "unknown"),
                ("code", "UNIMPLEMENTED")
            ]
        )?,
        1.0
    );
    // Three echo requests went out encapsulated, three replies came back.
    let counters = status
        .counters
        .ok_or_else(|| anyhow!("the backend keeps no counters"))?;
    let encapsulated = must(&text, "fan_dataplane_encapsulated_packets_total", &[net])?;
    let decapsulated = must(&text, "fan_dataplane_decapsulated_packets_total", &[net])?;
    assert!(encapsulated >= 3.0 && encapsulated >= counters.encapsulated as f64);
    assert!(decapsulated >= 3.0 && decapsulated >= counters.decapsulated as f64);
    for reason in ["spoofed", "fragment", "spoofed_egress", "other"] {
        must(
            &text,
            "fan_dataplane_dropped_packets_total",
            &[net, ("reason", reason)],
        )?;
    }
    assert!(must(&text, "fan_store_commit_duration_seconds_count", &[])? >= 6.0);
    assert_eq!(must(&text, "fan_store_commit_failures_total", &[])?, 0.0);
    assert!(must(&text, "fan_reconcile_runs_total", &[])? >= 1.0);
    assert_eq!(
        must(
            &text,
            "fan_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )?,
        1.0
    );

    // A later scrape sees the release.
    client
        .release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Owner(pb::Owner {
                    container_id: format!("{}-extra0", bed.id),
                    interface: "eth0".into(),
                })),
            }),
            ..Default::default()
        })
        .await?;
    assert_eq!(must(&scrape(host)?, "fan_allocations", &[net])?, 5.0);

    // Read-only: GET and HEAD of /metrics, nothing else.
    let url = format!("http://{METRICS}/metrics");
    assert_eq!(http(host, "HEAD", &url)?.0, 200);
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(http(host, method, &url)?.0, 405, "{method}");
    }
    for path in ["/", "/metrics/x", "/debug/pprof"] {
        assert_eq!(
            http(host, "GET", &format!("http://{METRICS}{path}"))?.0,
            404,
            "{path}"
        );
    }
    // An oversized request head is refused, and the agent keeps serving.
    let big = format!("X-Big: {}", "a".repeat(16 * 1024));
    let output = host.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            &url,
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "431");
    scrape(host)?;

    // Many idle connections at once (more than the listener admits) hold
    // no gRPC call up, and scrapes work again once they are gone.
    let mut holder = host
        .command("python3")
        .args([
            "-c",
            "import socket, sys\n\
             conns = [socket.create_connection(('127.0.0.1', 9464)) for _ in range(64)]\n\
             print('open', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().ok_or_else(|| anyhow!("stdout"))?),
        &mut line,
    )?;
    assert_eq!(line.trim(), "open");
    allocate(&mut client, "fan", &format!("{}-while-held", bed.id))
        .await
        .map_err(|s| anyhow!("allocate while the metrics port is flooded: {s}"))?;
    drop(holder.stdin.take());
    holder.wait()?;
    let text = eventually(Duration::from_secs(30), || scrape(host))?;
    assert_eq!(must(&text, "fan_allocations", &[net])?, 6.0);

    // Off by default: the agent without the flag listens on no TCP port.
    let listening = bed.host("h27").netns.exec("ss", &["-Hltn"])?;
    assert_eq!(String::from_utf8_lossy(&listening.stdout).trim(), "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_and_check_finds_drifts_are_counted() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    // No reconcile timer: only the start-up pass repairs, so each step is
    // deterministic.
    bed.add_host_with(
        "h28",
        addr("172.30.0.28"),
        &["--metrics-listen", METRICS, "--reconcile-interval", "0"],
        &[],
    )?;
    let network = bed
        .create_network_on("h28", "fan", OVERLAY, UNDERLAY, pb::Backend::Unspecified)
        .await?;
    let bridge = network
        .status
        .map(|s| s.bridge)
        .ok_or_else(|| anyhow!("no status"))?;
    // Take down the agent's own bridge: CheckNetwork reports it...
    bed.host("h28")
        .netns
        .ip(&["link", "set", &bridge, "down"])?;
    let mut client = bed.host("h28").client().await?;
    let drifts = client
        .check_network(pb::CheckNetworkRequest {
            network_id: "fan".into(),
        })
        .await?
        .into_inner()
        .drifts;
    assert!(!drifts.is_empty(), "a bridge that is down is a drift");
    let text = scrape(&bed.host("h28").netns)?;
    promtool_check(&text)?;
    assert_eq!(
        must(&text, "fan_drifts_found_total", &[("source", "check")])?,
        drifts.len() as f64
    );
    assert_eq!(must(&text, "fan_drifts_repaired_total", &[])?, 0.0);
    assert_eq!(must(&text, "fan_reconcile_runs_total", &[])?, 1.0);
    assert_eq!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[RPC, ("method", "CheckNetwork"), ("code", "OK")]
        )?,
        1.0
    );

    // ...and the start-up reconcile pass of the restarted agent repairs it.
    drop(client);
    let h28 = bed.host_mut("h28");
    h28.agent.terminate()?;
    h28.start_agent()?;
    let host = &bed.host("h28").netns;
    let text = eventually(Duration::from_secs(30), || {
        let text = scrape(host)?;
        // The pass is counted when it ends, after its repairs.
        if value(&text, "fan_drifts_repaired_total", &[]).unwrap_or(0.0) < 1.0
            || value(&text, "fan_reconcile_runs_total", &[]).unwrap_or(0.0) < 1.0
        {
            bail!("no repair or finished pass counted yet");
        }
        Ok(text)
    })?;
    promtool_check(&text)?;
    let found = must(&text, "fan_drifts_found_total", &[("source", "reconcile")])?;
    assert!(found >= 1.0);
    assert_eq!(must(&text, "fan_drifts_repaired_total", &[])?, found);
    assert_eq!(must(&text, "fan_reconcile_runs_total", &[])?, 1.0);
    let link = host.ip(&["-br", "link", "show", &bridge])?;
    assert!(link.contains("UP"), "bridge repaired: {link}");
    Ok(())
}

/// A `prometheus` server in a namespace; killed (and its data removed) on drop.
struct PrometheusServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_server_scrapes_the_agent() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    // The mTLS listener too: calls on either listener are counted.
    let pki = Pki::new(bed.dir.join("pki"), "172.30.0.28")?;
    let mut flags = pki.agent_flags(TLS_LISTEN);
    flags.extend(["--metrics-listen".to_owned(), METRICS.to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    bed.add_host_with("h28", addr("172.30.0.28"), &flags, &[])?;
    bed.create_network_on("h28", "fan", OVERLAY, UNDERLAY, pb::Backend::Unspecified)
        .await?;
    let mut client = bed.host("h28").client().await?;
    for i in 0..3 {
        allocate(&mut client, "fan", &format!("{}-c{i}", bed.id))
            .await
            .map_err(|s| anyhow!("allocate: {s}"))?;
    }

    // GetAgentInfo over TCP with a client certificate, never over the socket.
    let info = bed
        .host("h28")
        .netns
        .command(binary("fan-client")?)
        .env_remove("FAN_AGENT")
        .args([
            "--timeout",
            "10",
            "--agent",
            &format!("https://{TLS_LISTEN}"),
        ])
        .args(["--tls-ca", &pki.file("ca.pem")])
        .args([
            "--tls-cert",
            &pki.file("alice.pem"),
            "--tls-key",
            &pki.file("alice.key"),
        ])
        .arg("info")
        .output()?;
    assert!(
        info.status.success(),
        "fan-client info over mTLS: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let text = scrape(&bed.host("h28").netns)?;
    assert!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[RPC, ("method", "GetAgentInfo"), ("code", "OK")]
        )? >= 1.0
    );

    let dir = bed.dir.join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: fan-agent\n    static_configs:\n      - targets: ['{METRICS}']\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let host = &bed.host("h28").netns;
    // Its own namespace: port 9090 there is this test's alone.
    let child = host
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawn prometheus (scripts/install-deps.sh installs Debian's prometheus)")?;
    let server = PrometheusServer {
        child,
        dir: dir.clone(),
    };

    let found = eventually(Duration::from_secs(90), || {
        let (code, body) = http(
            host,
            "GET",
            "http://127.0.0.1:9090/api/v1/query?query=fan_allocations",
        )?;
        if code != 200 {
            bail!("query: HTTP {code}: {body}");
        }
        let reply: serde_json::Value = serde_json::from_str(&body)?;
        let results = reply["data"]["result"]
            .as_array()
            .ok_or_else(|| anyhow!("no result in {body}"))?;
        results
            .iter()
            .find(|r| r["metric"]["network"] == "fan")
            .cloned()
            .ok_or_else(|| anyhow!("no fan_allocations series yet: {body}"))
    })
    .with_context(|| {
        format!(
            "prometheus log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    })?;
    assert_eq!(found["metric"]["job"], "fan-agent");
    assert_eq!(found["metric"]["instance"], METRICS);
    assert_eq!(found["value"][1], "3");

    // The scrape itself is healthy in Prometheus's own eyes.
    let (_, body) = http(host, "GET", "http://127.0.0.1:9090/api/v1/query?query=up")?;
    let reply: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(reply["data"]["result"][0]["value"][1], "1", "{body}");
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commits_on_a_full_disk_are_counted() -> Result<()> {
    // Declared first, dropped last: the agent is gone before the unmount.
    let tmpfs = fan_e2e::Tmpfs::mount("fan-e2e-metrics", "4m")?;
    let mut bed = Testbed::new(16)?;
    let host = bed.add_host_with(
        "h28",
        addr("172.30.0.28"),
        &["--metrics-listen", METRICS],
        &[],
    )?;
    host.move_state_to(tmpfs.dir.join("state")).await?;
    let mut client = host.client().await?;
    fan_e2e::create_network(
        &mut client,
        "the agent",
        "fan",
        fan_e2e::fan_spec(OVERLAY, UNDERLAY),
    )
    .await?;
    tmpfs.fill()?;
    // The database may still have a few free pages: allocate until a commit needs more.
    let mut refused = 0;
    for i in 0..250 {
        if let Err(status) = allocate(&mut client, "fan", &format!("full{i}")).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            refused += 1;
            break;
        }
    }
    assert_eq!(refused, 1, "no allocation failed on a full disk");
    let text = scrape(&host.netns)?;
    promtool_check(&text)?;
    assert!(must(&text, "fan_store_commit_failures_total", &[])? >= 1.0);
    assert!(
        must(
            &text,
            "fan_grpc_requests_total",
            &[RPC, ("method", "AllocateAddress"), ("code", "UNAVAILABLE")]
        )? >= 1.0
    );
    // Per-network figures still come from memory while the disk is full.
    let allocated = must(&text, "fan_allocations", &[("network", "fan")])?;
    let ok = must(
        &text,
        "fan_grpc_requests_total",
        &[RPC, ("method", "AllocateAddress"), ("code", "OK")],
    )
    .unwrap_or(0.0);
    assert_eq!(
        allocated, ok,
        "acknowledged allocations are the ones counted"
    );
    drop(bed);
    drop(tmpfs);
    Ok(())
}
