//! Overlay/underlay arithmetic: the whole idea of the fan (FAN.md §1).
//!
//! A fan is a pair (overlay /O, underlay /U) with O < U. Every host address `h` in the
//! underlay owns the overlay slice
//! `overlay_net | ((h & ~underlay_mask) << (U - O))` with prefix `O + (32 - U)`, and an
//! overlay address `d` is owned by `underlay_net | ((d & ~overlay_mask) >> (U - O))`.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use thiserror::Error;

/// Largest slice prefix the agent accepts: a /30 slice still holds the gateway (.1) and one
/// container (.2); a /31 or /32 would hold no container at all.
pub const MAX_SLICE_PREFIX: u8 = 30;

/// Ranges an overlay may never touch: "this network", loopback and multicast (FAN.md §1).
const FORBIDDEN_OVERLAY_RANGES: [(Ipv4Addr, u8, &str); 3] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
];

/// Errors from fan arithmetic, CIDR parsing and underlay specs.
///
/// Every message states the rule that was broken and the offending value; callers prefix the
/// field name (e.g. `spec.overlay: ...`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FanError {
    /// The text is not a CIDR (or, for overlays, not the `250` short form either).
    #[error("{input:?} is not valid: expected {expected}")]
    Syntax {
        /// The text as given.
        input: String,
        /// What the parser expected, in words.
        expected: &'static str,
    },
    /// A network was written with bits set below its prefix.
    #[error("{input:?}: host bits set; did you mean {suggestion}?")]
    HostBits {
        /// The text (or network) as given.
        input: String,
        /// The same network with the host bits cleared.
        suggestion: Ipv4Network,
    },
    /// The overlay covers the whole IPv4 space.
    #[error("overlay {overlay}: prefix must be at least 1")]
    OverlayPrefixZero {
        /// The offending overlay.
        overlay: Ipv4Network,
    },
    /// The overlay network address is 0.0.0.0 (the kernel rejects overlay 0).
    #[error("overlay {overlay}: overlay address must not be 0.0.0.0")]
    OverlayZero {
        /// The offending overlay.
        overlay: Ipv4Network,
    },
    /// The overlay overlaps 0/8, 127/8 or 224/4.
    #[error(
        "overlay {overlay} overlaps {range} ({what}), which may never be an overlay; \
         use one of 240.0.0.0/8 .. 254.0.0.0/8 (e.g. 250.0.0.0/8)"
    )]
    OverlayForbiddenRange {
        /// The offending overlay.
        overlay: Ipv4Network,
        /// The forbidden range it overlaps.
        range: Ipv4Network,
        /// Name of that range.
        what: &'static str,
    },
    /// The overlay is too small to hold even one usable slice.
    #[error("overlay {overlay}: prefix must be at most /{max} so a slice can hold a gateway and a container")]
    OverlayTooSmall {
        /// The offending overlay.
        overlay: Ipv4Network,
        /// The largest legal overlay prefix.
        max: u8,
    },
    /// Overlay prefix O is not shorter than underlay prefix U.
    #[error(
        "overlay {overlay} must be a larger network than underlay {underlay} \
         (overlay prefix /{} must be less than underlay prefix /{})",
        overlay.prefix(), underlay.prefix()
    )]
    PrefixOrder {
        /// The overlay.
        overlay: Ipv4Network,
        /// The underlay.
        underlay: Ipv4Network,
    },
    /// `O + (32 - U) > 30`: each slice would be too small for gateway plus container.
    #[error(
        "overlay {overlay} over underlay {underlay} gives /{slice_prefix} slices; \
         slices must be /{max} or larger (overlay prefix + 32 - underlay prefix <= {max}) \
         to hold a gateway and a container",
        max = MAX_SLICE_PREFIX
    )]
    SliceTooSmall {
        /// The overlay.
        overlay: Ipv4Network,
        /// The underlay.
        underlay: Ipv4Network,
        /// The resulting slice prefix.
        slice_prefix: u8,
    },
    /// Overlay and underlay share addresses, so slices would collide with underlay hosts.
    #[error("overlay {overlay} overlaps underlay {underlay}; they must be disjoint")]
    OverlapsUnderlay {
        /// The overlay.
        overlay: Ipv4Network,
        /// The underlay.
        underlay: Ipv4Network,
    },
    /// A host address lies outside the underlay.
    #[error("host {host} is outside underlay {underlay}")]
    HostOutsideUnderlay {
        /// The host address.
        host: Ipv4Addr,
        /// The underlay.
        underlay: Ipv4Network,
    },
    /// A host address is the underlay's network address, which owns no slice.
    #[error("host {host} is the network address of underlay {underlay}; it owns no slice")]
    HostIsNetworkAddress {
        /// The host address.
        host: Ipv4Addr,
        /// The underlay.
        underlay: Ipv4Network,
    },
    /// A host address is the underlay's broadcast address, which owns no slice.
    #[error("host {host} is the broadcast address of underlay {underlay}; it owns no slice")]
    HostIsBroadcastAddress {
        /// The host address.
        host: Ipv4Addr,
        /// The underlay.
        underlay: Ipv4Network,
    },
    /// An address lies outside the overlay.
    #[error("address {address} is outside overlay {overlay}")]
    AddressOutsideOverlay {
        /// The address.
        address: Ipv4Addr,
        /// The overlay.
        overlay: Ipv4Network,
    },
    /// An underlay spec could not be parsed.
    #[error("underlay {input:?} is not valid: {reason}; expected A.B.C.D/N, A.B.C.D, IFACE/N or default/N")]
    UnderlaySyntax {
        /// The text as given.
        input: String,
        /// What was wrong.
        reason: String,
    },
    /// A `Cidr` underlay names a host address this host does not have.
    #[error("address {address} is not configured on this host")]
    AddressNotConfigured {
        /// The address from the spec.
        address: Ipv4Addr,
    },
    /// A `Cidr` underlay names a network in which this host has no address.
    #[error("no address in {network} is configured on this host")]
    NoAddressInNetwork {
        /// The network from the spec.
        network: Ipv4Network,
    },
    /// An `Interface` underlay names an interface that does not exist.
    #[error("no interface {name:?}")]
    NoInterface {
        /// The interface name.
        name: String,
    },
    /// An `Interface` underlay names an interface without an IPv4 address.
    #[error("interface {name:?} has no IPv4 address")]
    InterfaceNoIpv4 {
        /// The interface name.
        name: String,
    },
    /// A `DefaultRoute` underlay on a host without an IPv4 default route.
    #[error("this host has no IPv4 default route")]
    NoDefaultRoute,
    /// The resolved address is the network or broadcast address of the underlay prefix.
    #[error("address {address} (on {interface:?}) is the {which} address of underlay {network}; a host needs a host address")]
    UnderlayNotHostAddress {
        /// The resolved address.
        address: Ipv4Addr,
        /// The interface carrying it.
        interface: String,
        /// The underlay network.
        network: Ipv4Network,
        /// "network" or "broadcast".
        which: &'static str,
    },
}

