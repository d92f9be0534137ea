//! The BPF maps shared with `agent/bpf/fan.bpf.c`: their names, value layouts
//! and the pure translation from a [`NetworkPlan`] to the program's config.
//!
//! Layouts here and in the C source must stay identical; the loader checks
//! key and value sizes against the object's map definitions when it opens a
//! map, so a mismatch fails loudly instead of corrupting data.

use std::net::Ipv4Addr;

use crate::{Counters, DataplaneError, NetworkPlan, Result};

/// Name of the config array map (one [`FanConfig`] at key 0).
pub const CONFIG_MAP: &str = "fan_config";
/// Name of the per-CPU counter array map (u64 per slot).
pub const COUNTERS_MAP: &str = "fan_counters";
/// Name of the endpoint hash map (container IPv4, network order -> [`Endpoint`]).
pub const ENDPOINTS_MAP: &str = "fan_endpoints";
/// Every map the programs use; all are pinned under the network's pin directory.
pub const ALL_MAPS: [&str; 3] = [CONFIG_MAP, COUNTERS_MAP, ENDPOINTS_MAP];

/// `flags`: the programs act (config written by the agent).
pub const FLAG_ENABLED: u32 = 1 << 0;
/// `flags`: anti-spoofing. At decap, drop packets whose inner source does not
/// map to the outer source (or whose outer source is the underlay's network or
/// broadcast address); at encap, drop packets whose inner source is not in
/// this host's slice.
pub const FLAG_ANTI_SPOOF: u32 = 1 << 1;
/// `flags`: deliver decapsulated packets with `bpf_redirect_peer` when the
/// destination is in the endpoint map.
pub const FLAG_PEER_FASTPATH: u32 = 1 << 2;
/// `flags`: the egress fast path (`fan_fastpath` on the bridge) encapsulates
/// container packets for remote slices itself; without it the program
/// passes everything to the stack.
pub const FLAG_EGRESS_FASTPATH: u32 = 1 << 3;
/// `flags`: every host of the underlay is on-link out of the underlay
/// device (the agent checked the routing tables, `next_hop`), so the fast
/// path gives `bpf_redirect_neigh` the remote host as next hop and the
/// kernel skips its route lookup.
pub const FLAG_UNDERLAY_ON_LINK: u32 = 1 << 4;

/// `agent_flags`: the agent created the clsact qdisc on the underlay device
/// (so `remove` may delete it once it is empty).
pub const AGENT_OWNS_UNDERLAY_CLSACT: u32 = 1 << 0;

/// Counter slots of [`COUNTERS_MAP`].
pub mod slot {
    /// Packets encapsulated.
    pub const ENCAPSULATED: u32 = 0;
    /// Packets decapsulated.
    pub const DECAPSULATED: u32 = 1;
    /// Dropped at decap by anti-spoofing.
    pub const DROPPED_SPOOFED: u32 = 2;
    /// Outer fragments dropped.
    pub const DROPPED_FRAGMENT: u32 = 3;
    /// Dropped for another reason (never counts packets left to the stack).
    pub const DROPPED_OTHER: u32 = 4;
    /// Decapsulated packets delivered by the peer fast path.
    pub const PEER_REDIRECTED: u32 = 5;
    /// Dropped at encap by anti-spoofing: inner source outside our slice.
    pub const DROPPED_SPOOFED_EGRESS: u32 = 6;
    /// Of [`ENCAPSULATED`], those encapsulated by the egress fast path.
    pub const FAST_PATH_ENCAPSULATED: u32 = 7;
    /// Number of slots in the map.
    pub const COUNT: u32 = 8;
}

/// The program's parameters (`struct fan_config` in the C source).
/// Addresses and masks are in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanConfig {
    /// Overlay network address.
    pub overlay_net: u32,
    /// Overlay netmask.
    pub overlay_mask: u32,
    /// Underlay network address.
    pub underlay_net: u32,
    /// Underlay netmask.
    pub underlay_mask: u32,
    /// This host's underlay address.
    pub local_underlay: u32,
    /// This host's slice network address.
    pub slice_net: u32,
    /// Slice netmask.
    pub slice_mask: u32,
    /// Underlay prefix minus overlay prefix.
    pub shift: u32,
    /// ifindex of the underlay device (redirect target after encap).
    pub underlay_ifindex: u32,
    /// ifindex of the tunnel device (slow-path delivery after decap).
    pub tunnel_ifindex: u32,
    /// `FLAG_*` bits read by the programs.
    pub flags: u32,
    /// `AGENT_*` bits: the agent's own bookkeeping, ignored by the programs.
    pub agent_flags: u32,
    /// MAC of the tunnel device (destination MAC for slow-path delivery).
    pub tunnel_mac: [u8; 6],
    /// Padding to the C layout.
    pub pad: [u8; 2],
    /// MAC of the fan bridge: the gateway MAC containers send to, which
    /// the fast path on a bridge port recognises (zero: ports not used).
    pub bridge_mac: [u8; 6],
    /// Padding to the C layout.
    pub pad2: [u8; 2],
}

