//! DHCP switched on and off after creation with UpdateNetwork (issue 15):
//! a real busybox udhcpc client in a namespace on the fan bridge gets no
//! lease before, one after `fan-client network update --dhcp=true` (also
//! across a kill -9 of the agent: the change is stored), and none again
//! once UpdateNetwork turns DHCP off.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fan_e2e::{eventually, Client, Netns, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

/// `udhcpc -s` script: records `EVENT IP` to $LOG, configures nothing.
const RECORD_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew) echo "$1 $ip" >> "$LOG" ;;
esac
exit 0
"#;

/// One udhcpc run (`-n`: give up after `tries` DISCOVERs, 1 s apart):
/// the address it was bound to, or None when no server answered.
fn lease(ns: &Netns, script: &Path, log: &Path, tries: u32) -> Result<Option<Ipv4Addr>> {
    let _ = std::fs::remove_file(log);
    let tries = tries.to_string();
    let out = ns
        .command("busybox")
        .args(["udhcpc", "-i", "eth0", "-s"])
        .arg(script)
        .args(["-n", "-q", "-f", "-t", &tries, "-T", "1"])
        .env("LOG", log)
        .output()
        .context("run udhcpc")?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let bound = text
        .lines()
        .find_map(|l| l.strip_prefix("bound "))
        .map(str::parse::<Ipv4Addr>)
        .transpose()?;
    // Exit status and script log must agree: a lease iff success.
    assert_eq!(
        out.status.success(),
        bound.is_some(),
        "udhcpc: {}{} log {text:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bound)
}

async fn spec(client: &mut Client) -> Result<pb::NetworkSpec> {
    fan_e2e::get_network(client, "fan")
        .await?
        .spec
        .context("no spec")
}

async fn dhcp_allocations(client: &mut Client) -> Result<Vec<pb::Allocation>> {
    Ok(client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: "fan".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("list: {s}"))?
        .into_inner()
        .allocations
        .into_iter()
        .filter(|a| {
            a.owner
                .as_ref()
                .is_some_and(|o| o.container_id.starts_with("dhcp:"))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_network_switches_dhcp_on_and_off() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    let network = bed
        .create_network_on("h28", "fan", OVERLAY, UNDERLAY, pb::Backend::Auto)
        .await?;
    let bridge = network.status.context("status")?.bridge;
    let mut client = bed.host("h28").client().await?;
    assert!(!spec(&mut client).await?.dhcp);

    // A bare namespace on the bridge, as a DHCP client.
    let ns = Netns::new(&format!("{}-u", bed.id))?;
    let outside = format!("{}u", bed.id);
    let host = &bed.host("h28").netns;
    host.ip(&[
        "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ])?;
    host.ip(&["link", "set", &outside, "master", &bridge, "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let script: PathBuf = bed.dir.join("record.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&script, RECORD_SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    let log = bed.dir.join("udhcpc.log");

    // No DHCP yet: nobody answers.
    assert_eq!(lease(&ns, &script, &log, 2)?, None);
    assert!(dhcp_allocations(&mut client).await?.is_empty());

    // DHCP options need DHCP on, as at creation; nothing changes.
    let status = client
        .update_network(fan_e2e::update_request(
            "fan",
            &["dhcp_dns", "dhcp_lease_seconds"],
            |s| {
                s.dhcp_dns = vec!["250.0.28.1".into()];
                s.dhcp_lease_seconds = 600;
            },
        ))
        .await
        .err()
        .context("dhcp_dns without dhcp must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = status.get_details_bad_request().context("BadRequest")?;
    let fields: Vec<&str> = bad
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["spec.dhcp_dns", "spec.dhcp_lease_seconds"]);
    let status = client
        .update_network(fan_e2e::update_request(
            "fan",
            &["dhcp", "dhcp_lease_seconds"],
            |s| {
                s.dhcp = true;
                s.dhcp_lease_seconds = 5;
            },
        ))
        .await
        .err()
        .context("a 5 s lease must be refused")?;
    let bad = status.get_details_bad_request().context("BadRequest")?;
    assert_eq!(bad.field_violations[0].field, "spec.dhcp_lease_seconds");
    assert!(!spec(&mut client).await?.dhcp);

    // On with the CLI.
    bed.host("h28").fan_client(&[
        "network",
        "update",
        "fan",
        "--dhcp=true",
        "--dhcp-dns",
        "250.0.28.1",
        "--dhcp-lease-seconds",
        "600",
    ])?;
    let on = spec(&mut client).await?;
    assert!(on.dhcp);
    assert_eq!(on.dhcp_dns, ["250.0.28.1"]);
    assert_eq!(on.dhcp_lease_seconds, 600);

    // Stored: it survives kill -9, and the restarted agent serves.
    bed.host_mut("h28").agent.kill9()?;
    bed.host_mut("h28").start_agent()?;
    let mut client = bed.host("h28").client().await?;
    assert!(spec(&mut client).await?.dhcp);
    let address = lease(&ns, &script, &log, 10)?.context("no lease with DHCP on")?;
    let leases = dhcp_allocations(&mut client).await?;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].address, address.to_string());

    // Off again: the options go with it and the server stops answering.
    let off = client
        .update_network(fan_e2e::update_request("fan", &["dhcp"], |_| {}))
        .await
        .map_err(|s| anyhow!("update dhcp off: {s}"))?
        .into_inner();
    assert!(off.changed);
    let off = off.network.and_then(|n| n.spec).context("spec")?;
    assert!(!off.dhcp);
    assert!(off.dhcp_dns.is_empty());
    assert_eq!(off.dhcp_lease_seconds, 0);
    // The supervisor follows the stored spec once a second: wait until a
    // client goes unanswered, then check that it stays so.
    eventually(Duration::from_secs(20), || {
        match lease(&ns, &script, &log, 2)? {
            None => Ok(()),
            Some(a) => Err(anyhow!("still answered with {a}")),
        }
    })?;
    assert_eq!(lease(&ns, &script, &log, 3)?, None);
    Ok(())
}
