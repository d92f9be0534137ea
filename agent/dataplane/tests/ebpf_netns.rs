//! The eBPF backend against the real kernel: two "hosts" (network namespaces
//! joined by an underlay veth), each with a fan bridge and a "container"
//! namespace, the backend applied inside each host namespace.
//!
//! Backend calls run on a dedicated thread that `setns`es into the host
//! namespace and drives a current-thread tokio runtime there, so netlink
//! sockets, /proc/sys/net and child processes belong to that host (the test
//! kit's `Netns::block_on`). Every name starts with a kit `unique_id()`; a
//! teardown deletes the namespaces and unmounts the per-host bpffs pin roots
//! even when a test panics, reporting every step that fails.
//!
//! Needs root; skipped (with a message) otherwise. `throughput` is ignored by
//! default: `cargo test --test ebpf_netns -- --ignored --nocapture`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fan_dataplane::ebpf::{tc_priority, EbpfBackend, ROUTE_PROTOCOL};
use fan_dataplane::netlink::FAN_DEVICE_GROUP;
use fan_dataplane::{BackendKind, Counters, Encapsulation, NetworkPlan, Observation};
use fan_testkit::packets::{finish_capture, icmp_echo, icmp_echo_sized, send_ipip, start_capture};
use fan_testkit::{sh, try_sh, veth_pair, Netns, Teardown};
use ipnetwork::Ipv4Network;

// ------------------------------------------------------------------ harness

/// One "host": its namespace, its container's namespace, its plan and backend.
struct Host {
    ns: String,
    container_ns: String,
    container_ip: Ipv4Addr,
    pin_root: PathBuf,
    plan: NetworkPlan,
    backend: Option<EbpfBackend>,
}

/// Two hosts; cleans everything up on drop.
struct World {
    hosts: Vec<Host>,
    namespaces: Vec<Netns>,
}

impl Drop for World {
    fn drop(&mut self) {
        // Backends first (their tasks belong to dead runtimes anyway).
        for h in &mut self.hosts {
            h.backend.take();
        }
        // Every step runs, whatever fails; the failures are reported together.
        let mut teardown = Teardown::new();
        for h in &self.hosts {
            teardown.unmount_dir(h.pin_root.clone());
        }
        for ns in self.namespaces.drain(..) {
            teardown.netns(ns);
        }
    }
}

/// The fan shape of a world: overlay, underlay, and per host (underlay
/// address, slice).
struct Shape {
    overlay: &'static str,
    underlay: &'static str,
    hosts: [(&'static str, &'static str); 2],
}

const SHAPE_16: Shape = Shape {
    overlay: "250.0.0.0/8",
    underlay: "172.30.0.0/16",
    hosts: [
        ("172.30.0.28", "250.0.28.0/24"),
        ("172.30.0.27", "250.0.27.0/24"),
    ],
};

const SHAPE_24: Shape = Shape {
    overlay: "250.0.0.0/8",
    underlay: "10.1.2.0/24",
    hosts: [("10.1.2.7", "250.7.0.0/16"), ("10.1.2.9", "250.9.0.0/16")],
};

const UPLINK: &str = "uplink";
const BRIDGE: &str = "fanbr";
const NETWORK: &str = "fan";
const INDEX: u16 = 3;

