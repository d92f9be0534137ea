//! How the underlay is named (FAN.md §2) and how a name resolves against the host's addresses.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::fan::{is_network_or_broadcast, mask, net, FanError};
use crate::names::validate_device_name;

/// Prefix fanctl assumes for a bare underlay address `A.B.C.D`.
pub const DEFAULT_UNDERLAY_PREFIX: u8 = 16;

/// An underlay as the user writes it, before it is resolved on a host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnderlaySpec {
    /// `A.B.C.D/N` or `A.B.C.D` (/16). A network address means "my address in that network";
    /// a host address means "exactly this address".
    Cidr {
        /// The address as written (host bits allowed).
        address: Ipv4Addr,
        /// The underlay prefix, 1..=32.
        prefix: u8,
    },
    /// `IFACE/N`: the first IPv4 address on that interface.
    Interface {
        /// The Linux device name.
        name: String,
        /// The underlay prefix, 1..=32.
        prefix: u8,
    },
    /// `default/N`: the first IPv4 address on the default-route interface.
    DefaultRoute {
        /// The underlay prefix, 1..=32.
        prefix: u8,
    },
}

/// One IPv4 address configured on a host interface, as observed by the agent.
///
/// An entry whose `address` is 0.0.0.0 marks an interface that exists but has no IPv4
/// address; it is never chosen, but lets [`UnderlaySpec::resolve`] say which case applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostInterfaceAddress {
    /// Device name.
    pub interface: String,
    /// The configured address.
    pub address: Ipv4Addr,
    /// The interface's own prefix length (not used for the underlay network).
    pub prefix_len: u8,
    /// Device MTU.
    pub mtu: u32,
}

/// An underlay spec resolved on this host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResolvedUnderlay {
    /// The underlay network: `address` masked to the spec's prefix.
    pub network: Ipv4Network,
    /// This host's underlay address.
    pub address: Ipv4Addr,
    /// The interface carrying `address`.
    pub interface: String,
    /// That interface's MTU (the fan bridge gets this minus the encapsulation overhead).
    pub mtu: u32,
}

