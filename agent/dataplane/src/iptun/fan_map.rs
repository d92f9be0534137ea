//! The netlink ABI of Ubuntu's fan patch for ipip, as pure functions: no I/O.
//!
//! From the patched `include/uapi/linux/if_tunnel.h` and `net/ipv4/ipip.c`:
//!
//! - In `IFLA_LINKINFO / IFLA_INFO_DATA` of an ipip link, attribute
//!   [`IFLA_IPTUN_FAN_MAP`] (33, NLA_NESTED) holds one [`IFLA_FAN_MAPPING`]
//!   (1) attribute per map.
//! - Each mapping is the 12-byte `struct ifla_fan_map { __be32 underlay;
//!   __be32 overlay; __u16 underlay_prefix; __u16 overlay_prefix; }`:
//!   addresses in network byte order, prefixes in *host* byte order.
//! - The kernel applies the mappings of one request in order, each as a
//!   change: a new overlay is added (EEXIST when a map already covers its
//!   overlay address), underlay 0/0 deletes the map of that overlay
//!   (ENOENT when there is none), and 0/0 over 0/0 flushes every map. It
//!   echoes the current maps back in RTM_GETLINK in the same form.
//!
//! Encoding choices: the nest is sent *without* NLA_F_NESTED, as iproute2's
//! `addattr_nest` does (the rtnl link policy is parsed liberally, so both
//! forms are accepted); kernels since 5.2 set the flag on what they echo,
//! and [`decode_fan_map`] accepts either. Attribute headers (`nla_len`,
//! `nla_type`) are in host byte order, like every netlink header.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_route::link::{InfoData, InfoIpTunnel, LinkAttribute, LinkInfo, LinkMessage};

/// `IFLA_IPTUN_FAN_MAP`: the nested attribute carrying the fan maps.
pub const IFLA_IPTUN_FAN_MAP: u16 = 33;
/// `IFLA_FAN_MAPPING`: one map inside [`IFLA_IPTUN_FAN_MAP`].
pub const IFLA_FAN_MAPPING: u16 = 1;
/// Size of `struct ifla_fan_map`.
pub const FAN_MAPPING_LEN: usize = 12;

const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

const fn nla_align(len: usize) -> usize {
    (len + 3) & !3
}

/// A malformed fan-map attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbiError {
    /// An attribute header or payload runs past the end of the buffer.
    #[error("fan map attribute truncated at byte {offset}: {detail}")]
    Truncated {
        /// Offset of the bad attribute inside the nest payload.
        offset: usize,
        /// What was wrong.
        detail: String,
    },
    /// An IFLA_FAN_MAPPING whose payload is not 12 bytes.
    #[error("IFLA_FAN_MAPPING at byte {offset} has {len} bytes, expected {FAN_MAPPING_LEN}")]
    BadMappingLength {
        /// Offset of the attribute inside the nest payload.
        offset: usize,
        /// Its payload length.
        len: usize,
    },
    /// A prefix length above 32.
    #[error("fan map {what} prefix {prefix} is above 32")]
    BadPrefix {
        /// "underlay" or "overlay".
        what: &'static str,
        /// The value found.
        prefix: u16,
    },
}

/// One `struct ifla_fan_map`, exactly as the kernel sees it.
///
/// Build with [`FanMapping::map`], [`FanMapping::delete`] or
/// [`FanMapping::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FanMapping {
    /// The overlay network address (0 only for a flush).
    pub overlay: Ipv4Addr,
    /// The overlay prefix length.
    pub overlay_prefix: u16,
    /// The underlay network address (0 in a delete or flush).
    pub underlay: Ipv4Addr,
    /// The underlay prefix length (0 in a delete or flush).
    pub underlay_prefix: u16,
}

impl FanMapping {
    /// The map `overlay` over `underlay` (e.g. 250.0.0.0/8 over 172.30.0.0/16).
    /// Host bits are cleared, as the kernel requires.
    pub fn map(overlay: Ipv4Network, underlay: Ipv4Network) -> Self {
        FanMapping {
            overlay: overlay.network(),
            overlay_prefix: u16::from(overlay.prefix()),
            underlay: underlay.network(),
            underlay_prefix: u16::from(underlay.prefix()),
        }
    }

