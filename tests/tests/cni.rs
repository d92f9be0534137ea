//! CNI end to end: the real `bridge` plugin of containernetworking-plugins
//! (`/usr/lib/cni/bridge`, Debian's package, installed by
//! scripts/install-deps.sh) plugs containers into the agent's fan bridge and
//! gets their addresses from `fan-ipam`, which asks the real agent of the
//! host. Plugins run in the host namespace (nsenter), as a runtime there
//! would run them; containers are namespaces of their own.
//!
//! Needs root and `cargo build --workspace --bins` (fan-agent and fan-ipam
//! beside this test, or in `FAN_BIN_DIR`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Result};
use fan_e2e::{bin_dir, binary, Client, CniReply as Reply, Netns, Testbed};
use fan_proto::v1 as pb;
use serde_json::{json, Value};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";

fn addr(text: &str) -> Ipv4Addr {
    text.parse().expect("address")
}

/// The plugin search path: Debian's plugins, then the workspace binaries.
fn cni_path() -> Result<String> {
    if !Path::new(BRIDGE_PLUGIN).exists() {
        bail!("{BRIDGE_PLUGIN} not found: install containernetworking-plugins (scripts/install-deps.sh)");
    }
    binary("fan-ipam")?;
    Ok(format!("/usr/lib/cni:{}", bin_dir().display()))
}

/// Runs a CNI plugin in `host`'s namespace with `env` and `conf` on stdin.
fn run_plugin(host: &Netns, program: &Path, env: &[(&str, String)], conf: &Value) -> Result<Reply> {
    fan_e2e::run_cni_plugin(host, program, &cni_path()?, env, conf)
}

/// The bridge plugin for one container: id = its namespace name, eth0.
fn bridge(host: &Netns, command: &str, container: &Netns, conf: &Value) -> Result<Reply> {
    run_plugin(
        host,
        Path::new(BRIDGE_PLUGIN),
        &[
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container.name.clone()),
            ("CNI_NETNS", format!("/run/netns/{}", container.name)),
            ("CNI_IFNAME", "eth0".to_string()),
        ],
        conf,
    )
}

/// fan-ipam alone, as a main plugin delegates to it; `owner` is
/// (container id, interface) for ADD/DEL/CHECK.
fn ipam(host: &Netns, command: &str, owner: Option<(&str, &str)>, conf: &Value) -> Result<Reply> {
    let mut env = vec![("CNI_COMMAND", command.to_string())];
    if let Some((id, ifname)) = owner {
        env.push(("CNI_CONTAINERID", id.to_string()));
        env.push(("CNI_IFNAME", ifname.to_string()));
    }
    run_plugin(host, &binary("fan-ipam")?, &env, conf)
}

