//! FanMap arithmetic: worked examples, an exhaustive sweep over prefix pairs, properties.

use std::net::Ipv4Addr;

use fan_core::fan::{parse_network, parse_overlay, routed_overlap_warning, FanError, FanMap};
use ipnetwork::Ipv4Network;
use proptest::prelude::*;

fn n(s: &str) -> Ipv4Network {
    parse_network(s).unwrap()
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn map(o: &str, u: &str) -> FanMap {
    FanMap::new(n(o), n(u)).unwrap()
}

/// Independent statement of FAN.md §1, in u64 so no shift can overflow.
fn formula_slice(o: Ipv4Network, u: Ipv4Network, h: Ipv4Addr) -> Ipv4Network {
    let umask = (u64::MAX << (32 - u.prefix() as u64)) & 0xFFFF_FFFF;
    let host_bits = u64::from(u32::from(h)) & !umask & 0xFFFF_FFFF;
    let bits = host_bits << (u.prefix() - o.prefix());
    let addr = u64::from(u32::from(o.ip())) | bits;
    Ipv4Network::new(Ipv4Addr::from(addr as u32), o.prefix() + 32 - u.prefix()).unwrap()
}

#[test]
fn worked_examples_slice_of() {
    // (overlay, underlay, host, expected slice) — FAN.md §1.
    let cases = [
        // The announcement's example.
        (
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.30.0.28",
            "250.0.28.0/24",
        ),
        (
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.30.0.27",
            "250.0.27.0/24",
        ),
        // /8 over /24 gives /16 slices.
        ("250.0.0.0/8", "10.1.2.0/24", "10.1.2.7", "250.7.0.0/16"),
        // 99/8 over a /20: host bits of 10.99.238.5 are 0xE05 (14*256 + 5 = 3589); shifted left
        // by U - O = 12 that is 0xE05000 = 0.224.80.0, so 99.224.80.0/20. The reference
        // example agrees with the formula.
        (
            "99.0.0.0/8",
            "10.99.224.0/20",
            "10.99.238.5",
            "99.224.80.0/20",
        ),
        (
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.30.255.254",
            "250.255.254.0/24",
        ),
        ("250.0.0.0/8", "172.30.0.0/16", "172.30.0.1", "250.0.1.0/24"),
    ];
    for (o, u, h, want) in cases {
        let m = map(o, u);
        assert_eq!(m.slice_of(a(h)).unwrap(), n(want), "{o} over {u}, host {h}");
        assert_eq!(formula_slice(n(o), n(u), a(h)), n(want), "formula for {h}");
        // And back: every address in the slice belongs to the host.
        let s = n(want);
        for addr in [
            s.network(),
            s.broadcast(),
            Ipv4Addr::from(u32::from(s.network()) + 1),
        ] {
            assert_eq!(m.owner_of(addr).unwrap(), a(h), "owner of {addr}");
        }
    }
}

#[test]
fn worked_examples_owner_of() {
    let cases = [
        // FAN.md §1: 99.6.7.8 on 99/8 over 10.88/16 goes to 10.88.6.7.
        ("99.0.0.0/8", "10.88.0.0/16", "99.6.7.8", "10.88.6.7"),
        ("250.0.0.0/8", "172.30.0.0/16", "250.0.27.3", "172.30.0.27"),
        ("250.0.0.0/8", "10.1.2.0/24", "250.7.200.1", "10.1.2.7"),
        ("99.0.0.0/8", "10.99.224.0/20", "99.224.80.9", "10.99.238.5"),
    ];
    for (o, u, d, want) in cases {
        assert_eq!(
            map(o, u).owner_of(a(d)).unwrap(),
            a(want),
            "{d} on {o} over {u}"
        );
    }
}

#[test]
fn shape_accessors() {
    let m = map("250.0.0.0/8", "172.30.0.0/16");
    assert_eq!(m.overlay(), n("250.0.0.0/8"));
    assert_eq!(m.underlay(), n("172.30.0.0/16"));
    assert_eq!(m.slice_prefix(), 24);
    assert_eq!(m.slice_count(), 65_536);
    assert_eq!(m.to_string(), "250.0.0.0/8:172.30.0.0/16");
    let m = map("250.0.0.0/8", "10.1.2.0/24");
    assert_eq!((m.slice_prefix(), m.slice_count()), (16, 256));
    let m = map("99.0.0.0/8", "10.99.224.0/20");
    assert_eq!((m.slice_prefix(), m.slice_count()), (20, 4096));
    assert!(m.contains_overlay(a("99.1.2.3")));
    assert!(!m.contains_overlay(a("98.1.2.3")));
    assert!(m.contains_underlay(a("10.99.239.255")));
    assert!(!m.contains_underlay(a("10.99.240.0")));
}

#[test]
fn slice_of_and_owner_of_errors() {
    let m = map("250.0.0.0/8", "172.30.0.0/16");
    assert_eq!(
        m.slice_of(a("172.31.0.1")),
        Err(FanError::HostOutsideUnderlay {
            host: a("172.31.0.1"),
            underlay: n("172.30.0.0/16")
        })
    );
    let e = m.slice_of(a("172.30.0.0")).unwrap_err();
    assert!(matches!(e, FanError::HostIsNetworkAddress { .. }), "{e}");
    assert!(e.to_string().contains("172.30.0.0"));
    let e = m.slice_of(a("172.30.255.255")).unwrap_err();
    assert!(matches!(e, FanError::HostIsBroadcastAddress { .. }), "{e}");
    let e = m.owner_of(a("251.0.0.1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "address 251.0.0.1 is outside overlay 250.0.0.0/8"
    );
}

#[test]
fn illegal_maps_table() {
    // (overlay, underlay, expected error text fragment)
    let cases = [
        (
            "250.0.0.0/8",
            "172.0.0.0/8",
            "must be less than underlay prefix /8",
        ),
        (
            "250.0.0.0/16",
            "172.0.0.0/8",
            "must be less than underlay prefix /8",
        ),
        ("250.0.0.0/8", "172.0.0.0/9", "gives /31 slices"),
        ("250.0.0.0/30", "172.30.0.0/31", "gives /31 slices"),
        ("250.0.0.0/16", "172.30.0.0/17", "gives /31 slices"),
        ("0.0.0.0/0", "172.30.0.0/16", "prefix must be at least 1"),
        ("0.0.0.0/8", "172.30.0.0/16", "address must not be 0.0.0.0"),
        ("127.0.0.0/8", "172.30.0.0/16", "127.0.0.0/8 (loopback)"),
        ("224.0.0.0/8", "172.30.0.0/16", "224.0.0.0/4 (multicast)"),
        ("239.0.0.0/8", "172.30.0.0/16", "224.0.0.0/4 (multicast)"),
        ("192.0.0.0/2", "172.30.0.0/16", "224.0.0.0/4 (multicast)"),
        (
            "250.0.0.0/8",
            "250.1.0.0/16",
            "overlaps underlay 250.1.0.0/16",
        ),
        ("10.0.0.0/8", "10.1.0.0/16", "overlaps underlay"),
        ("250.1.0.0/16", "172.30.0.0/24", "ok"),
    ];
    for (o, u, want) in cases {
        let r = FanMap::new(n(o), n(u));
        match r {
            Ok(_) => assert_eq!(want, "ok", "{o} over {u} unexpectedly legal"),
            Err(e) => assert!(e.to_string().contains(want), "{o} over {u}: {e}"),
        }
    }
    // Host bits, in either network, with the suggestion.
    let bad = Ipv4Network::new(a("250.0.0.1"), 8).unwrap();
    let e = FanMap::new(bad, n("172.30.0.0/16")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "\"250.0.0.1/8\": host bits set; did you mean 250.0.0.0/8?"
    );
    let bad = Ipv4Network::new(a("172.30.0.28"), 16).unwrap();
    let e = FanMap::new(n("250.0.0.0/8"), bad).unwrap_err();
    assert!(e.to_string().contains("did you mean 172.30.0.0/16"), "{e}");
}

/// The expected outcome of FanMap::new for overlay 128.0.0.0/O (or 250/O) and an underlay
/// below 128/1 (so the two never overlap), by the rules alone.
#[derive(Debug, PartialEq)]
enum Expect {
    Ok,
    PrefixZero,
    Forbidden,
    OverlayTooSmall,
    PrefixOrder,
    SliceTooSmall,
}

fn expect(o_net: Ipv4Network, u: u8) -> Expect {
    let o = o_net.prefix();
    if o == 0 {
        Expect::PrefixZero
    } else if o == 1 || (o < 4 && u32::from(o_net.ip()) >= 0xC000_0000) {
        // 128/1 and 192/2, 224/3 overlap multicast 224/4.
        Expect::Forbidden
    } else if o > 30 {
        Expect::OverlayTooSmall
    } else if o >= u {
        Expect::PrefixOrder
    } else if o + (32 - u) > 30 {
        Expect::SliceTooSmall
    } else {
        Expect::Ok
    }
}

fn classify(r: &Result<FanMap, FanError>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(FanError::OverlayPrefixZero { .. }) => Expect::PrefixZero,
        Err(FanError::OverlayForbiddenRange { .. }) => Expect::Forbidden,
        Err(FanError::OverlayTooSmall { .. }) => Expect::OverlayTooSmall,
        Err(FanError::PrefixOrder { .. }) => Expect::PrefixOrder,
        Err(FanError::SliceTooSmall { .. }) => Expect::SliceTooSmall,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Small deterministic generator for sampling hosts (no dependency on proptest here).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

/// Every (O, U) in 0..=32 x 0..=32. Note the legal set differs slightly from "O in 1..=29":
/// no /1 overlay is legal (0/1 overlaps 0/8 and 127/8, 128/1 overlaps 224/4), and O = 30
/// is legal with U = 32 (slice prefix 30 + 0 = 30).
#[test]
fn exhaustive_prefix_pairs() {
    let mut rng = Lcg(0x5eed);
    let mut legal = 0;
    let mut illegal = 0;
    for o in 0..=32u8 {
        for u in 0..=32u8 {
            let umask = if u == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(u))
            };
            let underlay = Ipv4Network::new(Ipv4Addr::from(0x0A00_0000 & umask), u).unwrap();
            let omask = if o == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(o))
            };
            let mut overlays =
                vec![Ipv4Network::new(Ipv4Addr::from(0x8000_0000 & omask), o).unwrap()];
            if o >= 5 {
                // A class E overlay too (250/O; 248/5 is still clear of 224/4).
                overlays.push(Ipv4Network::new(Ipv4Addr::from(0xFA00_0000 & omask), o).unwrap());
            }
            for overlay in overlays {
                let r = FanMap::new(overlay, underlay);
                let want = expect(overlay, u);
                assert_eq!(classify(&r), want, "{overlay} over {underlay}: {r:?}");
                // Every error message names the offending networks.
                if let Err(e) = &r {
                    assert!(e.to_string().contains(&overlay.to_string()), "{e}");
                    illegal += 1;
                    continue;
                }
                legal += 1;
                let m = r.unwrap();
                assert_eq!(m.slice_prefix(), o + 32 - u);
                assert_eq!(m.slice_count(), 1u64 << (32 - u));
                check_round_trips(&m, &mut rng);
            }
        }
    }
    // O in 2..=30 with U in O+2..=32: 29 + 28 + ... + 1 = 435; class E for O >= 5: 351.
    assert_eq!(legal, 435 + 351);
    assert_eq!(legal + illegal, 33 * 33 + 28 * 33);
}

