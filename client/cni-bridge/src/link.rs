//! The netlink work: the pair, the host's end on the bridge, the
//! container's end in its namespace. Every call runs in the host's
//! namespace except those inside [`in_netns`].

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;

use anyhow::{bail, Context, Result};
use fan_dataplane::netlink::{within_netns, Link, Netlink, Route4};

use crate::conf::{temporary_name, Addressing, LinkKind};

/// What [`plug`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plugged {
    /// "netkit" or "veth".
    pub kind: &'static str,
    /// The host's end.
    pub host: Link,
    /// The MAC of the container's end.
    pub container_mac: Option<[u8; 6]>,
}

/// Runs the future `body` makes on a current-thread runtime, on a thread
/// that entered the network namespace open as `netns`
/// ([`fan_dataplane::netlink::within_netns`]).
pub fn in_netns<T, Fut>(netns: &File, body: impl FnOnce() -> Fut + Send) -> Result<T>
where
    T: Send,
    Fut: Future<Output = Result<T>>,
{
    within_netns(netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(body()))
    })
    .context("enter the container's namespace")?
}

/// The pair: netkit when asked, or with `Auto` where the kernel has it.
async fn create_pair(
    nl: &Netlink,
    kind: LinkKind,
    host: &str,
    peer: &str,
) -> Result<(Link, Link, &'static str)> {
    let netkit = match kind {
        LinkKind::Veth => None,
        LinkKind::Netkit => Some(nl.create_netkit(host, peer).await?),
        LinkKind::Auto => match nl.create_netkit(host, peer).await {
            Ok(pair) => Some(pair),
            // No netkit in this kernel ("Operation not supported"): a veth.
            Err(e) if e.to_string().contains("not supported") => None,
            Err(e) => return Err(e.into()),
        },
    };
    Ok(match netkit {
        Some((h, p)) => (h, p, "netkit"),
        None => {
            let (h, p) = nl.create_veth(host, peer).await?;
            (h, p, "veth")
        }
    })
}

/// Plugs the container whose namespace is at `netns_path`: the pair
/// (`host`, marked with `alias`, on `bridge`, up), the container's end
/// renamed `ifname` with the address, MTU and routes, up. On failure the
/// host's end is deleted (the container's with it).
#[allow(clippy::too_many_arguments)]
pub async fn plug(
    nl: &Netlink,
    kind: LinkKind,
    host: &str,
    alias: &str,
    bridge: &str,
    mtu: Option<u32>,
    netns_path: &str,
    ifname: &str,
    addressing: &Addressing,
) -> Result<Plugged> {
    let bridge_link = nl
        .link_by_name(bridge)
        .await?
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .with_context(|| format!("bridge {bridge}: no such bridge (is the fan network up?)"))?;
    let netns = File::open(netns_path).with_context(|| format!("open CNI_NETNS {netns_path}"))?;
    // A pair of this attachment left from an earlier ADD (a runtime that
    // retried after a crash) goes first: the container's end must carry
    // the address of this ADD, not an older one. Another attachment's
    // device of the same name (a 32-bit collision) stays, and ADD fails.
    if let Unplugged::Foreign(what) = unplug(nl, host, alias).await? {
        bail!("{host} exists and is not this attachment's ({what}); left alone");
    }
    let peer = temporary_name(host);
    let (host_link, peer_link, kind) = create_pair(nl, kind, host, &peer).await?;
    let result = async {
        nl.set_alias(host_link.index, alias).await?;
        let mtu = mtu.unwrap_or(bridge_link.mtu);
        nl.set_mtu(host_link.index, mtu).await?;
        nl.set_mtu(peer_link.index, mtu).await?;
        nl.set_master(host_link.index, Some(bridge_link.index))
            .await?;
        nl.move_to_netns(peer_link.index, netns.as_fd()).await?;
        nl.set_up(host_link.index, true).await?;
        let container_mac = in_netns(&netns, || configure_inside(&peer, ifname, addressing))?;
        let host = nl
            .link_by_name(host)
            .await?
            .context("the host's end went")?;
        anyhow::Ok(Plugged {
            kind,
            host,
            container_mac,
        })
    }
    .await;
    if result.is_err() {
        let _ = nl.delete_link(host_link.index).await;
    }
    result
}

/// Inside the container: rename, address, up, routes; returns the MAC.
async fn configure_inside(
    peer: &str,
    ifname: &str,
    addressing: &Addressing,
) -> Result<Option<[u8; 6]>> {
    let nl = Netlink::new()?;
    let link = nl
        .link_by_name(peer)
        .await?
        .with_context(|| format!("{peer} did not arrive in the container's namespace"))?;
    nl.set_name(link.index, ifname).await?;
    nl.add_ipv4_address(link.index, addressing.address).await?;
    nl.set_up(link.index, true).await?;
    for (destination, gateway) in &addressing.routes {
        let route = Route4 {
            oif: Some(link.index),
            via: gateway.or(addressing.gateway),
            ..Route4::new(*destination)
        };
        nl.add_route(&route)
            .await
            .with_context(|| format!("route {destination} in the container"))?;
    }
    Ok(link.mac)
}

/// What [`unplug`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplugged {
    /// This attachment's pair, now deleted.
    Deleted,
    /// No device of that name.
    Absent,
    /// A device of that name that is not this attachment's pair (its kind
    /// or alias, for the message); untouched.
    Foreign(String),
}

/// Deletes the host's end named `host` when it is this attachment's: a
/// veth or netkit device marked with `alias`, or created by fan and never
/// marked (an ADD stopped between the two; the name is this attachment's),
/// its peer in the container going with it. Anything else of that name is
/// left alone.
pub async fn unplug(nl: &Netlink, host: &str, alias: &str) -> Result<Unplugged> {
    let Some(link) = nl.link_by_name(host).await? else {
        return Ok(Unplugged::Absent);
    };
    let pair = matches!(link.kind.as_deref(), Some("veth" | "netkit"));
    if !pair || !link.owned_by(alias) {
        return Ok(Unplugged::Foreign(format!(
            "a {} with alias {:?}",
            link.kind.as_deref().unwrap_or("device"),
            link.alias.as_deref().unwrap_or("")
        )));
    }
    nl.delete_link(link.index).await?;
    Ok(Unplugged::Deleted)
}

/// CHECK: the host's end exists, is up and on `bridge`; the container's
/// end exists in `netns_path` with `address`.
pub async fn check(
    nl: &Netlink,
    host: &str,
    bridge: &str,
    netns_path: &str,
    ifname: &str,
    addressing: &Addressing,
) -> Result<()> {
    let bridge_index = nl
        .link_by_name(bridge)
        .await?
        .with_context(|| format!("no bridge {bridge}"))?
        .index;
    let link = nl
        .link_by_name(host)
        .await?
        .with_context(|| format!("no host interface {host}"))?;
    if link.master != Some(bridge_index) || !link.up {
        bail!("{host} is not up on {bridge}");
    }
    let netns = File::open(netns_path).with_context(|| format!("open CNI_NETNS {netns_path}"))?;
    let address = addressing.address;
    in_netns(&netns, || async move {
        let nl = Netlink::new()?;
        let link = nl
            .link_by_name(ifname)
            .await?
            .with_context(|| format!("no {ifname} in the container"))?;
        let addresses = nl.ipv4_addresses(link.index).await?;
        if !addresses.contains(&address) {
            bail!("{ifname} has {addresses:?}, not {address}");
        }
        Ok(())
    })
}
