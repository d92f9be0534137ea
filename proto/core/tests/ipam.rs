//! The slice allocator: pool layout, next-fit, restore, scale, and properties.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fan_core::fan::parse_network;
use fan_core::ipam::{Allocated, Allocator, IpamError, SlicePool};
use ipnetwork::Ipv4Network;
use proptest::prelude::*;

fn n(s: &str) -> Ipv4Network {
    parse_network(s).unwrap()
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn pool(s: &str, reserve: u32) -> SlicePool {
    SlicePool::new(n(s), reserve).unwrap()
}

#[test]
fn pool_layout() {
    let p = pool("250.0.28.0/24", 1);
    assert_eq!(p.slice(), n("250.0.28.0/24"));
    assert_eq!(p.gateway(), a("250.0.28.1"));
    assert_eq!(p.first(), a("250.0.28.2"));
    assert_eq!(p.last(), a("250.0.28.254"));
    assert_eq!(p.capacity(), 253);
    let p = pool("250.0.28.0/24", 253);
    assert_eq!(
        (p.first(), p.last(), p.capacity()),
        (a("250.0.28.254"), a("250.0.28.254"), 1)
    );
    let p = pool("250.0.28.0/24", 10);
    assert_eq!(
        (p.first(), p.capacity(), p.host_reserve()),
        (a("250.0.28.11"), 244, 10)
    );
    let p = pool("250.0.0.4/30", 1);
    assert_eq!(
        (p.first(), p.last(), p.capacity()),
        (a("250.0.0.6"), a("250.0.0.6"), 1)
    );
    let p = pool("250.0.0.0/16", 1);
    assert_eq!(p.capacity(), 65_533);
}

#[test]
fn pool_errors() {
    let cases: [(&str, u32, &str); 6] = [
        ("250.0.28.0/24", 0, "host-reserve 0 is invalid for slice 250.0.28.0/24: it must be between 1"),
        ("250.0.28.0/24", 254, "host-reserve 254 is invalid for slice 250.0.28.0/24: it must be between 1 (the gateway .1) and 253"),
        ("250.0.0.4/30", 2, "and 1 (so at least one"),
        ("250.0.0.4/31", 1, "slice 250.0.0.4/31 is invalid: it must have no host bits and a prefix of at most /30"),
        ("250.0.0.4/32", 1, "at most /30"),
        ("250.0.0.0/16", 65_534, "host-reserve 65534 is invalid"),
    ];
    for (slice, reserve, want) in cases {
        let e = SlicePool::new(n(slice), reserve).unwrap_err().to_string();
        assert!(e.contains(want), "{slice} reserve {reserve}: {e}");
    }
    let host_bits = Ipv4Network::new(a("250.0.28.1"), 24).unwrap();
    assert!(matches!(
        SlicePool::new(host_bits, 1),
        Err(IpamError::InvalidSlice { .. })
    ));
}

#[test]
fn check_assignable_errors() {
    let p = pool("250.0.28.0/24", 3);
    let s = n("250.0.28.0/24");
    assert_eq!(
        p.check_assignable(a("250.0.29.5")),
        Err(IpamError::OutsideSlice {
            address: a("250.0.29.5"),
            slice: s
        })
    );
    assert_eq!(
        p.check_assignable(a("250.0.28.0")),
        Err(IpamError::NetworkAddress {
            address: a("250.0.28.0"),
            slice: s
        })
    );
    assert_eq!(
        p.check_assignable(a("250.0.28.255")),
        Err(IpamError::BroadcastAddress {
            address: a("250.0.28.255"),
            slice: s
        })
    );
    for r in ["250.0.28.1", "250.0.28.2", "250.0.28.3"] {
        assert_eq!(
            p.check_assignable(a(r)),
            Err(IpamError::Reserved {
                address: a(r),
                reserve: 3
            })
        );
    }
    assert_eq!(p.check_assignable(a("250.0.28.4")), Ok(()));
    assert_eq!(p.check_assignable(a("250.0.28.254")), Ok(()));
    let e = p.check_assignable(a("250.0.28.1")).unwrap_err().to_string();
    assert!(
        e.contains("250.0.28.1") && e.contains("host-reserve 3"),
        "{e}"
    );
    let e = p
        .check_assignable(a("250.0.28.255"))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "address 250.0.28.255 is the broadcast address of slice 250.0.28.0/24 and is never assigned");
}

