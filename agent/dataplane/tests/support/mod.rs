//! What the dataplane's namespace tests share beyond the test kit.

use std::net::Ipv4Addr;

use fan_dataplane::{BackendKind, NetworkPlan};

/// The plan of host 172.30.0.28 in the fan 250.0.0.0/8 over 172.30.0.0/16
/// (slice 250.0.28.0/24, gateway .1, MTU 1480 over a 1500 underlay,
/// masquerade and anti-spoofing on), on `underlay_interface` with `bridge`.
pub fn host28_plan(
    network_id: &str,
    bridge: &str,
    underlay_interface: &str,
    backend: BackendKind,
) -> NetworkPlan {
    NetworkPlan {
        network_id: network_id.to_string(),
        index: 1,
        overlay: "250.0.0.0/8".parse().unwrap(),
        underlay: "172.30.0.0/16".parse().unwrap(),
        local_underlay: Ipv4Addr::new(172, 30, 0, 28),
        underlay_interface: underlay_interface.to_string(),
        underlay_mtu: 1500,
        slice: "250.0.28.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(250, 0, 28, 1),
        bridge: bridge.to_string(),
        mtu: 1480,
        masquerade: true,
        anti_spoofing: true,
        backend,
    }
}