    /// The entry that deletes the map of `overlay` (underlay 0/0).
    pub fn delete(overlay: Ipv4Network) -> Self {
        FanMapping {
            overlay: overlay.network(),
            overlay_prefix: u16::from(overlay.prefix()),
            underlay: Ipv4Addr::UNSPECIFIED,
            underlay_prefix: 0,
        }
    }

    /// The entry that flushes every map of the device (0/0 over 0/0).
    pub fn flush() -> Self {
        FanMapping {
            overlay: Ipv4Addr::UNSPECIFIED,
            overlay_prefix: 0,
            underlay: Ipv4Addr::UNSPECIFIED,
            underlay_prefix: 0,
        }
    }

    /// True for a delete or flush entry (underlay 0).
    pub fn is_removal(&self) -> bool {
        self.underlay.is_unspecified()
    }

    /// The overlay as a network, when the prefix is valid.
    pub fn overlay_network(&self) -> Option<Ipv4Network> {
        Ipv4Network::new(self.overlay, u8::try_from(self.overlay_prefix).ok()?).ok()
    }

    /// The underlay as a network, when the prefix is valid.
    pub fn underlay_network(&self) -> Option<Ipv4Network> {
        Ipv4Network::new(self.underlay, u8::try_from(self.underlay_prefix).ok()?).ok()
    }

    /// True when this map's overlay and `other` share addresses (the kernel
    /// refuses to add a map whose overlay address another map covers).
    pub fn overlaps(&self, other: Ipv4Network) -> bool {
        match self.overlay_network() {
            Some(mine) => mine.contains(other.network()) || other.contains(mine.network()),
            None => false,
        }
    }
}

impl fmt::Display for FanMapping {
    /// The iproute2 form `overlay/O:underlay/U`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.overlay, self.overlay_prefix, self.underlay, self.underlay_prefix
        )
    }
}

/// The 12 bytes of `struct ifla_fan_map`.
pub fn encode_mapping(map: &FanMapping) -> [u8; FAN_MAPPING_LEN] {
    let mut out = [0u8; FAN_MAPPING_LEN];
    out[0..4].copy_from_slice(&map.underlay.octets());
    out[4..8].copy_from_slice(&map.overlay.octets());
    out[8..10].copy_from_slice(&map.underlay_prefix.to_ne_bytes());
    out[10..12].copy_from_slice(&map.overlay_prefix.to_ne_bytes());
    out
}

/// Parses the 12 bytes of `struct ifla_fan_map`.
pub fn decode_mapping(bytes: &[u8; FAN_MAPPING_LEN]) -> Result<FanMapping, AbiError> {
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let map = FanMapping {
        underlay: ip(&bytes[0..4]),
        overlay: ip(&bytes[4..8]),
        underlay_prefix: u16::from_ne_bytes([bytes[8], bytes[9]]),
        overlay_prefix: u16::from_ne_bytes([bytes[10], bytes[11]]),
    };
    for (what, prefix) in [
        ("underlay", map.underlay_prefix),
        ("overlay", map.overlay_prefix),
    ] {
        if prefix > 32 {
            return Err(AbiError::BadPrefix { what, prefix });
        }
    }
    Ok(map)
}

/// The payload of [`IFLA_IPTUN_FAN_MAP`]: one 16-byte IFLA_FAN_MAPPING
/// attribute per entry (4-byte header + 12-byte struct, no padding needed).
pub fn encode_fan_map(maps: &[FanMapping]) -> Vec<u8> {
    let attr_len = NLA_HDRLEN + FAN_MAPPING_LEN;
    let mut out = Vec::with_capacity(maps.len() * nla_align(attr_len));
    for map in maps {
        out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        out.extend_from_slice(&IFLA_FAN_MAPPING.to_ne_bytes());
        out.extend_from_slice(&encode_mapping(map));
        out.resize(nla_align(out.len()), 0);
    }
    out
}

