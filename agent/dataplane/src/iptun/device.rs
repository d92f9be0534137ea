//! The ipip tunnel device of the two kernel backends (`ipip` and
//! `kernel-fan`): found, created, shared and released here.
//!
//! Why a device may be *shared*: the kernel identifies an ipip tunnel by
//! (local, remote, underlay device) and refuses a second device with the
//! same triple (EEXIST, even under another name). Every fan network on one
//! underlay address needs exactly that triple (`local <underlay address>
//! dev <underlay>`, no remote), so all networks of one backend on one
//! underlay address use one device: the first creates it, the others join.
//!
//! Names and marks: the creating network names the device after its plan
//! index (`fanipip<index>` for the ipip backend, `fanmap<index>` for the
//! kernel fan; a letter is appended when that name is taken). The ifalias
//! lists the networks using it: `fan:<network_id>` for one,
//! `fan:<id>,<id>,...` for several. A network joins by adding its id and
//! leaves by removing it; the last one out deletes the device. Devices
//! without a `fan:` mark are never adopted, changed or deleted.
//!
//! The kernel backends cannot share one device with each other: a device
//! with fan maps drops every packet no map covers, so an ipip-backend route
//! through it would blackhole. A kernel-fan and an ipip network on the same
//! underlay address therefore conflict (the second gets a clear error).

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo, LinkMessage,
};
use tracing::{info, warn};

use super::fan_map::{ipip_info_data, FanMapping};
use crate::netlink::{Link, Netlink, IFNAME_MAX};
use crate::{sysctl, DataplaneError, NetworkPlan, Result};

/// Which backend a device belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The ipip backend: routes `via <host> onlink` through the device.
    Ipip,
    /// The kernel-fan backend: fan maps on the device.
    KernelFan,
}

impl Role {
    /// The device name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Ipip => "fanipip",
            Role::KernelFan => "fanmap",
        }
    }

    /// The backend name, for messages.
    pub fn backend(self) -> &'static str {
        match self {
            Role::Ipip => "ipip",
            Role::KernelFan => "kernel-fan",
        }
    }

    fn owns_name(self, name: &str) -> bool {
        name.strip_prefix(self.prefix())
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    }
}

/// The device name a network with `index` gives a device it creates.
pub fn device_name(role: Role, index: u16) -> String {
    format!("{}{index}", role.prefix())
}

/// The names tried in order when creating: `fanipip7`, then `fanipip7b` ..
/// `fanipip7z` (a name may be held by a device another network created).
pub fn candidate_names(role: Role, index: u16) -> impl Iterator<Item = String> {
    let base = device_name(role, index);
    std::iter::once(base.clone()).chain((b'b'..=b'z').map(move |c| format!("{base}{}", c as char)))
}

/// The prefix of every ownership mark.
pub const MARK_PREFIX: &str = "fan:";
/// Longest ifalias the kernel stores (IFALIASZ - 1).
pub const IFALIAS_MAX: usize = 255;

/// The networks an ifalias names, or `None` when it is not a fan mark.
pub fn owners_of(alias: Option<&str>) -> Option<Vec<String>> {
    let list = alias?.strip_prefix(MARK_PREFIX)?;
    let owners: Vec<String> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (!owners.is_empty()).then_some(owners)
}

/// The ifalias naming `owners` (sorted, deduplicated).
pub fn mark_for(owners: &[String]) -> Result<String> {
    let mut sorted = owners.to_vec();
    sorted.sort();
    sorted.dedup();
    let mark = format!("{MARK_PREFIX}{}", sorted.join(","));
    if mark.len() > IFALIAS_MAX {
        return Err(DataplaneError::other(
            "tunnel ownership mark",
            format!(
                "{} networks share one tunnel device and their ids do not fit in its ifalias ({} bytes, at most {IFALIAS_MAX})",
                sorted.len(),
                mark.len()
            ),
        ));
    }
    Ok(mark)
}

