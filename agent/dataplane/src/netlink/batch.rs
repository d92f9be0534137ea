//! The raw NETLINK_ROUTE / NETLINK_NETFILTER sockets: route batches in one
//! `sendmsg`, a route dump parsed straight from the bytes, and the nf_tables
//! generation. Every `unsafe` block of the netlink code lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::{Route4, RouteChange, RouteEntry, RouteScope, RuleEntry, RTN_UNICAST};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
/// How long to wait for acknowledgements the kernel owes us.
const ACK_TIMEOUT_SECS: libc::time_t = 30;

#[derive(Debug)]
pub(super) struct BatchSocket {
    fd: OwnedFd,
    seq: u32,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a c_int option of the right size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

impl BatchSocket {
    pub(super) fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        })?;
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Acks without a copy of the request; room for a batch of them.
        let _ = set_int(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        if set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20).is_err() {
            let _ = set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        }
        let timeout = libc::timeval {
            tv_sec: ACK_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: a valid fd and a timeval of the right size.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        // SAFETY: zeroed sockaddr_nl is valid; pid 0 lets the kernel pick.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        Ok(BatchSocket { fd, seq: 0 })
    }

    /// Encodes `change` exactly as rtnetlink's requests do.
    pub(super) fn encode(change: &RouteChange, seq: u32, out: &mut Vec<u8>) {
        let (payload, flags) = match change {
            RouteChange::Add(r) => (
                RouteNetlinkMessage::NewRoute(r.to_message(false)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
            ),
            RouteChange::Replace(r) => (
                RouteNetlinkMessage::NewRoute(r.to_message(false)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
            ),
            RouteChange::Delete(r) => (
                RouteNetlinkMessage::DelRoute(r.to_message(true)),
                NLM_F_REQUEST | NLM_F_ACK,
            ),
        };
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        message.finalize();
        let start = out.len();
        out.resize(start + message.buffer_len(), 0);
        message.serialize(&mut out[start..]);
        // Messages in one datagram start at 4-byte boundaries.
        out.resize((out.len() + 3) & !3, 0);
    }

    /// Sends every change; returns the errno of each (0: done).
    pub(super) fn run(
        &mut self,
        changes: &[RouteChange],
        batch: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Vec<i32> {
        let total = changes.len();
        let mut results = vec![0i32; total];
        let mut finished = 0;
        let mut out = Vec::with_capacity(batch * 128);
        let mut buf = vec![0u8; 1 << 16];
        for (chunk_index, chunk) in changes.chunks(batch).enumerate() {
            let first = chunk_index * batch;
            let base = self.seq;
            self.seq = self.seq.wrapping_add(chunk.len() as u32);
            out.clear();
            for (i, change) in chunk.iter().enumerate() {
                Self::encode(change, base.wrapping_add(i as u32), &mut out);
            }
            let mut pending = vec![true; chunk.len()];
            let mut waiting = chunk.len();
            let failure = match self.send(&out) {
                Err(e) => Some(e),
                Ok(()) => loop {
                    if waiting == 0 {
                        break None;
                    }
                    match self.recv(&mut buf) {
                        Err(e) => break Some(e),
                        Ok(n) => {
                            for (seq, errno) in acks(&buf[..n]) {
                                let i = seq.wrapping_sub(base) as usize;
                                if i < chunk.len() && pending[i] {
                                    pending[i] = false;
                                    waiting -= 1;
                                    results[first + i] = errno;
                                    finished += 1;
                                    progress(finished, total);
                                }
                            }
                        }
                    }
                },
            };
            if let Some(e) = failure {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                for (i, p) in pending.iter().enumerate() {
                    if *p {
                        results[first + i] = errno;
                        finished += 1;
                        progress(finished, total);
                    }
                }
                // The socket may hold stale acks now: start afresh.
                if let Ok(fresh) = BatchSocket::open() {
                    *self = BatchSocket {
                        seq: self.seq,
                        ..fresh
                    };
                }
            }
        }
        results
    }

    fn send(&self, data: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl is valid; pid 0 is the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: data and addr are valid for the given lengths.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    0,
                    &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for its length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The id this namespace knows the namespace open at `fd` by (RTM_GETNSID
/// with NETNSA_FD); `None` when it has none (the two were never paired,
/// for instance by a veth).
pub(super) fn netnsid_of(fd: BorrowedFd) -> io::Result<Option<i32>> {
    const RTM_GETNSID: u16 = 90;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;
    let mut socket = BatchSocket::open()?;
    // struct rtgenmsg (AF_UNSPEC), padded to 4 bytes, then NETNSA_FD.
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    body.extend_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    let answers = socket.exchange(RTM_GETNSID, &body)?;
    let id = answers
        .iter()
        .flat_map(|a| attributes(a.get(4..).unwrap_or_default()))
        .find(|(kind, value)| *kind == NETNSA_NSID && value.len() >= 4)
        .map(|(_, v)| i32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
    // Negative: NETNSA_NSID_NOT_ASSIGNED.
    Ok(id.filter(|id| *id >= 0))
}

/// Sets the IPv4 GSO and GRO size limits (IFLA_GSO_IPV4_MAX_SIZE,
/// IFLA_GRO_IPV4_MAX_SIZE) of device `index` in the calling thread's
/// network namespace.
pub(super) fn set_ipv4_gso_gro_max_size(index: u32, size: u32) -> io::Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
    const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
    let mut socket = BatchSocket::open()?;
    // struct ifinfomsg (AF_UNSPEC, `index`), then the two attributes.
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    for kind in [IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE] {
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(&size.to_ne_bytes());
    }
    socket.exchange(RTM_NEWLINK, &body).map(|_| ())
}

/// The nf_tables ruleset generation (NFT_MSG_GETGEN): it changes with
/// every committed nftables transaction in this network namespace.
pub(super) fn nft_generation() -> io::Result<u32> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWGEN: u16 = 15;
    const NFT_MSG_GETGEN: u16 = 16;
    const NFTA_GEN_ID: u16 = 1;
    const KIND: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    // The socket's receive timeout (30 s) bounds a kernel that never answers.
    let socket = BatchSocket::open_protocol(libc::NETLINK_NETFILTER)?;
    // struct nfgenmsg { family AF_UNSPEC, version 0, res_id 0 }.
    let request = request(KIND, NLM_F_REQUEST, 1, &[0; 4]);
    socket.send(&request)?;
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf)?;
    // The answer is a NEWGEN message.
    parse_generation(
        &buf[..n],
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN,
        NFTA_GEN_ID,
    )
}

/// The names of the nf_tables tables of family `ip` (NFT_MSG_GETTABLE dump).
pub(super) fn nft_ip_tables() -> io::Result<Vec<String>> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    const NFPROTO_IPV4: u8 = 2;
    let mut socket = BatchSocket::open_protocol(libc::NETLINK_NETFILTER)?;
    // struct nfgenmsg { family NFPROTO_IPV4, version 0, res_id 0 }.
    let answers = socket.dump(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        &[NFPROTO_IPV4, 0, 0, 0],
    )?;
    let mut names = Vec::new();
    for answer in &answers {
        // After struct nfgenmsg (4 bytes): attributes.
        for (kind, value) in attributes(answer.get(4..).unwrap_or_default()) {
            if kind == NFTA_TABLE_NAME {
                let value = value.split(|b| *b == 0).next().unwrap_or_default();
                names.push(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    Ok(names)
}

/// NFTA_GEN_ID of a NEWGEN answer (or the errno of an NLMSG_ERROR).
pub(super) fn parse_generation(data: &[u8], kind: u16, attr: u16) -> io::Result<u32> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if data.len() < NLMSG_HDRLEN {
        return Err(invalid("short netlink answer"));
    }
    let len = (u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize)
        .clamp(NLMSG_HDRLEN, data.len());
    let msg_kind = u16::from_ne_bytes([data[4], data[5]]);
    let p = &data[NLMSG_HDRLEN..len];
    if msg_kind == NLMSG_ERROR {
        return Err(io::Error::from_raw_os_error(errno_of(p).max(1)));
    }
    if msg_kind != kind || p.len() < 4 {
        return Err(invalid("unexpected nf_tables answer"));
    }
    // After struct nfgenmsg (4 bytes): attributes.
    for (akind, v) in attributes(&p[4..]) {
        if akind == attr && v.len() >= 4 {
            return Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        }
    }
    Err(invalid("nf_tables answer without a generation id"))
}

impl BatchSocket {
    /// Sends one dump request (`kind`, NLM_F_DUMP, then `body`: the family
    /// header and any filter attributes) and returns the payload (after the
    /// netlink header) of every answer, in order.
    pub(super) fn dump(&mut self, kind: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        const NLM_F_DUMP: u16 = 0x300;
        let seq = self.next_seq();
        self.send(&request(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body))?;
        self.answers(seq)
    }

    /// The answers to request `seq`, up to its end: NLMSG_DONE (a dump) or
    /// an ack (an NLMSG_ERROR with errno 0); another errno is the error.
    fn answers(&mut self, seq: u32) -> io::Result<Vec<Vec<u8>>> {
        const NLMSG_DONE: u16 = 3;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.recv(&mut buf)?;
            for frame in frames(&buf[..n]) {
                let (kind, msg_seq, payload) = frame?;
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(answers),
                    NLMSG_ERROR => {
                        return match errno_of(payload) {
                            0 => Ok(answers),
                            errno => Err(io::Error::from_raw_os_error(errno)),
                        }
                    }
                    _ => answers.push(payload.to_vec()),
                }
            }
        }
    }

    /// Sends one request (`kind`, `body`) asking for an ack; returns the
    /// answers that came before the ack, or the errno it carried.
    pub(super) fn exchange(&mut self, kind: u16, body: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.next_seq();
        self.send(&request(kind, NLM_F_REQUEST | NLM_F_ACK, seq, body))?;
        self.answers(seq)
    }

    /// The sequence number of the next request.
    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    /// Dumps the IPv4 routes of every table (RTM_GETROUTE, NLM_F_DUMP)
    /// and parses them straight from the bytes.
    pub(super) fn dump_ipv4_routes(&mut self) -> io::Result<Vec<Route4>> {
        const RTM_GETROUTE: u16 = 26;
        // struct rtmsg { family AF_INET, rest 0 }.
        let mut rtmsg = [0u8; 12];
        rtmsg[0] = libc::AF_INET as u8;
        Ok(self
            .dump(RTM_GETROUTE, &rtmsg)?
            .iter()
            .filter_map(|p| parse_route_bytes(p))
            .collect())
    }

    /// Dumps every IPv4 route of every type and table (RTM_GETROUTE) and
    /// every IPv4 policy rule (RTM_GETRULE).
    pub(super) fn dump_ipv4_routing(&mut self) -> io::Result<super::RoutingView> {
        const RTM_GETROUTE: u16 = 26;
        const RTM_GETRULE: u16 = 34;
        // struct rtmsg and struct fib_rule_hdr: family AF_INET, rest 0.
        let mut header = [0u8; 12];
        header[0] = libc::AF_INET as u8;
        let routes = self.dump(RTM_GETROUTE, &header)?;
        let rules = self.dump(RTM_GETRULE, &header)?;
        Ok(super::RoutingView {
            routes: routes.iter().filter_map(|p| parse_route_entry(p)).collect(),
            rules: rules.iter().filter_map(|p| parse_rule_bytes(p)).collect(),
        })
    }

    /// Dumps the IPv4 addresses of every device (RTM_GETADDR, NLM_F_DUMP):
    /// (device index, address with its prefix length), parsed from the bytes.
    pub(super) fn dump_ipv4_addresses(&mut self) -> io::Result<Vec<(u32, Ipv4Network)>> {
        const RTM_GETADDR: u16 = 22;
        // struct ifaddrmsg { family AF_INET, prefixlen, flags, scope, index }.
        let mut ifaddrmsg = [0u8; 8];
        ifaddrmsg[0] = libc::AF_INET as u8;
        Ok(self
            .dump(RTM_GETADDR, &ifaddrmsg)?
            .iter()
            .filter_map(|p| parse_address_bytes(p))
            .collect())
    }

    /// Dumps every link without statistics (RTM_GETLINK, NLM_F_DUMP,
    /// IFLA_EXT_MASK RTEXT_FILTER_SKIP_STATS): the payload of each answer.
    pub(super) fn dump_links(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.dump(RTM_GETLINK, &link_request(0))
    }

    /// The RTM_NEWLINK payload of link `index` (no statistics), `None`
    /// when there is no such link.
    pub(super) fn get_link(&mut self, index: u32) -> io::Result<Option<Vec<u8>>> {
        match self.exchange(RTM_GETLINK, &link_request(index)) {
            Ok(answers) => Ok(answers.into_iter().next()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

const RTM_GETLINK: u16 = 18;

/// struct ifinfomsg (family AF_UNSPEC, `index`; 0 for a dump) and
/// IFLA_EXT_MASK RTEXT_FILTER_SKIP_STATS: statistics are most of a link
/// message and nobody here reads them.
fn link_request(index: u32) -> Vec<u8> {
    const IFLA_EXT_MASK: u16 = 29;
    const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    body.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    body
}

/// A NETLINK_ROUTE socket subscribed to multicast groups, read without
/// blocking: the kernel queues a notification on it while it handles the
/// change, before the changer gets its answer, so draining it shows every
/// change made before the drain.
#[derive(Debug)]
pub(super) struct EventSocket {
    socket: BatchSocket,
}

impl EventSocket {
    /// Subscribes to the `groups` bitmask (RTMGRP_*).
    pub(super) fn open(groups: u32) -> io::Result<Self> {
        let socket = BatchSocket::open_protocol(libc::NETLINK_ROUTE)?;
        // NETLINK_ADD_MEMBERSHIP per group: the socket is already bound.
        for group in (0..32).filter(|g| groups & (1 << g) != 0) {
            set_int(
                &socket.fd,
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                group as libc::c_int + 1,
            )?;
        }
        Ok(EventSocket { socket })
    }

    /// The next queued datagram, `None` when there is none. ENOBUFS means
    /// notifications were lost (the queue overflowed).
    pub(super) fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: buf is valid for its length.
            let rc = unsafe {
                libc::recv(
                    self.socket.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if rc >= 0 {
                return Ok(Some(rc as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

/// A netlink request: the header (`kind`, `flags`, `seq`, port 0), then
/// `body` (the family header and any attributes).
fn request(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    request.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&seq.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(body);
    request
}

/// (message type, sequence number, payload) of each message of a
/// datagram, in order; a message whose length does not fit ends the
/// datagram with an InvalidData error.
fn frames(data: &[u8]) -> impl Iterator<Item = io::Result<(u16, u32, &[u8])>> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset + NLMSG_HDRLEN > data.len() {
            return None;
        }
        let h = &data[offset..];
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > h.len() {
            offset = data.len();
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            )));
        }
        offset += (len + 3) & !3;
        Some(Ok((
            u16::from_ne_bytes([h[4], h[5]]),
            u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            &h[NLMSG_HDRLEN..len],
        )))
    })
}

/// (message type, payload) of every whole message of a datagram.
pub(super) fn messages(data: &[u8]) -> Vec<(u16, &[u8])> {
    frames(data)
        .map_while(Result::ok)
        .map(|(kind, _, payload)| (kind, payload))
        .collect()
}

/// The errno of an NLMSG_ERROR payload (struct nlmsgerr), positive; 0 for
/// an acknowledgement, EIO when the payload is too short to say.
fn errno_of(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(-libc::EIO)
        .saturating_abs()
}

/// (type, value) of each attribute in `p` (struct nlattr, 4-byte aligned),
/// up to the first one whose length does not fit.
fn attributes(p: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset + 4 > p.len() {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([p[offset], p[offset + 1]]));
        // The top two bits are the nested and byte-order flags.
        let kind = u16::from_ne_bytes([p[offset + 2], p[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > p.len() {
            return None;
        }
        let value = &p[offset + 4..offset + len];
        offset += (len + 3) & !3;
        Some((kind, value))
    })
}

/// (device index, address) from the payload of an RTM_NEWADDR: IFA_LOCAL
/// (the device's own address) over IFA_ADDRESS (the peer, on
/// point-to-point links).
pub(super) fn parse_address_bytes(p: &[u8]) -> Option<(u32, Ipv4Network)> {
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    if p.len() < 8 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let prefix = p[1];
    let index = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
    let (mut local, mut address) = (None, None);
    for (kind, v) in attributes(&p[8..]) {
        if v.len() == 4 {
            let ip = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
            match kind {
                IFA_LOCAL => local = Some(ip),
                IFA_ADDRESS => address = Some(ip),
                _ => {}
            }
        }
    }
    Some((index, Ipv4Network::new(local.or(address)?, prefix).ok()?))
}

/// A route from the payload of an RTM_NEWROUTE (struct rtmsg and its
/// attributes), with the same rules as `parse_route`: IPv4 unicast only.
pub(super) fn parse_route_bytes(p: &[u8]) -> Option<Route4> {
    parse_route_entry(p)
        .filter(|e| e.kind == RTN_UNICAST)
        .map(|e| e.route)
}

/// An IPv4 route of any type from the payload of an RTM_NEWROUTE.
pub(super) fn parse_route_entry(p: &[u8]) -> Option<RouteEntry> {
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PRIORITY: u16 = 6;
    const RTA_PREFSRC: u16 = 7;
    const RTA_MULTIPATH: u16 = 9;
    const RTA_TABLE: u16 = 15;
    const RTA_VIA: u16 = 18;
    const RTA_ENCAP: u16 = 22;
    const RTA_NH_ID: u16 = 30;
    const RTNH_F_ONLINK: u32 = 4;
    if p.len() < 12 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let ip = |v: &[u8]| (v.len() == 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
    let flags = ne_u32(&p[8..12]).unwrap_or_default();
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut route = Route4 {
        destination: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).ok()?,
        oif: None,
        via: None,
        src: None,
        table: u32::from(p[4]),
        protocol: p[5],
        scope: Some(RouteScope::from(p[6])),
        onlink: flags & RTNH_F_ONLINK != 0,
        metric: None,
    };
    let mut more_next_hops = false;
    for (kind, v) in attributes(&p[12..]) {
        match kind {
            RTA_DST => destination = ip(v).unwrap_or(destination),
            RTA_TABLE => route.table = ne_u32(v).unwrap_or(route.table),
            RTA_OIF => route.oif = ne_u32(v).or(route.oif),
            RTA_GATEWAY => route.via = ip(v).or(route.via),
            RTA_PREFSRC => route.src = ip(v).or(route.src),
            RTA_PRIORITY => route.metric = ne_u32(v).or(route.metric),
            RTA_MULTIPATH => {
                more_next_hops = true;
                // struct rtnexthop { u16 len; u8 flags; u8 hops; int ifindex; }
                if route.oif.is_none() {
                    route.oif = v.get(4..8).and_then(ne_u32);
                }
            }
            RTA_VIA | RTA_ENCAP | RTA_NH_ID => more_next_hops = true,
            _ => {}
        }
    }
    route.destination = Ipv4Network::new(destination, p[1]).ok()?;
    Some(RouteEntry {
        route,
        kind: p[7],
        tos: p[3],
        more_next_hops,
    })
}

/// The u32 (host byte order) at the start of an attribute's value.
fn ne_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// An IPv4 policy rule from the payload of an RTM_NEWRULE (struct
/// fib_rule_hdr and its attributes).
pub(super) fn parse_rule_bytes(p: &[u8]) -> Option<RuleEntry> {
    const FRA_PRIORITY: u16 = 6;
    const FRA_TABLE: u16 = 15;
    const FRA_SUPPRESS_IFGROUP: u16 = 13;
    const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
    const FRA_PROTOCOL: u16 = 21;
    const FR_ACT_TO_TBL: u8 = 1;
    // struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1,
    // res2, action; u32 flags }
    if p.len() < 12 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let flags = ne_u32(&p[8..12]).unwrap_or_default();
    let mut rule = RuleEntry {
        priority: 0,
        table: u32::from(p[4]),
        plain: p[1] == 0 && p[2] == 0 && p[3] == 0 && p[7] == FR_ACT_TO_TBL && flags == 0,
    };
    for (kind, v) in attributes(&p[12..]) {
        match kind {
            FRA_PRIORITY => rule.priority = ne_u32(v).unwrap_or(rule.priority),
            FRA_TABLE => rule.table = ne_u32(v).unwrap_or(rule.table),
            // Who made the rule: not a selector.
            FRA_PROTOCOL => {}
            // Any other attribute selects packets or changes the action
            // (mark, interfaces, ports, UID range, goto, suppression, …).
            // Reported for every rule; -1 means nothing is suppressed.
            FRA_SUPPRESS_PREFIXLEN | FRA_SUPPRESS_IFGROUP if ne_u32(v) == Some(u32::MAX) => {}
            _ => rule.plain = false,
        }
    }
    Some(rule)
}

/// (sequence number, errno) of every NLMSG_ERROR (ack) in a datagram.
pub(super) fn acks(data: &[u8]) -> Vec<(u32, i32)> {
    frames(data)
        .map_while(Result::ok)
        // struct nlmsgerr: int error; struct nlmsghdr msg (the request's).
        .filter(|(kind, _, p)| *kind == NLMSG_ERROR && p.len() >= 4 + NLMSG_HDRLEN)
        .map(|(_, _, p)| {
            (
                u32::from_ne_bytes([p[12], p[13], p[14], p[15]]),
                errno_of(p),
            )
        })
        .collect()
}

/// Runs one nf_tables transaction on a fresh NETLINK_NETFILTER socket: the
/// whole batch (begin, messages, end) in one `sendto`, then the acks, one
/// per message. The kernel commits all or nothing; the first error (by
/// sequence number: a commit failure comes on the batch begin's) is
/// returned as its errno, e.g. EEXIST for a `create` of an existing table.
pub fn nft_transaction(batch: &super::nftables::Batch) -> io::Result<()> {
    // The socket's receive timeout (30 s) bounds a kernel that never answers.
    let socket = BatchSocket::open_protocol(libc::NETLINK_NETFILTER)?;
    let begin = 1u32;
    let count = batch.len();
    let end = begin.wrapping_add(count as u32 + 1);
    socket.send(&batch.encode(begin))?;
    let mut errors = vec![None; count];
    let mut waiting = count;
    let mut buf = vec![0u8; 1 << 16];
    while waiting > 0 {
        let n = socket.recv(&mut buf)?;
        for (seq, errno) in acks(&buf[..n]) {
            if (seq == begin || seq == end) && errno != 0 {
                // The batch as a whole failed (commit or framing): no
                // per-message acks are owed then.
                return Err(io::Error::from_raw_os_error(errno));
            }
            let i = seq.wrapping_sub(begin.wrapping_add(1)) as usize;
            if let Some(slot @ None) = errors.get_mut(i) {
                *slot = Some(errno);
                waiting -= 1;
            }
        }
    }
    match errors.into_iter().flatten().find(|errno| *errno != 0) {
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Ok(()),
    }
}
