//! The ipip and kernel-fan backends against a real kernel, in the test
//! kit's network namespaces (named `<unique id>-…`, removed on
//! drop, also on panic).
//!
//! Most tests need ipip.ko, which this project's CI kernel lacks: they are
//! `#[ignore]`d and run inside the stock-kernel VM by `make test-kernels`
//! (tests/vm/run-kernel-suite.sh), which passes `--ignored` and sets
//! FAN_KERNEL_SUITE=1. With that variable set a missing ipip module is a
//! failure; without it the tests print "skipped" and pass, so a plain
//! `cargo test -- --ignored` elsewhere does not fail on them.
//!
//! `route_batches_on_a_veth` needs no ipip module and runs wherever root
//! is (it checks the pipelined batch helper on the host's own kernel).

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fan_core::fan::FanMap;
use fan_testkit::{sh, try_sh, veth_pair, Netns};
use ipnetwork::Ipv4Network;

use super::device::{self, Role};
use super::{probe, routes, IpipBackend};
use crate::host::HostSetup;
use crate::kernel_fan::KernelFanBackend;
use crate::netlink::{Netlink, Route4, RouteChange, ROUTE_BATCH_SIZE, TABLE_MAIN};
use crate::{BackendKind, DataplaneError, Encapsulation, NetworkPlan, ROUTE_PROTOCOL};

/// True inside the kernel suite (then ipip must be there); false, with a
/// message, elsewhere.
fn kernel_suite() -> bool {
    if std::env::var("FAN_KERNEL_SUITE").as_deref() != Ok("1") {
        eprintln!("skipped: needs ipip.ko (run make test-kernels)");
        return false;
    }
    assert!(fan_testkit::is_root(), "FAN_KERNEL_SUITE=1 but not root");
    if let Err(reason) = probe::ipip_module() {
        panic!("FAN_KERNEL_SUITE=1 but {reason}");
    }
    true
}

/// A network namespace (the test kit's guard: deleted on drop, also on
/// panic) with panicking shorthands.
struct Ns(Netns);

impl Ns {
    fn new(tag: &str) -> Ns {
        Ns(Netns::unique(tag).expect("create namespace"))
    }

    fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -n NS` with the words of `line`.
    fn ipw(&self, line: &str) -> String {
        self.ip(&line.split_whitespace().collect::<Vec<_>>())
    }

    fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["ip", "netns", "exec", &self.0.name];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// Runs an async `body` on a current-thread runtime inside the namespace.
    fn block<T, F, Fut>(&self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.0.block_on(body)
    }
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn plan(id: &str, index: u16, overlay: &str, underlay: &str, local: &str) -> NetworkPlan {
    let overlay = net(overlay);
    let underlay = net(underlay);
    let local: Ipv4Addr = local.parse().unwrap();
    let slice = FanMap::new(overlay, underlay)
        .unwrap()
        .slice_of(local)
        .unwrap();
    NetworkPlan {
        network_id: id.into(),
        index,
        overlay,
        underlay,
        local_underlay: local,
        underlay_interface: "uplink".into(),
        underlay_mtu: 1500,
        slice,
        gateway: Ipv4Addr::from(u32::from(slice.network()) + 1),
        bridge: format!("fanbr{index}"),
        mtu: 1480,
        masquerade: false,
        anti_spoofing: true,
        backend: BackendKind::Ipip,
    }
}

/// Two hosts joined by an underlay veth (`uplink` in each).
struct Pair {
    h: [Ns; 2],
}

impl Pair {
    fn new(underlay: &str, addrs: [&str; 2]) -> Pair {
        let h = [Ns::new("h1"), Ns::new("h2")];
        veth_pair(&h[0].0, "uplink", &h[1].0, "uplink").expect("underlay veth");
        let prefix = net(underlay).prefix();
        for (ns, addr) in h.iter().zip(addrs) {
            ns.ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", "uplink"]);
            ns.ip(&["link", "set", "uplink", "up"]);
        }
        Pair { h }
    }
}

/// Applies the host part (bridge with the gateway) and the backend.
async fn apply_all(backend: &dyn Encapsulation, plan: &NetworkPlan) -> crate::Result<()> {
    let nl = Netlink::new()?;
    HostSetup::new(nl).apply(plan).await?;
    backend.apply(plan).await
}

async fn remove_all(backend: &dyn Encapsulation, plan: &NetworkPlan) -> crate::Result<()> {
    let nl = Netlink::new()?;
    backend.remove(plan).await?;
    HostSetup::new(nl).remove(plan).await
}

async fn our_routes(plan: &NetworkPlan) -> Vec<Route4> {
    let nl = Netlink::new().unwrap();
    nl.ipv4_routes(Some(TABLE_MAIN))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && routes::in_overlay(r, plan.overlay))
        .collect()
}

async fn fan_devices(role: Role) -> Vec<(String, Option<String>)> {
    let nl = Netlink::new().unwrap();
    nl.links()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.name.starts_with(role.prefix()))
        .map(|l| (l.name, l.alias))
        .collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn route_batches_on_a_veth() {
    if fan_testkit::skip_unless_root() {
        return;
    }
    let ns = Ns::new("batch");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["addr", "add", "172.30.0.28/16", "dev", "v0"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    ns.ipw("route add 10.9.0.0/16 table 1000 nexthop via 172.30.0.1 dev v0 nexthop via 172.30.0.2 dev v0");
    ns.ipw("route add 10.8.0.0/16 dev v0 table 1000 metric 7 src 172.30.0.28 proto 99");
    let count: u32 = std::env::var("FHF_BATCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    ns.block(move || async move {
        let nl = Netlink::new().unwrap();
        let v0 = nl.require_link("v0").await.unwrap().index;
        let route = |i: u32| Route4 {
            oif: Some(v0),
            via: Some(Ipv4Addr::new(172, 31, (i >> 8) as u8, i as u8)),
            protocol: ROUTE_PROTOCOL,
            onlink: true,
            // One metric per route, as the backend does (see routes.rs).
            metric: Some(i),
            ..Route4::new(Ipv4Network::new(Ipv4Addr::from(0xfa00_0000 | (i << 8)), 24).unwrap())
        };
        let adds: Vec<RouteChange> = (1..=count).map(|i| RouteChange::Add(route(i))).collect();
        let start = Instant::now();
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let report = nl
            .change_routes(adds.clone(), ROUTE_BATCH_SIZE, move |_, _| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        let add_time = start.elapsed();
        assert_eq!(
            (report.done, report.failed),
            (count as usize, 0),
            "{:?}",
            report.errors
        );
        assert_eq!(calls.load(Ordering::SeqCst), count as usize);
        // Again: every add finds its route (EEXIST), nothing fails.
        let again = nl.change_routes(adds, 64, |_, _| {}).await;
        assert_eq!(
            (again.done, again.already, again.failed),
            (0, count as usize, 0)
        );
        let start = Instant::now();
        let listed = nl.ipv4_routes(Some(TABLE_MAIN)).await.unwrap();
        let dump_time = start.elapsed();
        // The bulk dump sees the same routes, field for field (all tables:
        // local and broadcast routes, a multipath route, another table).
        let start = Instant::now();
        let mut bulk = nl.ipv4_routes_bulk(None).await.unwrap();
        let bulk_time = start.elapsed();
        let mut plain = nl.ipv4_routes_by_rtnetlink().await.unwrap();
        let order = |r: &Route4| (u32::from(r.destination.network()), r.destination.prefix(), r.table, r.metric, r.oif);
        bulk.sort_by_key(order);
        plain.sort_by_key(order);
        assert_eq!(bulk.len(), plain.len());
        assert!(bulk == plain, "bulk and plain dumps differ");
        assert!(bulk.iter().any(|r| r.table == 1000 && r.oif.is_some()));
        assert!(bulk.iter().any(|r| r.destination.prefix() == 16 && r.via.is_none() && r.oif.is_some() && r.table == 1000));
        assert_eq!(
            nl.ipv4_routes_bulk(Some(TABLE_MAIN)).await.unwrap().len(),
            listed.len()
        );
        assert_eq!(
            listed
                .iter()
                .filter(|r| r.protocol == ROUTE_PROTOCOL)
                .count(),
            count as usize
        );
        // A failing change is reported with its route, the rest still happen.
        let mut bad = route(1);
        bad.oif = Some(999_999);
        let mixed = vec![
            RouteChange::Replace(bad),
            RouteChange::Delete(route(2)),
            RouteChange::Delete(route(2)),
        ];
        let report = nl.change_routes(mixed, 8, |_, _| {}).await;
        assert_eq!((report.done, report.already, report.failed), (1, 1, 1));
        let err = report.into_result("test batch").unwrap_err().to_string();
        assert!(
            err.contains("1 of 3 route changes failed") && err.contains("250.0.1.0/24"),
            "{err}"
        );
        let deletes: Vec<RouteChange> =
            (1..=count).map(|i| RouteChange::Delete(route(i))).collect();
        let start = Instant::now();
        let report = nl.change_routes(deletes, ROUTE_BATCH_SIZE, |_, _| {}).await;
        let delete_time = start.elapsed();
        assert_eq!(report.failed, 0);
        eprintln!(
            "route batch on this kernel: {count} adds in {:.0} ms, dump in {:.0} ms (bulk {:.0} ms), {count} deletes in {:.0} ms",
            add_time.as_secs_f64() * 1e3,
            dump_time.as_secs_f64() * 1e3,
            bulk_time.as_secs_f64() * 1e3,
            delete_time.as_secs_f64() * 1e3
        );
    });
}

#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn ipip_two_hosts_apply_observe_repair_remove() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("10.1.2.0/24", ["10.1.2.7", "10.1.2.9"]);
    let plans = [
        plan("fan", 3, "250.0.0.0/8", "10.1.2.0/24", "10.1.2.7"),
        plan("fan", 3, "250.0.0.0/8", "10.1.2.0/24", "10.1.2.9"),
    ];
    for (ns, p) in pair.h.iter().zip(plans.clone()) {
        ns.block(move || async move {
            let backend = IpipBackend::new();
            assert!(backend.availability().await.available);
            apply_all(&backend, &p).await.expect("apply");
            let obs = backend.observe(&p).await.unwrap();
            assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
            // Idempotent.
            backend.apply(&p).await.expect("apply again");
            assert_eq!(our_routes(&p).await.len(), 1 + 253);
        });
    }
    let link = pair.h[0].ip(&["-d", "link", "show", "fanipip3"]);
    assert!(
        link.contains("ipip") && link.contains("local 10.1.2.7") && link.contains("alias fan:fan"),
        "{link}"
    );
    let route = pair.h[0].ip(&["route", "show", "250.9.0.0/16"]);
    assert!(
        route.contains("via 10.1.2.9 dev fanipip3")
            && route.contains("proto 250")
            && route.contains("src 250.7.0.1")
            && route.contains("onlink"),
        "{route}"
    );

    // Gateway to gateway over the tunnel (the route's src is the gateway).
    let (ok, out) = pair.h[0].exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "250.9.0.1"]);
    assert!(ok, "ping h1 -> h2 over ipip: {out}");
    let (ok, out) = pair.h[1].exec(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "250.7.0.1"]);
    assert!(ok, "ping h2 -> h1 over ipip: {out}");

    // Damage: a route gone, one pointing elsewhere, a stale one of ours.
    let h1 = &pair.h[0];
    h1.ip(&["route", "del", "250.9.0.0/16"]);
    h1.ipw("route replace 250.3.0.0/16 via 10.1.2.99 dev fanipip3 onlink proto 250 metric 3 src 250.7.0.1");
    h1.ipw("route add 250.7.128.0/17 via 10.1.2.8 dev fanipip3 onlink proto 250");
    // Someone else's route to a slice is left alone (and reported).
    h1.ipw("route add 250.4.0.0/16 via 10.1.2.4 dev uplink proto static");
    let p = plans[0].clone();
    h1.block(move || async move {
        let backend = IpipBackend::new();
        let obs = backend.observe(&p).await.unwrap();
        let text = format!("{:?}", obs.drifts);
        assert!(
            text.contains("1 missing (e.g. 250.9.0.0/16 via 10.1.2.9)"),
            "{text}"
        );
        assert!(text.contains("1 with a wrong next hop"), "{text}");
        assert!(text.contains("1 stale (e.g. 250.7.128.0/17"), "{text}");
        backend.apply(&p).await.expect("repair");
        let obs = backend.observe(&p).await.unwrap();
        let text = format!("{:?}", obs.drifts);
        assert_eq!(obs.drifts.len(), 1, "{text}");
        assert!(
            text.contains("1 shadowed by routes not made by fan (e.g. 250.4.0.0/16"),
            "{text}"
        );
        let counters = obs.counters.expect("device counters");
        assert!(
            counters.encapsulated >= 2 && counters.decapsulated >= 2,
            "{counters:?}"
        );
    });
    let route = h1.ip(&["route", "show", "250.4.0.0/16"]);
    assert!(route.contains("proto static"), "{route}");
    h1.ip(&["route", "del", "250.4.0.0/16"]);

    for (ns, p) in pair.h.iter().zip(plans) {
        ns.block(move || async move {
            let backend = IpipBackend::new();
            remove_all(&backend, &p).await.expect("remove");
            assert!(our_routes(&p).await.is_empty());
            assert!(fan_devices(Role::Ipip).await.is_empty());
            let obs = backend.observe(&p).await.unwrap();
            assert!(!obs.drifts.is_empty());
            // Removing again succeeds.
            backend.remove(&p).await.expect("remove again");
        });
    }
}

#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn ipip_networks_share_one_device() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("10.1.2.0/24", ["10.1.2.7", "10.1.2.9"]);
    let a = plan("net-a", 1, "250.0.0.0/8", "10.1.2.0/24", "10.1.2.7");
    let b = plan("net-b", 2, "251.0.0.0/8", "10.1.2.0/24", "10.1.2.7");
    pair.h[0].block(move || async move {
        let backend = IpipBackend::new();
        apply_all(&backend, &a).await.expect("apply a");
        apply_all(&backend, &b).await.expect("apply b");
        let devices = fan_devices(Role::Ipip).await;
        assert_eq!(
            devices,
            vec![("fanipip1".to_string(), Some("fan:net-a,net-b".to_string()))]
        );
        for p in [&a, &b] {
            let obs = backend.observe(p).await.unwrap();
            assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
            assert!(
                obs.counters.is_none(),
                "a shared device has no per-network counters"
            );
            assert_eq!(our_routes(p).await.len(), 254);
        }
        // The first network leaves: its routes go, the device stays for b.
        let start = Instant::now();
        remove_all(&backend, &a).await.expect("remove a");
        eprintln!("shared device: 254 routes removed in {:?}", start.elapsed());
        assert!(our_routes(&a).await.is_empty());
        assert_eq!(our_routes(&b).await.len(), 254);
        assert_eq!(
            fan_devices(Role::Ipip).await,
            vec![("fanipip1".to_string(), Some("fan:net-b".to_string()))]
        );
        let obs = backend.observe(&b).await.unwrap();
        assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
        // a comes back: joins the device named after b's creator.
        apply_all(&backend, &a).await.expect("apply a again");
        assert_eq!(
            fan_devices(Role::Ipip).await,
            vec![("fanipip1".to_string(), Some("fan:net-a,net-b".to_string()))]
        );
        remove_all(&backend, &b).await.expect("remove b");
        remove_all(&backend, &a).await.expect("remove a");
        assert!(fan_devices(Role::Ipip).await.is_empty());
    });
}

#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn ipip_refuses_a_foreign_tunnel_in_the_way() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("10.1.2.0/24", ["10.1.2.7", "10.1.2.9"]);
    let h1 = &pair.h[0];
    h1.ip(&[
        "link", "add", "theirs", "type", "ipip", "local", "10.1.2.7", "dev", "uplink",
    ]);
    // And a foreign device holding our name.
    h1.ip(&[
        "link", "add", "fanipip5", "type", "veth", "peer", "name", "x5",
    ]);
    let p = plan("fan", 5, "250.0.0.0/8", "10.1.2.0/24", "10.1.2.7");
    h1.block(move || async move {
        let backend = IpipBackend::new();
        let err = apply_all(&backend, &p).await.unwrap_err().to_string();
        assert!(
            err.contains("ipip device theirs (not managed by fan) already is the tunnel"),
            "{err}"
        );
        let nl = Netlink::new().unwrap();
        let theirs = nl.require_link("theirs").await.unwrap();
        nl.delete_link(theirs.index).await.unwrap();
        // Now it works, under the next free name, and the veth is untouched.
        apply_all(&backend, &p).await.expect("apply");
        assert_eq!(
            fan_devices(Role::Ipip).await,
            vec![
                ("fanipip5".to_string(), None),
                ("fanipip5b".to_string(), Some("fan:fan".to_string()))
            ]
        );
        remove_all(&backend, &p).await.unwrap();
        assert_eq!(
            fan_devices(Role::Ipip).await,
            vec![("fanipip5".to_string(), None)]
        );

        // The kernel-fan backend's device of another network is in the way
        // too (the two backends cannot share a device): said so, untouched.
        let mut other = p.clone();
        other.network_id = "other".into();
        other.index = 6;
        device::ensure(&nl, &other, Role::KernelFan).await.unwrap();
        let err = apply_all(&backend, &p).await.unwrap_err().to_string();
        assert!(
            err.contains("ipip device fanmap6 (used by fan network(s) other of another backend)"),
            "{err}"
        );
        assert_eq!(
            fan_devices(Role::KernelFan).await,
            vec![("fanmap6".to_string(), Some("fan:other".to_string()))]
        );
        KernelFanBackend::new().remove(&other).await.unwrap();
        remove_all(&backend, &p).await.unwrap();
        assert!(fan_devices(Role::KernelFan).await.is_empty());
    });
}

/// The agent stopped between creating its ipip device and marking it: the
/// device, born in the fan device group, holds our tunnel triple; the next
/// apply claims it instead of refusing it as foreign.
#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn ipip_claims_a_device_left_unmarked_by_an_interrupted_creation() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("10.1.3.0/24", ["10.1.3.7", "10.1.3.9"]);
    let h1 = &pair.h[0];
    let group = crate::netlink::FAN_DEVICE_GROUP.to_string();
    h1.ip(&[
        "link", "add", "fanipip7", "group", &group, "type", "ipip", "local", "10.1.3.7", "dev",
        "uplink",
    ]);
    let p = plan("fan", 7, "250.0.0.0/8", "10.1.3.0/24", "10.1.3.7");
    h1.block(move || async move {
        let backend = IpipBackend::new();
        apply_all(&backend, &p).await.expect("apply claims it");
        assert_eq!(
            fan_devices(Role::Ipip).await,
            vec![("fanipip7".to_string(), Some("fan:fan".to_string()))]
        );
        let obs = backend.observe(&p).await.unwrap();
        assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
        remove_all(&backend, &p).await.unwrap();
        assert!(fan_devices(Role::Ipip).await.is_empty());
    });
}

#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn kernel_fan_is_detected_absent_and_backs_out_cleanly() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("10.1.2.0/24", ["10.1.2.7", "10.1.2.9"]);
    let mut p = plan("fan", 4, "250.0.0.0/8", "10.1.2.0/24", "10.1.2.7");
    p.backend = BackendKind::KernelFan;
    let on_ubuntu = std::path::Path::new(crate::kernel_fan::FAN_VERSION_FILE).exists();
    pair.h[0].block(move || async move {
        let backend = KernelFanBackend::new();
        let availability = backend.availability().await;
        if on_ubuntu {
            eprintln!("note: this kernel has the fan patch; the stock-kernel checks are skipped");
            return;
        }
        assert!(!availability.available);
        assert!(
            availability.reason.contains("no Ubuntu fan patch"),
            "{}",
            availability.reason
        );
        let err = backend.apply(&p).await.unwrap_err();
        assert!(
            matches!(
                err,
                DataplaneError::Unavailable {
                    backend: BackendKind::KernelFan,
                    ..
                }
            ),
            "{err}"
        );
        // Forced past detection: the kernel takes the changelink but ignores
        // attribute 33; apply notices, says why, and removes the device.
        let err = backend.apply_unchecked(&p).await.unwrap_err().to_string();
        assert!(
            err.contains("ignores IFLA_IPTUN_FAN_MAP (no Ubuntu fan patch)"),
            "{err}"
        );
        assert!(fan_devices(Role::KernelFan).await.is_empty());
        assert!(our_routes(&p).await.is_empty());
        // A device of ours the kernel fan would share is left alone by the
        // failure of another network: join it first, then fail.
        let mut other = p.clone();
        other.network_id = "other".into();
        let nl = Netlink::new().unwrap();
        device::ensure(&nl, &other, Role::KernelFan).await.unwrap();
        assert!(backend.apply_unchecked(&p).await.is_err());
        assert_eq!(
            fan_devices(Role::KernelFan).await,
            vec![("fanmap4".to_string(), Some("fan:other".to_string()))]
        );
        backend.remove(&other).await.unwrap();
        assert!(fan_devices(Role::KernelFan).await.is_empty());
    });
}

#[test]
#[ignore = "needs ipip.ko: run make test-kernels"]
fn ipip_slash16_route_install_and_removal() {
    if !kernel_suite() {
        return;
    }
    let pair = Pair::new("172.30.0.0/16", ["172.30.0.28", "172.30.0.27"]);
    let a = plan("big", 1, "250.0.0.0/8", "172.30.0.0/16", "172.30.0.28");
    let b = plan("big-b", 2, "251.0.0.0/8", "172.30.0.0/16", "172.30.0.28");
    let mut figures = pair.h[0].block(move || async move {
        let backend = IpipBackend::new();
        let mut figures = Vec::new();
        let nl = Netlink::new().unwrap();
        HostSetup::new(nl.clone()).apply(&a).await.unwrap();
        let t = Instant::now();
        backend.apply(&a).await.expect("apply /16");
        figures.push(("install 65,534 routes (apply)", t.elapsed()));
        assert_eq!(our_routes(&a).await.len(), 65_534);
        let t = Instant::now();
        backend.apply(&a).await.expect("apply again");
        figures.push(("re-apply, nothing to do (dump + diff)", t.elapsed()));
        let t = Instant::now();
        let obs = backend.observe(&a).await.unwrap();
        figures.push(("observe", t.elapsed()));
        assert!(obs.drifts.is_empty(), "{:?}", obs.drifts);
        // A second network on the device: removing the first then deletes
        // its 65,534 routes one by one (the device stays).
        HostSetup::new(nl.clone()).apply(&b).await.unwrap();
        let t = Instant::now();
        backend.apply(&b).await.expect("apply b");
        figures.push(("install 65,534 routes of a second network", t.elapsed()));
        let t = Instant::now();
        backend.remove(&a).await.expect("remove a");
        figures.push(("remove 65,534 routes from a shared device", t.elapsed()));
        assert!(our_routes(&a).await.is_empty());
        let t = Instant::now();
        backend.remove(&b).await.expect("remove b");
        figures.push(("remove the last network (device delete)", t.elapsed()));
        assert!(our_routes(&b).await.is_empty());
        assert!(fan_devices(Role::Ipip).await.is_empty());
        figures
    });
    eprintln!(
        "BENCH ipip /16 underlay (kernel {}):",
        sh(&["uname", "-r"]).trim()
    );
    for (what, d) in figures.drain(..) {
        eprintln!("BENCH   {what:<45} {:>8.0} ms", d.as_secs_f64() * 1e3);
    }
}