fn nth_host(net: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

impl World {
    /// Builds both hosts (underlay veth, fan bridge, container). With
    /// `apply`, applies the backend in both.
    fn new(shape: &Shape, apply: bool) -> Option<World> {
        if fan_testkit::skip_unless_root() {
            return None;
        }
        let id = fan_testkit::unique_id();
        let mut world = World {
            hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        let underlay: Ipv4Network = shape.underlay.parse().unwrap();
        for (i, (addr, slice)) in shape.hosts.iter().enumerate() {
            let ns = format!("{id}-h{}", i + 1);
            let container_ns = format!("{id}-c{}", i + 1);
            for n in [&ns, &container_ns] {
                world
                    .namespaces
                    .push(Netns::new(n).expect("create namespace"));
            }
            let slice: Ipv4Network = slice.parse().unwrap();
            let plan = NetworkPlan {
                network_id: NETWORK.into(),
                index: INDEX,
                overlay: shape.overlay.parse().unwrap(),
                underlay,
                local_underlay: addr.parse().unwrap(),
                underlay_interface: UPLINK.into(),
                underlay_mtu: 1500,
                slice,
                gateway: nth_host(slice, 1),
                bridge: BRIDGE.into(),
                mtu: 1480,
                masquerade: false,
                anti_spoofing: true,
                backend: BackendKind::Ebpf,
            };
            // FHC_PIN_BASE=/sys/fs/bpf (in a private mount namespace:
            // `unshare -m`) exercises the standard bpffs location.
            let base = std::env::var("FHC_PIN_BASE").unwrap_or_else(|_| "/run".into());
            let pin_root = PathBuf::from(format!("{base}/{id}-h{}-bpf", i + 1));
            world.hosts.push(Host {
                ns,
                container_ns,
                container_ip: nth_host(slice, 5),
                backend: Some(EbpfBackend::new(pin_root.clone())),
                pin_root,
                plan,
            });
        }
        let (h1, h2) = (&world.hosts[0].ns, &world.hosts[1].ns);
        veth_pair(&Netns::existing(h1), UPLINK, &Netns::existing(h2), UPLINK)
            .expect("underlay veth");
        for h in &world.hosts {
            let ns = h.ns.as_str();
            let cns = h.container_ns.as_str();
            let u = format!("{}/{}", h.plan.local_underlay, underlay.prefix());
            let gw = format!("{}/{}", h.plan.gateway, h.plan.slice.prefix());
            let cip = format!("{}/{}", h.container_ip, h.plan.slice.prefix());
            let gateway = h.plan.gateway.to_string();
            for cmd in [
                vec!["ip", "-n", ns, "link", "set", "lo", "up"],
                vec!["ip", "-n", ns, "addr", "add", &u, "dev", UPLINK],
                vec!["ip", "-n", ns, "link", "set", UPLINK, "up"],
                // The fan bridge (the host module's job in the agent).
                vec![
                    "ip", "-n", ns, "link", "add", "name", BRIDGE, "type", "bridge",
                ],
                vec!["ip", "-n", ns, "link", "set", BRIDGE, "mtu", "1480"],
                vec!["ip", "-n", ns, "addr", "add", &gw, "dev", BRIDGE],
                vec!["ip", "-n", ns, "link", "set", BRIDGE, "up"],
                // The container.
                vec![
                    "ip", "-n", ns, "link", "add", "name", "vc", "mtu", "1480", "type", "veth",
                    "peer", "name", "eth0", "mtu", "1480", "netns", cns,
                ],
                vec!["ip", "-n", ns, "link", "set", "vc", "master", BRIDGE, "up"],
                vec!["ip", "-n", cns, "link", "set", "lo", "up"],
                vec!["ip", "-n", cns, "addr", "add", &cip, "dev", "eth0"],
                vec!["ip", "-n", cns, "link", "set", "eth0", "up"],
                vec!["ip", "-n", cns, "route", "add", "default", "via", &gateway],
                // Strict rp_filter everywhere: decapsulated packets must pass.
                vec![
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=1",
                    "net.ipv4.conf.default.rp_filter=1",
                ],
            ] {
                sh(&cmd);
            }
        }
        if apply {
            world.apply(0);
            world.apply(1);
        }
        Some(world)
    }

    fn apply(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let backend = host.backend.take().expect("backend");
        let plan = host.plan.clone();
        let backend = Netns::existing(&host.ns).block_on(move || async move {
            backend.apply(&plan).await.expect("apply");
            backend
        });
        host.backend = Some(backend);
    }

    fn observe(&mut self, i: usize) -> Observation {
        let host = &mut self.hosts[i];
        let backend = host.backend.take().expect("backend");
        let plan = host.plan.clone();
        let (backend, obs) = Netns::existing(&host.ns).block_on(move || async move {
            let obs = backend.observe(&plan).await.expect("observe");
            (backend, obs)
        });
        host.backend = Some(backend);
        obs
    }

    fn remove(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let backend = host.backend.take().expect("backend");
        let plan = host.plan.clone();
        let backend = Netns::existing(&host.ns).block_on(move || async move {
            backend.remove(&plan).await.expect("remove");
            backend
        });
        host.backend = Some(backend);
    }

    fn refresh(&mut self, i: usize) -> usize {
        let host = &mut self.hosts[i];
        let backend = host.backend.take().expect("backend");
        let plan = host.plan.clone();
        let (backend, n) = Netns::existing(&host.ns).block_on(move || async move {
            let n = backend.refresh_endpoints(&plan).await.expect("refresh");
            (backend, n)
        });
        host.backend = Some(backend);
        n
    }

    /// Replaces host i's backend object, as a restarted agent would.
    fn restart(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        host.backend = Some(EbpfBackend::new(host.pin_root.clone()));
    }

    fn counters(&self, i: usize) -> Counters {
        let h = &self.hosts[i];
        h.backend
            .as_ref()
            .unwrap()
            .counters(&h.plan)
            .expect("counters")
    }

    fn ping(&self, from: usize, to: Ipv4Addr) -> (bool, String) {
        try_sh(&[
            "ip",
            "netns",
            "exec",
            &self.hosts[from].container_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &to.to_string(),
        ])
    }

    fn must_ping(&self, from: usize, to: Ipv4Addr) {
        let (ok, out) = self.ping(from, to);
        assert!(
            ok,
            "ping {} -> {to} failed:\n{out}",
            self.hosts[from].container_ip
        );
    }

    fn tc(&self, i: usize, dev: &str, hook: &str) -> String {
        sh(&[
            "tc",
            "-n",
            &self.hosts[i].ns,
            "filter",
            "show",
            "dev",
            dev,
            hook,
        ])
    }
}

/// Filter lines (with a handle) of `tc filter show` output.
fn filter_lines(tc_output: &str) -> Vec<&str> {
    tc_output.lines().filter(|l| l.contains("handle")).collect()
}

/// `id N` of a `tc filter show` bpf line.
fn prog_id(line: &str) -> u32 {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            return words.next().unwrap().parse().unwrap();
        }
    }
    panic!("no program id in {line:?}");
}