/// The tunnel parameters of an ipip device, as RTM_GETLINK reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelParams {
    /// IFLA_IPTUN_LINK: the underlay device's index (0: none).
    pub link: u32,
    /// IFLA_IPTUN_LOCAL.
    pub local: Option<Ipv4Addr>,
    /// IFLA_IPTUN_REMOTE (`None` or 0.0.0.0: no fixed remote).
    pub remote: Option<Ipv4Addr>,
    /// IFLA_IPTUN_TTL (0: inherit).
    pub ttl: u8,
    /// IFLA_IPTUN_TOS.
    pub tos: u8,
    /// IFLA_IPTUN_PMTUDISC.
    pub pmtudisc: bool,
}

impl TunnelParams {
    /// The parameters a fan tunnel on `link` with `local` must have.
    pub fn fan(link: u32, local: Ipv4Addr) -> Self {
        TunnelParams {
            link,
            local: Some(local),
            remote: None,
            ttl: 0,
            tos: 0,
            pmtudisc: true,
        }
    }

    /// True when the device is the kernel's (local, no remote, link) tunnel
    /// for `want` (ttl, tos and pmtudisc aside).
    pub fn same_tunnel(&self, want: &TunnelParams) -> bool {
        let no_remote = |r: Option<Ipv4Addr>| r.is_none_or(|a| a.is_unspecified());
        self.link == want.link
            && self.local == want.local
            && no_remote(self.remote)
            && no_remote(want.remote)
    }

    /// "local A dev #N" for messages.
    pub fn describe(&self) -> String {
        let local = self
            .local
            .map(|a| a.to_string())
            .unwrap_or_else(|| "any".into());
        let remote = match self.remote {
            Some(r) if !r.is_unspecified() => r.to_string(),
            _ => "any".into(),
        };
        format!("local {local} remote {remote} link #{}", self.link)
    }

    fn attributes(&self) -> Vec<InfoIpTunnel> {
        let mut attrs = vec![InfoIpTunnel::Link(self.link)];
        if let Some(local) = self.local {
            attrs.push(InfoIpTunnel::Local(IpAddr::V4(local)));
        }
        if let Some(remote) = self.remote {
            attrs.push(InfoIpTunnel::Remote(IpAddr::V4(remote)));
        }
        attrs.push(InfoIpTunnel::Ttl(self.ttl));
        attrs.push(InfoIpTunnel::Tos(self.tos));
        attrs.push(InfoIpTunnel::PMtuDisc(self.pmtudisc));
        attrs
    }
}

/// The tunnel parameters of `message`, when it is an ipip device.
pub fn tunnel_params(message: &LinkMessage) -> Option<TunnelParams> {
    let is_ipip = message.attributes.iter().any(|attr| {
        matches!(attr, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::IpIp))))
    });
    if !is_ipip {
        return None;
    }
    let mut params = TunnelParams::default();
    for attr in ipip_info_data(message).unwrap_or_default() {
        match attr {
            InfoIpTunnel::Link(l) => params.link = *l,
            InfoIpTunnel::Local(IpAddr::V4(a)) => params.local = Some(*a),
            InfoIpTunnel::Remote(IpAddr::V4(a)) => params.remote = Some(*a),
            InfoIpTunnel::Ttl(t) => params.ttl = *t,
            InfoIpTunnel::Tos(t) => params.tos = *t,
            InfoIpTunnel::PMtuDisc(p) => params.pmtudisc = *p,
            _ => {}
        }
    }
    Some(params)
}

fn link_info(data: Vec<InfoIpTunnel>) -> LinkAttribute {
    LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::IpIp),
        LinkInfo::Data(InfoData::IpTunnel(data)),
    ])
}

/// RTM_NEWLINK creating ipip device `name` (left down) with `params` and `mtu`.
pub fn create_message(name: &str, params: &TunnelParams, mtu: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Mtu(mtu),
        link_info(params.attributes()),
    ];
    message
}

