//! Pure rules for a host that changes under the agent: what a network does
//! when its underlay address disappears or a new one appears, and which host
//! addresses and routes an overlay would shadow.
//!
//! The slice-move rule (documented in the README, "When the host changes"):
//!
//! 1. The recorded underlay address is still configured on the recorded
//!    device: nothing to do ([`UnderlayCheck::Owned`]).
//! 2. Otherwise the stored underlay spec is resolved again against the
//!    host's current addresses, exactly as at creation. If it resolves, the
//!    network moves to the slice of the address it found
//!    ([`UnderlayCheck::Moved`]); the data path is re-programmed for it and
//!    allocations outside the new slice become stale (kept, flagged, never
//!    handed out again, released by the orchestrator).
//! 3. If it does not resolve, the host no longer owns the slice
//!    ([`UnderlayCheck::Lost`]): the network is FAILED with the reason and
//!    allocations are refused until an address appears again.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::fan::FanMap;
use crate::underlay::{HostInterfaceAddress, ResolvedUnderlay, UnderlaySpec};

/// What a network's underlay looks like on the host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlayCheck {
    /// The recorded address is still on the recorded device.
    Owned,
    /// The recorded address is gone and the spec matches another address:
    /// the network moves to `slice`.
    Moved {
        /// The new resolution of the underlay spec.
        underlay: ResolvedUnderlay,
        /// The host's slice for that address.
        slice: Ipv4Network,
    },
    /// The recorded address is gone and nothing else matches the spec.
    Lost {
        /// Why, for the network's status ("underlay address 172.30.0.28 is gone from eth0 …").
        reason: String,
    },
}

/// Applies the slice-move rule (see the module documentation).
pub fn check_underlay(
    spec: &UnderlaySpec,
    overlay: Ipv4Network,
    recorded_address: Ipv4Addr,
    recorded_interface: &str,
    addrs: &[HostInterfaceAddress],
    default_route_interface: Option<&str>,
) -> UnderlayCheck {
    if addrs
        .iter()
        .any(|a| a.address == recorded_address && a.interface == recorded_interface)
    {
        return UnderlayCheck::Owned;
    }
    let gone = format!("underlay address {recorded_address} is gone from {recorded_interface}");
    let resolved = match spec.resolve(addrs, default_route_interface) {
        Ok(resolved) => resolved,
        Err(e) => {
            return UnderlayCheck::Lost {
                reason: format!("{gone} and underlay {spec} matches no other address ({e})"),
            }
        }
    };
    match FanMap::new(overlay, resolved.network).and_then(|fan| fan.slice_of(resolved.address)) {
        Ok(slice) => UnderlayCheck::Moved {
            underlay: resolved,
            slice,
        },
        Err(e) => UnderlayCheck::Lost {
            reason: format!(
                "{gone}; the new underlay address {} cannot carry overlay {overlay}: {e}",
                resolved.address
            ),
        },
    }
}

/// Whether an address is valid on a network whose current slice is `slice`:
/// `None` when it is, else the former slice it came from (stale), or the
/// address's own /32 when no recorded former slice contains it.
pub fn stale_slice(
    address: Ipv4Addr,
    slice: Ipv4Network,
    former_slices: &[Ipv4Network],
) -> Option<Ipv4Network> {
    if slice.contains(address) {
        return None;
    }
    Some(
        former_slices
            .iter()
            .rev()
            .find(|s| s.contains(address))
            .copied()
            .unwrap_or_else(|| Ipv4Network::from(address)),
    )
}

/// The former slices after a move from `from` to `to`: `from` is added (most
/// recent last, once) and `to` is dropped, since it is current again.
pub fn former_slices_after_move(
    former: &[Ipv4Network],
    from: Ipv4Network,
    to: Ipv4Network,
) -> Vec<Ipv4Network> {
    let mut next: Vec<Ipv4Network> = former
        .iter()
        .copied()
        .filter(|s| *s != from && *s != to)
        .collect();
    if from != to {
        next.push(from);
    }
    next
}

/// What kind of host object a [`HostPrefix`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixKind {
    /// An address configured on a device.
    Address,
    /// A route of the main table.
    Route,
}

/// An address or route of the host that the agent did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPrefix {
    /// Address or route.
    pub kind: PrefixKind,
    /// The address with its prefix, or the route's destination.
    pub prefix: Ipv4Network,
    /// The device, when known.
    pub interface: String,
}

impl std::fmt::Display for HostPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            PrefixKind::Address => "address",
            PrefixKind::Route => "route",
        };
        if self.interface.is_empty() {
            write!(f, "{what} {}", self.prefix)
        } else {
            write!(f, "{what} {} dev {}", self.prefix, self.interface)
        }
    }
}

