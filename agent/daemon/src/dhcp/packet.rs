//! The pure half of the DHCP server: bytes → [`Request`], request + lease
//! view → [`Plan`], outcome → reply bytes. No sockets and no store, so it
//! is unit-tested and fuzzed as is (`agent/fuzz/fuzz_targets/dhcp_packet.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use fan_core::ipam::SlicePool;
use ipnetwork::Ipv4Network;

use crate::model::Owner;

/// Largest datagram handled; anything longer is dropped as oversized. A
/// DHCP message is at least 576 bytes for the client to accept and never
/// needs more than an Ethernet frame.
pub const MAX_PACKET: usize = 1500;
/// Shortest valid BOOTP message: the fixed header and the magic cookie.
pub const MIN_PACKET: usize = 240;
/// Longest client identifier accepted (the owner id must stay below 256 bytes).
pub const MAX_CLIENT_ID: usize = 64;
/// Interface name of every DHCP lease owner.
pub const LEASE_INTERFACE: &str = "dhcp";
/// Prefix of a lease owner's container id.
pub const OWNER_PREFIX: &str = "dhcp:";
/// Container id prefix of an address quarantined after a DECLINE.
pub const DECLINED_PREFIX: &str = "dhcp-declined:";
/// Label that marks a DHCP lease: `offered` or `bound` (or `declined`).
pub const LABEL_LEASE: &str = "fan.dhcp/lease";
/// Label with the lease expiry, RFC 3339 UTC (`2026-11-29T10:24:33Z`).
pub const LABEL_EXPIRES: &str = "fan.dhcp/expires";
/// Label with the client's hardware address.
pub const LABEL_HWADDR: &str = "fan.dhcp/hwaddr";
/// Label with the client's host name (option 12), when it sent one.
pub const LABEL_HOSTNAME: &str = "fan.dhcp/hostname";

/// Why a packet got no answer. Each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than a BOOTP header.
    Truncated,
    /// Longer than [`MAX_PACKET`].
    Oversized,
    /// The DHCP parser refused it.
    Malformed,
    /// Not a BOOTREQUEST, no message type, or a server-side message type.
    NotARequest,
    /// Hardware type other than Ethernet with 6-byte addresses.
    BadHardware,
    /// Came through a relay (giaddr set): only the bridge itself is served.
    Relayed,
    /// Client identifier empty or longer than [`MAX_CLIENT_ID`].
    BadClientId,
    /// A REQUEST for another server (option 54 names someone else).
    OtherServer,
    /// A REQUEST, DECLINE or RELEASE without the address it is about, or
    /// about an address the client does not hold.
    NoSuchLease,
    /// An INFORM from an address outside the slice.
    OutsideSlice,
    /// Over the per-hardware-address rate limit.
    RateLimited,
}

impl DropReason {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::NotARequest => "not-a-request",
            DropReason::BadHardware => "bad-hardware",
            DropReason::Relayed => "relayed",
            DropReason::BadClientId => "bad-client-id",
            DropReason::OtherServer => "other-server",
            DropReason::NoSuchLease => "no-such-lease",
            DropReason::OutsideSlice => "outside-slice",
            DropReason::RateLimited => "rate-limited",
        }
    }
}

/// The client message kinds the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// DHCPDISCOVER.
    Discover,
    /// DHCPREQUEST (selecting, init-reboot, renewing, rebinding).
    Request,
    /// DHCPDECLINE: the address is in use on the link.
    Decline,
    /// DHCPRELEASE.
    Release,
    /// DHCPINFORM: configuration only, the client has an address.
    Inform,
}

/// A parsed, checked client message.
#[derive(Debug, Clone)]
pub struct Request {
    /// Message kind.
    pub kind: Kind,
    /// The client's hardware address.
    pub hwaddr: [u8; 6],
    /// The client identifier (option 61), or 0x01 + the hardware address.
    pub client_id: Vec<u8>,
    /// ciaddr.
    pub ciaddr: Ipv4Addr,
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 12, when printable.
    pub hostname: Option<String>,
    /// The message as decoded (xid, flags, chaddr for the reply).
    pub message: Message,
}

impl Request {
    /// The allocation owner of this client's lease:
    /// `dhcp:<client id as lowercase colon-separated hex>` / `dhcp`.
    pub fn owner(&self) -> Owner {
        lease_owner(&self.client_id)
    }

    /// The hardware address as `aa:bb:cc:dd:ee:ff`.
    pub fn hwaddr_text(&self) -> String {
        hex(&self.hwaddr)
    }
}