#[test]
fn allocate_basics() {
    let mut al: Allocator<String> = Allocator::new(pool("250.0.28.0/29", 1)); // .2 .. .6
    assert!(al.is_empty());
    assert_eq!(al.cursor(), None);
    let got = al.allocate("c1".into(), None).unwrap();
    assert_eq!(
        got,
        Allocated {
            address: a("250.0.28.2"),
            newly_allocated: true
        }
    );
    // Idempotent retry.
    assert_eq!(
        al.allocate("c1".into(), None).unwrap(),
        Allocated {
            address: a("250.0.28.2"),
            newly_allocated: false
        }
    );
    assert!(
        !al.allocate("c1".into(), Some(a("250.0.28.2")))
            .unwrap()
            .newly_allocated
    );
    assert_eq!(
        al.allocate("c1".into(), Some(a("250.0.28.5"))),
        Err(IpamError::OwnerHasAddress {
            address: a("250.0.28.2"),
            requested: a("250.0.28.5")
        })
    );
    // Requested address.
    assert_eq!(
        al.allocate("c2".into(), Some(a("250.0.28.5")))
            .unwrap()
            .address,
        a("250.0.28.5")
    );
    assert_eq!(al.cursor(), Some(a("250.0.28.5")));
    assert_eq!(
        al.allocate("c3".into(), Some(a("250.0.28.5"))),
        Err(IpamError::Taken {
            address: a("250.0.28.5")
        })
    );
    assert_eq!(
        al.allocate("c3".into(), Some(a("250.0.28.1"))),
        Err(IpamError::Reserved {
            address: a("250.0.28.1"),
            reserve: 1
        })
    );
    assert!(matches!(
        al.allocate("c3".into(), Some(a("250.0.28.7"))),
        Err(IpamError::BroadcastAddress { .. })
    ));
    // Next-fit continues after the cursor (.5), then wraps.
    assert_eq!(
        al.allocate("c3".into(), None).unwrap().address,
        a("250.0.28.6")
    );
    assert_eq!(
        al.allocate("c4".into(), None).unwrap().address,
        a("250.0.28.3")
    );
    assert_eq!(
        al.allocate("c5".into(), None).unwrap().address,
        a("250.0.28.4")
    );
    let e = al.allocate("c6".into(), None).unwrap_err();
    assert_eq!(
        e,
        IpamError::Exhausted {
            slice: n("250.0.28.0/29"),
            capacity: 5
        }
    );
    assert_eq!(
        e.to_string(),
        "slice 250.0.28.0/29 is full: all 5 assignable addresses are in use"
    );
    assert_eq!(al.len(), 5);
    assert_eq!(al.free_count(), 0);
    assert_eq!(al.owner_of(a("250.0.28.6")).map(String::as_str), Some("c3"));
    assert_eq!(al.address_of(&"c4".to_string()), Some(a("250.0.28.3")));
    let order: Vec<_> = al.iter().map(|(ad, o)| (ad, o.clone())).collect();
    assert_eq!(
        order.iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>(),
        ["c1", "c4", "c5", "c2", "c3"]
    );
    let page: Vec<_> = al
        .iter_after(Some(a("250.0.28.4")))
        .map(|(ad, _)| ad)
        .collect();
    assert_eq!(page, [a("250.0.28.5"), a("250.0.28.6")]);
    assert_eq!(al.iter_after(None).count(), 5);
    assert_eq!(al.iter_after(Some(a("250.0.28.6"))).count(), 0);
    // Release.
    assert_eq!(al.release_owner(&"c4".to_string()), Some(a("250.0.28.3")));
    assert_eq!(al.release_owner(&"c4".to_string()), None);
    assert_eq!(al.release_address(a("250.0.28.6")), Some("c3".to_string()));
    assert_eq!(al.release_address(a("250.0.28.6")), None);
    assert_eq!(al.owner_of(a("250.0.28.6")), None);
    assert_eq!(al.pool().capacity(), 5);
}

