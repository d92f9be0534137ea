//! The cross-host data plane end to end: hosts on an underlay bridge, one real
//! agent each (eBPF backend on this kernel), containers addressed by their agent.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use fan_e2e::{fan_spec, get_network, iperf, two_host_fan, IperfServer, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

/// The common shape: hosts .28 and .27, the fan 250/8 over 172.30/16 on both,
/// container "a" on .28 and "b" on .27.
async fn two_hosts_one_container_each() -> Result<Testbed> {
    let spec = fan_spec(OVERLAY, UNDERLAY);
    two_host_fan(&[], &[], [spec.clone(), spec]).await
}

/// One short TCP run each way (at least 1e6 bit/s).
fn tcp_both_ways(client: &Netns, server: &Netns, server_addr: Ipv4Addr) -> Result<()> {
    fan_e2e::tcp_both_ways(client, server, server_addr, 1e6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_ping_and_tcp_across_and_within_hosts() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    bed.add_host("h27", addr("172.30.0.27"))?;
    bed.add_host("h26", addr("172.30.0.26"))?;
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;
    bed.add_container("h28", "fan", "a28").await?;
    bed.add_container("h28", "fan", "b28").await?;
    bed.add_container("h27", "fan", "a27").await?;
    bed.add_container("h26", "fan", "a26").await?;
    let (a28, b28, a27, a26) = (
        bed.container("a28"),
        bed.container("b28"),
        bed.container("a27"),
        bed.container("a26"),
    );
    assert_eq!(a28.address, addr("250.0.28.2"));
    assert_eq!(a27.address, addr("250.0.27.2"));

    // Ping across hosts both ways, between the three hosts, and within one host.
    a28.netns.ping(a27.address, 2)?;
    a27.netns.ping(a28.address, 2)?;
    a26.netns.ping(a28.address, 2)?;
    a27.netns.ping(a26.address, 2)?;
    a28.netns.ping(b28.address, 2)?;
    // TCP both ways across hosts, and on the same host.
    tcp_both_ways(&a28.netns, &a27.netns, a27.address)?;
    tcp_both_ways(&a26.netns, &a28.netns, a28.address)?;
    tcp_both_ways(&a28.netns, &b28.netns, b28.address)?;

    // The counters saw it.
    let counters = bed.counters("h28", "fan").await?;
    assert!(
        counters.encapsulated > 0 && counters.decapsulated > 0,
        "{counters:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_underlay_carries_ipip_between_the_computed_hosts() -> Result<()> {
    let bed = two_hosts_one_container_each().await?;
    let (a, b) = (bed.container("a"), bed.container("b"));

    let host = &bed.host("h28").netns;
    let capture = host
        .command("tcpdump")
        .args([
            "-i", "eth0", "-n", "-l", "-v", "-c", "4", "ip", "proto", "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    a.netns.ping(b.address, 3)?;
    let output = capture.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // Outer header: protocol 4 between the hosts the fan computes; inner packet unchanged.
    assert!(text.contains("proto IPIP (4)"), "{text}");
    assert!(text.contains("172.30.0.28 > 172.30.0.27"), "{text}");
    assert!(text.contains("172.30.0.27 > 172.30.0.28"), "{text}");
    assert!(
        text.contains("250.0.28.2 > 250.0.27.2: ICMP echo request"),
        "{text}"
    );
    assert!(
        text.contains("250.0.27.2 > 250.0.28.2: ICMP echo reply"),
        "{text}"
    );
    assert!(text.contains("ttl 64"), "outer TTL 64: {text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_over_24_fan_gives_each_host_a_16() -> Result<()> {
    let mut bed = Testbed::new(24)?;
    bed.add_host("h7", addr("10.1.2.7"))?;
    bed.add_host("h9", addr("10.1.2.9"))?;
    bed.create_network_everywhere("wide", OVERLAY, "10.1.2.0/24")
        .await?;
    bed.add_container("h7", "wide", "a").await?;
    bed.add_container("h9", "wide", "b").await?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    assert_eq!(a.address, addr("250.7.0.2"));
    assert_eq!(b.address, addr("250.9.0.2"));
    assert_eq!(
        bed.network_status("h7", "wide").await?.slice,
        "250.7.0.0/16"
    );
    a.netns.ping(b.address, 2)?;
    b.netns.ping(a.address, 2)?;
    tcp_both_ways(&a.netns, &b.netns, b.address)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stream_survives_kill9_and_restart_of_both_agents() -> Result<()> {
    let mut bed = two_hosts_one_container_each().await?;
    let b_address = bed.container("b").address;
    let server = IperfServer::start(&bed.container("b").netns, 5201)?;
    let client_ns = bed.container("a").netns.name.clone();

    let stream =
        std::thread::spawn(move || iperf(&Netns::existing(&client_ns), b_address, 5201, 6, false));
    std::thread::sleep(Duration::from_millis(1500));
    for name in ["h28", "h27"] {
        let host = bed.host_mut(name);
        host.agent.kill9()?;
        std::thread::sleep(Duration::from_millis(500));
        host.start_agent()?;
    }
    let result = stream.join().expect("iperf thread")?;
    drop(server);
    assert!(result.intervals.len() >= 5, "{result:?}");
    for (second, bps) in result.intervals.iter().enumerate() {
        assert!(
            *bps > 1e6,
            "second {second} of the stream carried {bps} bit/s: {result:?}"
        );
    }
    // The restarted agents adopted their data path instead of stacking a second one.
    for name in ["h28", "h27"] {
        let filters = bed
            .host(name)
            .netns
            .exec("tc", &["filter", "show", "dev", "eth0", "ingress"])?;
        let text = String::from_utf8_lossy(&filters.stdout);
        assert_eq!(
            text.lines().filter(|l| l.contains("fan_decap")).count(),
            1,
            "{name}: {text}"
        );
        let status = bed.network_status(name, "fan").await?;
        assert_eq!(
            status.state,
            pb::NetworkState::Ready as i32,
            "{name}: {}",
            status.reason
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_network_leaves_nothing_of_ours() -> Result<()> {
    let mut bed = two_hosts_one_container_each().await?;
    bed.container("a")
        .netns
        .ping(bed.container("b").address, 1)?;
    // Unplug the containers (the harness made them), then delete.
    bed.containers.clear();
    let host = bed.host("h28");
    let mut client = host.client().await?;
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            force: true,
            ..Default::default()
        })
        .await?;

    // The containers' namespaces go asynchronously in the kernel, and their
    // veths (the harness's, not ours) with them: wait for that, then only
    // lo and the underlay may be left.
    fan_e2e::eventually(std::time::Duration::from_secs(10), || {
        let links = host.netns.ip(&["-o", "link", "show"])?;
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim())
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        anyhow::ensure!(names == ["lo", "eth0"], "{links}");
        Ok(())
    })?;
    let routes = host
        .netns
        .ip(&["route", "show", "table", "all", "proto", "250"])?;
    assert!(routes.trim().is_empty(), "{routes}");
    for hook in ["ingress", "egress"] {
        let out = host
            .netns
            .exec("tc", &["filter", "show", "dev", "eth0", hook])?;
        assert!(
            out.stdout.is_empty(),
            "{hook}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let qdiscs = host.netns.exec("tc", &["qdisc", "show", "dev", "eth0"])?;
    assert!(
        !String::from_utf8_lossy(&qdiscs.stdout).contains("clsact"),
        "the clsact we added is gone"
    );
    let tables = host.netns.exec("nft", &["list", "tables"])?;
    assert!(
        tables.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&tables.stdout)
    );
    let pins: Vec<_> = std::fs::read_dir(&host.agent.bpffs_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "pinned objects left: {pins:?}");
    // The other host is untouched by our delete and still serves its network.
    get_network(&mut bed.host("h27").client().await?, "fan").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_this_kernel_lacks_is_refused_naming_what_is_missing() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    let mut client = bed.host("h28").client().await?;
    let info = client
        .get_agent_info(pb::GetAgentInfoRequest {})
        .await?
        .into_inner();
    let ipip = info
        .backends
        .iter()
        .find(|b| b.backend == pb::Backend::Ipip as i32)
        .expect("ipip listed");
    if ipip.available {
        // A kernel with ipip.ko (the VM suite covers that case).
        return Ok(());
    }
    let refused = client
        .create_network(pb::CreateNetworkRequest {
            network_id: "fan".into(),
            spec: Some(pb::NetworkSpec {
                overlay: OVERLAY.into(),
                underlay: UNDERLAY.into(),
                backend: pb::Backend::Ipip as i32,
                ..Default::default()
            }),
        })
        .await
        .expect_err("ipip must be refused on a kernel without it");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(fan_e2e::reason_of(&refused), "BACKEND_UNAVAILABLE");
    assert!(
        refused.message().contains("spec.backend"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains(&ipip.reason),
        "{} / {}",
        refused.message(),
        ipip.reason
    );
    // Nothing was made.
    let links = bed.host("h28").netns.ip(&["-o", "link", "show"])?;
    assert_eq!(links.lines().count(), 2, "{links}");
    // auto picks ebpf here, and says so.
    assert_eq!(info.auto_backend, pb::Backend::Ebpf as i32);
    Ok(())
}