/// The first and last usable host of the map's underlay (all of a /31 or /32).
fn usable_hosts(m: &FanMap) -> (u32, u32) {
    let u = m.underlay();
    let (net, bcast) = (u32::from(u.network()), u32::from(u.broadcast()));
    if u.prefix() >= 31 {
        (net, bcast)
    } else {
        (net + 1, bcast - 1)
    }
}

fn check_round_trips(m: &FanMap, rng: &mut Lcg) {
    let u = m.underlay();
    let (first, last) = usable_hosts(m);
    let span = u64::from(last - first) + 1;
    let mut hosts = vec![first, last, first + ((last - first) / 2)];
    for _ in 0..8 {
        hosts.push(first + (u64::from(rng.next()) % span) as u32);
    }
    let slice_size = 1u64 << (32 - m.slice_prefix());
    for h in hosts {
        let h = Ipv4Addr::from(h);
        let s = m.slice_of(h).unwrap();
        assert_eq!(s, formula_slice(m.overlay(), u, h), "{m} host {h}");
        assert_eq!(s.prefix(), m.slice_prefix());
        assert!(m.overlay().contains(s.network()) && m.overlay().contains(s.broadcast()));
        let inside = u32::from(s.network()) + (u64::from(rng.next()) % slice_size) as u32;
        for d in [s.network(), s.broadcast(), Ipv4Addr::from(inside)] {
            assert_eq!(m.owner_of(d).unwrap(), h, "{m}: owner of {d} in {s}");
        }
    }
    if u.prefix() <= 30 {
        assert!(m.slice_of(u.network()).is_err());
        assert!(m.slice_of(u.broadcast()).is_err());
    }
    if u.prefix() > 0 {
        let outside = Ipv4Addr::from(u32::from(u.broadcast()).wrapping_add(1));
        if !u.contains(outside) {
            assert!(m.slice_of(outside).is_err());
        }
    }
}