#[test]
fn next_fit_does_not_reuse_just_released() {
    let mut al: Allocator<u32> = Allocator::new(pool("250.0.28.0/24", 1));
    let x = al.allocate(1, None).unwrap().address;
    al.release_owner(&1);
    // Just released: the next allocation moves on.
    assert_ne!(al.allocate(2, None).unwrap().address, x);

    // The case plain next-fit gets wrong: the released address was handed out on the
    // previous lap and sits right after the cursor.
    let mut al: Allocator<u32> = Allocator::new(pool("250.0.0.0/29", 1)); // .2 .. .6
    for o in 0..5 {
        al.allocate(o, None).unwrap();
    }
    assert_eq!(al.cursor(), Some(a("250.0.0.6")));
    al.release_address(a("250.0.0.3"));
    assert_eq!(al.allocate(10, None).unwrap().address, a("250.0.0.3")); // the only free one
    assert_eq!(al.cursor(), Some(a("250.0.0.3")));
    // Full, cursor .3. Free .5 and then .4: plain next-fit would return .4 (right after the
    // cursor), the address released a moment ago; we return .5.
    al.release_address(a("250.0.0.5"));
    al.release_address(a("250.0.0.4"));
    assert_eq!(al.allocate(11, None).unwrap().address, a("250.0.0.5"));
    assert_eq!(al.allocate(12, None).unwrap().address, a("250.0.0.4"));
    // Full, cursor .4. Free .2 (the search wraps to it first, so it goes to the back), then
    // .6 (now first again, so it goes to the back): the older release, .2, comes out first.
    al.release_address(a("250.0.0.2"));
    assert_eq!(al.cursor(), Some(a("250.0.0.2")));
    al.release_address(a("250.0.0.6"));
    assert_eq!(al.cursor(), Some(a("250.0.0.6")));
    assert_eq!(al.allocate(13, None).unwrap().address, a("250.0.0.2"));
    // Releasing an address the search does not reach first leaves the cursor alone.
    let mut al: Allocator<u32> = Allocator::new(pool("250.0.0.0/29", 1));
    for o in 0..3 {
        al.allocate(o, None).unwrap(); // .2 .3 .4, cursor .4
    }
    al.release_address(a("250.0.0.2"));
    assert_eq!(al.cursor(), Some(a("250.0.0.4")));
    assert_eq!(al.allocate(3, None).unwrap().address, a("250.0.0.5"));
}