fn to_u32(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// Netmask for a prefix, without the shift overflow at /0.
pub(crate) fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Builds a network from a u32 address and a prefix (prefix is always <= 32 here).
pub(crate) fn net(addr: u32, prefix: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32")
}

/// Strict decimal: digits only, no sign, no leading zero (so "08" is not silently 8).
fn parse_decimal(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse::<u32>().ok().filter(|v| *v <= max)
}

/// Parses `A.B.C.D/N` into address and prefix without checking host bits.
pub(crate) fn parse_cidr_parts(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    // std's parser is strict: exactly four decimal octets, no leading zeros.
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix = parse_decimal(prefix, 32)? as u8;
    Some((addr, prefix))
}

/// Parses a strict CIDR `A.B.C.D/N` (prefix required, no host bits).
///
/// ```
/// # use fan_core::fan::parse_network;
/// assert_eq!(parse_network("172.30.0.0/16").unwrap().to_string(), "172.30.0.0/16");
/// assert!(parse_network("172.30.0.1/16").is_err());
/// ```
pub fn parse_network(s: &str) -> Result<Ipv4Network, FanError> {
    let (addr, prefix) = parse_cidr_parts(s).ok_or_else(|| FanError::Syntax {
        input: s.to_string(),
        expected: "a CIDR network A.B.C.D/N with N in 0..=32",
    })?;
    let n = net(to_u32(addr), prefix);
    if n.network() != addr {
        return Err(FanError::HostBits {
            input: s.to_string(),
            suggestion: net(to_u32(n.network()), prefix),
        });
    }
    Ok(n)
}

/// Parses an overlay: `250` means 250.0.0.0/8 (fanctl convention), otherwise a strict
/// `A.B.C.D/N`. The overlay-only rules of FAN.md §1 are checked too (see [`validate_overlay`]).
///
/// ```
/// # use fan_core::fan::parse_overlay;
/// assert_eq!(parse_overlay("250").unwrap().to_string(), "250.0.0.0/8");
/// assert!(parse_overlay("250.0.0.1/8").unwrap_err().to_string().contains("did you mean 250.0.0.0/8"));
/// ```
pub fn parse_overlay(s: &str) -> Result<Ipv4Network, FanError> {
    const EXPECTED: &str = "an overlay A.B.C.D/N, or a bare first octet like 250 for 250.0.0.0/8";
    let n = if let Some(octet) = parse_decimal(s, 255) {
        net(octet << 24, 8)
    } else if s.contains('/') {
        match parse_network(s) {
            Err(FanError::Syntax { input, .. }) => {
                return Err(FanError::Syntax {
                    input,
                    expected: EXPECTED,
                })
            }
            other => other?,
        }
    } else {
        return Err(FanError::Syntax {
            input: s.to_string(),
            expected: EXPECTED,
        });
    };
    validate_overlay(n)?;
    Ok(n)
}

/// Checks the rules that concern the overlay alone: no host bits, prefix >= 1, address not 0,
/// no overlap with 0/8, 127/8 or 224/4, prefix at most /30.
pub fn validate_overlay(overlay: Ipv4Network) -> Result<(), FanError> {
    check_no_host_bits(overlay)?;
    if overlay.prefix() == 0 {
        return Err(FanError::OverlayPrefixZero { overlay });
    }
    if to_u32(overlay.ip()) == 0 {
        return Err(FanError::OverlayZero { overlay });
    }
    for (addr, prefix, what) in FORBIDDEN_OVERLAY_RANGES {
        let range = net(to_u32(addr), prefix);
        if overlaps(overlay, range) {
            return Err(FanError::OverlayForbiddenRange {
                overlay,
                range,
                what,
            });
        }
    }
    if overlay.prefix() > MAX_SLICE_PREFIX {
        return Err(FanError::OverlayTooSmall {
            overlay,
            max: MAX_SLICE_PREFIX,
        });
    }
    Ok(())
}

/// Checks the rules that concern the overlay/underlay prefixes alone (usable before an
/// underlay interface is resolved): O < U and O + (32 - U) <= 30.
pub fn check_prefixes(overlay: Ipv4Network, underlay: Ipv4Network) -> Result<(), FanError> {
    let (o, u) = (overlay.prefix(), underlay.prefix());
    if o >= u {
        return Err(FanError::PrefixOrder { overlay, underlay });
    }
    let slice_prefix = o + (32 - u);
    if slice_prefix > MAX_SLICE_PREFIX {
        return Err(FanError::SliceTooSmall {
            overlay,
            underlay,
            slice_prefix,
        });
    }
    Ok(())
}

fn check_no_host_bits(n: Ipv4Network) -> Result<(), FanError> {
    if n.ip() != n.network() {
        return Err(FanError::HostBits {
            input: n.to_string(),
            suggestion: net(to_u32(n.network()), n.prefix()),
        });
    }
    Ok(())
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    // Two prefixes overlap iff they agree on the shorter prefix's bits.
    let m = mask(a.prefix().min(b.prefix()));
    to_u32(a.ip()) & m == to_u32(b.ip()) & m
}

/// True if `host` is the network or broadcast address of `n`. /31 and /32 have neither
/// (RFC 3021 point-to-point convention), so every address there is a host.
pub(crate) fn is_network_or_broadcast(n: Ipv4Network, host: Ipv4Addr) -> Option<&'static str> {
    if n.prefix() >= 31 {
        None
    } else if host == n.network() {
        Some("network")
    } else if host == n.broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// One fan: an overlay mapped onto an underlay, validated against every rule of FAN.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FanMap {
    overlay: Ipv4Network,
    underlay: Ipv4Network,
}