/// The owner of the lease of a client identifier.
pub fn lease_owner(client_id: &[u8]) -> Owner {
    Owner {
        container_id: format!("{OWNER_PREFIX}{}", hex(client_id)),
        interface: LEASE_INTERFACE.to_owned(),
    }
}

/// The quarantine owner of a declined address.
pub fn declined_owner(address: Ipv4Addr) -> Owner {
    Owner {
        container_id: format!("{DECLINED_PREFIX}{address}"),
        interface: LEASE_INTERFACE.to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Decodes and checks one datagram.
pub fn parse(bytes: &[u8]) -> Result<Request, DropReason> {
    if bytes.len() > MAX_PACKET {
        return Err(DropReason::Oversized);
    }
    if bytes.len() < MIN_PACKET {
        return Err(DropReason::Truncated);
    }
    let message = Message::decode(&mut Decoder::new(bytes)).map_err(|_| DropReason::Malformed)?;
    if message.opcode() != Opcode::BootRequest {
        return Err(DropReason::NotARequest);
    }
    if message.htype() != HType::Eth || message.hlen() != 6 || message.chaddr().len() < 6 {
        return Err(DropReason::BadHardware);
    }
    if !message.giaddr().is_unspecified() {
        return Err(DropReason::Relayed);
    }
    let kind = match message.opts().msg_type() {
        Some(MessageType::Discover) => Kind::Discover,
        Some(MessageType::Request) => Kind::Request,
        Some(MessageType::Decline) => Kind::Decline,
        Some(MessageType::Release) => Kind::Release,
        Some(MessageType::Inform) => Kind::Inform,
        _ => return Err(DropReason::NotARequest),
    };
    let mut hwaddr = [0u8; 6];
    hwaddr.copy_from_slice(&message.chaddr()[..6]);
    let client_id = match message.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => {
            if id.is_empty() || id.len() > MAX_CLIENT_ID {
                return Err(DropReason::BadClientId);
            }
            id.clone()
        }
        // Without option 61 the owner is the hardware address, written as
        // the identifier most clients would send (type 1, Ethernet).
        _ => std::iter::once(1u8).chain(hwaddr).collect(),
    };
    let requested = match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    };
    let server_id = match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    };
    let hostname = match message.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h))
            if !h.is_empty() && h.len() <= 64 && h.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Some(h.clone())
        }
        _ => None,
    };
    Ok(Request {
        kind,
        hwaddr,
        client_id,
        ciaddr: message.ciaddr(),
        requested,
        server_id,
        hostname,
        message,
    })
}

/// What a network's DHCP server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The host's slice.
    pub slice: Ipv4Network,
    /// Addresses .1 ..= .host_reserve are never leased.
    pub host_reserve: u32,
    /// Router and server identifier (the slice's .1).
    pub gateway: Ipv4Addr,
    /// Interface MTU (option 26).
    pub mtu: u16,
    /// Lease time, seconds.
    pub lease_seconds: u32,
    /// DNS servers (option 6); none: no option 6.
    pub dns: Vec<Ipv4Addr>,
}

impl Settings {
    /// Whether `address` may be leased: in the slice, not the network,
    /// broadcast or host-reserved addresses.
    pub fn leasable(&self, address: Ipv4Addr) -> bool {
        SlicePool::new(self.slice, self.host_reserve).is_ok_and(|p| p.is_assignable(address))
    }
}

/// What the store says about the addresses a request is about: the
/// client's current allocation and the holders of the other addresses it
/// names. Built by the server from the store before [`plan`] runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// The address the client's owner holds, if any.
    pub owned: Option<Ipv4Addr>,
    /// Holders of the addresses looked up (requested, ciaddr); an address
    /// absent here is free.
    pub holders: BTreeMap<Ipv4Addr, Owner>,
}

/// The decision for one request. The server carries out the store part;
/// an ACK is sent only after the lease is durably the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No answer.
    Drop(DropReason),
    /// Allocate (the owner's existing address, else `prefer` if free, else
    /// the next free one) with a short hold, then OFFER it.
    Offer {
        /// The client's requested address, when it may have it.
        prefer: Option<Ipv4Addr>,
    },
    /// Make `address` the client's bound lease (extend it, or allocate it
    /// when free), then ACK; NAK when that fails.
    Ack {
        /// The address.
        address: Ipv4Addr,
    },
    /// Refuse the request.
    Nak {
        /// Why, for the log and the NAK's message option.
        reason: &'static str,
    },
    /// Release the client's lease.
    Release {
        /// Its address.
        address: Ipv4Addr,
    },
    /// Move the address to a quarantine owner for a while.
    Decline {
        /// The declined address.
        address: Ipv4Addr,
    },
    /// ACK with configuration only (no lease) to an address the client has.
    Inform,
}