#[test]
fn restore_validation() {
    let p = pool("250.0.28.0/24", 1);
    let ok = Allocator::restore(
        p,
        [(a("250.0.28.10"), "x"), (a("250.0.28.3"), "y")],
        Some(a("250.0.28.10")),
    )
    .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok.cursor(), Some(a("250.0.28.10")));
    assert_eq!(
        ok.iter().map(|(ad, _)| ad).collect::<Vec<_>>(),
        [a("250.0.28.3"), a("250.0.28.10")]
    );
    type Case = (Vec<(Ipv4Addr, &'static str)>, Option<Ipv4Addr>, IpamError);
    let cases: Vec<Case> = vec![
        (
            vec![(a("250.0.28.3"), "x"), (a("250.0.28.3"), "y")],
            None,
            IpamError::Duplicate {
                address: a("250.0.28.3"),
                existing: None,
            },
        ),
        (
            vec![(a("250.0.28.3"), "x"), (a("250.0.28.4"), "x")],
            None,
            IpamError::Duplicate {
                address: a("250.0.28.4"),
                existing: Some(a("250.0.28.3")),
            },
        ),
        (
            vec![(a("250.0.28.1"), "x")],
            None,
            IpamError::Reserved {
                address: a("250.0.28.1"),
                reserve: 1,
            },
        ),
        (
            vec![(a("250.0.28.0"), "x")],
            None,
            IpamError::NetworkAddress {
                address: a("250.0.28.0"),
                slice: n("250.0.28.0/24"),
            },
        ),
        (
            vec![(a("250.0.28.255"), "x")],
            None,
            IpamError::BroadcastAddress {
                address: a("250.0.28.255"),
                slice: n("250.0.28.0/24"),
            },
        ),
        (
            vec![(a("250.0.29.2"), "x")],
            None,
            IpamError::OutsideSlice {
                address: a("250.0.29.2"),
                slice: n("250.0.28.0/24"),
            },
        ),
        (
            vec![],
            Some(a("250.0.29.2")),
            IpamError::InvalidCursor {
                cursor: a("250.0.29.2"),
                slice: n("250.0.28.0/24"),
            },
        ),
    ];
    for (allocs, cursor, want) in cases {
        let got = Allocator::restore(p, allocs.clone(), cursor).unwrap_err();
        assert_eq!(got, want, "{allocs:?}");
        assert!(!got.to_string().is_empty());
    }
    assert_eq!(
        IpamError::Duplicate { address: a("250.0.28.4"), existing: Some(a("250.0.28.3")) }.to_string(),
        "address 250.0.28.4 belongs to an owner that already holds 250.0.28.3; each owner has one address"
    );
    // A restored cursor in the reserved range is only a hint: the search starts at first().
    let mut al: Allocator<u8> = Allocator::restore(p, [], Some(a("250.0.28.1"))).unwrap();
    assert_eq!(al.allocate(1, None).unwrap().address, a("250.0.28.2"));
    // Restored cursor continues next-fit.
    let mut al = Allocator::restore(p, [(a("250.0.28.7"), 1u8)], Some(a("250.0.28.7"))).unwrap();
    assert_eq!(al.allocate(2, None).unwrap().address, a("250.0.28.8"));
}

#[test]
fn full_slash16_slice_allocates_without_quadratic_blowup() {
    let p = pool("250.0.0.0/16", 1);
    let cap = p.capacity();
    assert_eq!(cap, 65_533);
    let start = Instant::now();
    let mut al: Allocator<u32> = Allocator::new(p);
    for i in 0..cap {
        let got = al.allocate(i, None).unwrap();
        assert!(got.newly_allocated);
    }
    assert!(matches!(
        al.allocate(cap, None),
        Err(IpamError::Exhausted {
            capacity: 65_533,
            ..
        })
    ));
    assert_eq!(al.len(), cap as usize);
    // Fragment it: free every other address, then refill; each search must stay cheap.
    for i in (0..cap).step_by(2) {
        al.release_owner(&i).unwrap();
    }
    let mut refilled = 0;
    while al.allocate(cap + refilled, None).is_ok() {
        refilled += 1;
    }
    assert_eq!(refilled, cap.div_ceil(2));
    // Pathological for a scanning next-fit: one hole far behind the cursor, repeatedly.
    for round in 0..2_000u32 {
        let victim = Ipv4Addr::from(u32::from(p.first()) + (round * 31) % cap);
        let owner = al.release_address(victim).unwrap();
        assert_eq!(al.allocate(owner, None).unwrap().address, victim);
    }
    // Generous even for an unoptimised debug build; a quadratic scan takes minutes.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let restored = Allocator::restore(p, al.iter().map(|(ad, o)| (ad, *o)), al.cursor()).unwrap();
    assert_eq!(restored.len(), cap as usize);
}

// ---------- properties ----------

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        owner: u8,
        requested: Option<u8>,
    },
    ReleaseOwner(u8),
    ReleaseAddress(u8),
    /// Snapshot and restore (the result must behave identically from here on).
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), proptest::option::weighted(0.2, any::<u8>())).prop_map(|(owner, requested)| Op::Alloc { owner, requested }),
        2 => any::<u8>().prop_map(Op::ReleaseOwner),
        2 => any::<u8>().prop_map(Op::ReleaseAddress),
        1 => Just(Op::Restore),
    ]
}

/// A small slice (so it fills up) with a random legal reserve.
fn small_pool() -> impl Strategy<Value = SlicePool> {
    (24u8..=30)
        .prop_flat_map(|p| {
            let max = fan_core::ipam::max_host_reserve(p);
            (Just(p), 1..=max.min(20))
        })
        .prop_map(|(p, r)| {
            SlicePool::new(
                Ipv4Network::new(Ipv4Addr::new(250, 0, 28, 0), p).unwrap(),
                r,
            )
            .unwrap()
        })
}

fn addr_in(pool: &SlicePool, x: u8) -> Ipv4Addr {
    // Any address of the slice, including the forbidden ones, so errors get exercised.
    let size = 1u32 << (32 - pool.slice().prefix());
    Ipv4Addr::from(u32::from(pool.slice().network()) + u32::from(x) % (size + 2))
}