/// Starts tcpdump on the underlay of host ns; returns it once it listens.
fn capture_on(ns: &str, filter: &str, count: usize) -> Child {
    start_capture(&Netns::existing(ns), UPLINK, filter, count).expect("tcpdump")
}

/// Sends `inner` from host ns to `to` through the kernel's own IPIP code.
fn ipip_from(ns: &str, to: Ipv4Addr, inner: &[u8]) {
    send_ipip(&Netns::existing(ns), to, inner).expect("raw IPIP send");
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------- tests

#[test]
fn two_hosts_ping_both_ways_with_kernel_wire_format() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let (c1, c2) = (w.hosts[0].container_ip, w.hosts[1].container_ip);

    let capture = capture_on(&w.hosts[1].ns, "ip proto 4", 2);
    w.must_ping(0, c2);
    let dump = finish_capture(capture).expect("tcpdump");
    assert!(
        dump.contains("172.30.0.28 > 172.30.0.27") && dump.contains(&format!("{c1} > {c2}")),
        "outer 172.30.0.28 > 172.30.0.27 around the untouched inner packet:\n{dump}"
    );
    // Outer header as the kernel's ipip writes it: protocol 4, TTL 64, DF
    // copied from the (DF) inner packet, valid checksum (tcpdump -v checks).
    assert!(
        dump.contains("ttl 64") && dump.contains("flags [DF], proto IPIP (4)"),
        "{dump}"
    );
    assert!(!dump.contains("bad cksum"), "{dump}");
    w.must_ping(1, c1);
    // The remote gateway is reached through the slow path (stack), with strict rp_filter.
    w.must_ping(0, w.hosts[1].plan.gateway);
    w.must_ping(1, w.hosts[0].plan.gateway);

    let (k1, k2) = (w.counters(0), w.counters(1));
    assert!(k1.encapsulated >= 6 && k1.decapsulated >= 6, "{k1:?}");
    assert!(k2.encapsulated >= 6 && k2.decapsulated >= 6, "{k2:?}");
    assert_eq!(k1.dropped_spoofed + k1.dropped_fragment, 0, "{k1:?}");

    // Fast path: the endpoint map learns the containers from the kernel.
    assert_eq!(w.refresh(0), 1);
    assert_eq!(w.refresh(1), 1);
    let before = w.hosts[1]
        .backend
        .as_ref()
        .unwrap()
        .peer_redirected(&w.hosts[1].plan)
        .unwrap();
    w.must_ping(0, c2);
    w.must_ping(1, c1);
    let after = w.hosts[1]
        .backend
        .as_ref()
        .unwrap()
        .peer_redirected(&w.hosts[1].plan)
        .unwrap();
    assert!(after >= before + 3, "fast path used: {before} -> {after}");

    for i in 0..2 {
        let obs = w.observe(i);
        assert!(obs.drifts.is_empty(), "host {i}: {:?}", obs.drifts);
        assert!(obs.counters.is_some());
    }
}

/// Fast-path packets go to the next hop the host's routing table names
/// for the remote host (`bpf_redirect_neigh` looks it up), not straight to
/// the remote host: here a more specific route sends host 1's
/// traffic for host 2 through a gateway (an address host 2 also answers
/// for, standing in for a router), while host 1's neighbour entry for host
/// 2 itself is a MAC nobody has: packets sent straight there are lost.
#[test]
fn the_fast_path_sends_to_the_routing_tables_next_hop() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let (h1, h2) = (w.hosts[0].ns.clone(), w.hosts[1].ns.clone());
    let (h1, h2) = (h1.as_str(), h2.as_str());
    let remote = w.hosts[1].plan.local_underlay.to_string();
    sh(&[
        "ip",
        "-n",
        h2,
        "addr",
        "add",
        "172.30.9.1/32",
        "dev",
        UPLINK,
    ]);
    sh(&[
        "ip",
        "-n",
        h1,
        "route",
        "add",
        &format!("{remote}/32"),
        "via",
        "172.30.9.1",
        "dev",
        UPLINK,
        "onlink",
    ]);
    sh(&[
        "ip",
        "-n",
        h1,
        "neigh",
        "replace",
        &remote,
        "lladdr",
        "02:00:00:00:00:99",
        "nud",
        "permanent",
        "dev",
        UPLINK,
    ]);
    // The more specific route makes the agent let the kernel look the
    // next hop up again (the refresher follows route events; here an apply).
    w.apply(0);
    assert!(!on_link(&w), "a gateway route inside the underlay");
    let fast = |w: &World| {
        let dir = fan_dataplane::ebpf::pin::network_dir(&w.hosts[0].pin_root, NETWORK).unwrap();
        fan_dataplane::ebpf::pinned_counter_slots(&dir).unwrap()
            [fan_dataplane::ebpf::maps::slot::FAST_PATH_ENCAPSULATED as usize]
    };
    let before = fast(&w);
    w.must_ping(0, w.hosts[1].container_ip);
    assert!(fast(&w) > before, "the pings took the fast path");
    let neighbours = sh(&["ip", "-n", h1, "neigh", "show", "dev", UPLINK]);
    assert!(neighbours.contains("172.30.9.1 "), "{neighbours}");
}