#[test]
fn remote_slices_is_lazy_complete_and_ordered() {
    let m = map("250.0.0.0/8", "172.30.0.0/16");
    let local = a("172.30.0.28");
    let mut count = 0usize;
    let mut prev: Option<Ipv4Addr> = None;
    for (h, s) in m.remote_slices(local) {
        assert_ne!(h, local);
        assert_eq!(m.slice_of(h).unwrap(), s);
        if let Some(p) = prev {
            assert!(p < h);
        }
        prev = Some(h);
        count += 1;
    }
    assert_eq!(count, 65_533); // 65,536 - network - broadcast - local
    let first: Vec<_> = m.remote_slices(local).take(2).collect();
    assert_eq!(
        first,
        vec![
            (a("172.30.0.1"), n("250.0.1.0/24")),
            (a("172.30.0.2"), n("250.0.2.0/24"))
        ]
    );
    // Local host outside the underlay: every host is remote.
    assert_eq!(m.remote_slices(a("1.2.3.4")).count(), 65_534);
    // A huge underlay is still lazy: taking a few costs nothing.
    let big = map("250.0.0.0/8", "10.0.0.0/10"); // /30 slices, 4M hosts
    assert_eq!(
        big.remote_slices(a("10.0.0.1")).nth(1).unwrap().0,
        a("10.0.0.3")
    );
    // /31 and /32 underlays have no network/broadcast address.
    let p2p = map("250.0.0.0/8", "10.0.0.0/31"); // /9 slices
    assert_eq!(
        p2p.remote_slices(a("10.0.0.0")).collect::<Vec<_>>(),
        vec![(a("10.0.0.1"), n("250.128.0.0/9"))]
    );
}