fn check_invariants(al: &Allocator<u8>) -> Result<(), TestCaseError> {
    let pool = *al.pool();
    let mut owners = BTreeMap::new();
    for (ad, o) in al.iter() {
        prop_assert!(pool.check_assignable(ad).is_ok(), "{ad} not assignable");
        prop_assert!(owners.insert(*o, ad).is_none(), "owner {o} twice");
        prop_assert_eq!(al.owner_of(ad), Some(o));
        prop_assert_eq!(al.address_of(o), Some(ad));
    }
    prop_assert!(al.len() <= pool.capacity() as usize);
    prop_assert_eq!(
        al.free_count() as usize,
        pool.capacity() as usize - al.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn prop_allocator_invariants(pool in small_pool(), ops in proptest::collection::vec(op(), 1..300)) {
        let mut al: Allocator<u8> = Allocator::new(pool);
        let mut last_released: Option<Ipv4Addr> = None;
        for op in ops {
            match op {
                Op::Alloc { owner, requested } => {
                    let requested = requested.map(|r| addr_in(&pool, r));
                    let before = al.address_of(&owner);
                    let free = al.free_count();
                    match al.allocate(owner, requested) {
                        Ok(got) => {
                            prop_assert_eq!(got.newly_allocated, before.is_none());
                            if let Some(b) = before { prop_assert_eq!(got.address, b); }
                            if let (Some(r), None) = (requested, before) { prop_assert_eq!(got.address, r); }
                            // Next-fit never hands back the address just released while
                            // another one is free.
                            if let (None, None, Some(x)) = (requested, before, last_released) {
                                if free > 1 { prop_assert_ne!(got.address, x); }
                            }
                        }
                        Err(IpamError::Exhausted { capacity, .. }) => {
                            prop_assert!(before.is_none() && requested.is_none() && free == 0);
                            prop_assert_eq!(capacity, pool.capacity());
                        }
                        Err(IpamError::OwnerHasAddress { address, requested: r }) => {
                            prop_assert_eq!(Some(address), before);
                            prop_assert_eq!(Some(r), requested);
                        }
                        Err(IpamError::Taken { address }) => {
                            prop_assert!(al.owner_of(address).is_some() && al.owner_of(address) != Some(&owner));
                        }
                        Err(e) => {
                            let r = requested.expect("only requests fail otherwise");
                            prop_assert_eq!(pool.check_assignable(r), Err(e));
                        }
                    }
                    last_released = None;
                }
                Op::ReleaseOwner(o) => {
                    let had = al.address_of(&o);
                    prop_assert_eq!(al.release_owner(&o), had);
                    last_released = had;
                }
                Op::ReleaseAddress(x) => {
                    let ad = addr_in(&pool, x);
                    let had = al.owner_of(ad).copied();
                    prop_assert_eq!(al.release_address(ad), had);
                    last_released = had.map(|_| ad);
                }
                Op::Restore => {
                    al = Allocator::restore(pool, al.iter().map(|(ad, o)| (ad, *o)), al.cursor()).unwrap();
                }
            }
            check_invariants(&al)?;
        }
    }

    #[test]
    fn prop_exactly_capacity_allocations(pool in small_pool(), releases in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut al: Allocator<u32> = Allocator::new(pool);
        let mut owner = 0u32;
        let mut ok = 0u32;
        // Some churn first: allocate a few and release some of them.
        for r in &releases {
            if al.allocate(owner, None).is_ok() { ok += 1; }
            owner += 1;
            if let Some(x) = al.release_owner(&(u32::from(*r) % owner)) {
                prop_assert!(pool.check_assignable(x).is_ok());
                ok -= 1;
            }
        }
        loop {
            match al.allocate(owner, None) {
                Ok(_) => ok += 1,
                Err(IpamError::Exhausted { capacity, .. }) => { prop_assert_eq!(capacity, pool.capacity()); break; }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
            owner += 1;
            prop_assert!(ok <= pool.capacity());
        }
        prop_assert_eq!(ok, pool.capacity());
        prop_assert_eq!(al.len() as u32, pool.capacity());
    }

    #[test]
    fn prop_restore_behaves_identically(pool in small_pool(), setup in proptest::collection::vec(op(), 0..100), after in proptest::collection::vec(op(), 0..100)) {
        let mut al: Allocator<u8> = Allocator::new(pool);
        let apply = |al: &mut Allocator<u8>, op: &Op| -> String {
            match op {
                Op::Alloc { owner, requested } => format!("{:?}", al.allocate(*owner, requested.map(|r| addr_in(&pool, r)))),
                Op::ReleaseOwner(o) => format!("{:?}", al.release_owner(o)),
                Op::ReleaseAddress(x) => format!("{:?}", al.release_address(addr_in(&pool, *x))),
                Op::Restore => String::new(),
            }
        };
        for op in &setup { apply(&mut al, op); }
        let mut restored = Allocator::restore(pool, al.iter().map(|(ad, o)| (ad, *o)), al.cursor()).unwrap();
        for op in &after {
            prop_assert_eq!(apply(&mut al, op), apply(&mut restored, op));
            prop_assert_eq!(al.cursor(), restored.cursor());
        }
        prop_assert_eq!(al.iter().collect::<Vec<_>>(), restored.iter().collect::<Vec<_>>());
    }
}
