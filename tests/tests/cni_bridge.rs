//! `fan-bridge`, the CNI main plugin, end to end: real agents, `fan-ipam`
//! delegated from `CNI_PATH` (the workspace binaries), containers plugged
//! as a runtime plugs them (the plugin runs in the host's namespace with
//! `CNI_NETNS` naming the container's).
//!
//! With `"link": "auto"` the pair is netkit where the kernel has it (the
//! kernel suite's Debian 6.12 VM, where the agent then runs its fast path
//! in the container's transmit) and veth elsewhere (this machine's 6.18 is
//! built without netkit); the test expects whichever the kernel allows.
//!
//! Needs root and `cargo build --workspace --bins`.

use std::path::Path;

use anyhow::Result;
use fan_dataplane::ebpf::maps::slot;
use fan_dataplane::netlink::FAN_DEVICE_GROUP;
use fan_e2e::{bin_dir, binary, fan_spec, two_host_fan, Netns, Testbed};
use fan_proto::v1 as pb;
use serde_json::{json, Value};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn conf(bridge: &str, socket: &Path, link: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "fan",
        "type": "fan-bridge",
        "bridge": bridge,
        "link": link,
        "ipam": {"type": "fan-ipam", "network": "fan", "agent": format!("unix://{}", socket.display())},
    })
}

/// fan-bridge `command` for the container `netns` (id = its name, eth0).
fn fan_bridge(
    host: &Netns,
    command: &str,
    netns: &Netns,
    conf: &Value,
) -> Result<fan_e2e::CniReply> {
    binary("fan-ipam")?;
    fan_e2e::run_cni_plugin(
        host,
        &binary("fan-bridge")?,
        &bin_dir().display().to_string(),
        &[
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", netns.name.clone()),
            ("CNI_NETNS", format!("/run/netns/{}", netns.name)),
            ("CNI_IFNAME", "eth0".to_string()),
        ],
        conf,
    )
}

/// The kind of device `name` in `host` (None: no such device).
fn kind_of(host: &Netns, name: &str) -> Result<Option<String>> {
    let name = name.to_string();
    host.block_on(move || async move {
        let nl = fan_dataplane::netlink::Netlink::new()?;
        anyhow::Ok(
            nl.link_by_name(&name)
                .await?
                .map(|l| l.kind.unwrap_or_default()),
        )
    })
}

