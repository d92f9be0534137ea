//! The namespace's links, kept current by the kernel's link notifications.
//!
//! Dumping every link costs time in proportion to the devices of the host
//! (each network adds a bridge and a tunnel, each container a veth), and a
//! network's create looked links up several times: at 100 networks the
//! dumps alone cost more than the whole first create. The cache dumps once,
//! then follows RTM_NEWLINK / RTM_DELLINK notifications on a socket of its
//! own, so a lookup costs a non-blocking drain of that socket.
//!
//! Why it is never stale: the kernel queues a notification on every
//! subscribed socket while it handles the change, before whoever made the
//! change gets its answer. Draining before every lookup therefore shows
//! every change that finished before the lookup, ours or anyone's. A
//! notification lost to a full queue (ENOBUFS) makes the next lookup dump
//! again.
//!
//! The gaps in the notifications are closed by asking again. The kernel
//! does not announce an alias set on a device that is down, so a device the
//! agent changed is read again (one RTM_GETLINK) at the next lookup, and the
//! reconcile pass dumps every link once per pass, which bounds how long such
//! a change by someone else goes unseen. Nor does it announce a veth's facts
//! about its peer. The end registered first is announced before its peer
//! exists (no IFLA_LINK), and an end whose peer moves to another namespace
//! (how runtimes plug containers) is not announced again at all. So a veth
//! without a known peer, and every veth whose peer left this namespace,
//! is read again (one RTM_GETLINK each) at the next lookup.

use std::collections::{BTreeMap, BTreeSet};

use netlink_packet_core::Parseable;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::AddressFamily;

use super::batch::{self, BatchSocket, EventSocket};
use super::types::{parse_link, Link};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTMGRP_LINK: u32 = 1;

/// Links by index, and the socket that keeps them current.
#[derive(Debug)]
pub(super) struct LinkCache {
    events: EventSocket,
    /// `None` until the first dump, and again after lost notifications.
    links: Option<BTreeMap<u32, Link>>,
    /// Links whose cached facts may be incomplete: read again before use.
    stale: BTreeSet<u32>,
    buf: Vec<u8>,
}

impl LinkCache {
    /// Subscribes in the calling thread's namespace; dumps at first use.
    pub(super) fn open() -> std::io::Result<Self> {
        Ok(LinkCache {
            events: EventSocket::open(RTMGRP_LINK)?,
            links: None,
            stale: BTreeSet::new(),
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Every link, current as of this call.
    pub(super) fn links(&mut self) -> std::io::Result<&BTreeMap<u32, Link>> {
        self.catch_up()?;
        if self.links.is_none() {
            // Notifications queued before the dump are older than it: drop
            // them. Those queued from here on are applied in order on top
            // of the dump, which ends at the latest state of every link.
            self.drain(false)?;
            let payloads = super::blocking(|| BatchSocket::open()?.dump_links())?;
            let mut links = BTreeMap::new();
            for payload in payloads {
                if let Some(link) = parse_payload(&payload) {
                    links.insert(link.index, link);
                }
            }
            self.links = Some(links);
            self.stale.clear();
            self.catch_up()?;
        }
        self.reread_stale()?;
        Ok(self.links.get_or_insert_with(BTreeMap::new))
    }

    /// Reads every stale link again.
    fn reread_stale(&mut self) -> std::io::Result<()> {
        if self.stale.is_empty() {
            return Ok(());
        }
        let mut socket = BatchSocket::open()?;
        for index in std::mem::take(&mut self.stale) {
            let link = super::blocking(|| socket.get_link(index))?.and_then(|p| parse_payload(&p));
            if let Some(links) = self.links.as_mut() {
                match link {
                    Some(link) => links.insert(index, link),
                    None => links.remove(&index),
                };
            }
        }
        Ok(())
    }

    /// Reads link `index` again at the next lookup (it was just changed in
    /// a way the kernel may not announce).
    pub(super) fn read_again(&mut self, index: u32) {
        if self.links.is_some() {
            self.stale.insert(index);
        }
    }

    /// Dumps every link again at the next lookup.
    pub(super) fn forget(&mut self) {
        self.links = None;
    }

    /// Applies every queued notification; lost ones force a new dump.
    fn catch_up(&mut self) -> std::io::Result<()> {
        if self.links.is_some() {
            self.drain(true)?;
        }
        Ok(())
    }

    fn drain(&mut self, apply: bool) -> std::io::Result<()> {
        loop {
            match self.events.try_recv(&mut self.buf) {
                Ok(None) => return Ok(()),
                Ok(Some(n)) => {
                    if apply {
                        let Some(links) = self.links.as_mut() else {
                            continue;
                        };
                        for (kind, payload) in batch::messages(&self.buf[..n]) {
                            apply_event(links, &mut self.stale, kind, payload);
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.links = None;
                    if apply {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The link message of a payload; `None` for the bridge's per-port
/// notifications (family AF_BRIDGE), which carry only bridge attributes.
fn link_message(payload: &[u8]) -> Option<LinkMessage> {
    let message = LinkMessage::parse(payload).ok()?;
    (message.header.interface_family == AddressFamily::Unspec).then_some(message)
}

/// A link from an RTM_NEWLINK payload (see [`link_message`]).
fn parse_payload(payload: &[u8]) -> Option<Link> {
    link_message(payload).map(parse_link)
}

/// Applies one notification to `links`, noting in `stale` the veths
/// whose peer facts it may have made out of date.
fn apply_event(
    links: &mut BTreeMap<u32, Link>,
    stale: &mut BTreeSet<u32>,
    kind: u16,
    payload: &[u8],
) {
    match kind {
        RTM_NEWLINK => {
            if let Some(link) = parse_payload(payload) {
                if is_veth(&link) && link.link.is_none() {
                    stale.insert(link.index);
                }
                links.insert(link.index, link);
            }
        }
        // A port leaving a bridge sends an AF_BRIDGE DELLINK: the device stays.
        RTM_DELLINK => {
            let Some(message) = link_message(payload) else {
                return;
            };
            let gone = message.header.index;
            links.remove(&gone);
            stale.remove(&gone);
            // Its peer, if it was one: now elsewhere (or gone with it).
            stale.extend(
                links
                    .values()
                    .filter(|l| is_veth(l) && !l.link_in_other_netns() && l.link == Some(gone))
                    .map(|l| l.index),
            );
        }
        _ => {}
    }
}

fn is_veth(link: &Link) -> bool {
    link.kind.as_deref() == Some("veth")
}