/// RTM_NEWLINK (changelink) for device `index` that keeps `params` and
/// sends `maps` as fan-map changes. The full parameters go along: ipip's
/// changelink resets every parameter the request leaves out.
pub fn change_message(index: u32, params: &TunnelParams, maps: &[FanMapping]) -> LinkMessage {
    let mut data = params.attributes();
    data.push(super::fan_map::fan_map_nla(maps));
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.attributes = vec![link_info(data)];
    message
}

/// One tunnel device and the networks using it.
#[derive(Debug, Clone)]
pub struct TunnelDevice {
    /// The device.
    pub link: Link,
    /// Its tunnel parameters.
    pub params: TunnelParams,
    /// The networks its mark names.
    pub owners: Vec<String>,
    /// The raw RTM_GETLINK answer (fan maps live in it).
    pub message: LinkMessage,
}

impl TunnelDevice {
    /// True when `network_id` is the only network using the device.
    pub fn sole_owner(&self, network_id: &str) -> bool {
        self.owners.len() == 1 && self.owners[0] == network_id
    }

    /// The device's packet counters as the network's, when `network_id` is
    /// alone on it (on a shared device they would mix networks).
    pub async fn counters(
        &self,
        nl: &Netlink,
        network_id: &str,
    ) -> Result<Option<crate::Counters>> {
        if !self.sole_owner(network_id) {
            return Ok(None);
        }
        Ok(nl
            .link_stats(self.link.index)
            .await?
            .map(|s| crate::Counters {
                encapsulated: s.tx_packets,
                decapsulated: s.rx_packets,
                dropped_other: s.tx_errors + s.tx_dropped + s.rx_errors + s.rx_dropped,
                ..crate::Counters::default()
            }))
    }
}

/// Every ipip device of the namespace with its parameters.
async fn ipip_devices(nl: &Netlink) -> Result<Vec<(Link, LinkMessage, TunnelParams)>> {
    Ok(nl
        .link_messages()
        .await?
        .into_iter()
        .filter_map(|(link, msg)| tunnel_params(&msg).map(|p| (link, msg, p)))
        .collect())
}

fn fan_device(
    role: Role,
    link: Link,
    message: LinkMessage,
    params: TunnelParams,
) -> Option<TunnelDevice> {
    if !role.owns_name(&link.name) {
        return None;
    }
    let owners = owners_of(link.alias.as_deref())?;
    Some(TunnelDevice {
        link,
        params,
        owners,
        message,
    })
}

/// The devices of `role` whose mark lists `plan.network_id`.
pub async fn owned(nl: &Netlink, plan: &NetworkPlan, role: Role) -> Result<Vec<TunnelDevice>> {
    Ok(ipip_devices(nl)
        .await?
        .into_iter()
        .filter_map(|(l, m, p)| fan_device(role, l, m, p))
        .filter(|d| d.owners.contains(&plan.network_id))
        .collect())
}

/// The current state of device `index` as a [`TunnelDevice`], if it is still
/// a fan-marked ipip device.
pub async fn refresh(nl: &Netlink, role: Role, index: u32) -> Result<Option<TunnelDevice>> {
    let Some(message) = nl.link_message(index).await? else {
        return Ok(None);
    };
    let Some(params) = tunnel_params(&message) else {
        return Ok(None);
    };
    let link = nl
        .link_by_index(index)
        .await?
        .ok_or_else(|| DataplaneError::other(format!("tunnel device #{index}"), "vanished"))?;
    Ok(fan_device(role, link, message, params))
}

fn object(role: Role, plan: &NetworkPlan) -> String {
    format!("{} tunnel of network {}", role.backend(), plan.network_id)
}

/// The underlay device of the plan (it must exist).
pub async fn underlay(nl: &Netlink, plan: &NetworkPlan) -> Result<Link> {
    nl.link_by_name(&plan.underlay_interface)
        .await?
        .ok_or_else(|| {
            DataplaneError::other(
                format!("underlay device {}", plan.underlay_interface),
                "no such device",
            )
        })
}