async fn allocated(bed: &Testbed, host: &str) -> Result<usize> {
    let mut client = bed.host(host).client().await?;
    Ok(client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: "fan".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocations
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_bridge_plugs_containers_that_reach_each_other() -> Result<()> {
    let kind = if fan_e2e::netkit_supported()? {
        "netkit"
    } else {
        "veth"
    };
    let spec = fan_spec(OVERLAY, UNDERLAY);
    let fast_path_on = [("FAN_AGENT_NO_FAST_PATH", "false")];
    let bed = two_host_fan(&[], &fast_path_on, [spec.clone(), spec]).await?;
    let (h28, h27) = (&bed.host("h28"), &bed.host("h27"));
    let bridge = bed.network_status("h28", "fan").await?.bridge;
    let x = Netns::new(&format!("{}-x", bed.id))?;
    let y = Netns::new(&format!("{}-y", bed.id))?;
    let (conf28, conf27) = (
        conf(&bridge, &h28.agent.socket, "auto"),
        conf(&bridge, &h27.agent.socket, "auto"),
    );

    let before = allocated(&bed, "h28").await?;
    let added = fan_bridge(&h28.netns, "ADD", &x, &conf28)?;
    assert_eq!(added.code, 0, "{added:?}");
    let result = added.json();
    eprintln!("ADD -> {result}");
    let host_end = result["interfaces"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        host_end.starts_with("fan") && host_end.len() == 11,
        "{result}"
    );
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        format!("/run/netns/{}", x.name)
    );
    assert_eq!(result["ips"][0]["interface"], 1);
    let x_addr: ipnetwork::Ipv4Network = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    assert!(x_addr.ip().octets()[..3] == [250, 0, 28], "{result}");
    assert_eq!(kind_of(&h28.netns, &host_end)?.as_deref(), Some(kind));
    assert_eq!(allocated(&bed, "h28").await?, before + 1);
    let added27 = fan_bridge(&h27.netns, "ADD", &y, &conf27)?;
    assert_eq!(added27.code, 0, "{added27:?}");
    let y_addr: ipnetwork::Ipv4Network = added27.json()["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .parse()?;

    if kind == "netkit" {
        // The agent found the netkit port and runs the fast path in x's transmit.
        fan_e2e::netkit_peer_program_becomes(&h28.netns, &host_end, true)?;
    }
    let t28 = bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)?;
    let a = bed.container("b");
    tokio::task::block_in_place(|| -> Result<()> {
        x.ping(y_addr.ip(), 3)?;
        x.ping(a.address, 2)?;
        Ok(y.ping(x_addr.ip(), 2)?)
    })?;
    let fast = bed.pinned_counter("h28", "fan", slot::FAST_PATH_ENCAPSULATED)? - t28;
    assert!(fast >= 5, "{fast} packets from x on the fast path");

    // CHECK against the ADD result.
    let mut with_prev = conf28.clone();
    with_prev["prevResult"] = result.clone();
    fan_bridge(&h28.netns, "CHECK", &x, &with_prev)?.quiet_success("CHECK");
    // Without prevResult: the IPAM plugin refuses first (its own error, passed on).
    let reply = fan_bridge(&h28.netns, "CHECK", &x, &conf28)?;
    assert_ne!(reply.code, 0, "{reply:?}");
    assert!(reply.json()["msg"].is_string(), "{reply:?}");

    // A retried ADD (a runtime that crashed after the first): the stale
    // pair goes, one pair again, the same address, still reachable.
    let again = fan_bridge(&h28.netns, "ADD", &x, &conf28)?;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        again.json()["ips"][0]["address"],
        result["ips"][0]["address"]
    );
    assert_eq!(again.json()["interfaces"][0]["name"], host_end.as_str());
    assert_eq!(allocated(&bed, "h28").await?, before + 1);
    tokio::task::block_in_place(|| x.ping(y_addr.ip(), 2))?;

    // A bad key: named, nothing made, nothing allocated.
    let count = allocated(&bed, "h28").await?;
    let z = Netns::new(&format!("{}-z", bed.id))?;
    let msg = fan_bridge(
        &h28.netns,
        "ADD",
        &z,
        &conf(&bridge, &h28.agent.socket, "macvlan"),
    )?
    .cni_error(7, "link macvlan");
    assert!(msg.starts_with("link:"), "{msg}");
    // A bridge that does not exist: the address the IPAM gave goes back.
    let reply = fan_bridge(
        &h28.netns,
        "ADD",
        &z,
        &conf("nosuchbr0", &h28.agent.socket, "auto"),
    )?;
    let msg = reply.cni_error(110, "no bridge");
    assert!(
        reply.json()["details"]
            .as_str()
            .unwrap_or_default()
            .contains("nosuchbr0"),
        "{msg}"
    );
    assert_eq!(allocated(&bed, "h28").await?, count);

    // DEL: the pair and the address go; a second DEL finds nothing and succeeds.
    fan_bridge(&h28.netns, "DEL", &x, &conf28)?.quiet_success("DEL");
    assert_eq!(kind_of(&h28.netns, &host_end)?, None);
    assert_eq!(allocated(&bed, "h28").await?, before);
    fan_bridge(&h28.netns, "DEL", &x, &conf28)?.quiet_success("DEL again");
    // A device of the same name that is not this attachment's (another
    // attachment's after a 32-bit name collision, or anyone's): ADD fails
    // and gives the address back, DEL leaves the device alone.
    let peer = format!("{}q", bed.id);
    h28.netns.ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", &peer,
    ])?;
    let reply = fan_bridge(&h28.netns, "ADD", &x, &conf28)?;
    reply.cni_error(110, "a foreign device of the name");
    let details = reply.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(details.contains("is not this attachment's"), "{details}");
    assert_eq!(allocated(&bed, "h28").await?, before);
    fan_bridge(&h28.netns, "DEL", &x, &conf28)?.quiet_success("DEL of a foreign name");
    assert_eq!(kind_of(&h28.netns, &host_end)?.as_deref(), Some("veth"));
    h28.netns.ip(&["link", "del", &host_end])?;
    // An ADD stopped between creating the pair and marking it left the pair
    // born in the fan device group, without its alias: the retried ADD
    // takes it as this attachment's and replaces it.
    let group = FAN_DEVICE_GROUP.to_string();
    h28.netns.ip(&[
        "link", "add", &host_end, "group", &group, "type", "veth", "peer", "name", &peer,
    ])?;
    let retried = fan_bridge(&h28.netns, "ADD", &x, &conf28)?;
    assert_eq!(retried.code, 0, "{retried:?}");
    tokio::task::block_in_place(|| x.ping(y_addr.ip(), 2))?;
    fan_bridge(&h28.netns, "DEL", &x, &conf28)?.quiet_success("DEL after the claimed ADD");
    assert_eq!(kind_of(&h28.netns, &host_end)?, None);
    fan_bridge(&h27.netns, "DEL", &y, &conf27)?.quiet_success("DEL y");
    for ns in [x, y, z] {
        ns.delete()?;
    }
    Ok(())
}
