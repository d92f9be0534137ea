//! fan-core's text parsers, name validators and the fan arithmetic they feed:
//! no input panics; accepted underlay specs print back to themselves; a
//! network's default bridge name is a valid device name; a valid fan map
//! answers slice/owner questions consistently.
#![no_main]

use std::net::Ipv4Addr;

use fan_core::fan::{check_prefixes, parse_network, parse_overlay, FanMap};
use fan_core::ipam::{max_host_reserve, SlicePool};
use fan_core::names;
use fan_core::{HostInterfaceAddress, UnderlaySpec};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    overlay: String,
    underlay: String,
    name: String,
    label_value: String,
    host: u32,
    host_reserve: u32,
    hosts: Vec<(String, u32, u8, u32)>,
    default_route: Option<String>,
}

fuzz_target!(|input: Input| {
    let _ = names::validate_network_id(&input.name);
    let _ = names::validate_device_name(&input.name);
    let _ = names::validate_container_id(&input.name);
    let _ = names::validate_label(&input.name, &input.label_value);
    let _ = parse_network(&input.name);

    let underlay = UnderlaySpec::parse(&input.underlay);
    if let Ok(spec) = &underlay {
        let text = spec.to_string();
        assert_eq!(
            UnderlaySpec::parse(&text).as_ref(),
            Ok(spec),
            "{:?} prints as {text:?}",
            input.underlay
        );
        let hosts: Vec<HostInterfaceAddress> = input
            .hosts
            .iter()
            .take(8)
            .map(|(interface, address, prefix_len, mtu)| HostInterfaceAddress {
                interface: interface.clone(),
                address: Ipv4Addr::from(*address),
                prefix_len: *prefix_len,
                mtu: *mtu,
            })
            .collect();
        if let Ok(resolved) = spec.resolve(&hosts, input.default_route.as_deref()) {
            assert!(resolved.network.contains(resolved.address), "{resolved:?}");
            assert_eq!(resolved.network.prefix(), spec.prefix());
        }
    }

    let Ok(overlay) = parse_overlay(&input.overlay) else {
        return;
    };
    let _ = fan_core::routed_overlap_warning(overlay);
    let bridge = names::default_bridge_name(overlay);
    assert!(
        names::validate_device_name(&bridge).is_ok(),
        "default bridge {bridge:?} of {overlay} is not a valid device name"
    );
    let Ok(spec) = underlay else {
        return;
    };
    let underlay_net = match parse_network(&spec.to_string()) {
        Ok(net) => net,
        // Interface and default-route specs carry only a prefix: place it anywhere.
        Err(_) => match fan_core::Ipv4Network::new(Ipv4Addr::from(input.host), spec.prefix()) {
            Ok(net) => match fan_core::Ipv4Network::new(net.network(), spec.prefix()) {
                Ok(net) => net,
                Err(_) => return,
            },
            Err(_) => return,
        },
    };
    if check_prefixes(overlay, underlay_net).is_err() {
        return;
    }
    let Ok(map) = FanMap::new(overlay, underlay_net) else {
        return;
    };
    let host = Ipv4Addr::from(input.host);
    let slice_prefix = map.slice_prefix();
    let _ = map.slice_count();
    if let Ok(slice) = map.slice_of(host) {
        assert_eq!(slice.prefix(), slice_prefix);
        assert!(map.contains_overlay(slice.network()));
        // Every address of the slice belongs back to the host that owns it.
        let owner = map.owner_of(slice.network()).expect("slice address has an owner");
        assert_eq!(map.slice_of(owner).ok(), Some(slice), "{map} {host}");
        let _ = max_host_reserve(slice_prefix);
        if let Ok(pool) = SlicePool::new(slice, input.host_reserve) {
            assert!(pool.capacity() >= 1, "{slice} reserve {}", input.host_reserve);
            assert!(pool.is_assignable(pool.first()) && pool.is_assignable(pool.last()));
            assert!(!pool.is_assignable(pool.gateway()));
        }
    }
    for (remote, slice) in map.remote_slices(host).take(4) {
        assert_ne!(remote, host);
        assert_eq!(map.slice_of(remote).ok(), Some(slice));
    }
});