/// The MTU the device should have: the plan's when the network is alone on
/// it, the largest the underlay allows when it is shared (each network's
/// containers and bridge carry their own, smaller or equal, MTU).
pub fn wanted_mtu(plan: &NetworkPlan, owners: usize) -> u32 {
    if owners <= 1 {
        plan.mtu
    } else {
        plan.underlay_mtu.saturating_sub(20).max(plan.mtu)
    }
}

/// Finds the plan's tunnel (ours, or a shared one to join) or creates it;
/// then makes it right: MTU, up, rp_filter loose, send_redirects off.
/// The caller serialises it with every other apply and remove (see
/// [`crate::Encapsulation::apply`]).
pub async fn ensure(nl: &Netlink, plan: &NetworkPlan, role: Role) -> Result<TunnelDevice> {
    let underlay = underlay(nl, plan).await?;
    let want = TunnelParams::fan(underlay.index, plan.local_underlay);
    let devices = ipip_devices(nl).await?;

    let mut mine = None;
    let mut joinable = None;
    for (link, message, params) in devices.iter().cloned() {
        let Some(dev) = fan_device(role, link, message, params) else {
            continue;
        };
        let listed = dev.owners.contains(&plan.network_id);
        let matches = dev.params.same_tunnel(&want);
        match (listed, matches) {
            (true, true) => mine = Some(dev),
            (true, false) => {
                // The host's underlay changed: leave the old tunnel.
                warn!(device = %dev.link.name, old = %dev.params.describe(), new = %want.describe(),
                      network = %plan.network_id, "tunnel parameters changed; leaving the old device");
                leave(nl, plan, &dev).await?;
            }
            (false, true) => joinable = Some(dev),
            (false, false) => {}
        }
    }

    let device = match (mine, joinable) {
        (Some(dev), _) => dev,
        (None, Some(mut dev)) => {
            let mut owners = dev.owners.clone();
            owners.push(plan.network_id.clone());
            let mark = mark_for(&owners)?;
            nl.set_alias(dev.link.index, &mark).await?;
            info!(device = %dev.link.name, network = %plan.network_id, owners = %mark, "joined shared tunnel device");
            dev.owners = owners;
            dev
        }
        (None, None) => create(nl, plan, role, &want, &devices).await?,
    };
    configure(nl, plan, device).await
}

async fn create(
    nl: &Netlink,
    plan: &NetworkPlan,
    role: Role,
    want: &TunnelParams,
    devices: &[(Link, LinkMessage, TunnelParams)],
) -> Result<TunnelDevice> {
    let context = object(role, plan);
    let mark = mark_for(std::slice::from_ref(&plan.network_id))?;
    // A foreign device with our triple makes the kernel refuse ours: say so.
    if let Some((link, _, _)) = devices.iter().find(|(_, _, p)| p.same_tunnel(want)) {
        // Unless fan created it and stopped before marking it: complete that.
        let mut link = link.clone();
        if role.owns_name(&link.name) && nl.claim(&mut link, &mark).await? {
            return refresh(nl, role, link.index).await?.ok_or_else(|| {
                DataplaneError::other(context, format!("device {} vanished", link.name))
            });
        }
        return Err(DataplaneError::other(
            context,
            conflict_message(role, plan, &link.name, link.alias.as_deref()),
        ));
    }
    let names = nl.links().await?;
    let name = candidate_names(role, plan.index)
        .filter(|n| n.len() <= IFNAME_MAX)
        .find(|n| !names.iter().any(|l| l.name == *n))
        .ok_or_else(|| {
            DataplaneError::other(
                &context,
                format!("every name {}{}[b-z] is taken", role.prefix(), plan.index),
            )
        })?;
    let message = create_message(&name, want, plan.mtu);
    if !nl
        .add_link_message(message, &format!("create ipip device {name}"))
        .await?
    {
        return Err(DataplaneError::other(
            context,
            format!("the kernel refused ipip device {name} ({}) with EEXIST: a device of that name or another ipip tunnel with the same local address, underlay device and no remote appeared meanwhile", want.describe()),
        ));
    }
    let link = nl.require_link(&name).await?;
    // The kernel ignores IFLA_IFALIAS on creation: mark it at once, and
    // take it away again if that fails (we just proved it is ours). A stop
    // right here leaves it born in the fan device group: claimed above next time.
    if let Err(e) = nl.set_alias(link.index, &mark).await {
        if let Err(cleanup) = nl.delete_link(link.index).await {
            warn!(error = %cleanup, device = %name, "could not delete the unmarked tunnel device");
        }
        return Err(e);
    }
    info!(device = %name, network = %plan.network_id, backend = role.backend(), tunnel = %want.describe(), "created tunnel device");
    refresh(nl, role, link.index).await?.ok_or_else(|| {
        DataplaneError::other(context, format!("device {name} vanished after creation"))
    })
}