impl FanMap {
    /// Validates and builds a fan map.
    ///
    /// Rules: no host bits in either network; overlay prefix >= 1 and address not 0; overlay
    /// never overlaps 0/8, 127/8, 224/4; O < U; O + (32 - U) <= 30; and (an agent rule, since
    /// slices inside the underlay would shadow underlay hosts) overlay and underlay disjoint.
    pub fn new(overlay: Ipv4Network, underlay: Ipv4Network) -> Result<FanMap, FanError> {
        validate_overlay(overlay)?;
        check_no_host_bits(underlay)?;
        check_prefixes(overlay, underlay)?;
        if overlaps(overlay, underlay) {
            return Err(FanError::OverlapsUnderlay { overlay, underlay });
        }
        Ok(FanMap { overlay, underlay })
    }

    /// The overlay network (O).
    pub fn overlay(&self) -> Ipv4Network {
        self.overlay
    }

    /// The underlay network (U).
    pub fn underlay(&self) -> Ipv4Network {
        self.underlay
    }

    /// Prefix length of every slice: `O + (32 - U)`.
    pub fn slice_prefix(&self) -> u8 {
        self.overlay.prefix() + (32 - self.underlay.prefix())
    }

    /// Number of slices the overlay is cut into: one per underlay host value, i.e.
    /// `2^(32 - U)` (= `2^(slice_prefix - O)`). This counts the slices of the underlay's
    /// network and broadcast addresses too, which no host can own.
    pub fn slice_count(&self) -> u64 {
        1u64 << (32 - self.underlay.prefix())
    }

