//! Drift repair, readiness and systemd notification against real agents.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use anyhow::Result;
use fan_e2e::{serving, wait_until, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
/// Agent arguments: no reconcile timer (drift stays until something repairs it).
const NO_RECONCILE: &[&str] = &["--reconcile-interval", "0"];

fn spec() -> pb::NetworkSpec {
    pb::NetworkSpec {
        overlay: OVERLAY.into(),
        underlay: UNDERLAY.into(),
        ..Default::default()
    }
}

async fn drifts(client: &mut fan_e2e::Client) -> Result<Vec<pb::Drift>> {
    fan_e2e::check_network(client, "fan").await
}

/// Each piece a network needs: "what | a command that breaks it by hand |
/// what CheckNetwork's drift names".
const BREAKAGES: &[&str] = &[
    "gateway address | ip addr del 250.0.28.1/24 dev fan-250 | 250.0.28.1",
    "bridge MTU | ip link set fan-250 mtu 1400 | fan-250",
    "bridge down | ip link set fan-250 down | fan-250",
    "bridge | ip link del fan-250 | fan-250",
    "overlay route | ip route del 250.0.0.0/8 proto 250 | route",
    "tunnel device | ip link del fantun1 | fantun1",
    "nft table | nft delete table ip fan_fan | nft",
    "decap filter | tc filter del dev eth0 ingress | eth0",
    // Caught although the encap and decap filters are intact (the
    // reconcile's keep-without-loading shortcut checks all three).
    "fast-path filter | tc filter del dev fan-250 ingress | fan_fastpath",
    "ip_forward | sysctl -qw net.ipv4.ip_forward=0 | ip_forward",
];

/// [`BREAKAGES`] as (what, command line, what the drift names).
fn breakages() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    BREAKAGES
        .iter()
        .map(|row| {
            let fields: Vec<&str> = row.split(" | ").collect();
            let [what, command, names] = fields[..] else {
                panic!("three fields in {row:?}");
            };
            (what, command.split_whitespace().collect(), names)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_drift_and_reconcile_repairs_it() -> Result<()> {
    // No timer first: CheckNetwork must see the drift before anything repairs it.
    let mut bed = fan_e2e::one_far_container(NO_RECONCILE).await?;
    let far = bed.container("far").address;
    let mut client = bed.host("h28").client().await?;
    assert!(drifts(&mut client).await?.is_empty());

    for (what, command, names) in breakages() {
        bed.host("h28").netns.exec(command[0], &command[1..])?;
        let found = drifts(&mut client).await?;
        assert!(
            found
                .iter()
                .any(|d| d.object.contains(names) || d.expected.contains(names)),
            "{what}: CheckNetwork did not report it: {found:?}"
        );
        let status = fan_e2e::network_status(&mut client, "fan").await?;
        assert_eq!(status.state, pb::NetworkState::Degraded as i32, "{what}");
        assert!(
            !status.reason.is_empty(),
            "{what}: a degraded network says why"
        );
        // Re-creating with the same spec is the on-request repair.
        client
            .create_network(pb::CreateNetworkRequest {
                network_id: "fan".into(),
                spec: Some(spec()),
            })
            .await?;
        let left = drifts(&mut client).await?;
        assert!(
            left.is_empty(),
            "{what}: still drifting after repair: {left:?}"
        );
        bed.host("h28").netns.exec(
            "ping",
            &["-c", "1", "-W", "2", "-I", "250.0.28.1", &far.to_string()],
        )?;
    }

    // With the timer on, the agent repairs by itself: break everything at once.
    let host = bed.host_mut("h28");
    host.agent.kill9()?;
    host.agent.extra_args = vec!["--reconcile-interval".into(), "1".into()];
    host.start_agent()?;
    let mut client = bed.host("h28").client().await?;
    for (_, command, _) in breakages() {
        // Some breakages remove what another already removed; that is fine.
        let _ = bed.host("h28").netns.exec(command[0], &command[1..]);
    }
    wait_until(
        Duration::from_secs(10),
        "the periodic reconcile to repair every drift",
        || {
            let mut client = client.clone();
            async move { Ok(drifts(&mut client).await?.is_empty()) }
        },
    )
    .await?;
    assert!(drifts(&mut client).await?.is_empty());
    bed.host("h28").netns.exec(
        "ping",
        &["-c", "1", "-W", "2", "-I", "250.0.28.1", &far.to_string()],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_a_network_cannot_be_programmed() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host_with(
        "h28",
        "172.30.0.28".parse()?,
        &["--reconcile-interval", "1"],
        &[],
    )?;
    let socket = bed.host("h28").agent.socket.clone();
    // No network yet: nothing to program, so ready.
    wait_until(Duration::from_secs(5), "SERVING with no networks", || {
        serving(&socket)
    })
    .await?;
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;
    assert!(serving(&socket).await?);

    // Someone else's device takes the tunnel's name: apply must refuse to adopt it.
    let host = &bed.host("h28").netns;
    host.exec("ip", &["link", "del", "fantun1"])?;
    host.exec(
        "ip",
        &[
            "link", "add", "fantun1", "type", "veth", "peer", "name", "squatter",
        ],
    )?;
    wait_until(Duration::from_secs(5), "NOT_SERVING", || {
        let socket = socket.clone();
        async move { Ok(!serving(&socket).await?) }
    })
    .await?;
    let mut client = bed.host("h28").client().await?;
    let status = fan_e2e::network_status(&mut client, "fan").await?;
    assert_ne!(status.state, pb::NetworkState::Ready as i32);
    assert!(
        status.reason.contains("fantun1"),
        "the reason names the device: {}",
        status.reason
    );
    // The foreign device is left alone.
    host.exec("ip", &["link", "show", "squatter"])?;

    host.exec("ip", &["link", "del", "fantun1"])?;
    wait_until(Duration::from_secs(5), "SERVING again", || serving(&socket)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_only_with_the_data_path_programmed() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    let notify_path = bed.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(20)))?;
    let notify_env = notify_path.to_string_lossy().into_owned();
    bed.add_host_with(
        "h28",
        "172.30.0.28".parse()?,
        &[],
        &[("NOTIFY_SOCKET", &notify_env)],
    )?;
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;

    // A restart with a persisted network: READY=1 comes only once it is programmed.
    let host = bed.host_mut("h28");
    host.agent.terminate()?;
    let n = notify.recv(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    // Take the data path down while the agent is stopped, so "programmed" means re-made.
    host.netns
        .exec("tc", &["filter", "del", "dev", "eth0", "ingress"])?;
    host.start_agent()?;
    let n = notify.recv(&mut buf)?;
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message}");
    let filters = bed
        .host("h28")
        .netns
        .exec("tc", &["filter", "show", "dev", "eth0", "ingress"])?;
    assert!(
        String::from_utf8_lossy(&filters.stdout).contains("fan_decap"),
        "READY=1 was sent before the decap filter was back"
    );
    Ok(())
}