#[test]
fn parse_overlay_forms() {
    assert_eq!(parse_overlay("250").unwrap(), n("250.0.0.0/8"));
    assert_eq!(parse_overlay("10").unwrap(), n("10.0.0.0/8"));
    assert_eq!(parse_overlay("250.0.0.0/8").unwrap(), n("250.0.0.0/8"));
    assert_eq!(parse_overlay("250.16.0.0/12").unwrap(), n("250.16.0.0/12"));
    let e = parse_overlay("250.0.0.1/8").unwrap_err().to_string();
    assert!(
        e.ends_with("host bits set; did you mean 250.0.0.0/8?"),
        "{e}"
    );
    let e = parse_overlay("250.1.2.3/8").unwrap_err().to_string();
    assert!(e.contains("did you mean 250.0.0.0/8?"), "{e}");
    assert!(parse_overlay("127")
        .unwrap_err()
        .to_string()
        .contains("loopback"));
    assert!(parse_overlay("0").is_err());
    assert!(parse_overlay("230")
        .unwrap_err()
        .to_string()
        .contains("multicast"));
}

#[test]
fn routed_overlap_warnings() {
    for o in 240..=254u8 {
        let ov = Ipv4Network::new(Ipv4Addr::new(o, 0, 0, 0), 8).unwrap();
        assert_eq!(routed_overlap_warning(ov), None, "{ov}");
    }
    assert_eq!(routed_overlap_warning(n("240.0.0.0/5")), None);
    let cases = [
        ("10.0.0.0/8", "10.0.0.0/8 (RFC 1918 private)"),
        ("172.16.0.0/16", "172.16.0.0/12 (RFC 1918 private)"),
        ("192.168.0.0/16", "192.168.0.0/16 (RFC 1918 private)"),
        ("100.64.0.0/16", "100.64.0.0/10 (carrier-grade NAT"),
        ("169.254.0.0/16", "169.254.0.0/16 (link-local)"),
        ("99.0.0.0/8", "public unicast space"),
        ("8.0.0.0/5", "public unicast space"),
        ("255.0.0.0/8", "255.255.255.255"),
    ];
    for (ov, want) in cases {
        let w = routed_overlap_warning(n(ov)).unwrap_or_else(|| panic!("no warning for {ov}"));
        assert!(w.contains(want), "{ov}: {w}");
        assert!(w.contains(ov), "{ov}: {w}");
    }
    // Inside a private range: no "public" noise.
    let w = routed_overlap_warning(n("10.0.0.0/8")).unwrap();
    assert!(!w.contains("public"), "{w}");
    // Spanning 8/5 covers 10/8 and public space.
    let w = routed_overlap_warning(n("8.0.0.0/5")).unwrap();
    assert!(w.contains("10.0.0.0/8"), "{w}");
}