    /// Shift between underlay host bits and overlay slice bits: `U - O`.
    fn shift(&self) -> u32 {
        u32::from(self.underlay.prefix() - self.overlay.prefix())
    }

    /// Slice for a host bit-pattern, without any checks (host must be inside the underlay).
    fn slice_unchecked(&self, host: u32) -> Ipv4Network {
        let host_bits = host & !mask(self.underlay.prefix());
        // O < U <= 32 so shift is 1..=31, and the result fits inside the overlay's host bits.
        let bits = host_bits << self.shift();
        net(to_u32(self.overlay.ip()) | bits, self.slice_prefix())
    }

    /// The overlay slice owned by underlay host `host`.
    ///
    /// Errors if `host` is outside the underlay or is its network/broadcast address
    /// (underlays of /31 and /32 have no network/broadcast address).
    pub fn slice_of(&self, host: Ipv4Addr) -> Result<Ipv4Network, FanError> {
        if !self.underlay.contains(host) {
            return Err(FanError::HostOutsideUnderlay {
                host,
                underlay: self.underlay,
            });
        }
        match is_network_or_broadcast(self.underlay, host) {
            Some("network") => Err(FanError::HostIsNetworkAddress {
                host,
                underlay: self.underlay,
            }),
            Some(_) => Err(FanError::HostIsBroadcastAddress {
                host,
                underlay: self.underlay,
            }),
            None => Ok(self.slice_unchecked(to_u32(host))),
        }
    }