// SAFETY: repr(C), only integers and byte arrays, explicit padding: every bit
// pattern is valid and there are no implicit padding bytes.
unsafe impl aya::Pod for FanConfig {}

/// A container reachable through `bpf_redirect_peer` (`struct fan_endpoint`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// ifindex of the host side of the container's veth.
    pub ifindex: u32,
    /// The container's MAC (destination MAC of delivered packets).
    pub mac: [u8; 6],
    /// The bridge's MAC (source MAC, as if the bridge had routed the packet).
    pub gw_mac: [u8; 6],
}

// SAFETY: repr(C), 4 + 6 + 6 bytes, no padding, every bit pattern valid.
unsafe impl aya::Pod for Endpoint {}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Checks the plan's fan shape and builds the program's config (without the
/// ifindexes, MAC and agent flags, which come from the kernel).
pub fn config_from_plan(plan: &NetworkPlan) -> Result<FanConfig> {
    let context = || format!("eBPF config of network {}", plan.network_id);
    let o = plan.overlay.prefix();
    let u = plan.underlay.prefix();
    if o == 0 || o >= u {
        return Err(DataplaneError::other(
            context(),
            format!(
                "overlay {} must be shorter than underlay {}",
                plan.overlay, plan.underlay
            ),
        ));
    }
    let slice_prefix = o + (32 - u);
    if slice_prefix > 30 || plan.slice.prefix() != slice_prefix {
        return Err(DataplaneError::other(
            context(),
            format!(
                "slice {} does not have the /{slice_prefix} of {} over {}",
                plan.slice, plan.overlay, plan.underlay
            ),
        ));
    }
    if !plan.underlay.contains(plan.local_underlay) || !plan.overlay.contains(plan.slice.network())
    {
        return Err(DataplaneError::other(
            context(),
            format!(
                "local address {} / slice {} outside underlay {} / overlay {}",
                plan.local_underlay, plan.slice, plan.underlay, plan.overlay
            ),
        ));
    }
    let mut flags = FLAG_ENABLED;
    if plan.anti_spoofing {
        flags |= FLAG_ANTI_SPOOF;
    }
    Ok(FanConfig {
        overlay_net: u32::from(plan.overlay.network()),
        overlay_mask: mask(o),
        underlay_net: u32::from(plan.underlay.network()),
        underlay_mask: mask(u),
        local_underlay: u32::from(plan.local_underlay),
        slice_net: u32::from(plan.slice.network()),
        slice_mask: mask(slice_prefix),
        shift: u32::from(u - o),
        flags,
        ..FanConfig::default()
    })
}

/// The fan formula as the encap program computes it: the underlay host that
/// owns overlay address `addr` (used by tests and diagnostics).
pub fn owner_of(config: &FanConfig, addr: Ipv4Addr) -> Ipv4Addr {
    let a = u32::from(addr);
    Ipv4Addr::from(
        config.underlay_net
            | (((a & !config.overlay_mask) >> config.shift) & !config.underlay_mask),
    )
}

/// Sums per-CPU counter slots into [`Counters`].
pub fn counters_from_slots(slots: &[u64]) -> Counters {
    let get = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
    Counters {
        encapsulated: get(slot::ENCAPSULATED),
        decapsulated: get(slot::DECAPSULATED),
        dropped_spoofed: get(slot::DROPPED_SPOOFED),
        dropped_fragment: get(slot::DROPPED_FRAGMENT),
        dropped_other: get(slot::DROPPED_OTHER),
        dropped_spoofed_egress: get(slot::DROPPED_SPOOFED_EGRESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendKind;
    use ipnetwork::Ipv4Network;

    fn plan(overlay: &str, underlay: &str, local: &str, slice: &str) -> NetworkPlan {
        let slice: Ipv4Network = slice.parse().unwrap();
        NetworkPlan {
            network_id: "t".into(),
            index: 0,
            overlay: overlay.parse().unwrap(),
            underlay: underlay.parse().unwrap(),
            local_underlay: local.parse().unwrap(),
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            slice,
            gateway: Ipv4Addr::from(u32::from(slice.network()) + 1),
            bridge: "fan-t".into(),
            mtu: 1480,
            masquerade: false,
            anti_spoofing: true,
            backend: BackendKind::Ebpf,
        }
    }

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<FanConfig>(), 64);
        assert_eq!(std::mem::size_of::<Endpoint>(), 16);
    }

    #[test]
    fn formula_for_the_documented_shapes() {
        let c = config_from_plan(&plan(
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.30.0.28",
            "250.0.28.0/24",
        ))
        .unwrap();
        assert_eq!(c.shift, 8);
        assert_eq!(
            owner_of(&c, "250.0.27.5".parse().unwrap()),
            Ipv4Addr::new(172, 30, 0, 27)
        );
        assert_eq!(c.slice_mask, 0xffff_ff00);

        let c = config_from_plan(&plan(
            "250.0.0.0/8",
            "10.1.2.0/24",
            "10.1.2.7",
            "250.7.0.0/16",
        ))
        .unwrap();
        assert_eq!(
            owner_of(&c, "250.9.3.4".parse().unwrap()),
            Ipv4Addr::new(10, 1, 2, 9)
        );

        let c = config_from_plan(&plan(
            "99.0.0.0/8",
            "10.99.224.0/20",
            "10.99.238.5",
            "99.224.80.0/20",
        ))
        .unwrap();
        assert_eq!(
            owner_of(&c, "99.224.80.9".parse().unwrap()),
            Ipv4Addr::new(10, 99, 238, 5)
        );

        let c = config_from_plan(&plan(
            "99.0.0.0/8",
            "10.88.0.0/16",
            "10.88.1.1",
            "99.1.1.0/24",
        ))
        .unwrap();
        assert_eq!(
            owner_of(&c, "99.6.7.8".parse().unwrap()),
            Ipv4Addr::new(10, 88, 6, 7)
        );
    }

    #[test]
    fn every_legal_prefix_pair_round_trips() {
        // For every O < U with a slice of at most /30: the owner of an
        // address in host h's slice is h.
        for o in 1u8..32 {
            for u in (o + 1)..=32 {
                let slice_prefix = o + (32 - u);
                if slice_prefix > 30 {
                    continue;
                }
                let overlay = Ipv4Network::new(Ipv4Addr::new(0x80, 0, 0, 0), o).unwrap();
                let overlay = Ipv4Network::new(overlay.network(), o).unwrap();
                let underlay = Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), u).unwrap();
                let underlay = Ipv4Network::new(underlay.network(), u).unwrap();
                let host_bits = if u == 32 {
                    0
                } else {
                    0x5555_5555u32 & !mask(u)
                };
                let host = Ipv4Addr::from(u32::from(underlay.network()) | host_bits);
                let slice_net = u32::from(overlay.network()) | (host_bits << (u - o));
                let slice = Ipv4Network::new(Ipv4Addr::from(slice_net), slice_prefix).unwrap();
                let mut p = plan("128.0.0.0/1", "10.0.0.0/8", "10.0.0.1", "128.0.0.0/8");
                p.overlay = overlay;
                p.underlay = underlay;
                p.local_underlay = host;
                p.slice = slice;
                let c = config_from_plan(&p).unwrap_or_else(|e| panic!("/{o} over /{u}: {e}"));
                let container = Ipv4Addr::from(slice_net | 2);
                assert_eq!(owner_of(&c, container), host, "/{o} over /{u}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(config_from_plan(&plan(
            "250.0.0.0/16",
            "172.30.0.0/16",
            "172.30.0.28",
            "250.0.28.0/24"
        ))
        .is_err());
        assert!(config_from_plan(&plan(
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.30.0.28",
            "250.0.28.0/25"
        ))
        .is_err());
        assert!(config_from_plan(&plan(
            "250.0.0.0/8",
            "172.30.0.0/16",
            "172.31.0.28",
            "250.0.28.0/24"
        ))
        .is_err());
    }
}