// ---------- properties ----------

/// A random legal fan map: O in 2..=30, U in O+2..=32, random networks, filtered by the rules.
fn legal_map() -> impl Strategy<Value = FanMap> {
    (2u8..=30)
        .prop_flat_map(|o| (Just(o), (o + 2)..=32u8, any::<u32>(), any::<u32>()))
        .prop_filter_map("illegal random pair", |(o, u, ob, ub)| {
            let om = u32::MAX << (32 - u32::from(o));
            let um = if u == 32 {
                u32::MAX
            } else {
                u32::MAX << (32 - u32::from(u))
            };
            let ov = Ipv4Network::new(Ipv4Addr::from(ob & om), o).unwrap();
            let un = Ipv4Network::new(Ipv4Addr::from(ub & um), u).unwrap();
            FanMap::new(ov, un).ok()
        })
}

/// A usable host of the map's underlay, from a random seed.
fn host(m: &FanMap, seed: u32) -> Ipv4Addr {
    let (first, last) = usable_hosts(m);
    Ipv4Addr::from(first + (u64::from(seed) % (u64::from(last - first) + 1)) as u32)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn prop_owner_of_inverts_slice_of(m in legal_map(), seed in any::<u32>(), off in any::<u32>()) {
        let h = host(&m, seed);
        let s = m.slice_of(h).unwrap();
        prop_assert_eq!(s, formula_slice(m.overlay(), m.underlay(), h));
        let size = 1u64 << (32 - s.prefix());
        let d = Ipv4Addr::from(u32::from(s.network()) + (u64::from(off) % size) as u32);
        prop_assert_eq!(m.owner_of(d).unwrap(), h);
    }

    #[test]
    fn prop_distinct_hosts_disjoint_slices(m in legal_map(), s1 in any::<u32>(), s2 in any::<u32>()) {
        let (h1, h2) = (host(&m, s1), host(&m, s2));
        let (a1, a2) = (m.slice_of(h1).unwrap(), m.slice_of(h2).unwrap());
        if h1 == h2 {
            prop_assert_eq!(a1, a2);
        } else {
            // Same prefix, so disjoint iff different network addresses.
            prop_assert_ne!(a1.network(), a2.network());
            prop_assert!(!a1.contains(a2.network()) && !a2.contains(a1.network()));
        }
    }

    #[test]
    fn prop_parse_network_display_round_trip(m in legal_map()) {
        prop_assert_eq!(parse_network(&m.overlay().to_string()).unwrap(), m.overlay());
        prop_assert_eq!(parse_overlay(&m.overlay().to_string()).unwrap(), m.overlay());
        prop_assert_eq!(parse_network(&m.underlay().to_string()).unwrap(), m.underlay());
    }
}
