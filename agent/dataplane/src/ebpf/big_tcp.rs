//! BIG TCP for containers: their veth or netkit pairs follow the underlay
//! device's IPv4 GSO/GRO size limits.
//!
//! Everything the fan adds to a packet's way (the container's veth, the fast
//! path's program, the outer header, the decap) costs the same for a 64 KB
//! GSO packet as for a 190 KB one, so the fewer packets a flow takes, the
//! closer the fan gets to the underlay's own speed. Linux 6.3+ lets a device
//! carry IPv4 GSO packets above 64 KB (`gso_ipv4_max_size`, "BIG TCP"), but a
//! socket builds them only when the device its packets leave by allows it:
//! in a container, its own veth, which the runtime created at the 64 KB
//! default. So when the host's administrator raised the underlay device's
//! limit (its NIC can take it), the agent gives each container port of a fan
//! bridge, and the container's side of it, the same limit. Never more: a
//! packet above the underlay's limit would be cut in software at the
//! underlay, slower than never building it. A port above the underlay's
//! limit (it was lowered) is lowered with it; ports already at it are not
//! touched. The agent never raises the underlay device itself: that is the
//! host's choice. The limits change no packet on the wire (TCP segments
//! keep the path MTU); only how many the stack handles at once.

use tracing::{info, warn};

use crate::netlink::{Link, Netlink};

/// One container port to resize, and the container's side of its veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resize {
    /// The port (host side) ifindex.
    pub port: u32,
    /// Its name, for the log.
    pub port_name: String,
    /// The container's side: its ifindex there and the id of its namespace
    /// here (IFLA_LINK and IFLA_LINK_NETNSID of the port).
    pub peer: Option<(u32, i32)>,
    /// The IPv4 GSO and GRO limit both get.
    pub size: u32,
}

/// The ports among `ports` whose IPv4 GSO or GRO limit differs from what
/// the underlay allows (`underlay`'s GSO limit, capped by what each port's
/// own driver takes). Nothing when this kernel has no such limits.
pub fn resizes<'a>(underlay: &Link, ports: impl IntoIterator<Item = &'a Link>) -> Vec<Resize> {
    let Some(wanted) = underlay.gso_ipv4_max_size else {
        return Vec::new();
    };
    ports
        .into_iter()
        .filter_map(|port| {
            let size = wanted.min(port.tso_max_size.unwrap_or(u32::MAX));
            let current = (port.gso_ipv4_max_size?, port.gro_ipv4_max_size?);
            if current == (size, size) {
                return None;
            }
            Some(Resize {
                port: port.index,
                port_name: port.name.clone(),
                peer: port.link.zip(port.link_netnsid),
                size,
            })
        })
        .collect()
}

/// Applies `resizes`: the containers' sides first, then the ports (which
/// mark the pairs done for [`resizes`]). A container's side that cannot be
/// reached (it is stopping, or its namespace is held only where the agent
/// cannot look) is logged and not tried again: the limits only change how
/// fast traffic goes, never whether, and each try searches the namespaces.
pub async fn apply(nl: &Netlink, network: &str, resizes: &[Resize]) {
    if resizes.is_empty() {
        return;
    }
    let peers: Vec<(&Resize, (i32, u32, u32))> = resizes
        .iter()
        .filter_map(|r| r.peer.map(|(index, netnsid)| (r, (netnsid, index, r.size))))
        .collect();
    let changes: Vec<_> = peers.iter().map(|(_, c)| *c).collect();
    for ((r, _), result) in peers
        .iter()
        .zip(Netlink::set_ipv4_gso_gro_max_sizes_elsewhere(&changes))
    {
        if let Err(e) = result {
            // The port alone still helps traffic towards the container.
            info!(network, port = %r.port_name, error = %e, "container side of port not resized");
        }
    }
    for r in resizes {
        match nl.set_ipv4_gso_gro_max_size(r.port, r.size).await {
            Ok(()) => {
                info!(network, port = %r.port_name, size = r.size, "port follows the underlay's IPv4 GSO/GRO limit")
            }
            Err(e) => {
                warn!(network, port = %r.port_name, error = %e, "port not resized")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, gso: Option<u32>, gro: Option<u32>, tso: Option<u32>) -> Link {
        Link {
            index,
            name: format!("p{index}"),
            mtu: 1500,
            up: true,
            noarp: false,
            loopback: false,
            alias: None,
            kind: Some("veth".into()),
            master: None,
            link: Some(2),
            mac: None,
            link_netnsid: Some(7),
            gso_ipv4_max_size: gso,
            gro_ipv4_max_size: gro,
            tso_max_size: tso,
            netkit_primary: None,
            group: 0,
        }
    }

    const BIG: u32 = 196_608;
    const LEGACY: u32 = 65_536;

    #[test]
    fn ports_follow_a_raised_underlay_up_to_their_driver() {
        let underlay = link(1, Some(BIG), Some(BIG), Some(524_280));
        let ports = [
            link(10, Some(LEGACY), Some(LEGACY), Some(524_280)),
            link(11, Some(BIG), Some(BIG), Some(524_280)),
            link(12, Some(LEGACY), Some(LEGACY), Some(100_000)),
            link(13, Some(BIG), Some(LEGACY), Some(524_280)),
        ];
        let r = resizes(&underlay, &ports);
        let got: Vec<(u32, u32)> = r.iter().map(|r| (r.port, r.size)).collect();
        assert_eq!(got, [(10, BIG), (12, 100_000), (13, BIG)]);
        assert_eq!(r[0].peer, Some((2, 7)));
    }

    #[test]
    fn ports_follow_a_lowered_underlay_and_nothing_changes_at_the_default() {
        let underlay = link(1, Some(LEGACY), Some(LEGACY), Some(524_280));
        let ports = [
            link(10, Some(BIG), Some(BIG), Some(524_280)),
            link(11, Some(LEGACY), Some(LEGACY), Some(524_280)),
        ];
        let r = resizes(&underlay, &ports);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].port, r[0].size), (10, LEGACY));
    }

    #[test]
    fn kernels_without_the_limits_get_nothing() {
        let underlay = link(1, None, None, None);
        let ports = [link(10, Some(LEGACY), Some(LEGACY), None)];
        assert!(resizes(&underlay, &ports).is_empty());
        let underlay = link(1, Some(BIG), Some(BIG), None);
        let ports = [link(10, None, None, None)];
        assert!(resizes(&underlay, &ports).is_empty());
    }
}