/// The host addresses and routes `overlay` would shadow or be shadowed by.
/// Default routes (prefix 0) are not conflicts: the overlay route is meant to
/// be more specific than them.
pub fn overlay_conflicts(overlay: Ipv4Network, host: &[HostPrefix]) -> Vec<HostPrefix> {
    host.iter()
        .filter(|p| match p.kind {
            PrefixKind::Address => overlay.contains(p.prefix.ip()),
            PrefixKind::Route => {
                p.prefix.prefix() > 0
                    && (overlay.contains(p.prefix.network())
                        || p.prefix.contains(overlay.network()))
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(interface: &str, address: &str) -> HostInterfaceAddress {
        HostInterfaceAddress {
            interface: interface.into(),
            address: address.parse().unwrap(),
            prefix_len: 16,
            mtu: 1500,
        }
    }

    fn check(addrs: &[HostInterfaceAddress]) -> UnderlayCheck {
        check_underlay(
            &UnderlaySpec::parse("172.30.0.0/16").unwrap(),
            "250.0.0.0/8".parse().unwrap(),
            "172.30.0.28".parse().unwrap(),
            "eth0",
            addrs,
            None,
        )
    }

    #[test]
    fn the_recorded_address_keeps_the_slice() {
        // Another matching address appearing does not move the network.
        let addrs = [addr("eth0", "172.30.0.29"), addr("eth0", "172.30.0.28")];
        assert_eq!(check(&addrs), UnderlayCheck::Owned);
    }

    #[test]
    fn a_removed_address_without_replacement_is_lost_with_the_reason() {
        let UnderlayCheck::Lost { reason } = check(&[addr("eth1", "10.0.0.1")]) else {
            panic!("expected Lost");
        };
        assert!(
            reason.starts_with("underlay address 172.30.0.28 is gone from eth0"),
            "{reason}"
        );
    }

    #[test]
    fn a_new_address_in_the_underlay_moves_the_network_to_its_slice() {
        let got = check(&[addr("eth1", "10.0.0.1"), addr("eth0", "172.30.0.29")]);
        let UnderlayCheck::Moved { underlay, slice } = got else {
            panic!("expected Moved, got {got:?}");
        };
        assert_eq!(underlay.address, "172.30.0.29".parse::<Ipv4Addr>().unwrap());
        assert_eq!(slice, "250.0.29.0/24".parse::<Ipv4Network>().unwrap());
    }

    #[test]
    fn the_same_address_on_another_device_is_a_move_within_the_slice() {
        let got = check(&[addr("eth1", "172.30.0.28")]);
        let UnderlayCheck::Moved { underlay, slice } = got else {
            panic!("expected Moved, got {got:?}");
        };
        assert_eq!(underlay.interface, "eth1");
        assert_eq!(slice, "250.0.28.0/24".parse::<Ipv4Network>().unwrap());
    }

    #[test]
    fn stale_addresses_name_their_former_slice() {
        let current: Ipv4Network = "250.0.29.0/24".parse().unwrap();
        let old: Ipv4Network = "250.0.28.0/24".parse().unwrap();
        assert_eq!(
            stale_slice("250.0.29.5".parse().unwrap(), current, &[old]),
            None
        );
        assert_eq!(
            stale_slice("250.0.28.5".parse().unwrap(), current, &[old]),
            Some(old)
        );
        assert_eq!(
            stale_slice("250.0.27.5".parse().unwrap(), current, &[old]),
            Some("250.0.27.5/32".parse().unwrap())
        );
    }

    #[test]
    fn moving_back_makes_a_former_slice_current_again() {
        let a: Ipv4Network = "250.0.28.0/24".parse().unwrap();
        let b: Ipv4Network = "250.0.29.0/24".parse().unwrap();
        let after_first = former_slices_after_move(&[], a, b);
        assert_eq!(after_first, vec![a]);
        assert_eq!(former_slices_after_move(&after_first, b, a), vec![b]);
        assert_eq!(
            former_slices_after_move(&[a], a, a),
            Vec::<Ipv4Network>::new()
        );
    }

    #[test]
    fn overlaps_with_host_addresses_and_routes_are_named() {
        let host = vec![
            HostPrefix {
                kind: PrefixKind::Address,
                prefix: "10.0.50.2/24".parse().unwrap(),
                interface: "eth1".into(),
            },
            HostPrefix {
                kind: PrefixKind::Route,
                prefix: "10.0.50.0/24".parse().unwrap(),
                interface: "eth1".into(),
            },
            HostPrefix {
                kind: PrefixKind::Route,
                prefix: "0.0.0.0/0".parse().unwrap(),
                interface: "eth0".into(),
            },
            HostPrefix {
                kind: PrefixKind::Route,
                prefix: "172.30.0.0/16".parse().unwrap(),
                interface: "eth0".into(),
            },
        ];
        let found = overlay_conflicts("10.0.0.0/8".parse().unwrap(), &host);
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "address 10.0.50.2/24 dev eth1",
                "route 10.0.50.0/24 dev eth1"
            ]
        );
        assert!(overlay_conflicts("250.0.0.0/8".parse().unwrap(), &host).is_empty());
        // A broader route the overlay would shadow part of is a conflict too.
        let wide = [HostPrefix {
            kind: PrefixKind::Route,
            prefix: "10.0.0.0/8".parse().unwrap(),
            interface: "vpn0".into(),
        }];
        assert_eq!(
            overlay_conflicts("10.1.0.0/16".parse().unwrap(), &wide).len(),
            1
        );
    }
}