fn conflict_message(role: Role, plan: &NetworkPlan, name: &str, alias: Option<&str>) -> String {
    let whose = match owners_of(alias) {
        Some(owners) => format!(
            "used by fan network(s) {} of another backend",
            owners.join(", ")
        ),
        None => "not managed by fan".to_string(),
    };
    format!(
        "ipip device {name} ({whose}) already is the tunnel with local {} on {} and no remote; \
         the kernel allows one such device, so the {} backend cannot create its own: \
         remove {name}, or use the same backend for every network on this underlay address",
        plan.local_underlay,
        plan.underlay_interface,
        role.backend(),
    )
}

fn disable_ipv6(dev: &str) {
    // IPv4-only tunnel; absent when IPv6 is disabled: fine.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
}

async fn configure(
    nl: &Netlink,
    plan: &NetworkPlan,
    mut dev: TunnelDevice,
) -> Result<TunnelDevice> {
    let mtu = wanted_mtu(plan, dev.owners.len());
    if dev.link.mtu != mtu {
        info!(device = %dev.link.name, from = dev.link.mtu, to = mtu, "setting tunnel MTU");
        nl.set_mtu(dev.link.index, mtu).await?;
        dev.link.mtu = mtu;
    }
    disable_ipv6(&dev.link.name);
    // Decapsulated packets arrive on this device with overlay sources.
    sysctl::set_rp_filter(&dev.link.name, sysctl::RP_FILTER_LOOSE)?;
    sysctl::set_send_redirects(&dev.link.name, false)?;
    if !dev.link.up {
        nl.set_up(dev.link.index, true).await?;
        dev.link.up = true;
    }
    Ok(dev)
}

/// Takes `plan.network_id` off the device's mark; deletes the device when
/// no network is left on it. Returns true when the device was deleted.
/// The caller removes its own routes or maps first, serialised as `ensure` is.
pub async fn leave(nl: &Netlink, plan: &NetworkPlan, dev: &TunnelDevice) -> Result<bool> {
    let rest: Vec<String> = dev
        .owners
        .iter()
        .filter(|o| **o != plan.network_id)
        .cloned()
        .collect();
    if rest.is_empty() {
        nl.delete_link(dev.link.index).await?;
        info!(device = %dev.link.name, network = %plan.network_id, "deleted tunnel device");
        Ok(true)
    } else {
        let mark = mark_for(&rest)?;
        nl.set_alias(dev.link.index, &mark).await?;
        info!(device = %dev.link.name, network = %plan.network_id, remaining = %mark, "left shared tunnel device");
        Ok(false)
    }
}