/// Whether host 0's fast path hands the kernel the remote host as next hop.
fn on_link(w: &World) -> bool {
    let dir = fan_dataplane::ebpf::pin::network_dir(&w.hosts[0].pin_root, NETWORK).unwrap();
    let config = fan_dataplane::ebpf::pinned_config(&dir).expect("pinned config");
    config.flags & fan_dataplane::ebpf::maps::FLAG_UNDERLAY_ON_LINK != 0
}

#[test]
fn the_next_hop_is_given_only_while_the_whole_underlay_is_on_link() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let h1 = w.hosts[0].ns.clone();
    let c2 = w.hosts[1].container_ip;
    let fast = |w: &World| {
        let dir = fan_dataplane::ebpf::pin::network_dir(&w.hosts[0].pin_root, NETWORK).unwrap();
        fan_dataplane::ebpf::pinned_counter_slots(&dir).unwrap()
            [fan_dataplane::ebpf::maps::slot::FAST_PATH_ENCAPSULATED as usize]
    };
    // A flat underlay: 172.30.0.0/16 straight out of the uplink.
    assert!(on_link(&w), "flat underlay");
    let before = fast(&w);
    w.must_ping(0, c2);
    assert!(fast(&w) > before, "the fast path carried the pings");
    let drifts = w.observe(0).drifts;
    assert!(drifts.is_empty(), "{drifts:?}");

    // Each of these makes the kernel's answer depend on more than the
    // destination: the flag goes, traffic still flows, and the flag comes
    // back when the change is undone.
    let changes: [(&[&str], &[&str]); 3] = [
        (
            &[
                "rule", "add", "fwmark", "0x99", "lookup", "99", "pref", "100",
            ],
            &["rule", "del", "pref", "100"],
        ),
        (
            &["route", "add", "blackhole", "172.30.200.0/24"],
            &["route", "del", "blackhole", "172.30.200.0/24"],
        ),
        (
            &["addr", "add", "172.30.77.7/32", "dev", "lo"],
            &["addr", "del", "172.30.77.7/32", "dev", "lo"],
        ),
    ];
    for (change, undo) in changes {
        let ip = |args: &[&str]| {
            let mut cmd = vec!["ip", "-n", h1.as_str()];
            cmd.extend_from_slice(args);
            sh(&cmd);
        };
        ip(change);
        // Observe reports the stale flag as drift until an apply follows.
        let drifts = w.observe(0).drifts;
        assert!(!drifts.is_empty(), "{change:?}: drift");
        w.apply(0);
        assert!(!on_link(&w), "{change:?}");
        w.must_ping(0, c2);
        ip(undo);
        w.apply(0);
        assert!(on_link(&w), "{undo:?}");
        w.must_ping(0, c2);
    }
}

