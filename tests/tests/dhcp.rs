//! DHCP on the fan bridge (issue 15) with real clients: busybox udhcpc and
//! ISC dhclient in container namespaces plugged into the bridge with no
//! address. Leases are allocations of the agent's store: the tests read
//! them back through the API.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{eventually, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

/// `udhcpc -s` script: applies address, route and MTU, and logs
/// `EVENT IP MTU ROUTER` to $LOG.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    echo "$1 $ip $mtu $router" >> "$LOG" ;;
  nak) echo "nak" >> "$LOG" ;;
esac
exit 0
"#;

/// The same, but records only (many clients share one namespace).
const RECORD_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew) echo "$ip" >> "$LOG" ;;
esac
exit 0
"#;

/// `dhclient -sf` script (dhclient clears the environment: LOG is
/// substituted into the text).
const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
LOG=@LOG@
case "$reason" in
  PREINIT) ip link set "$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    ip route replace default via "$new_routers" dev "$interface"
    echo "$reason $new_ip_address $new_interface_mtu $new_routers" >> "$LOG" ;;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface"; echo "$reason" >> "$LOG" ;;
esac
exit 0
"#;

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A namespace whose eth0 is a veth on `bridge` of `host`, up, no address.
fn bare_container(bed: &Testbed, host: &str, bridge: &str, name: &str) -> Result<Netns> {
    let host = bed.host(host);
    let ns = Netns::new(&format!("{}-{name}", bed.id))?;
    let outside = format!("{}{name}", bed.id);
    host.netns.ip(&[
        "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ])?;
    host.netns
        .ip(&["link", "set", &outside, "master", bridge, "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(ns)
}

async fn create_dhcp_network(bed: &Testbed, host: &str, lease_seconds: u32) -> Result<pb::Network> {
    let spec = pb::NetworkSpec {
        dhcp: true,
        dhcp_lease_seconds: lease_seconds,
        dhcp_dns: vec!["250.0.28.1".into()],
        ..fan_e2e::fan_spec(OVERLAY, UNDERLAY)
    };
    bed.create_network_with(host, "fan", spec).await
}

async fn allocations(bed: &Testbed, host: &str) -> Result<Vec<pb::Allocation>> {
    fan_e2e::all_allocations(&mut bed.host(host).client().await?, "fan", 1000).await
}

fn udhcpc(ns: &Netns, script: &Path, log: &Path, extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "udhcpc",
        "-i",
        "eth0",
        "-s",
        script.to_str().unwrap_or_default(),
        "-n",
        "-q",
        "-f",
        "-O",
        "mtu",
        "-t",
        "10",
        "-T",
        "1",
    ];
    args.extend_from_slice(extra);
    let out = ns
        .command("busybox")
        .args(&args)
        .env("LOG", log)
        .output()
        .context("run udhcpc")?;
    if !out.status.success() {
        bail!(
            "udhcpc failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The last `bound`/`renew`-like line of a script log: (event, ip, mtu, router).
fn last_lease(log: &Path) -> Result<(String, Ipv4Addr, String, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 4)
        .ok_or_else(|| anyhow!("no lease in {}: {text:?}", log.display()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Ok((f[0].into(), f[1].parse()?, f[2].into(), f[3].into()))
}

fn default_route(ns: &Netns) -> Result<String> {
    Ok(ns.ip(&["route", "show", "default"])?)
}

fn link_mtu(ns: &Netns) -> Result<String> {
    let text = ns.ip(&["link", "show", "eth0"])?;
    Ok(text
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_and_dhclient_get_leases_that_are_allocations() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    bed.add_host("h27", addr("172.30.0.27"))?;
    let network = create_dhcp_network(&bed, "h28", 10).await?;
    let status = network.status.clone().ok_or_else(|| anyhow!("no status"))?;
    assert_eq!(status.mtu, 1480);
    assert!(network.spec.as_ref().is_some_and(|s| s.dhcp));
    bed.create_network_on("h27", "fan", OVERLAY, UNDERLAY, pb::Backend::Auto)
        .await?;
    bed.add_container("h27", "fan", "b").await?;
    let b = bed.container("b").address;
    let dir = bed.dir.clone();

    // busybox udhcpc: address, gateway route, MTU 1480, then across the fan.
    let u = bare_container(&bed, "h28", &status.bridge, "u")?;
    let script = write_script(&dir, "udhcpc.sh", UDHCPC_SCRIPT)?;
    let ulog = dir.join("udhcpc.log");
    udhcpc(&u, &script, &ulog, &[])?;
    let (_, u_ip, mtu, router) = last_lease(&ulog)?;
    assert_eq!(mtu, "1480");
    assert_eq!(router, "250.0.28.1");
    assert!(default_route(&u)?.contains("via 250.0.28.1"));
    assert_eq!(link_mtu(&u)?, "1480");
    assert!(u
        .ip(&["-4", "addr", "show", "eth0"])?
        .contains(&format!("{u_ip}/24")));
    u.ping(b, 2).context("udhcpc client -> container on h27")?;

    // The lease is an allocation, labelled, with its expiry.
    let leases = allocations(&bed, "h28").await?;
    let lease = leases
        .iter()
        .find(|a| a.address == u_ip.to_string())
        .ok_or_else(|| anyhow!("no allocation for {u_ip}: {leases:?}"))?;
    let owner = lease.owner.clone().unwrap_or_default();
    assert!(owner.container_id.starts_with("dhcp:01:"), "{owner:?}");
    assert_eq!(owner.interface, "dhcp");
    assert_eq!(
        lease.labels.get("fan.dhcp/lease").map(String::as_str),
        Some("bound")
    );
    assert!(lease.labels.contains_key("fan.dhcp/expires"));

    // Renewal (10 s lease: udhcpc renews after 5 s) keeps the address.
    let mut renewing = u
        .command("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-s",
            script.to_str().unwrap_or_default(),
            "-f",
            "-O",
            "mtu",
            "-r",
            &u_ip.to_string(),
        ])
        .env("LOG", &ulog)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let renewed = eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&ulog)?;
        text.lines()
            .rev()
            .find(|l| l.starts_with("renew "))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no renew yet"))
    });
    let _ = renewing.kill();
    let _ = renewing.wait();
    let renewed = renewed?;
    assert!(renewed.contains(&format!(" {u_ip} ")), "{renewed}");

    // kill -9 and restart: the same client gets the same address back.
    bed.host_mut("h28").agent.kill9()?;
    bed.host_mut("h28").start_agent()?;
    u.ip(&["addr", "flush", "dev", "eth0"])?;
    udhcpc(&u, &script, &ulog, &[])?;
    assert_eq!(last_lease(&ulog)?.1, u_ip, "address changed across kill -9");

    // ISC dhclient: same checks, then RELEASE frees the allocation.
    let d = bare_container(&bed, "h28", &status.bridge, "d")?;
    let dlog = dir.join("dhclient.log");
    let dscript = write_script(
        &dir,
        "dhclient.sh",
        &DHCLIENT_SCRIPT.replace("@LOG@", &dlog.display().to_string()),
    )?;
    let (pf, lf) = (dir.join("dhclient.pid"), dir.join("dhclient.leases"));
    let dh = |extra: &[&str]| -> Result<()> {
        let out = d
            .command("dhclient")
            .args(["-4", "-v", "-1", "-pf"])
            .arg(&pf)
            .arg("-lf")
            .arg(&lf)
            .arg("-sf")
            .arg(&dscript)
            .args(extra)
            .arg("eth0")
            .env("LOG", &dlog)
            .output()?;
        if !out.status.success() {
            bail!(
                "dhclient {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    dh(&[])?;
    let (_, d_ip, mtu, router) = last_lease(&dlog)?;
    assert_ne!(d_ip, u_ip);
    assert_eq!(mtu, "1480");
    assert_eq!(router, "250.0.28.1");
    assert_eq!(link_mtu(&d)?, "1480");
    assert!(default_route(&d)?.contains("via 250.0.28.1"));
    d.ping(b, 2)
        .context("dhclient client -> container on h27")?;
    assert!(allocations(&bed, "h28")
        .await?
        .iter()
        .any(|a| a.address == d_ip.to_string()));
    dh(&["-r"])?;
    let mut freed = false;
    for _ in 0..50 {
        if !allocations(&bed, "h28")
            .await?
            .iter()
            .any(|a| a.address == d_ip.to_string())
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "dhclient -r did not free {d_ip}");
    // The udhcpc lease is still there.
    assert!(allocations(&bed, "h28")
        .await?
        .iter()
        .any(|a| a.address == u_ip.to_string()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_get_distinct_addresses_beside_api_allocations() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    let network = create_dhcp_network(&bed, "h28", 3600).await?;
    let bridge = network.status.map(|s| s.bridge).unwrap_or_default();
    let dir = bed.dir.clone();
    let ns = bare_container(&bed, "h28", &bridge, "m")?;
    let script = write_script(&dir, "record.sh", RECORD_SCRIPT)?;
    let log = dir.join("many.log");

    // API allocations run at the same time as the DHCP clients.
    let socket = bed.host("h28").agent.socket.clone();
    let api = tokio::spawn(async move {
        let mut client = fan_proto::v1::fan_agent_service_client::FanAgentServiceClient::new(
            fan_e2e::unix_channel(&socket).await?,
        );
        let mut got = Vec::new();
        for i in 0..40 {
            let a = fan_e2e::allocate_eth0(&mut client, "fan", &format!("api-{i}"))
                .await
                .map_err(|s| anyhow!("allocate: {s}"))?;
            got.push(a.address);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(got)
    });
    // One namespace, 200 clients: a new MAC and client id each.
    let loop_script = format!(
        "for i in $(seq 1 200); do h=$(printf '%02x:%02x' $((i / 256)) $((i % 256))); \
         ip link set eth0 address 02:fa:00:00:$h; \
         busybox udhcpc -i eth0 -s {} -n -q -f -t 10 -T 1 -x 0x3d:ff00fa$(printf '%04x' $i) >/dev/null 2>&1 \
         || echo FAIL $i >> {}; done",
        script.display(),
        log.display()
    );
    let out = tokio::task::spawn_blocking({
        let ns = Netns::existing(&ns.name);
        let log = log.clone();
        move || {
            ns.command("sh")
                .arg("-c")
                .arg(loop_script)
                .env("LOG", log)
                .output()
        }
    })
    .await??;
    assert!(out.status.success());
    let api_addresses: BTreeSet<String> = api.await??.into_iter().collect();
    let text = std::fs::read_to_string(&log)?;
    assert!(!text.contains("FAIL"), "{text}");
    let leased: Vec<&str> = text.lines().collect();
    let distinct: BTreeSet<&str> = leased.iter().copied().collect();
    assert_eq!(leased.len(), 200);
    assert_eq!(distinct.len(), 200, "a DHCP address was handed out twice");
    assert_eq!(api_addresses.len(), 40);
    for a in &api_addresses {
        assert!(
            !distinct.contains(a.as_str()),
            "{a} is both leased and API-allocated"
        );
    }
    // The store agrees: 200 leases, 40 API allocations.
    let all = allocations(&bed, "h28").await?;
    let leases = all
        .iter()
        .filter(|a| a.owner.as_ref().is_some_and(|o| o.interface == "dhcp"))
        .count();
    assert_eq!(leases, 200);
    assert_eq!(all.len(), 240);
    Ok(())
}