/// Drift entries for the device itself: parameters, MTU, state, rp_filter.
pub fn device_drifts(
    plan: &NetworkPlan,
    dev: &TunnelDevice,
    underlay_index: Option<u32>,
) -> Vec<crate::Drift> {
    let mut drifts = Vec::new();
    let object = format!("tunnel device {}", dev.link.name);
    let mut push = |expected: String, observed: String| {
        drifts.push(crate::Drift {
            object: object.clone(),
            expected,
            observed,
        })
    };
    if let Some(index) = underlay_index {
        let want = TunnelParams::fan(index, plan.local_underlay);
        if !dev.params.same_tunnel(&want) {
            push(want.describe(), dev.params.describe());
        }
    }
    let mtu = wanted_mtu(plan, dev.owners.len());
    if dev.link.mtu != mtu {
        push(format!("mtu {mtu}"), format!("mtu {}", dev.link.mtu));
    }
    if !dev.link.up {
        push("up".into(), "down".into());
    }
    match sysctl::rp_filter(&dev.link.name) {
        Ok(sysctl::RP_FILTER_STRICT) => push("rp_filter 2 (loose)".into(), "1 (strict)".into()),
        Ok(_) => {}
        Err(e) => push("rp_filter 2 (loose)".into(), e.to_string()),
    }
    drifts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_follow_the_index() {
        assert_eq!(device_name(Role::Ipip, 1), "fanipip1");
        assert_eq!(device_name(Role::KernelFan, 7), "fanmap7");
        let names: Vec<String> = candidate_names(Role::Ipip, u16::MAX).collect();
        assert_eq!(names[0], "fanipip65535");
        assert_eq!(names[1], "fanipip65535b");
        assert_eq!(names.last().unwrap(), "fanipip65535z");
        assert!(names.iter().all(|n| n.len() <= IFNAME_MAX));
        assert!(Role::Ipip.owns_name("fanipip3b"));
        assert!(!Role::Ipip.owns_name("fanipipx"));
        assert!(!Role::KernelFan.owns_name("fanipip3"));
    }

    #[test]
    fn marks_list_owners() {
        assert_eq!(
            owners_of(Some("fan:net-a")),
            Some(vec!["net-a".to_string()])
        );
        assert_eq!(
            owners_of(Some("fan:b,a")),
            Some(vec!["b".to_string(), "a".to_string()])
        );
        assert_eq!(owners_of(Some("fan:")), None);
        assert_eq!(owners_of(Some("someone else")), None);
        assert_eq!(owners_of(None), None);
        assert_eq!(
            mark_for(&["b".into(), "a".into(), "b".into()]).unwrap(),
            "fan:a,b"
        );
        // A single owner gives exactly the mark every other fan device uses.
        assert_eq!(mark_for(&["fan".into()]).unwrap(), "fan:fan");
        let many: Vec<String> = (0..5).map(|i| format!("{i}{}", "x".repeat(62))).collect();
        assert!(mark_for(&many).is_err());
    }

    #[test]
    fn tunnel_identity_is_local_link_and_no_remote() {
        let want = TunnelParams::fan(3, Ipv4Addr::new(172, 30, 0, 28));
        let mut seen = want;
        seen.ttl = 64;
        seen.remote = Some(Ipv4Addr::UNSPECIFIED);
        assert!(seen.same_tunnel(&want));
        seen.remote = Some(Ipv4Addr::new(172, 30, 0, 27));
        assert!(!seen.same_tunnel(&want));
        let other_link = TunnelParams::fan(4, Ipv4Addr::new(172, 30, 0, 28));
        assert!(!other_link.same_tunnel(&want));
    }

    #[test]
    fn messages_round_trip_through_the_parser() {
        let params = TunnelParams::fan(3, Ipv4Addr::new(172, 30, 0, 28));
        let msg = create_message("fanipip1", &params, 1480);
        assert_eq!(tunnel_params(&msg), Some(params));
        let change = change_message(9, &params, &[]);
        assert_eq!(change.header.index, 9);
        assert_eq!(tunnel_params(&change), Some(params));
        assert_eq!(tunnel_params(&LinkMessage::default()), None);
    }
}
