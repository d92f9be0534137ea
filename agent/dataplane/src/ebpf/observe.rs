//! `EbpfBackend::observe`, one observer per part the backend owns: the
//! tunnel device, the overlay route, the pinned maps and config, the tc
//! filters. Each adds its differences from the plan to one list.

use std::path::Path;

use aya::maps::MapInfo;

use super::{
    config_map_id, maps, pinned_map_ids, read_config, tc, tunnel, uses_pinned_maps, EbpfBackend,
    DECAP_PROGRAM, ENCAP_PROGRAM, FASTPATH_PROGRAM, ROUTE_PROTOCOL, TC_HANDLE,
};
use crate::netlink::{Link, Netlink};
use crate::{Drift, NetworkPlan, Result};
use maps::{FanConfig, FLAG_EGRESS_FASTPATH, FLAG_PEER_FASTPATH};
use tc::Hook;

/// The differences found so far.
#[derive(Debug, Default)]
pub(super) struct Drifts(pub(super) Vec<Drift>);

impl Drifts {
    fn push(
        &mut self,
        object: impl Into<String>,
        expected: impl Into<String>,
        observed: impl Into<String>,
    ) {
        self.0.push(Drift {
            object: object.into(),
            expected: expected.into(),
            observed: observed.into(),
        });
    }
}

/// The tunnel device: present, a veth with the plan's MTU, ARP off, up.
/// Returns it when it is ours.
pub(super) async fn tunnel_device(
    nl: &Netlink,
    plan: &NetworkPlan,
    drifts: &mut Drifts,
) -> Option<Link> {
    let tunnel_name = tunnel::tunnel_name(plan.index);
    let object = format!("tunnel device {tunnel_name}");
    let expected = format!("veth, mtu {}, arp off, up", plan.mtu);
    match tunnel::owned_tunnel(nl, plan).await {
        Ok(Some(link)) => {
            let observed = format!(
                "veth, mtu {}, arp {}, {}",
                link.mtu,
                if link.noarp { "off" } else { "on" },
                if link.up { "up" } else { "down" }
            );
            if observed != expected {
                drifts.push(object, expected, observed);
            }
            Some(link)
        }
        Ok(None) => {
            drifts.push(object, expected, "absent");
            None
        }
        Err(e) => {
            drifts.push(object, expected, e.to_string());
            None
        }
    }
}

/// The overlay route through the tunnel device.
pub(super) async fn overlay_route(
    nl: &Netlink,
    plan: &NetworkPlan,
    tunnel: Option<&Link>,
    drifts: &mut Drifts,
) -> Result<()> {
    let tunnel_name = tunnel::tunnel_name(plan.index);
    let routes = tunnel::overlay_routes(nl, plan).await?;
    let route_ok = tunnel.is_some_and(|t| {
        routes
            .iter()
            .any(|r| tunnel::route_matches(r, &plan.overlay_route(t.index)))
    });
    if route_ok {
        return Ok(());
    }
    let observed = if routes.is_empty() {
        "absent".to_string()
    } else {
        let names = nl.links().await.unwrap_or_default();
        let name_of = |i: u32| {
            names
                .iter()
                .find(|l| l.index == i)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("#{i}"))
        };
        routes
            .iter()
            .map(|r| tunnel::describe_route(r, name_of))
            .collect::<Vec<_>>()
            .join("; ")
    };
    drifts.push(
        format!("route {}", plan.overlay),
        format!(
            "dev {tunnel_name} src {} proto {ROUTE_PROTOCOL}",
            plan.gateway
        ),
        observed,
    );
    Ok(())
}

/// Every map pinned in `pin_dir`; true when all are.
pub(super) fn pinned_maps(pin_dir: &Path, drifts: &mut Drifts) -> bool {
    let mut present = true;
    for name in maps::ALL_MAPS {
        let path = pin_dir.join(name);
        if MapInfo::from_pin(&path).is_err() {
            present = false;
            drifts.push(
                format!("pinned map {}", path.display()),
                "present",
                "absent",
            );
        }
    }
    present
}

impl EbpfBackend {
    /// The config map against what `apply` would write (the agent's own
    /// flags and the tunnel and bridge MACs aside).
    pub(super) fn observe_config(
        &self,
        plan: &NetworkPlan,
        pin_dir: &Path,
        underlay: Option<&Link>,
        tunnel: Option<&Link>,
        routing: Option<&crate::netlink::RoutingView>,
        drifts: &mut Drifts,
    ) {
        let (Some(cfg), Ok(mut want)) = (read_config(pin_dir), maps::config_from_plan(plan)) else {
            return;
        };
        want.underlay_ifindex = underlay.map(|l| l.index).unwrap_or(0);
        want.tunnel_ifindex = tunnel.map(|l| l.index).unwrap_or(0);
        if self.peer_fast_path {
            want.flags |= FLAG_PEER_FASTPATH;
        }
        if self.egress_fast_path_active() {
            want.flags |= FLAG_EGRESS_FASTPATH;
        }
        let _ = super::next_hop::set_flag(&mut want, routing);
        let got = FanConfig {
            agent_flags: 0,
            tunnel_mac: [0; 6],
            bridge_mac: [0; 6],
            ..cfg
        };
        let want = FanConfig {
            agent_flags: 0,
            tunnel_mac: [0; 6],
            bridge_mac: [0; 6],
            ..want
        };
        if got != want {
            drifts.push(
                format!("eBPF config of network {}", plan.network_id),
                format!("{want:?}"),
                format!("{got:?}"),
            );
        }
    }