#[test]
fn kernel_ipip_is_accepted_spoofing_and_fragments_are_dropped() {
    let Some(w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let c1 = w.hosts[0].container_ip;
    let h1 = Ipv4Addr::new(172, 30, 0, 28);

    // A packet built by the kernel's own IPIP code, inner source in h2's
    // slice: decapsulated, and c1's answer goes back encapsulated.
    let capture = capture_on(&w.hosts[1].ns, "ip proto 4 and src host 172.30.0.28", 1);
    let probe = Ipv4Addr::new(250, 0, 27, 77);
    ipip_from(&w.hosts[1].ns, h1, &icmp_echo(probe, c1));
    let dump = finish_capture(capture).expect("tcpdump");
    assert!(
        dump.contains(&format!("{c1} > {probe}")) && dump.contains("echo reply"),
        "answer to the kernel-built IPIP packet:\n{dump}"
    );

    // Inner source in another host's slice (maps to 172.30.0.99, not .27).
    let before = w.counters(0);
    let spoofed = Ipv4Addr::new(250, 0, 99, 9);
    ipip_from(&w.hosts[1].ns, h1, &icmp_echo(spoofed, c1));
    // Inner source outside the overlay altogether.
    ipip_from(
        &w.hosts[1].ns,
        h1,
        &icmp_echo(Ipv4Addr::new(10, 9, 9, 9), c1),
    );
    wait_for("spoofed packets counted", || {
        w.counters(0).dropped_spoofed >= before.dropped_spoofed + 2
    });

    // 3000 bytes through a 1500 underlay: the kernel fragments the outer packet.
    let legit = Ipv4Addr::new(250, 0, 27, 78);
    ipip_from(&w.hosts[1].ns, h1, &icmp_echo_sized(legit, c1, 3000));
    wait_for("outer fragments counted", || {
        w.counters(0).dropped_fragment >= before.dropped_fragment + 2
    });
    let after = w.counters(0);
    assert_eq!(
        after.decapsulated, before.decapsulated,
        "nothing bad was decapsulated"
    );
}

#[test]
fn apply_is_idempotent_and_survives_restart() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let c2 = w.hosts[1].container_ip;
    let tunnel = fan_dataplane::ebpf::tunnel_name(INDEX);
    let prio = tc_priority(INDEX).unwrap().to_string();

    let ingress = w.tc(0, UPLINK, "ingress");
    let egress = w.tc(0, &tunnel, "egress");
    assert_eq!(filter_lines(&ingress).len(), 1, "{ingress}");
    assert_eq!(filter_lines(&egress).len(), 1, "{egress}");
    assert!(
        ingress.contains(&format!("pref {prio}")) && ingress.contains("fan_decap"),
        "{ingress}"
    );
    assert!(
        egress.contains("fan_encap") && egress.contains("handle 0xfa"),
        "{egress}"
    );
    let (decap_id, encap_id) = (
        prog_id(filter_lines(&ingress)[0]),
        prog_id(filter_lines(&egress)[0]),
    );

    // Twice more: nothing stacks, nothing is swapped.
    w.apply(0);
    w.apply(0);
    let ingress = w.tc(0, UPLINK, "ingress");
    let egress = w.tc(0, &tunnel, "egress");
    assert_eq!(filter_lines(&ingress).len(), 1, "{ingress}");
    assert_eq!(filter_lines(&egress).len(), 1, "{egress}");
    assert_eq!(prog_id(filter_lines(&ingress)[0]), decap_id);
    assert_eq!(prog_id(filter_lines(&egress)[0]), encap_id);
    let routes = sh(&[
        "ip",
        "-n",
        &w.hosts[0].ns,
        "route",
        "show",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ]);
    assert_eq!(routes.lines().count(), 1, "{routes}");

    // The agent "exits": the data path does not depend on the process.
    w.hosts[0].backend.take();
    w.must_ping(0, c2);
    let counted = w.counters_via_new_backend(0);

    // A new agent adopts everything: same programs, same maps (counters kept).
    w.restart(0);
    w.apply(0);
    let ingress = w.tc(0, UPLINK, "ingress");
    assert_eq!(filter_lines(&ingress).len(), 1, "{ingress}");
    assert_eq!(prog_id(filter_lines(&ingress)[0]), decap_id);
    assert!(w.counters(0).encapsulated >= counted.encapsulated);
    w.must_ping(0, c2);

    // Pins lost (bpffs remounted, say): the maps are recreated and the
    // programs swapped in place in the same filters, still one per hook.
    std::fs::remove_dir_all(w.hosts[0].pin_root.join(NETWORK)).unwrap();
    w.apply(0);
    let ingress = w.tc(0, UPLINK, "ingress");
    let egress = w.tc(0, &tunnel, "egress");
    assert_eq!(filter_lines(&ingress).len(), 1, "{ingress}");
    assert_eq!(filter_lines(&egress).len(), 1, "{egress}");
    assert_ne!(
        prog_id(filter_lines(&ingress)[0]),
        decap_id,
        "replaced in place"
    );
    w.must_ping(0, c2);
    assert!(w.observe(0).drifts.is_empty());

    // Drift is reported.
    sh(&["ip", "-n", &w.hosts[0].ns, "route", "del", "250.0.0.0/8"]);
    let drifts = w.observe(0).drifts;
    assert!(
        drifts
            .iter()
            .any(|d| d.object == "route 250.0.0.0/8" && d.observed == "absent"),
        "{drifts:?}"
    );
    w.apply(0);
    assert!(w.observe(0).drifts.is_empty());
}

/// The agent stopped between creating the tunnel pair and marking it: the
/// pair, born in the fan device group (as `Netlink::create_veth` makes it),
/// is claimed by the next apply, both ends marked, and the fan works.
#[test]
fn a_tunnel_left_unmarked_by_an_interrupted_creation_is_claimed() {
    let Some(mut w) = World::new(&SHAPE_16, false) else {
        return;
    };
    let c2 = w.hosts[1].container_ip;
    let tunnel = fan_dataplane::ebpf::tunnel_name(INDEX);
    let peer = format!("{tunnel}p");
    let group = FAN_DEVICE_GROUP.to_string();
    let ns = w.hosts[0].ns.clone();
    sh(&[
        "ip", "-n", &ns, "link", "add", &tunnel, "group", &group, "type", "veth", "peer", "name",
        &peer, "group", &group,
    ]);
    w.apply(0);
    w.apply(1);
    for dev in [&tunnel, &peer] {
        let shown = sh(&["ip", "-n", &ns, "-d", "link", "show", dev]);
        assert!(shown.contains("alias fan:"), "{dev} marked: {shown}");
    }
    w.must_ping(0, c2);
    assert!(w.observe(0).drifts.is_empty());
}