/// `fan-ipam conflist fan` against an agent: the configuration list as JSON.
fn fan_ipam_conflist(socket: &Path) -> Result<Value> {
    let out = std::process::Command::new(binary("fan-ipam")?)
        .env_remove("CNI_COMMAND")
        .args(["conflist", "fan", "--agent", &agent_target(socket)])
        .output()?;
    if !out.status.success() {
        bail!(
            "fan-ipam conflist: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn agent_target(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// The bridge plugin's configuration with fan-ipam, as a conflist would give it.
fn bridge_conf(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "fan",
        "type": "bridge",
        "bridge": "fan-250",
        "isGateway": false,
        "ipMasq": false,
        "mtu": 1480,
        "ipam": {"type": "fan-ipam", "network": "fan", "agent": agent_target(socket)},
    })
}

fn with(mut conf: Value, key: &str, value: Value) -> Value {
    conf[key] = value;
    conf
}

async fn allocations(client: &mut Client, network: &str) -> Result<Vec<pb::Allocation>> {
    Ok(client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: network.into(),
            page_size: 1000,
            page_token: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocations)
}

fn owners(list: &[pb::Allocation]) -> BTreeSet<String> {
    list.iter()
        .filter_map(|a| a.owner.as_ref())
        .map(|o| format!("{}/{}", o.container_id, o.interface))
        .collect()
}

async fn drifts(client: &mut Client, network: &str) -> Result<Vec<pb::Drift>> {
    fan_e2e::check_network(client, network).await
}

/// The IPv4 addresses on a device, `A.B.C.D/N` each.
fn addresses(ns: &Netns, dev: &str) -> Result<Vec<String>> {
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", dev])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_owned)
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_plugin_with_fan_ipam_plugs_containers_that_ping_across_hosts() -> Result<()> {
    cni_path()?;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    bed.add_host("h27", addr("172.30.0.27"))?;
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;
    let a = Netns::new(&format!("{}-cnia", bed.id))?;
    let b = Netns::new(&format!("{}-cnib", bed.id))?;
    let (h28, h27) = (bed.host("h28"), bed.host("h27"));
    let conf28 = bridge_conf("1.0.0", &h28.agent.socket);
    // On h27 the bridge configuration comes from `fan-ipam conflist`, as the
    // DaemonSet writes it: the agent's bridge and MTU.
    let conflist = fan_ipam_conflist(&h27.agent.socket)?;
    assert_eq!(conflist["cniVersion"], "1.0.0", "{conflist}");
    assert_eq!(conflist["plugins"][1]["type"], "portmap", "{conflist}");
    let mut conf27 = conflist["plugins"][0].clone();
    conf27["cniVersion"] = conflist["cniVersion"].clone();
    conf27["name"] = conflist["name"].clone();
    assert_eq!(conf27["bridge"], "fan-250", "{conf27}");
    assert_eq!(conf27["mtu"], 1480, "{conf27}");
    assert_eq!(conf27["isGateway"], false, "{conf27}");

    // ADD: one container per host, through the real bridge plugin.
    let add_a = bridge(&h28.netns, "ADD", &a, &conf28)?;
    assert_eq!(add_a.code, 0, "{add_a:?}");
    let add_b = bridge(&h27.netns, "ADD", &b, &conf27)?;
    assert_eq!(add_b.code, 0, "{add_b:?}");
    let (result_a, result_b) = (add_a.json(), add_b.json());
    eprintln!("bridge ADD result: {result_a}");
    assert_eq!(result_a["cniVersion"], "1.0.0");
    assert_eq!(result_a["ips"][0]["address"], "250.0.28.2/24", "{result_a}");
    assert_eq!(result_a["ips"][0]["gateway"], "250.0.28.1", "{result_a}");
    assert_eq!(result_b["ips"][0]["address"], "250.0.27.2/24", "{result_b}");
    assert_eq!(
        result_a["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "250.0.28.1"}]),
        "{result_a}"
    );
    // The container got what the result says: address, default route, MTU.
    assert_eq!(addresses(&a, "eth0")?, vec!["250.0.28.2/24".to_string()]);
    let route = a.ip(&["-4", "route", "show", "default"])?;
    assert!(route.contains("via 250.0.28.1 dev eth0"), "{route}");
    let link = a.ip(&["-o", "link", "show", "eth0"])?;
    assert!(link.contains("mtu 1480"), "{link}");

    // Across hosts over the fan, both ways.
    a.ping(addr("250.0.27.2"), 2)?;
    b.ping(addr("250.0.28.2"), 2)?;

    // The bridge plugin took nothing from the agent: the bridge has exactly
    // the agent's gateway address, and the agent sees no drift.
    for (host, gateway) in [(h28, "250.0.28.1/24"), (h27, "250.0.27.1/24")] {
        assert_eq!(
            addresses(&host.netns, "fan-250")?,
            vec![gateway.to_string()],
            "{}",
            host.name
        );
        let mut client = host.client().await?;
        let found = drifts(&mut client, "fan").await?;
        assert!(found.is_empty(), "{}: {found:?}", host.name);
    }

    // Without "mtu" the main plugin picks its own (Debian's bridge 1.1.1:
    // 1500, more than the fan carries); fan-ipam warns through it.
    let c = Netns::new(&format!("{}-cnic", bed.id))?;
    let mut no_mtu = conf28.clone();
    no_mtu.as_object_mut().unwrap().remove("mtu");
    let r = bridge(&h28.netns, "ADD", &c, &no_mtu)?;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("sets no \"mtu\""), "{r:?}");
    eprintln!(
        "bridge without mtu: {}",
        c.ip(&["-o", "link", "show", "eth0"])?
    );
    bridge(&h28.netns, "DEL", &c, &no_mtu)?.quiet_success("DEL c");
    drop(c);

    // The agent holds the allocation under the CNI owner, labelled with the CNI network.
    let mut client28 = h28.client().await?;
    let list = allocations(&mut client28, "fan").await?;
    assert_eq!(owners(&list), BTreeSet::from([format!("{}/eth0", a.name)]));
    assert_eq!(
        list[0]
            .labels
            .get("fan-ipam/cni-network")
            .map(String::as_str),
        Some("fan")
    );
    assert_eq!(list[0].mtu, 1480);

    // ADD is idempotent per owner: fan-ipam gives the same address again.
    let again = ipam(&h28.netns, "ADD", Some((&a.name, "eth0")), &conf28)?;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["ips"][0]["address"], "250.0.28.2/24");

    // CHECK with the ADD result as prevResult passes, through the bridge plugin.
    let check_conf = with(conf28.clone(), "prevResult", result_a.clone());
    bridge(&h28.netns, "CHECK", &a, &check_conf)?.quiet_success("bridge CHECK");
    // fan-ipam's own CHECK fails when prevResult holds another address.
    let mut wrong = result_a.clone();
    wrong["ips"][0]["address"] = json!("250.0.28.99/24");
    ipam(
        &h28.netns,
        "CHECK",
        Some((&a.name, "eth0")),
        &with(conf28.clone(), "prevResult", wrong),
    )?
    .cni_error(102, "CHECK with a wrong prevResult");
    // … and when the owner has no address at all.
    ipam(&h28.netns, "CHECK", Some(("nobody", "eth0")), &check_conf)?
        .cni_error(102, "CHECK of an unknown owner");

    // DEL releases the address and removes the interface; DEL again succeeds.
    let del_conf = with(conf28.clone(), "prevResult", result_a.clone());
    bridge(&h28.netns, "DEL", &a, &del_conf)?.quiet_success("bridge DEL");
    assert!(allocations(&mut client28, "fan").await?.is_empty());
    assert!(
        a.ip(&["link", "show", "eth0"]).is_err(),
        "eth0 left in the container"
    );
    bridge(&h28.netns, "DEL", &a, &del_conf)?.quiet_success("bridge DEL again");
    bridge(&h28.netns, "DEL", &a, &conf28)?.quiet_success("bridge DEL without prevResult");
    // The bridge still has only the agent's address after the veth left.
    assert_eq!(
        addresses(&h28.netns, "fan-250")?,
        vec!["250.0.28.1/24".to_string()]
    );
    assert!(drifts(&mut client28, "fan").await?.is_empty());

    // DEL succeeds when the whole network is gone (deleted with --force).
    let mut client27 = h27.client().await?;
    client27
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            force: true,
            allow_missing: false,
        })
        .await?;
    bridge(
        &h27.netns,
        "DEL",
        &b,
        &with(conf27.clone(), "prevResult", result_b),
    )?
    .quiet_success("bridge DEL after the network was deleted");
    // … and for a network that never existed.
    let never = json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge",
        "ipam": {"type": "fan-ipam", "network": "never-created", "agent": agent_target(&h27.agent.socket)}});
    ipam(&h27.netns, "DEL", Some(("c", "eth0")), &never)?.quiet_success("DEL in a missing network");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_ipam_gc_status_version_and_errors() -> Result<()> {
    cni_path()?;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    bed.create_network_everywhere("fan", OVERLAY, UNDERLAY)
        .await?;
    let socket = bed.host("h28").agent.socket.clone();
    let ns = Netns::existing(&bed.host("h28").netns.name);
    let conf = bridge_conf("1.1.0", &socket);
    let mut client = bed.host("h28").client().await?;

    // Three attachments of CNI network "fan", one of another CNI network on
    // the same fan network, and one address handed out by hand.
    for (id, ifname) in [("c1", "eth0"), ("c2", "eth0"), ("c3", "net1")] {
        let r = ipam(&ns, "ADD", Some((id, ifname)), &conf)?;
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["cniVersion"], "1.1.0");
    }
    let other = with(conf.clone(), "name", json!("other"));
    assert_eq!(ipam(&ns, "ADD", Some(("c4", "eth0")), &other)?.code, 0);
    fan_e2e::allocate_eth0(&mut client, "fan", "manual").await?;
    let all = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        owners(&allocations(&mut client, "fan").await?),
        all(&["c1/eth0", "c2/eth0", "c3/net1", "c4/eth0", "manual/eth0"])
    );

    // GC without the valid attachments is refused and releases nothing.
    ipam(&ns, "GC", None, &conf)?.cni_error(7, "GC without cni.dev/valid-attachments");
    assert_eq!(allocations(&mut client, "fan").await?.len(), 5);
    // GC with one valid attachment releases this CNI network's others only.
    let gc = with(
        conf.clone(),
        "cni.dev/valid-attachments",
        json!([{"containerID": "c1", "ifname": "eth0"}]),
    );
    let r = ipam(&ns, "GC", None, &gc)?;
    r.quiet_success("GC");
    eprintln!("GC stderr: {}", r.stderr.trim());
    assert_eq!(
        owners(&allocations(&mut client, "fan").await?),
        all(&["c1/eth0", "c4/eth0", "manual/eth0"])
    );
    // GC is repeatable; an empty valid set releases the rest of "fan".
    ipam(&ns, "GC", None, &gc)?.quiet_success("GC again");
    ipam(
        &ns,
        "GC",
        None,
        &with(conf.clone(), "cni.dev/valid-attachments", json!([])),
    )?
    .quiet_success("GC with nothing valid");
    assert_eq!(
        owners(&allocations(&mut client, "fan").await?),
        all(&["c4/eth0", "manual/eth0"])
    );

    // STATUS: ready; not available for a network this host does not have.
    ipam(&ns, "STATUS", None, &conf)?.quiet_success("STATUS");
    let mut missing = conf.clone();
    missing["ipam"]["network"] = json!("nope");
    ipam(&ns, "STATUS", None, &missing)?.cni_error(50, "STATUS of a missing network");
    ipam(&ns, "ADD", Some(("c5", "eth0")), &missing)?.cni_error(11, "ADD in a missing network");
    ipam(&ns, "STATUS", None, &bridge_conf("1.0.0", &socket))?
        .cni_error(1, "STATUS with a 1.0.0 configuration");

    // VERSION.
    let v = ipam(&ns, "VERSION", None, &json!({"cniVersion": "1.0.0"}))?;
    assert_eq!(v.code, 0, "{v:?}");
    let versions = v.json()["supportedVersions"].clone();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            versions.as_array().unwrap().contains(&json!(version)),
            "{versions}"
        );
    }

    // A 0.4.0 result carries the IP version; a requested address is honoured.
    let old = ipam(
        &ns,
        "ADD",
        Some(("c6", "eth0")),
        &bridge_conf("0.4.0", &socket),
    )?;
    assert_eq!(old.code, 0, "{old:?}");
    assert_eq!(old.json()["ips"][0]["version"], "4");
    let pinned = with(
        conf.clone(),
        "runtimeConfig",
        json!({"ips": ["250.0.28.77/24"]}),
    );
    let r = ipam(&ns, "ADD", Some(("c7", "eth0")), &pinned)?;
    assert_eq!(r.json()["ips"][0]["address"], "250.0.28.77/24", "{r:?}");

    // Configuration and environment errors, with the spec's codes.
    let msg = ipam(
        &ns,
        "ADD",
        Some(("c8", "eth0")),
        &with(conf.clone(), "mtu", json!(1500)),
    )?
    .cni_error(7, "ADD with an MTU above the fan's");
    assert!(msg.contains("1480"), "{msg}");
    let mut typo = conf.clone();
    typo["ipam"]["netwrok"] = json!("fan");
    let msg = ipam(&ns, "ADD", Some(("c8", "eth0")), &typo)?.cni_error(2, "unknown ipam key");
    assert!(msg.contains("ipam.netwrok"), "{msg}");
    let mut no_network = conf.clone();
    no_network["ipam"]
        .as_object_mut()
        .unwrap()
        .remove("network");
    ipam(&ns, "ADD", Some(("c8", "eth0")), &no_network)?.cni_error(7, "no ipam.network");
    ipam(
        &ns,
        "ADD",
        Some(("c8", "eth0")),
        &with(conf.clone(), "cniVersion", json!("9.0.0")),
    )?
    .cni_error(1, "unknown cniVersion");
    ipam(&ns, "ADD", None, &conf)?.cni_error(4, "no CNI_CONTAINERID");
    let garbage = run_plugin(
        &ns,
        &binary("fan-ipam")?,
        &[
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "c8".into()),
            ("CNI_IFNAME", "eth0".into()),
        ],
        &json!("not a config object"),
    )?;
    garbage.cni_error(6, "a configuration that is not an object");
    assert!(!owners(&allocations(&mut client, "fan").await?).contains("c8/eth0"));

    // The agent down: ADD, DEL and GC say "try again later", STATUS "not available".
    bed.host_mut("h28").agent.kill9()?;
    ipam(&ns, "ADD", Some(("c9", "eth0")), &conf)?.cni_error(11, "ADD with the agent down");
    ipam(&ns, "DEL", Some(("c6", "eth0")), &conf)?.cni_error(11, "DEL with the agent down");
    ipam(&ns, "GC", None, &gc)?.cni_error(11, "GC with the agent down");
    ipam(&ns, "STATUS", None, &conf)?.cni_error(50, "STATUS with the agent down");
    // Back up: everything held, and the plugin works again.
    bed.host_mut("h28").start_agent()?;
    ipam(&ns, "STATUS", None, &conf)?.quiet_success("STATUS after the restart");
    ipam(&ns, "DEL", Some(("c6", "eth0")), &conf)?.quiet_success("DEL after the restart");
    let r = ipam(&ns, "ADD", Some(("c9", "eth0")), &conf)?;
    assert_eq!(r.code, 0, "{r:?}");
    let mut client = bed.host("h28").client().await?;
    assert_eq!(
        owners(&allocations(&mut client, "fan").await?),
        all(&["c4/eth0", "c7/eth0", "c9/eth0", "manual/eth0"])
    );

    // Concurrent ADDs, as a runtime starting many pods makes them: every one
    // succeeds with its own address; GC then collects them all.
    let results: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (ns, conf) = (&ns, &conf);
                scope.spawn(move || ipam(ns, "ADD", Some((&format!("p{i}"), "eth0")), conf))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("run fan-ipam"))
            .collect()
    });
    let mut seen = BTreeSet::new();
    for r in &results {
        assert_eq!(r.code, 0, "{r:?}");
        let address = r.json()["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(seen.insert(address.clone()), "{address} given twice");
    }
    let gc = with(
        conf.clone(),
        "cni.dev/valid-attachments",
        json!([{"containerID": "c7", "ifname": "eth0"}, {"containerID": "c9", "ifname": "eth0"}]),
    );
    ipam(&ns, "GC", None, &gc)?.quiet_success("GC of the concurrent ones");
    assert_eq!(
        owners(&allocations(&mut client, "fan").await?),
        all(&["c4/eth0", "c7/eth0", "c9/eth0", "manual/eth0"])
    );
    Ok(())
}