/// Decides what to do with `request`, given what the store holds.
pub fn plan(request: &Request, view: &LeaseView, settings: &Settings) -> Plan {
    let owner = request.owner();
    let held_by_other = |a: Ipv4Addr| view.holders.get(&a).is_some_and(|holder| *holder != owner);
    match request.kind {
        Kind::Discover => {
            let prefer = request
                .requested
                .filter(|a| settings.leasable(*a) && !held_by_other(*a));
            Plan::Offer { prefer }
        }
        Kind::Request => {
            if request.server_id.is_some_and(|s| s != settings.gateway) {
                return Plan::Drop(DropReason::OtherServer);
            }
            // SELECTING and INIT-REBOOT name the address in option 50;
            // RENEWING and REBINDING in ciaddr.
            let Some(address) = request
                .requested
                .or((!request.ciaddr.is_unspecified()).then_some(request.ciaddr))
            else {
                return Plan::Drop(DropReason::NoSuchLease);
            };
            if !settings.leasable(address) {
                return Plan::Nak {
                    reason: "address outside this network's leasable range",
                };
            }
            if held_by_other(address) {
                return Plan::Nak {
                    reason: "address held by another client",
                };
            }
            if view.owned.is_some_and(|o| o != address) {
                return Plan::Nak {
                    reason: "client holds another address",
                };
            }
            Plan::Ack { address }
        }
        Kind::Decline => match request.requested {
            Some(address) if view.owned == Some(address) => Plan::Decline { address },
            _ => Plan::Drop(DropReason::NoSuchLease),
        },
        Kind::Release => {
            if !request.ciaddr.is_unspecified() && view.owned == Some(request.ciaddr) {
                Plan::Release {
                    address: request.ciaddr,
                }
            } else {
                Plan::Drop(DropReason::NoSuchLease)
            }
        }
        Kind::Inform => {
            if settings.slice.contains(request.ciaddr) && !request.ciaddr.is_unspecified() {
                Plan::Inform
            } else {
                Plan::Drop(DropReason::OutsideSlice)
            }
        }
    }
}

/// The reply kinds the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// DHCPOFFER of `address`.
    Offer(Ipv4Addr),
    /// DHCPACK of a lease on `address`.
    Ack(Ipv4Addr),
    /// DHCPACK to an INFORM (no address, no lease time).
    InformAck,
    /// DHCPNAK.
    Nak,
}