/// The egress fast path runs on each container port too; a port filter
/// removed behind the agent's back is reported as drift and put back.
#[test]
fn a_lost_port_filter_is_drift_and_repaired() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let on_port = w.tc(0, "vc", "ingress");
    if !on_port.contains("fan_fastpath") {
        // A kernel without the egress fast path (it needs Linux 5.12).
        eprintln!("skipped: no egress fast path on this kernel");
        return;
    }
    assert!(w.observe(0).drifts.is_empty());
    let prio = tc_priority(INDEX).unwrap().to_string();
    sh(&[
        "tc",
        "-n",
        &w.hosts[0].ns,
        "filter",
        "del",
        "dev",
        "vc",
        "ingress",
        "pref",
        &prio,
    ]);
    let drifts = w.observe(0).drifts;
    assert!(
        drifts
            .iter()
            .any(|d| d.object == "tc filter fan_fastpath on vc ingress" && d.observed == "absent"),
        "{drifts:?}"
    );
    w.apply(0);
    assert!(w.tc(0, "vc", "ingress").contains("fan_fastpath"));
    assert!(w.observe(0).drifts.is_empty());
    let c2 = w.hosts[1].container_ip;
    w.must_ping(0, c2);
}

impl World {
    fn counters_via_new_backend(&self, i: usize) -> Counters {
        let h = &self.hosts[i];
        EbpfBackend::new(h.pin_root.clone())
            .counters(&h.plan)
            .expect("counters")
    }
}

#[test]
fn remove_leaves_nothing_behind() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    w.must_ping(0, w.hosts[1].container_ip);
    let tunnel = fan_dataplane::ebpf::tunnel_name(INDEX);
    let ids: Vec<u32> = [w.tc(0, UPLINK, "ingress"), w.tc(0, &tunnel, "egress")]
        .iter()
        .map(|out| prog_id(filter_lines(out)[0]))
        .collect();

    w.remove(0);
    w.remove(0); // idempotent
    let ns = w.hosts[0].ns.clone();
    assert_eq!(w.tc(0, UPLINK, "ingress").trim(), "");
    let qdiscs = sh(&["tc", "-n", &ns, "qdisc", "show", "dev", UPLINK]);
    assert!(
        !qdiscs.contains("clsact"),
        "clsact we created is gone: {qdiscs}"
    );
    let (exists, _) = try_sh(&["ip", "-n", &ns, "link", "show", &tunnel]);
    assert!(!exists, "tunnel device gone");
    let (exists, _) = try_sh(&["ip", "-n", &ns, "link", "show", &format!("{tunnel}p")]);
    assert!(!exists, "tunnel peer gone");
    let routes = sh(&[
        "ip",
        "-n",
        &ns,
        "route",
        "show",
        "proto",
        &ROUTE_PROTOCOL.to_string(),
    ]);
    assert_eq!(routes.trim(), "");
    assert!(!w.hosts[0].pin_root.join(NETWORK).exists(), "pin dir gone");
    // The programs are freed once the filters are gone (after an RCU grace period).
    wait_for("programs unloaded", || {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .map(|p| p.id())
            .collect();
        ids.iter().all(|id| !loaded.contains(id))
    });
    // What is not ours stays.
    sh(&["ip", "-n", &ns, "link", "show", BRIDGE]);
    sh(&["ip", "-n", &ns, "link", "show", UPLINK]);

    // A clsact that was there before us is left in place.
    sh(&["tc", "-n", &ns, "qdisc", "add", "dev", UPLINK, "clsact"]);
    w.apply(0);
    w.remove(0);
    let qdiscs = sh(&["tc", "-n", &ns, "qdisc", "show", "dev", UPLINK]);
    assert!(qdiscs.contains("clsact"), "foreign clsact kept: {qdiscs}");
    assert_eq!(w.tc(0, UPLINK, "ingress").trim(), "");
}

#[test]
fn slash8_over_slash24_gives_slash16_slices() {
    let Some(mut w) = World::new(&SHAPE_24, true) else {
        return;
    };
    w.must_ping(0, w.hosts[1].container_ip);
    w.must_ping(1, w.hosts[0].container_ip);
    w.refresh(1);
    w.must_ping(0, Ipv4Addr::new(250, 9, 0, 5));
    assert!(w.observe(0).drifts.is_empty());
}

