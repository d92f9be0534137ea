//! Containers plugged with netkit pairs (Linux 6.7+), real agents, two
//! hosts on an underlay bridge.
//!
//! The agents learn a netkit primary on the fan bridge as they learn a veth
//! port, and run `fan_fastpath` inside the container's transmit (attached
//! as `BPF_NETKIT_PEER`) instead of on the port's tc ingress: a container's
//! packet for a remote slice goes from its own `sendmsg` to the underlay
//! device without entering the host's receive path. Decapsulated packets
//! go into the container with `bpf_redirect_peer`, which netkit supports
//! as veth does. What the program passes (the outside, TTL 1, too big)
//! enters the host as from a veth: the bridge and the slow path.
//!
//! Skipped, with a message, on a kernel without netkit: this machine's
//! 6.18 is built without it. `make test-kernels` runs this file under
//! Debian's 6.12 (bookworm-backports) in a VM.

use anyhow::{bail, Result};
use fan_dataplane::ebpf::maps::slot;
use fan_dataplane::ebpf::netkit;
use fan_e2e::{fan_spec, gso, two_host_fan_on, Netns, PortKind, Testbed};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

/// Whether `fan_fastpath` is attached on the tc ingress of `device`.
fn tc_fast_path(host: &Netns, device: &str) -> Result<bool> {
    let out = host.exec("tc", &["filter", "show", "dev", device, "ingress"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("fan_fastpath"))
}

fn skip_without_netkit() -> Result<bool> {
    if !fan_e2e::netkit_supported()? {
        eprintln!("skipped: this kernel creates no netkit devices (CONFIG_NETKIT, Linux 6.7+)");
        return Ok(true);
    }
    Ok(false)
}

async fn netkit_hosts() -> Result<Testbed> {
    let fast_path_on = [("FAN_AGENT_NO_FAST_PATH", "false")];
    let spec = fan_spec(OVERLAY, UNDERLAY);
    two_host_fan_on(PortKind::Netkit, &[], &fast_path_on, [spec.clone(), spec]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netkit_containers_take_the_fast_path_in_their_own_transmit() -> Result<()> {
    if skip_without_netkit()? {
        return Ok(());
    }
    let mut bed = netkit_hosts().await?;
    for (host, container) in [("h28", "a"), ("h27", "b")] {
        let port = bed.container(container).port.clone();
        let netns = &bed.host(host).netns;
        fan_e2e::netkit_peer_program_becomes(netns, &port, true)?;
        assert!(
            !tc_fast_path(netns, &port)?,
            "tc filter on netkit port {port}"
        );
    }
    let fast =
        |bed: &Testbed, host: &str| bed.pinned_counter(host, "fan", slot::FAST_PATH_ENCAPSULATED);
    let redirected =
        |bed: &Testbed, host: &str| bed.pinned_counter(host, "fan", slot::PEER_REDIRECTED);
    let (t28, t27, p27) = (
        fast(&bed, "h28")?,
        fast(&bed, "h27")?,
        redirected(&bed, "h27")?,
    );
    {
        let (a, b) = (bed.container("a"), bed.container("b"));
        tokio::task::block_in_place(|| -> Result<()> {
            a.netns.ping(b.address, 3)?;
            fan_e2e::tcp_both_ways(&a.netns, &b.netns, b.address, 1e6)
        })?;
    }
    // Both directions left through the programs in the containers' transmit.
    let (f28, f27) = (fast(&bed, "h28")? - t28, fast(&bed, "h27")? - t27);
    assert!(
        f28 > 100 && f27 > 100,
        "fast path packets: h28 {f28}, h27 {f27}"
    );
    // And arrived straight in the netkit container.
    let into_b = redirected(&bed, "h27")? - p27;
    assert!(into_b > 100, "{into_b} redirected into b");

    let port = bed.container("a").port.clone();
    // The agent with the fast path off takes its program off the peer hook
    // and the slow path (netkit passes, the bridge, the tunnel) carries on.
    {
        let host = bed.host_mut("h28");
        host.agent.extra_args.push("--no-fast-path".into());
        host.agent.terminate()?;
        host.start_agent()?;
    }
    fan_e2e::netkit_peer_program_becomes(&bed.host("h28").netns, &port, false)?;
    let before = bed.counters("h28", "fan").await?;
    let t28 = fast(&bed, "h28")?;
    {
        let (a, b) = (bed.container("a"), bed.container("b"));
        tokio::task::block_in_place(|| -> Result<()> {
            a.netns.ping(b.address, 3)?;
            fan_e2e::tcp_both_ways(&a.netns, &b.netns, b.address, 1e6)
        })?;
    }
    let after = bed.counters("h28", "fan").await?;
    assert_eq!(fast(&bed, "h28")?, t28);
    assert!(
        after.encapsulated - before.encapsulated > 100,
        "{before:?} -> {after:?}"
    );

    // Back on: attached again, and carrying the traffic.
    {
        let host = bed.host_mut("h28");
        host.agent.extra_args.clear();
        host.agent.terminate()?;
        host.start_agent()?;
    }
    fan_e2e::netkit_peer_program_becomes(&bed.host("h28").netns, &port, true)?;
    let t28 = fast(&bed, "h28")?;
    let (a, b) = (bed.container("a"), bed.container("b"));
    tokio::task::block_in_place(|| a.netns.ping(b.address, 3))?;
    assert_eq!(fast(&bed, "h28")? - t28, 3);

    // No drift while it runs; taken off behind the agent's back, it is.
    let mut client = bed.host("h28").client().await?;
    let found = fan_e2e::check_network(&mut client, "fan").await?;
    assert!(found.is_empty(), "{found:?}");
    let gone = {
        let port = port.clone();
        bed.host("h28").netns.block_on(move || async move {
            let nl = fan_dataplane::netlink::Netlink::new()?;
            let link = nl.link_by_name(&port).await?.expect("port");
            anyhow::Ok(netkit::detach(link.index)?)
        })?
    };
    assert_eq!(gone, 1);
    let found = fan_e2e::check_network(&mut client, "fan").await?;
    assert!(
        found.iter().any(
            |d| d.object == format!("netkit peer program fan_fastpath on {port}")
                && d.observed == "absent"
        ),
        "{found:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_netkit_port_that_is_the_peer_end_gets_the_tc_filter() -> Result<()> {
    if skip_without_netkit()? {
        return Ok(());
    }
    let bed = netkit_hosts().await?;
    let h28 = &bed.host("h28").netns;
    let bridge = bed.network_status("h28", "fan").await?.bridge;
    // The pair the other way round: the primary (which takes programs) in
    // the container, its peer on the host's bridge. The agent cannot attach
    // to the peer end's hook; the port gets the tc ingress filter a veth gets.
    let stray = Netns::new(&format!("{}-rev", bed.id))?;
    let port = format!("{}rev", bed.id);
    fan_e2e::netkit_pair(&stray, "eth0", h28, &port)?;
    h28.ip(&["link", "set", &port, "mtu", "1480", "master", &bridge, "up"])?;
    stray.ip(&["addr", "add", "250.0.28.250/24", "dev", "eth0"])?;
    stray.ip(&["link", "set", "eth0", "mtu", "1480", "up"])?;
    stray.ip(&["route", "add", "default", "via", "250.0.28.1"])?;
    fan_e2e::eventually(std::time::Duration::from_secs(10), || {
        if !tc_fast_path(h28, &port)? {
            bail!("no fan_fastpath filter on {port}");
        }
        Ok(())
    })?;
    let t28 = bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)?;
    let b = bed.container("b");
    tokio::task::block_in_place(|| stray.ping(b.address, 3))?;
    let fast = bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)? - t28;
    assert_eq!(fast, 3, "echo requests on the fast path");
    let mut client = bed.host("h28").client().await?;
    let found = fan_e2e::check_network(&mut client, "fan").await?;
    assert!(found.is_empty(), "{found:?}");
    stray.delete()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netkit_containers_follow_the_underlay_into_big_tcp() -> Result<()> {
    if skip_without_netkit()? {
        return Ok(());
    }
    const BIG: u32 = 196_608;
    let bed = netkit_hosts().await?;
    if !gso::raise_underlay(&bed, BIG)? {
        bail!("this kernel has netkit but no gso_ipv4_max_size");
    }
    // The agent gives the netkit pair, both ends, the underlay's limit.
    let (a, b) = (bed.container("a"), bed.container("b"));
    let h28 = &bed.host("h28").netns;
    gso::wait_for_ipv4_gso(&a.netns, "eth0", BIG).await?;
    gso::wait_for_ipv4_gso(h28, &a.port, BIG).await?;
    let fast0 = bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)?;
    let (bytes0, packets0) = gso::tx(h28, "eth0")?;
    tokio::task::block_in_place(|| fan_e2e::tcp_both_ways(&a.netns, &b.netns, b.address, 1e6))?;
    let (bytes1, packets1) = gso::tx(h28, "eth0")?;
    let per_packet = (bytes1 - bytes0) / (packets1 - packets0).max(1);
    assert!(
        per_packet > 65_536,
        "{per_packet} bytes per packet left h28: no BIG TCP"
    );
    assert!(bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)? > fast0);
    Ok(())
}