fn syntax(input: &str, reason: impl Into<String>) -> FanError {
    FanError::UnderlaySyntax {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// True for text a user meant as an IPv4 address (digits and dots only), so "10.0.0" is
/// reported as a bad address rather than accepted as an interface name.
fn looks_like_address(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn parse_prefix(input: &str, p: &str) -> Result<u8, FanError> {
    let ok = !p.is_empty()
        && p.len() <= 2
        && p.bytes().all(|b| b.is_ascii_digit())
        && !(p.len() > 1 && p.starts_with('0'));
    match p.parse::<u8>() {
        Ok(v) if ok && (1..=32).contains(&v) => Ok(v),
        _ => Err(syntax(
            input,
            format!("prefix {p:?} must be a number in 1..=32"),
        )),
    }
}

impl UnderlaySpec {
    /// Parses `A.B.C.D/N`, `A.B.C.D` (prefix 16), `IFACE/N` or `default/N`; N in 1..=32.
    ///
    /// ```
    /// # use fan_core::underlay::UnderlaySpec;
    /// assert_eq!(UnderlaySpec::parse("eth0/16").unwrap(),
    ///            UnderlaySpec::Interface { name: "eth0".into(), prefix: 16 });
    /// ```
    pub fn parse(s: &str) -> Result<UnderlaySpec, FanError> {
        let (head, prefix) = match s.split_once('/') {
            Some((h, p)) => (h, Some(parse_prefix(s, p)?)),
            None => (s, None),
        };
        if looks_like_address(head) {
            let address: Ipv4Addr = head
                .parse()
                .map_err(|_| syntax(s, format!("{head:?} is not an IPv4 address A.B.C.D")))?;
            return Ok(UnderlaySpec::Cidr {
                address,
                prefix: prefix.unwrap_or(DEFAULT_UNDERLAY_PREFIX),
            });
        }
        if head.is_empty() {
            return Err(syntax(s, "empty address or interface name"));
        }
        let prefix = prefix.ok_or_else(|| {
            syntax(
                s,
                format!("an interface or default-route underlay needs a prefix, e.g. {head}/16"),
            )
        })?;
        if head == "default" {
            return Ok(UnderlaySpec::DefaultRoute { prefix });
        }
        validate_device_name(head).map_err(|e| syntax(s, e.to_string()))?;
        Ok(UnderlaySpec::Interface {
            name: head.to_string(),
            prefix,
        })
    }

    /// The underlay prefix N.
    pub fn prefix(&self) -> u8 {
        match self {
            UnderlaySpec::Cidr { prefix, .. }
            | UnderlaySpec::Interface { prefix, .. }
            | UnderlaySpec::DefaultRoute { prefix } => *prefix,
        }
    }

    /// Resolves the spec against the host's IPv4 addresses (in the order given) and the
    /// default-route interface, if any.
    ///
    /// - `Cidr` with a network address: the first address inside that network;
    /// - `Cidr` with a host address: that address, which must be configured;
    /// - `Interface`: the first IPv4 address of that interface;
    /// - `DefaultRoute`: the first IPv4 address of the default-route interface.
    ///
    /// `network` is the address masked to the spec's prefix, not the interface's prefix.
    /// The chosen address must not be the network/broadcast address of that network.
    pub fn resolve(
        &self,
        addrs: &[HostInterfaceAddress],
        default_route_interface: Option<&str>,
    ) -> Result<ResolvedUnderlay, FanError> {
        let usable = || addrs.iter().filter(|a| !a.address.is_unspecified());
        let prefix = self.prefix();
        let found = match self {
            UnderlaySpec::Cidr { address, prefix } => {
                let m = mask(*prefix);
                let a = u32::from(*address);
                if a & m == a && *prefix < 32 {
                    let network = net(a, *prefix);
                    usable()
                        .find(|h| {
                            network.contains(h.address)
                                && is_network_or_broadcast(network, h.address).is_none()
                        })
                        .ok_or(FanError::NoAddressInNetwork { network })?
                } else {
                    usable()
                        .find(|h| h.address == *address)
                        .ok_or(FanError::AddressNotConfigured { address: *address })?
                }
            }
            UnderlaySpec::Interface { name, .. } => first_on(addrs, name)?,
            UnderlaySpec::DefaultRoute { .. } => {
                let name = default_route_interface.ok_or(FanError::NoDefaultRoute)?;
                first_on(addrs, name)?
            }
        };
        let network = net(u32::from(found.address) & mask(prefix), prefix);
        if let Some(which) = is_network_or_broadcast(network, found.address) {
            return Err(FanError::UnderlayNotHostAddress {
                address: found.address,
                interface: found.interface.clone(),
                network,
                which,
            });
        }
        Ok(ResolvedUnderlay {
            network,
            address: found.address,
            interface: found.interface.clone(),
            mtu: found.mtu,
        })
    }
}

fn first_on<'a>(
    addrs: &'a [HostInterfaceAddress],
    name: &str,
) -> Result<&'a HostInterfaceAddress, FanError> {
    let mut exists = false;
    for a in addrs.iter().filter(|a| a.interface == name) {
        exists = true;
        if !a.address.is_unspecified() {
            return Ok(a);
        }
    }
    Err(if exists {
        FanError::InterfaceNoIpv4 {
            name: name.to_string(),
        }
    } else {
        FanError::NoInterface {
            name: name.to_string(),
        }
    })
}

impl fmt::Display for UnderlaySpec {
    /// Canonical form, always with the prefix: `10.0.0.1/16`, `eth0/16`, `default/16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnderlaySpec::Cidr { address, prefix } => write!(f, "{address}/{prefix}"),
            UnderlaySpec::Interface { name, prefix } => write!(f, "{name}/{prefix}"),
            UnderlaySpec::DefaultRoute { prefix } => write!(f, "default/{prefix}"),
        }
    }
}

impl std::str::FromStr for UnderlaySpec {
    type Err = FanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UnderlaySpec::parse(s)
    }
}