/// The repository's deploy/ directory.
fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs a deploy script with `sh` and `env`; the workspace binaries first on PATH.
fn run_script(script: &str, env: &[(&str, String)]) -> Result<Reply> {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .arg(deploy_dir().join("container").join(script))
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()?;
    Ok(Reply {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What the Kubernetes DaemonSet runs, against a real agent: the CNI
/// install script, the network/conflist script (twice: idempotent), and
/// the agent's probes. The manifest itself is checked structurally with
/// python3-yaml when it is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemonset_scripts_install_the_plugin_and_write_the_conflist() -> Result<()> {
    cni_path()?;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", addr("172.30.0.28"))?;
    let socket = bed.host("h28").agent.socket.clone();
    let target = agent_target(&socket);
    let bin = bed.dir.join("opt-cni-bin");
    let net_d = bed.dir.join("etc-cni-net.d");

    // install-cni.sh: fan-ipam and fan-bridge always (atomically replaced),
    // the standard plugins only where missing.
    std::fs::create_dir_all(&bin)?;
    std::fs::write(bin.join("portmap"), "#!/bin/sh\n# the node's own\n")?;
    let install_env = [
        ("CNI_BIN_DIR", bin.display().to_string()),
        ("FAN_IPAM", binary("fan-ipam")?.display().to_string()),
        ("CNI_PLUGINS_SRC", "/usr/lib/cni".to_string()),
    ];
    for _ in 0..2 {
        let r = run_script("install-cni.sh", &install_env)?;
        assert_eq!(r.code, 0, "{r:?}");
    }
    for plugin in ["fan-ipam", "fan-bridge"] {
        assert_eq!(
            std::fs::read(bin.join(plugin))?,
            std::fs::read(binary(plugin)?)?,
            "{plugin}"
        );
    }
    assert_eq!(
        std::fs::read(bin.join("bridge"))?,
        std::fs::read("/usr/lib/cni/bridge")?
    );
    assert!(bin.join("loopback").exists());
    assert_eq!(
        std::fs::read_to_string(bin.join("portmap"))?,
        "#!/bin/sh\n# the node's own\n",
        "a plugin of the node was overwritten"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&bin)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // fan-network.sh: creates the network, writes the list; the second pass
    // changes nothing.
    let network_env = [
        ("FAN_NETWORK", "fan".to_string()),
        ("FAN_OVERLAY", OVERLAY.to_string()),
        ("FAN_UNDERLAY", UNDERLAY.to_string()),
        ("FAN_HOST_RESERVE", "1".to_string()),
        ("FAN_BACKEND", "auto".to_string()),
        ("FAN_MTU", String::new()),
        ("FAN_AGENT", target.clone()),
        ("CNI_CONF_DIR", net_d.display().to_string()),
        ("FAN_SYNC_INTERVAL", "0".to_string()),
    ];
    let first = run_script("fan-network.sh", &network_env)?;
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("wrote"), "{first:?}");
    let list_path = net_d.join("10-fan.conflist");
    let written = std::fs::read_to_string(&list_path)?;
    let list: Value = serde_json::from_str(&written)?;
    assert_eq!(list["name"], "fan");
    assert_eq!(list["cniVersion"], "1.0.0");
    assert_eq!(list["plugins"][0]["bridge"], "fan-250");
    assert_eq!(list["plugins"][0]["mtu"], 1480);
    assert_eq!(list["plugins"][0]["ipam"]["agent"], json!(target));
    assert_eq!(list["plugins"][1]["type"], "portmap");
    let second = run_script("fan-network.sh", &network_env)?;
    assert_eq!(second.code, 0, "{second:?}");
    assert!(!second.stdout.contains("wrote"), "{second:?}");
    assert_eq!(std::fs::read_to_string(&list_path)?, written);
    // A spec that contradicts the existing network fails the pass and keeps the list.
    let mut conflicting = network_env.to_vec();
    conflicting[2] = ("FAN_UNDERLAY", "172.30.0.0/24".to_string());
    let r = run_script("fan-network.sh", &conflicting)?;
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(std::fs::read_to_string(&list_path)?, written);

    // The probes of the manifest, against this agent.
    let manifest = std::fs::read_to_string(deploy_dir().join("kubernetes/fan-agent.yaml"))?;
    for probe in [
        vec![
            "--timeout=5",
            "cluster",
            "status",
            "--strict",
            "--agents=unix:///run/fan/agent.sock",
        ],
        vec!["--timeout=5", "--agent=unix:///run/fan/agent.sock", "info"],
    ] {
        for arg in &probe {
            assert!(manifest.contains(arg), "the manifest has no {arg}");
        }
        let args: Vec<String> = probe
            .iter()
            .map(|a| a.replace("unix:///run/fan/agent.sock", &target))
            .collect();
        let out = std::process::Command::new(binary("fan-client")?)
            .args(&args)
            .output()?;
        assert!(
            out.status.success(),
            "probe {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The manifest's structure, when python3-yaml is there to read it.
    let check = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"]: d for d in docs}
assert set(kinds) == {"ConfigMap", "DaemonSet"}, kinds.keys()
ds = kinds["DaemonSet"]
assert ds["apiVersion"] == "apps/v1"
tpl = ds["spec"]["template"]
assert ds["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
spec = tpl["spec"]
assert spec["hostNetwork"] is True
volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
for path in ["/run/fan", "/var/lib/fan", "/sys/fs/bpf", "/lib/modules", "/opt/cni/bin", "/etc/cni/net.d"]:
    assert path in volumes.values(), path
containers = spec["initContainers"] + spec["containers"]
for c in containers:
    for m in c.get("volumeMounts", []):
        assert m["name"] in volumes, m
    for e in c.get("envFrom", []):
        assert e["configMapRef"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
agent = [c for c in spec["containers"] if c["name"] == "fan-agent"][0]
assert agent["securityContext"]["privileged"] is True
data = kinds["ConfigMap"]["data"]
assert all(isinstance(v, str) for v in data.values()), data
for key in ["FAN_NETWORK", "FAN_OVERLAY", "FAN_UNDERLAY"]:
    assert data[key], key
print(" ".join(c["command"][0] for c in containers))
"#;
    let manifest_path = deploy_dir().join("kubernetes/fan-agent.yaml");
    match std::process::Command::new("python3")
        .args(["-c", check])
        .arg(&manifest_path)
        .output()
    {
        Ok(out) if out.status.success() => {
            let commands = String::from_utf8_lossy(&out.stdout).into_owned();
            let dockerfile = std::fs::read_to_string(deploy_dir().join("container/Dockerfile"))?;
            for command in commands.split_whitespace() {
                let file = Path::new(command)
                    .file_name()
                    .and_then(|f| f.to_str())
                    .unwrap_or_default();
                assert!(
                    dockerfile.contains(file),
                    "the image has no {command}: {dockerfile}"
                );
            }
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") => {
            eprintln!("python3-yaml not installed: the manifest's structure was not checked");
        }
        Ok(out) => bail!(
            "the manifest's structure: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("no python3 ({e}): the manifest's structure was not checked"),
    }
    Ok(())
}