/// Entries in the pinned endpoint map of host `h`.
fn endpoint_entries(pin_root: &std::path::Path) -> usize {
    let path = pin_root.join(NETWORK).join("fan_endpoints");
    let data = aya::maps::MapData::from_pin(&path).expect("pinned endpoint map");
    let map = aya::maps::Map::from_map_data(data).unwrap();
    let map: aya::maps::HashMap<_, u32, [u8; 16]> = aya::maps::HashMap::try_from(map).unwrap();
    map.keys().count()
}

/// The task `apply` starts keeps the endpoint map in sync with the kernel
/// (neighbour and link events), without explicit refreshes.
#[test]
fn endpoint_map_follows_kernel_events() {
    let Some(mut w) = World::new(&SHAPE_16, false) else {
        return;
    };
    w.apply(0);
    let h2 = &w.hosts[1];
    let (ns, c1_ns, c2) = (
        h2.ns.clone(),
        w.hosts[0].container_ns.clone(),
        h2.container_ip,
    );
    let root = h2.pin_root.clone();
    let plan = w.hosts[1].plan.clone();
    Netns::existing(&ns).block_on(move || async move {
        let backend = EbpfBackend::new(root.clone());
        backend.apply(&plan).await.expect("apply");
        assert_eq!(
            endpoint_entries(&root),
            0,
            "no neighbour entry for the container yet"
        );
        let ping = || {
            tokio::process::Command::new("ip")
                .args([
                    "netns", "exec", &c1_ns, "ping", "-c", "2", "-i", "0.2", "-W", "2",
                ])
                .arg(c2.to_string())
                .output()
        };
        assert!(ping().await.unwrap().status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while endpoint_entries(&root) == 0 {
            assert!(
                Instant::now() < deadline,
                "endpoint map not filled by the task"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = backend.peer_redirected(&plan).unwrap();
        assert!(ping().await.unwrap().status.success());
        assert!(
            backend.peer_redirected(&plan).unwrap() > before,
            "fast path used"
        );

        // The container goes away: its entry follows.
        let out = tokio::process::Command::new("ip")
            .args(["link", "del", "vc"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while endpoint_entries(&root) != 0 {
            assert!(Instant::now() < deadline, "stale endpoint not removed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// A second fan (251/8) over the same underlay device: each network has its
/// own filter; a packet not for one network's slice passes on to the next.
#[test]
fn two_networks_share_the_underlay() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let mut plans = Vec::new();
    for h in &w.hosts {
        let slice: Ipv4Network = h
            .plan
            .slice
            .to_string()
            .replacen("250.", "251.", 1)
            .parse()
            .unwrap();
        let plan = NetworkPlan {
            network_id: "second".into(),
            index: INDEX + 1,
            overlay: "251.0.0.0/8".parse().unwrap(),
            slice,
            gateway: nth_host(slice, 1),
            bridge: "fanbr2".into(),
            ..h.plan.clone()
        };
        let gw = format!("{}/{}", plan.gateway, slice.prefix());
        for cmd in [
            vec![
                "ip", "-n", &h.ns, "link", "add", "name", "fanbr2", "type", "bridge",
            ],
            vec!["ip", "-n", &h.ns, "addr", "add", &gw, "dev", "fanbr2"],
            vec!["ip", "-n", &h.ns, "link", "set", "fanbr2", "up"],
        ] {
            sh(&cmd);
        }
        let root = h.pin_root.clone();
        let p = plan.clone();
        Netns::existing(&h.ns).block_on(move || async move {
            EbpfBackend::new(root)
                .apply(&p)
                .await
                .expect("apply second network");
        });
        plans.push(plan);
    }
    let host_ns: Vec<String> = w.hosts.iter().map(|h| h.ns.clone()).collect();
    let ping_gw = |from: usize| {
        let (src, dst) = (
            plans[from].gateway.to_string(),
            plans[1 - from].gateway.to_string(),
        );
        sh(&[
            "ip",
            "netns",
            "exec",
            &host_ns[from],
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            &src,
            &dst,
        ]);
    };
    ping_gw(0);
    ping_gw(1);
    w.must_ping(0, w.hosts[1].container_ip);
    let ingress = w.tc(0, UPLINK, "ingress");
    assert_eq!(filter_lines(&ingress).len(), 2, "{ingress}");

    // Removing the first network leaves the second working, clsact included.
    w.remove(0);
    w.remove(1);
    let ingress = w.tc(0, UPLINK, "ingress");
    assert_eq!(filter_lines(&ingress).len(), 1, "{ingress}");
    ping_gw(0);
    for (h, plan) in w.hosts.iter().zip(&plans) {
        let (root, p) = (h.pin_root.clone(), plan.clone());
        Netns::existing(&h.ns).block_on(move || async move {
            EbpfBackend::new(root)
                .remove(&p)
                .await
                .expect("remove second network");
        });
    }
    assert_eq!(w.tc(0, UPLINK, "ingress").trim(), "");
}

// ------------------------------------------------------------- throughput

fn iperf(server_ns: &str, client_ns: &str, server: Ipv4Addr, seconds: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        client_ns,
        "iperf3",
        "-J",
        "-t",
        &seconds.to_string(),
        "-c",
        &server.to_string(),
    ]);
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
}

fn rtt_ms(client_ns: &str, to: Ipv4Addr) -> f64 {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        client_ns,
        "ping",
        "-q",
        "-c",
        "50",
        "-i",
        "0.01",
        &to.to_string(),
    ]);
    // rtt min/avg/max/mdev = 0.031/0.045/0.090/0.010 ms
    let stats = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .expect("ping summary");
    stats
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Underlay, plain routing (control) and the fan, interleaved round by
/// round so that each ratio compares measurements taken under the same
/// machine load. `FHC_SECONDS` (default 5) per run, `FHC_ROUNDS` (default 3).
#[test]
#[ignore = "performance measurement; run with --ignored --nocapture"]
fn throughput() {
    let Some(mut w) = World::new(&SHAPE_16, true) else {
        return;
    };
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (secs, rounds) = (env("FHC_SECONDS", 5), env("FHC_ROUNDS", 3));
    let (h1, h2) = (w.hosts[0].ns.clone(), w.hosts[1].ns.clone());
    let (c1, c2) = (
        w.hosts[0].container_ns.clone(),
        w.hosts[1].container_ns.clone(),
    );
    let (ip1, ip2) = (w.hosts[0].container_ip, w.hosts[1].container_ip);
    let u2 = w.hosts[1].plan.local_underlay;
    let gbit = |b: f64| b / 1e9;
    w.must_ping(0, ip2);
    w.must_ping(1, ip1);
    assert_eq!(w.refresh(0), 1);
    assert_eq!(w.refresh(1), 1);

    // More specific than the fan's 250.0.0.0/8: while present, container
    // traffic is plainly routed over the same hops (the control).
    let control_routes = |add: bool| {
        let verb = if add { "add" } else { "del" };
        sh(&[
            "ip",
            "-n",
            &h1,
            "route",
            verb,
            "250.0.27.0/24",
            "via",
            "172.30.0.27",
        ]);
        sh(&[
            "ip",
            "-n",
            &h2,
            "route",
            verb,
            "250.0.28.0/24",
            "via",
            "172.30.0.28",
        ]);
    };
    let fast_path = |w: &mut World, on: bool| {
        for i in 0..2 {
            let root = w.hosts[i].pin_root.clone();
            w.hosts[i].backend = Some(EbpfBackend::new(root).with_peer_fast_path(on));
            w.apply(i);
        }
    };

    let (mut underlay, mut control, mut fan, mut slow, mut reverse) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut fan_ratio, mut slow_ratio) = (vec![], vec![]);
    let (mut u_rtt, mut c_rtt, mut f_rtt) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let u = iperf(&h2, &h1, u2, secs);
        let f = iperf(&c2, &c1, ip2, secs);
        reverse.push(iperf(&c1, &c2, ip1, secs));
        f_rtt.push(rtt_ms(&c1, ip2));
        control_routes(true);
        let c = iperf(&c2, &c1, ip2, secs);
        c_rtt.push(rtt_ms(&c1, ip2));
        control_routes(false);
        fast_path(&mut w, false);
        let sl = iperf(&c2, &c1, ip2, secs);
        fast_path(&mut w, true);
        u_rtt.push(rtt_ms(&h1, u2));
        println!(
            "round {round}: underlay {:.2}  control {:.2}  fan {:.2}  fan-slow-path {:.2} Gbit/s",
            gbit(u),
            gbit(c),
            gbit(f),
            gbit(sl)
        );
        fan_ratio.push(f / c);
        slow_ratio.push(sl / c);
        underlay.push(u);
        control.push(c);
        fan.push(f);
        slow.push(sl);
    }
    println!("medians over {rounds} rounds of {secs} s:");
    println!(
        "underlay host->host     {:6.2} Gbit/s  rtt {:.3} ms",
        gbit(median(underlay.clone())),
        median(u_rtt)
    );
    println!(
        "control (plain routing) {:6.2} Gbit/s  rtt {:.3} ms",
        gbit(median(control.clone())),
        median(c_rtt)
    );
    println!(
        "fan, peer fast path     {:6.2} Gbit/s  rtt {:.3} ms  (reverse {:.2})",
        gbit(median(fan.clone())),
        median(f_rtt),
        gbit(median(reverse))
    );
    println!("fan, slow path only     {:6.2} Gbit/s", gbit(median(slow)));
    println!(
        "fan/control {:.3} (per-round median)  fan/underlay {:.3}  control/underlay {:.3}  slow/control {:.3}",
        median(fan_ratio),
        median(fan) / median(underlay.clone()),
        median(control) / median(underlay),
        median(slow_ratio)
    );
    println!("counters h1 {:?}", w.counters(0));
    println!("counters h2 {:?}", w.counters(1));
}