/// The whole [`IFLA_IPTUN_FAN_MAP`] attribute, header included (what goes
/// into IFLA_INFO_DATA).
pub fn encode_fan_map_attribute(maps: &[FanMapping]) -> Vec<u8> {
    let payload = encode_fan_map(maps);
    let mut out = Vec::with_capacity(NLA_HDRLEN + payload.len());
    out.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&IFLA_IPTUN_FAN_MAP.to_ne_bytes());
    out.extend_from_slice(&payload);
    out
}

/// [`IFLA_IPTUN_FAN_MAP`] as an ipip IFLA_INFO_DATA attribute for
/// netlink-packet-route, which has no variant of its own for it.
pub fn fan_map_nla(maps: &[FanMapping]) -> InfoIpTunnel {
    InfoIpTunnel::Other(DefaultNla::new(IFLA_IPTUN_FAN_MAP, encode_fan_map(maps)))
}

/// Parses the payload of [`IFLA_IPTUN_FAN_MAP`]. Attributes of other types
/// are skipped (a newer kernel may add some); a truncated attribute or a
/// mapping of the wrong size is an error.
pub fn decode_fan_map(payload: &[u8]) -> Result<Vec<FanMapping>, AbiError> {
    let mut maps = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let rest = &payload[offset..];
        if rest.len() < NLA_HDRLEN {
            return Err(AbiError::Truncated {
                offset,
                detail: format!("{} bytes left, a header needs {NLA_HDRLEN}", rest.len()),
            });
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(AbiError::Truncated {
                offset,
                detail: format!("nla_len {len} with {} bytes left", rest.len()),
            });
        }
        if kind == IFLA_FAN_MAPPING {
            let value = &rest[NLA_HDRLEN..len];
            let bytes: &[u8; FAN_MAPPING_LEN] =
                value.try_into().map_err(|_| AbiError::BadMappingLength {
                    offset,
                    len: value.len(),
                })?;
            maps.push(decode_mapping(bytes)?);
        }
        offset += nla_align(len);
    }
    Ok(maps)
}

/// The IFLA_INFO_DATA attributes of an ipip link message, if it is one.
pub fn ipip_info_data(message: &LinkMessage) -> Option<&[InfoIpTunnel]> {
    message.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Data(InfoData::IpTunnel(data)) => Some(data.as_slice()),
            _ => None,
        }),
        _ => None,
    })
}

/// The fan maps an RTM_GETLINK answer reports: empty when the link carries
/// no [`IFLA_IPTUN_FAN_MAP`] (no maps, or a kernel without the fan patch).
pub fn fan_maps_of(message: &LinkMessage) -> Result<Vec<FanMapping>, AbiError> {
    let Some(data) = ipip_info_data(message) else {
        return Ok(Vec::new());
    };
    for attr in data {
        if let InfoIpTunnel::Other(nla) = attr {
            if nla.kind() & NLA_TYPE_MASK == IFLA_IPTUN_FAN_MAP {
                let mut payload = vec![0u8; nla.value_len()];
                nla.emit_value(&mut payload);
                return decode_fan_map(&payload);
            }
        }
    }
    Ok(Vec::new())
}

/// Why the maps of a device cannot be made to include ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the device already maps {existing}, which overlaps overlay {overlay}; fan maps it does not own are left alone")]
pub struct MapConflict {
    /// The map in the way.
    pub existing: FanMapping,
    /// The overlay we want to map.
    pub overlay: Ipv4Network,
}

/// The entries to send so that a device whose maps are `current` maps
/// `want` too, touching no other map: nothing when it is there, the map
/// alone when its overlay is free, a delete then the map when the overlay
/// is mapped to another underlay. (Re-sending the merged set would fail:
/// the kernel answers EEXIST for an overlay it already maps.)
pub fn changes_to_add(
    current: &[FanMapping],
    want: FanMapping,
) -> Result<Vec<FanMapping>, MapConflict> {
    let Some(overlay) = want.overlay_network() else {
        return Ok(vec![want]);
    };
    if current.contains(&want) {
        return Ok(Vec::new());
    }
    let mut changes = Vec::new();
    for existing in current {
        if existing.overlay == want.overlay && existing.overlay_prefix == want.overlay_prefix {
            // Our overlay, another underlay (the host moved): replace it.
            changes.push(FanMapping::delete(overlay));
        } else if existing.overlaps(overlay) {
            return Err(MapConflict {
                existing: *existing,
                overlay,
            });
        }
    }
    changes.push(want);
    Ok(changes)
}