    /// The underlay host an overlay address is tunnelled to (what the data plane computes).
    ///
    /// Errors only if the address is outside the overlay; addresses in the slices of the
    /// underlay's network/broadcast addresses map to those addresses, as in the kernel.
    pub fn owner_of(&self, overlay_addr: Ipv4Addr) -> Result<Ipv4Addr, FanError> {
        if !self.overlay.contains(overlay_addr) {
            return Err(FanError::AddressOutsideOverlay {
                address: overlay_addr,
                overlay: self.overlay,
            });
        }
        let bits = to_u32(overlay_addr) & !mask(self.overlay.prefix());
        // The container part (below the slice) falls away with the shift.
        let host_bits = bits >> self.shift();
        Ok(Ipv4Addr::from(to_u32(self.underlay.ip()) | host_bits))
    }

    /// True if `addr` is inside the overlay.
    pub fn contains_overlay(&self, addr: Ipv4Addr) -> bool {
        self.overlay.contains(addr)
    }

    /// True if `addr` is inside the underlay.
    pub fn contains_underlay(&self, addr: Ipv4Addr) -> bool {
        self.underlay.contains(addr)
    }

    /// Every other host's slice, in ascending host order: each underlay host except the
    /// network/broadcast addresses and `local_host`. Lazy, so a /8 over /16 (65,534 routes)
    /// costs nothing until iterated.
    pub fn remote_slices(
        &self,
        local_host: Ipv4Addr,
    ) -> impl Iterator<Item = (Ipv4Addr, Ipv4Network)> {
        let map = *self;
        let first = to_u32(self.underlay.network());
        let last = to_u32(self.underlay.broadcast());
        let (first, last) = if self.underlay.prefix() >= 31 {
            (first, last)
        } else {
            (first + 1, last - 1)
        };
        let local = to_u32(local_host);
        (first..=last)
            .filter(move |h| *h != local)
            .map(move |h| (Ipv4Addr::from(h), map.slice_unchecked(h)))
    }
}

impl fmt::Display for FanMap {
    /// The kernel/iproute2 form `overlay:underlay`, e.g. `250.0.0.0/8:172.30.0.0/16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.overlay, self.underlay)
    }
}

/// Commonly routed ranges an overlay should stay clear of, with a name for the warning.
const ROUTED_RANGES: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8, "RFC 1918 private"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "RFC 1918 private"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "RFC 1918 private"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "carrier-grade NAT (RFC 6598)",
    ),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
];

/// A warning when the overlay overlaps commonly routed space: RFC 1918, CGNAT 100.64/10,
/// link-local 169.254/16, or public unicast space below 224/4. `None` for overlays inside
/// class E 240.0.0.0/4 (other than the limited broadcast in 255/8), e.g. 240/8 .. 254/8.
pub fn routed_overlap_warning(overlay: Ipv4Network) -> Option<String> {
    let overlay = net(to_u32(overlay.network()), overlay.prefix());
    let mut hits: Vec<String> = ROUTED_RANGES
        .iter()
        .map(|(a, p, what)| (net(to_u32(*a), *p), *what))
        .filter(|(r, _)| overlaps(overlay, *r))
        .map(|(r, what)| format!("{r} ({what})"))
        .collect();
    // Public unicast: the overlay starts below 224/4 and is not wholly inside one of the
    // special ranges above (those are disjoint and non-adjacent, so "inside one" suffices).
    let public = to_u32(overlay.network()) < 0xE000_0000
        && !ROUTED_RANGES.iter().any(|(a, p, _)| {
            *p <= overlay.prefix() && net(to_u32(*a), *p).contains(overlay.network())
        });
    if public {
        hits.push("public unicast space".to_string());
    }
    if overlay.contains(Ipv4Addr::BROADCAST) {
        hits.push("the limited broadcast address 255.255.255.255".to_string());
    }
    if hits.is_empty() {
        return None;
    }
    Some(format!(
        "overlay {overlay} overlaps {}; destinations there will be sent into the fan instead \
         of their real network; prefer a class E overlay such as 250.0.0.0/8 (240/8 .. 254/8)",
        hits.join(", ")
    ))
}