    /// The tc filters: encap on the tunnel, decap on the underlay, the fast
    /// path on the bridge; each ours, alone at our priority, running a
    /// program on the pinned maps (checked when the maps are there).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn observe_filters(
        &self,
        nl: &Netlink,
        plan: &NetworkPlan,
        pin_dir: &Path,
        priority: u16,
        maps_present: bool,
        tunnel: Option<&Link>,
        underlay: Option<&Link>,
        drifts: &mut Drifts,
    ) -> Result<()> {
        let mut sites = Vec::new();
        match tunnel {
            Some(t) => sites.push((ENCAP_PROGRAM, t.name.clone(), t.index, Hook::Egress)),
            None => drifts.push(
                format!(
                    "tc filter {ENCAP_PROGRAM} on {} egress",
                    tunnel::tunnel_name(plan.index)
                ),
                format!("bpf pref {priority} handle {TC_HANDLE:#x}"),
                "absent (no tunnel device)",
            ),
        }
        match underlay {
            Some(u) => sites.push((DECAP_PROGRAM, u.name.clone(), u.index, Hook::Ingress)),
            None => drifts.push(
                format!("underlay device {}", plan.underlay_interface),
                "present",
                "absent",
            ),
        }
        // The bridge itself is the host part's to report when absent; so
        // does each container port the fast path was attached to and that
        // is still on the bridge (one not learned yet is not drift: the
        // bridge's filter carries its traffic until the refresher gets to it).
        let mut netkit_ports = Vec::new();
        if self.egress_fast_path_active() {
            if let Some(b) = nl.link_by_name(&plan.bridge).await? {
                sites.push((FASTPATH_PROGRAM, b.name.clone(), b.index, Hook::Ingress));
                let running = super::endpoints::lock_ports(&self.ports_running)
                    .get(&plan.network_id)
                    .cloned()
                    .unwrap_or_default();
                for port in running {
                    let still_ours = nl
                        .link_by_index(port.index)
                        .await?
                        .is_some_and(|l| l.master == Some(b.index) && l.name == port.name);
                    if !still_ours {
                        continue;
                    }
                    if port.netkit {
                        netkit_ports.push(port);
                    } else {
                        sites.push((FASTPATH_PROGRAM, port.name, port.index, Hook::Ingress));
                    }
                }
            }
        }
        let pinned = pinned_map_ids(pin_dir);
        let config_id = config_map_id(pin_dir);
        for port in netkit_ports {
            let object = format!("netkit peer program {FASTPATH_PROGRAM} on {}", port.name);
            let expected = "one program, using the pinned maps";
            match super::netkit::ours(port.index) {
                Ok(ids) => match ids.as_slice() {
                    [] => drifts.push(object, expected, "absent"),
                    [id] if maps_present && !uses_pinned_maps(*id, pinned.as_ref(), config_id) => {
                        drifts.push(object, expected, "uses other maps")
                    }
                    [_] => {}
                    more => drifts.push(object, expected, format!("{} programs", more.len())),
                },
                Err(e) => drifts.push(object, expected, format!("unreadable: {e}")),
            }
        }
        for (program, interface, ifindex, hook) in sites {
            let object = format!("tc filter {program} on {interface} {}", hook.as_str());
            let expected = format!("bpf {program} pref {priority} handle {TC_HANDLE:#x}");
            let filters = tc::list_filters_at(nl.handle(), ifindex, hook, priority).await?;
            let (main, extra) = Self::ours(&filters, priority, program);
            match main {
                None => drifts.push(object, expected, "absent"),
                Some(f) if f.name.as_deref() != Some(program) => drifts.push(
                    object,
                    expected,
                    format!("bpf {} at our priority", f.name.as_deref().unwrap_or("?")),
                ),
                Some(f) => {
                    if maps_present
                        && !f
                            .prog_id
                            .is_some_and(|id| uses_pinned_maps(id, pinned.as_ref(), config_id))
                    {
                        drifts.push(
                            object.clone(),
                            format!("uses the maps pinned in {}", pin_dir.display()),
                            "uses other maps",
                        );
                    }
                    if !extra.is_empty() {
                        drifts.push(object, "one filter", format!("{} filters", extra.len() + 1));
                    }
                }
            }
        }
        Ok(())
    }
}