/// Builds the reply to `request`. `message` goes into option 56 (NAKs).
pub fn reply(request: &Request, kind: ReplyKind, settings: &Settings, message: &str) -> Vec<u8> {
    let req = &request.message;
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(&request.hwaddr)
        .set_siaddr(Ipv4Addr::UNSPECIFIED)
        .set_giaddr(Ipv4Addr::UNSPECIFIED);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::ServerIdentifier(settings.gateway));
    let config = |opts: &mut v4::DhcpOptions| {
        opts.insert(DhcpOption::SubnetMask(settings.slice.mask()));
        opts.insert(DhcpOption::Router(vec![settings.gateway]));
        opts.insert(DhcpOption::BroadcastAddr(settings.slice.broadcast()));
        opts.insert(DhcpOption::InterfaceMtu(settings.mtu));
        if !settings.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(settings.dns.clone()));
        }
    };
    let lease = |opts: &mut v4::DhcpOptions| {
        let t = settings.lease_seconds;
        opts.insert(DhcpOption::AddressLeaseTime(t));
        opts.insert(DhcpOption::Renewal(t / 2));
        opts.insert(DhcpOption::Rebinding(t / 8 * 7));
    };
    match kind {
        ReplyKind::Offer(address) => {
            opts.insert(DhcpOption::MessageType(MessageType::Offer));
            config(opts);
            lease(opts);
            m.set_yiaddr(address);
        }
        ReplyKind::Ack(address) => {
            opts.insert(DhcpOption::MessageType(MessageType::Ack));
            config(opts);
            lease(opts);
            m.set_yiaddr(address).set_ciaddr(req.ciaddr());
        }
        ReplyKind::InformAck => {
            opts.insert(DhcpOption::MessageType(MessageType::Ack));
            config(opts);
            m.set_ciaddr(req.ciaddr());
        }
        ReplyKind::Nak => {
            opts.insert(DhcpOption::MessageType(MessageType::Nak));
            if !message.is_empty() {
                opts.insert(DhcpOption::Message(message.to_owned()));
            }
        }
    }
    // Encoding a message built from checked fields cannot fail; an empty
    // reply is simply not sent.
    m.to_vec().unwrap_or_default()
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-29T10:24:33Z`).
pub fn format_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses what [`format_time`] writes.
pub fn parse_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    u64::try_from(days)
        .ok()
        .map(|days| days * 86_400 + h * 3600 + mi * 60 + s)
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Lease labels: kind (`offered`/`bound`/`declined`), expiry, hardware
/// address and host name.
pub fn lease_labels(
    state: &str,
    expires_unix: u64,
    request: Option<&Request>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_LEASE.to_owned(), state.to_owned()),
        (LABEL_EXPIRES.to_owned(), format_time(expires_unix)),
    ]);
    if let Some(r) = request {
        labels.insert(LABEL_HWADDR.to_owned(), r.hwaddr_text());
        if let Some(h) = &r.hostname {
            labels.insert(LABEL_HOSTNAME.to_owned(), h.clone());
        }
    }
    labels
}

/// The expiry of a DHCP lease (or quarantine) allocation; None for any
/// other allocation, which the lease sweep never touches.
pub fn lease_expiry(owner: &Owner, labels: &BTreeMap<String, String>) -> Option<u64> {
    let ours = owner.interface == LEASE_INTERFACE
        && (owner.container_id.starts_with(OWNER_PREFIX)
            || owner.container_id.starts_with(DECLINED_PREFIX));
    if !ours || !labels.contains_key(LABEL_LEASE) {
        return None;
    }
    labels.get(LABEL_EXPIRES).and_then(|t| parse_time(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            slice: "250.0.28.0/24".parse().unwrap(),
            host_reserve: 1,
            gateway: Ipv4Addr::new(250, 0, 28, 1),
            mtu: 1480,
            lease_seconds: 3600,
            dns: vec![Ipv4Addr::new(250, 0, 28, 1)],
        }
    }

    fn packet(kind: MessageType, f: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mac = [0x02, 0, 0, 0, 0, 7];
        let mut m = Message::new_with_id(
            42,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        f(&mut m);
        let mut bytes = m.to_vec().unwrap();
        bytes.resize(bytes.len().max(300), 0);
        bytes
    }

    fn request(kind: MessageType, f: impl FnOnce(&mut Message)) -> Request {
        parse(&packet(kind, f)).unwrap()
    }

    #[test]
    fn owner_is_client_id_or_hardware_address() {
        let r = request(MessageType::Discover, |_| {});
        assert_eq!(r.owner().container_id, "dhcp:01:02:00:00:00:00:07");
        assert_eq!(r.owner().interface, "dhcp");
        let r = request(MessageType::Discover, |m| {
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(vec![0xff, 0xab]));
        });
        assert_eq!(r.owner().container_id, "dhcp:ff:ab");
        fan_core::names::validate_container_id(&lease_owner(&[0xee; MAX_CLIENT_ID]).container_id)
            .unwrap();
    }

    #[test]
    fn bad_packets_are_dropped_with_a_reason() {
        assert_eq!(parse(&[0; 10]).unwrap_err(), DropReason::Truncated);
        assert_eq!(parse(&[0; 2000]).unwrap_err(), DropReason::Oversized);
        assert!(parse(&[0; 300]).is_err());
        let offer = packet(MessageType::Offer, |_| {});
        assert_eq!(parse(&offer).unwrap_err(), DropReason::NotARequest);
        let relayed = packet(MessageType::Discover, |m| {
            m.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        });
        assert_eq!(parse(&relayed).unwrap_err(), DropReason::Relayed);
        let long_id = packet(MessageType::Discover, |m| {
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(vec![1; MAX_CLIENT_ID + 1]));
        });
        assert_eq!(parse(&long_id).unwrap_err(), DropReason::BadClientId);
        // Truncating a valid packet anywhere never panics.
        let good = packet(MessageType::Request, |m| {
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(250, 0, 28, 9)));
        });
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
        }
    }

    #[test]
    fn discover_prefers_a_free_requested_address_only() {
        let s = settings();
        let want = Ipv4Addr::new(250, 0, 28, 9);
        let r = request(MessageType::Discover, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(want));
        });
        assert_eq!(
            plan(&r, &LeaseView::default(), &s),
            Plan::Offer { prefer: Some(want) }
        );
        let mut view = LeaseView::default();
        view.holders.insert(want, lease_owner(&[9]));
        assert_eq!(plan(&r, &view, &s), Plan::Offer { prefer: None });
        // the gateway and addresses outside the slice are never preferred
        for a in [s.gateway, Ipv4Addr::new(250, 0, 29, 9)] {
            let r = request(MessageType::Discover, |m| {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
            });
            assert_eq!(
                plan(&r, &LeaseView::default(), &s),
                Plan::Offer { prefer: None }
            );
        }
    }

    #[test]
    fn request_for_someone_elses_address_is_naked() {
        let s = settings();
        let a = Ipv4Addr::new(250, 0, 28, 9);
        let r = request(MessageType::Request, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        });
        let mut view = LeaseView::default();
        view.holders.insert(a, lease_owner(&[9]));
        assert!(matches!(plan(&r, &view, &s), Plan::Nak { .. }));
        // free: ACK; own: ACK; owning another: NAK
        assert_eq!(
            plan(&r, &LeaseView::default(), &s),
            Plan::Ack { address: a }
        );
        let mut view = LeaseView {
            owned: Some(a),
            ..LeaseView::default()
        };
        view.holders.insert(a, r.owner());
        assert_eq!(plan(&r, &view, &s), Plan::Ack { address: a });
        let view = LeaseView {
            owned: Some(Ipv4Addr::new(250, 0, 28, 10)),
            ..LeaseView::default()
        };
        assert!(matches!(plan(&r, &view, &s), Plan::Nak { .. }));
        // outside the slice, or the gateway
        for bad in [Ipv4Addr::new(250, 0, 27, 9), s.gateway] {
            let r = request(MessageType::Request, |m| {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(bad));
            });
            assert!(matches!(
                plan(&r, &LeaseView::default(), &s),
                Plan::Nak { .. }
            ));
        }
        // for another server: silence
        let r = request(MessageType::Request, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
            m.opts_mut()
                .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        });
        assert_eq!(
            plan(&r, &LeaseView::default(), &s),
            Plan::Drop(DropReason::OtherServer)
        );
    }

    #[test]
    fn release_and_decline_only_for_the_holder() {
        let s = settings();
        let a = Ipv4Addr::new(250, 0, 28, 9);
        let r = request(MessageType::Release, |m| {
            m.set_ciaddr(a);
        });
        let own = LeaseView {
            owned: Some(a),
            ..LeaseView::default()
        };
        assert_eq!(plan(&r, &own, &s), Plan::Release { address: a });
        assert_eq!(
            plan(&r, &LeaseView::default(), &s),
            Plan::Drop(DropReason::NoSuchLease)
        );
        let d = request(MessageType::Decline, |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
        });
        assert_eq!(plan(&d, &own, &s), Plan::Decline { address: a });
        assert_eq!(
            plan(&d, &LeaseView::default(), &s),
            Plan::Drop(DropReason::NoSuchLease)
        );
    }

    #[test]
    fn ack_carries_mask_router_mtu_lease_and_dns() {
        let s = settings();
        let a = Ipv4Addr::new(250, 0, 28, 9);
        let r = request(MessageType::Request, |_| {});
        let bytes = reply(&r, ReplyKind::Ack(a), &s, "");
        let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), 42);
        assert_eq!(m.yiaddr(), a);
        let o = m.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Ack));
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![s.gateway]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1480))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(s.gateway))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(s.dns.clone()))
        );
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_795_000_000), "2026-11-18T11:06:40Z");
        for t in [0, 59, 86_399, 951_782_400, 1_795_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(parse_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn only_lease_allocations_have_an_expiry() {
        let labels = lease_labels("bound", 100, None);
        assert_eq!(lease_expiry(&lease_owner(&[1, 2]), &labels), Some(100));
        assert_eq!(
            lease_expiry(&declined_owner(Ipv4Addr::LOCALHOST), &labels),
            Some(100)
        );
        let api = Owner {
            container_id: "web-1".into(),
            interface: "dhcp".into(),
        };
        assert_eq!(lease_expiry(&api, &labels), None);
        assert_eq!(lease_expiry(&lease_owner(&[1]), &BTreeMap::new()), None);
    }
}