/// The entries to send to remove the map of `overlay` from a device whose
/// maps are `current`: one delete entry, or nothing when it is not there.
pub fn changes_to_remove(current: &[FanMapping], overlay: Ipv4Network) -> Vec<FanMapping> {
    let mapped = current
        .iter()
        .any(|m| m.overlay == overlay.network() && m.overlay_prefix == u16::from(overlay.prefix()));
    if mapped {
        vec![FanMapping::delete(overlay)]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    //! Golden bytes, written out by hand from the ABI (see the module docs),
    //! not produced by the encoder under test. Prefixes and netlink headers
    //! are host order: these vectors are for little-endian hosts.

    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_route::link::InfoKind;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    /// 250.0.0.0/8 over 172.30.0.0/16 (FAN.md §1, the customary default).
    fn map_250() -> FanMapping {
        FanMapping::map(net("250.0.0.0/8"), net("172.30.0.0/16"))
    }

    /// 99.0.0.0/8 over 10.99.224.0/20 (/20 slices).
    fn map_99() -> FanMapping {
        FanMapping::map(net("99.0.0.0/8"), net("10.99.224.0/20"))
    }

    /// 100.64.0.0/10 over 10.224.220.0/24 (an overlay prefix that is not /8).
    fn map_100() -> FanMapping {
        FanMapping::map(net("100.64.0.0/10"), net("10.224.220.0/24"))
    }

    #[rustfmt::skip]
    const GOLDEN_250: [u8; 16] = [
        0x10, 0x00,             // nla_len 16 = 4 header + 12 struct
        0x01, 0x00,             // nla_type IFLA_FAN_MAPPING
        0xac, 0x1e, 0x00, 0x00, // underlay 172.30.0.0, network order
        0xfa, 0x00, 0x00, 0x00, // overlay 250.0.0.0, network order
        0x10, 0x00,             // underlay_prefix 16, host order
        0x08, 0x00,             // overlay_prefix 8, host order
    ];

    #[rustfmt::skip]
    const GOLDEN_99: [u8; 16] = [
        0x10, 0x00, 0x01, 0x00,
        0x0a, 0x63, 0xe0, 0x00, // 10.99.224.0
        0x63, 0x00, 0x00, 0x00, // 99.0.0.0
        0x14, 0x00,             // 20
        0x08, 0x00,             // 8
    ];

    #[rustfmt::skip]
    const GOLDEN_100: [u8; 16] = [
        0x10, 0x00, 0x01, 0x00,
        0x0a, 0xe0, 0xdc, 0x00, // 10.224.220.0
        0x64, 0x40, 0x00, 0x00, // 100.64.0.0
        0x18, 0x00,             // 24
        0x0a, 0x00,             // 10
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn one_mapping_struct() {
        assert_eq!(encode_mapping(&map_250()), GOLDEN_250[4..]);
        assert_eq!(encode_mapping(&map_99()), GOLDEN_99[4..]);
        assert_eq!(encode_mapping(&map_100()), GOLDEN_100[4..]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn nest_with_one_map() {
        let mut want = vec![0x14, 0x00, 0x21, 0x00]; // nla_len 20, nla_type 33, no NLA_F_NESTED
        want.extend_from_slice(&GOLDEN_250);
        assert_eq!(encode_fan_map_attribute(&[map_250()]), want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn nest_with_three_maps_keeps_order() {
        let mut want = vec![0x34, 0x00, 0x21, 0x00]; // 4 + 3 * 16 = 52
        want.extend_from_slice(&GOLDEN_99);
        want.extend_from_slice(&GOLDEN_250);
        want.extend_from_slice(&GOLDEN_100);
        assert_eq!(
            encode_fan_map_attribute(&[map_99(), map_250(), map_100()]),
            want
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn delete_and_flush_entries() {
        #[rustfmt::skip]
        let want = [
            0x24, 0x00, 0x21, 0x00, // nla_len 36 = 4 + 2 * 16, type 33
            0x10, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x00, 0x00, // underlay 0: delete ...
            0xfa, 0x00, 0x00, 0x00, // ... the map of 250.0.0.0
            0x00, 0x00, 0x08, 0x00, // underlay /0, overlay /8
            0x10, 0x00, 0x01, 0x00,
            0x00, 0x00, 0x00, 0x00, // 0/0 over 0/0: flush
            0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ];
        let entries = [FanMapping::delete(net("250.0.0.0/8")), FanMapping::flush()];
        assert_eq!(encode_fan_map_attribute(&entries), want);
        assert!(entries.iter().all(FanMapping::is_removal));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn empty_nest() {
        assert_eq!(encode_fan_map_attribute(&[]), [0x04, 0x00, 0x21, 0x00]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn host_bits_are_cleared() {
        let m = FanMapping::map(net("250.1.2.3/8"), net("172.30.9.9/16"));
        assert_eq!(encode_mapping(&m), GOLDEN_250[4..]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn whole_linkinfo_of_a_changelink() {
        // IFLA_LINKINFO as the backend sends it on changelink: kind, then
        // the full tunnel parameters (changelink resets what is missing)
        // and the fan map.
        let info = LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpIp),
            LinkInfo::Data(InfoData::IpTunnel(vec![
                InfoIpTunnel::Link(3),
                InfoIpTunnel::Local(std::net::IpAddr::V4(Ipv4Addr::new(172, 30, 0, 28))),
                InfoIpTunnel::PMtuDisc(true),
                fan_map_nla(&[map_250()]),
            ])),
        ]);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x40, 0x00, 0x12, 0x00,             // IFLA_LINKINFO (18), len 64 = 4 + 12 + 48
            0x09, 0x00, 0x01, 0x00,             //   IFLA_INFO_KIND, len 9
            b'i', b'p', b'i', b'p', 0x00,       //     "ipip\0"
            0x00, 0x00, 0x00,                   //     pad to 4
            0x30, 0x00, 0x02, 0x00,             //   IFLA_INFO_DATA, len 48 = 4 + 8 + 8 + 8 + 20
            0x08, 0x00, 0x01, 0x00,             //     IFLA_IPTUN_LINK, len 8
            0x03, 0x00, 0x00, 0x00,             //       ifindex 3, host order
            0x08, 0x00, 0x02, 0x00,             //     IFLA_IPTUN_LOCAL, len 8
            0xac, 0x1e, 0x00, 0x1c,             //       172.30.0.28
            0x05, 0x00, 0x0a, 0x00,             //     IFLA_IPTUN_PMTUDISC, len 5
            0x01, 0x00, 0x00, 0x00,             //       1 + pad
            0x14, 0x00, 0x21, 0x00,             //     IFLA_IPTUN_FAN_MAP, len 20
            0x10, 0x00, 0x01, 0x00,             //       IFLA_FAN_MAPPING, len 16
            0xac, 0x1e, 0x00, 0x00,
            0xfa, 0x00, 0x00, 0x00,
            0x10, 0x00, 0x08, 0x00,
        ];
        let mut got = vec![0u8; info.buffer_len()];
        info.emit(&mut got);
        assert_eq!(got, want);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn decodes_what_the_kernel_echoes() {
        // Kernels >= 5.2 set NLA_F_NESTED on the nest (nla_nest_start).
        let mut payload = GOLDEN_250.to_vec();
        payload.extend_from_slice(&GOLDEN_100);
        assert_eq!(
            decode_fan_map(&payload).unwrap(),
            vec![map_250(), map_100()]
        );

        let message = {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::IpIp),
                LinkInfo::Data(InfoData::IpTunnel(vec![
                    InfoIpTunnel::Local(std::net::IpAddr::V4(Ipv4Addr::new(172, 30, 0, 28))),
                    InfoIpTunnel::Other(DefaultNla::new(
                        IFLA_IPTUN_FAN_MAP | NLA_F_NESTED,
                        payload,
                    )),
                ])),
            ]));
            m
        };
        assert_eq!(fan_maps_of(&message).unwrap(), vec![map_250(), map_100()]);
    }

    #[test]
    fn round_trip_through_a_parsed_message() {
        use netlink_packet_core::{NlaBuffer, ParseableParametrized};
        use netlink_packet_route::AddressFamily;
        // Emit a whole LINKINFO with the map, parse it back with
        // netlink-packet-route as RTM_GETLINK answers are parsed.
        let info = LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpIp),
            LinkInfo::Data(InfoData::IpTunnel(vec![fan_map_nla(&[
                map_99(),
                map_250(),
            ])])),
        ]);
        let mut bytes = vec![0u8; info.buffer_len()];
        info.emit(&mut bytes);
        let parsed =
            LinkAttribute::parse_with_param(&NlaBuffer::new(&bytes), AddressFamily::Unspec)
                .unwrap();
        let mut message = LinkMessage::default();
        message.attributes.push(parsed);
        assert_eq!(fan_maps_of(&message).unwrap(), vec![map_99(), map_250()]);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn skips_unknown_attributes_and_rejects_garbage() {
        let mut payload = vec![0x08, 0x00, 0x07, 0x00, 1, 2, 3, 4]; // type 7: skipped
        payload.extend_from_slice(&GOLDEN_99);
        assert_eq!(decode_fan_map(&payload).unwrap(), vec![map_99()]);

        assert!(matches!(
            decode_fan_map(&GOLDEN_99[..10]),
            Err(AbiError::Truncated { offset: 0, .. })
        ));
        assert!(matches!(
            decode_fan_map(&[0x0c, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(AbiError::BadMappingLength { len: 8, .. })
        ));
        assert!(matches!(
            decode_fan_map(&[0x02, 0x00]),
            Err(AbiError::Truncated { .. })
        ));
        let mut bad_prefix = GOLDEN_250;
        bad_prefix[14] = 33;
        assert_eq!(
            decode_fan_map(&bad_prefix),
            Err(AbiError::BadPrefix {
                what: "overlay",
                prefix: 33
            })
        );
        assert_eq!(decode_fan_map(&[]).unwrap(), vec![]);
    }

    #[test]
    fn no_fan_map_attribute_means_no_maps() {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpIp),
            LinkInfo::Data(InfoData::IpTunnel(vec![InfoIpTunnel::Link(2)])),
        ]));
        assert_eq!(fan_maps_of(&m).unwrap(), vec![]);
        assert_eq!(fan_maps_of(&LinkMessage::default()).unwrap(), vec![]);
    }

    #[test]
    fn map_deltas_touch_only_our_overlay() {
        let other = map_99();
        // Absent: add it alone, the other map is not re-sent.
        assert_eq!(
            changes_to_add(&[other], map_250()).unwrap(),
            vec![map_250()]
        );
        // Present: nothing to do.
        assert_eq!(
            changes_to_add(&[other, map_250()], map_250()).unwrap(),
            vec![]
        );
        // Our overlay over another underlay: delete, then add.
        let moved = FanMapping::map(net("250.0.0.0/8"), net("172.31.0.0/16"));
        assert_eq!(
            changes_to_add(&[other, moved], map_250()).unwrap(),
            vec![FanMapping::delete(net("250.0.0.0/8")), map_250()]
        );
        // Someone else's overlapping overlay: refuse, do not delete it.
        let squatter = FanMapping::map(net("250.1.0.0/16"), net("10.0.0.0/24"));
        let err = changes_to_add(&[squatter], map_250()).unwrap_err();
        assert_eq!(err.existing, squatter);

        assert_eq!(
            changes_to_remove(&[other, map_250()], net("250.0.0.0/8")),
            vec![FanMapping::delete(net("250.0.0.0/8"))]
        );
        assert_eq!(changes_to_remove(&[other], net("250.0.0.0/8")), vec![]);
    }

    #[test]
    fn display_is_iproute2_form() {
        assert_eq!(map_250().to_string(), "250.0.0.0/8:172.30.0.0/16");
    }
}
