//! The `kernel-fan` backend: Ubuntu's fan patch for ipip, programmed over
//! rtnetlink exactly as `fanctl` (through iproute2's `fan-map`) does.
//!
//! What `apply` builds for a network:
//!
//! - an ipip device with no fixed remote, `local <plan.local_underlay> dev
//!   <plan.underlay_interface>`, named `fanmap<plan.index>`, marked
//!   `fan:<network_id>`, MTU `plan.mtu`, up, rp_filter loose. Networks on
//!   one underlay address share it (the kernel allows one such tunnel per
//!   (local, remote, device); see [`crate::iptun::device`]), each with its own
//!   map on it;
//! - the map `plan.overlay:plan.underlay` on that device
//!   ([`fan_map::IFLA_IPTUN_FAN_MAP`]); the kernel then computes the outer
//!   destination of every overlay packet itself;
//! - the route `plan.overlay dev fanmapN src plan.gateway proto 250`.
//!
//! One map is added or removed without disturbing the device's other
//! maps: the current maps are read back (RTM_GETLINK), and only the delta
//! is sent ([`fan_map::changes_to_add`], [`fan_map::changes_to_remove`]): the map,
//! or a delete entry (underlay 0/0) for its overlay. Re-sending the merged
//! set is not possible: the patched kernel answers EEXIST for an overlay it
//! already maps. A changelink carries the device's full tunnel parameters,
//! because ipip's changelink resets whatever a request leaves out.
//!
//! Detection: after `modprobe ipip`, `/proc/sys/net/fan/version` exists
//! on a patched kernel. The patch registers that sysctl in the initial
//! network namespace only, so an agent running in another namespace sees
//! no fan and `auto` picks another backend. As a second guard, `apply`
//! reads the maps back after writing them: a kernel without the patch
//! ignores attribute 33 silently (it is above ipip's policy maximum), and
//! `apply` then fails with that explanation and removes what it made.
//!
//! What is verified, and how:
//!
//! - the bytes: golden tests in [`fan_map`] pin the nested attribute headers,
//!   lengths, padding and byte order of several maps, a delete and a flush
//!   entry, and of a whole IFLA_LINKINFO; the expected bytes are written by
//!   hand from the ABI (Ubuntu's `include/uapi/linux/if_tunnel.h` and
//!   `net/ipv4/ipip.c`), not produced by the encoder;
//! - parsing what the kernel echoes (with and without NLA_F_NESTED);
//! - detection and fallback on a stock kernel with ipip.ko (Debian 6.1 in a
//!   VM, `make test-kernels`): the backend reports itself unavailable with
//!   the reason, and a forced `apply` fails cleanly and leaves nothing
//!   behind;
//! - the shared device, the route and removal logic run against that
//!   kernel too (everything but the map itself).
//!
//! Not verified: a live Ubuntu kernel. No Ubuntu kernel runs here, so the
//! patched kernel has never accepted these maps in a test, and packets
//! have never been encapsulated by the fan map code through this backend.

use async_trait::async_trait;
use tracing::{info, warn};

use crate::host::Errors;
use crate::iptun::device::{self, Role, TunnelDevice};
use crate::iptun::fan_map;
use crate::iptun::probe;
use crate::netlink::{Netlink, NetlinkSlot, Route4, TABLE_MAIN};
use crate::{
    Availability, BackendKind, DataplaneError, Drift, Encapsulation, NetworkPlan, Observation,
    Result, ROUTE_PROTOCOL,
};

use fan_map::FanMapping;

/// The file the patched ipip module creates (value 3 for the IPIP fan).
pub const FAN_VERSION_FILE: &str = "/proc/sys/net/fan/version";

/// Why the kernel fan cannot be used here, or its version.
pub fn detect() -> std::result::Result<String, String> {
    if let Err(reason) = probe::ipip_module() {
        return Err(format!(
            "{reason}; the kernel fan needs Ubuntu's patched ipip module"
        ));
    }
    match std::fs::read_to_string(FAN_VERSION_FILE) {
        Ok(v) => Ok(v.trim().to_string()),
        Err(_) => Err(format!(
            "kernel has no Ubuntu fan patch ({FAN_VERSION_FILE} missing after modprobe ipip; \
             patched kernels create it in the initial network namespace only)"
        )),
    }
}

/// Ubuntu's kernel fan map backend. See the module docs.
#[derive(Debug, Default)]
pub struct KernelFanBackend {
    netlink: NetlinkSlot,
}

impl KernelFanBackend {
    /// The backend (stateless: the maps live in the kernel).
    pub fn new() -> Self {
        KernelFanBackend::default()
    }

    fn want(plan: &NetworkPlan) -> FanMapping {
        FanMapping::map(plan.overlay, plan.underlay)
    }

    fn maps(dev: &TunnelDevice) -> Result<Vec<FanMapping>> {
        fan_map::fan_maps_of(&dev.message)
            .map_err(|e| DataplaneError::other(format!("fan maps of {}", dev.link.name), e))
    }

    async fn write_maps(nl: &Netlink, dev: &TunnelDevice, changes: &[FanMapping]) -> Result<()> {
        let list = changes
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        nl.change_link_message(
            device::change_message(dev.link.index, &dev.params, changes),
            &format!("set fan-map {list} on {}", dev.link.name),
        )
        .await
    }

    /// Adds our map to the device (and verifies the kernel took it).
    async fn ensure_map(nl: &Netlink, plan: &NetworkPlan, dev: &TunnelDevice) -> Result<()> {
        let want = Self::want(plan);
        let current = Self::maps(dev)?;
        let changes = fan_map::changes_to_add(&current, want).map_err(|e| {
            DataplaneError::other(format!("fan map {want} on {}", dev.link.name), e)
        })?;
        if changes.is_empty() {
            return Ok(());
        }
        Self::write_maps(nl, dev, &changes).await?;
        let after = device::refresh(nl, Role::KernelFan, dev.link.index)
            .await?
            .map(|d| Self::maps(&d))
            .transpose()?
            .unwrap_or_default();
        if !after.contains(&want) {
            return Err(DataplaneError::Unavailable {
                backend: BackendKind::KernelFan,
                reason: format!(
                    "the kernel accepted fan map {want} on {} but does not report it back: it ignores IFLA_IPTUN_FAN_MAP (no Ubuntu fan patch)",
                    dev.link.name
                ),
            });
        }
        info!(device = %dev.link.name, map = %want, other_maps = after.len() - 1, "fan map set");
        Ok(())
    }

    async fn ensure_route(nl: &Netlink, plan: &NetworkPlan, tunnel_index: u32) -> Result<()> {
        let want = plan.overlay_route(tunnel_index);
        let current: Vec<Route4> = nl
            .ipv4_routes_bulk(Some(TABLE_MAIN))
            .await?
            .into_iter()
            .filter(|r| r.destination == plan.overlay && r.metric.unwrap_or(0) == 0)
            .collect();
        if current.iter().any(|r| {
            r.oif == want.oif
                && r.src == want.src
                && r.via.is_none()
                && r.protocol == ROUTE_PROTOCOL
        }) {
            return Ok(());
        }
        if let Some(foreign) = current.iter().find(|r| r.protocol != ROUTE_PROTOCOL) {
            return Err(DataplaneError::other(
                format!("route {}", plan.overlay),
                format!(
                    "a route to the overlay not made by fan is in the way (protocol {}, device #{}); remove it",
                    foreign.protocol,
                    foreign.oif.unwrap_or(0)
                ),
            ));
        }
        nl.replace_route(&want).await
    }

    async fn delete_route(nl: &Netlink, plan: &NetworkPlan, tunnel_index: u32) -> Result<()> {
        let route = Route4 {
            oif: Some(tunnel_index),
            protocol: ROUTE_PROTOCOL,
            scope: None,
            ..Route4::new(plan.overlay)
        };
        nl.delete_route(&route).await
    }
}

#[async_trait]
impl Encapsulation for KernelFanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::KernelFan
    }

    fn use_netlink(&self, netlink: &Netlink) {
        self.netlink.set(netlink);
    }

    async fn availability(&self) -> Availability {
        let (available, reason) = match detect() {
            Ok(version) => (
                true,
                format!("Ubuntu kernel fan present ({FAN_VERSION_FILE} = {version})"),
            ),
            Err(reason) => (false, reason),
        };
        Availability {
            backend: BackendKind::KernelFan,
            available,
            reason,
        }
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        detect().map_err(|reason| DataplaneError::Unavailable {
            backend: BackendKind::KernelFan,
            reason,
        })?;
        self.apply_unchecked(plan).await
    }

    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        let nl = self.netlink.get()?;
        let mut drifts = Vec::new();
        let devices = device::owned(&nl, plan, Role::KernelFan).await?;
        let Some(dev) = devices.first() else {
            drifts.push(Drift {
                object: format!("kernel fan tunnel of network {}", plan.network_id),
                expected: format!(
                    "ipip device local {} dev {} with fan map {}",
                    plan.local_underlay,
                    plan.underlay_interface,
                    Self::want(plan)
                ),
                observed: "absent".into(),
            });
            return Ok(Observation {
                drifts,
                counters: None,
            });
        };
        let underlay = nl.link_by_name(&plan.underlay_interface).await?;
        drifts.extend(device::device_drifts(plan, dev, underlay.map(|u| u.index)));

        let want = Self::want(plan);
        match Self::maps(dev) {
            Ok(maps) if maps.contains(&want) => {}
            Ok(maps) => drifts.push(Drift {
                object: format!("fan maps of {}", dev.link.name),
                expected: format!("include {want}"),
                observed: if maps.is_empty() {
                    "none".into()
                } else {
                    maps.iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            }),
            Err(e) => drifts.push(Drift {
                object: format!("fan maps of {}", dev.link.name),
                expected: format!("include {want}"),
                observed: e.to_string(),
            }),
        }

        let route = plan.overlay_route(dev.link.index);
        let present = nl
            .ipv4_routes_bulk(Some(TABLE_MAIN))
            .await?
            .into_iter()
            .any(|r| {
                r.destination == plan.overlay
                    && r.oif == route.oif
                    && r.src == route.src
                    && r.protocol == ROUTE_PROTOCOL
            });
        if !present {
            drifts.push(Drift {
                object: format!("route {}", plan.overlay),
                expected: format!(
                    "dev {} src {} proto {ROUTE_PROTOCOL}",
                    dev.link.name, plan.gateway
                ),
                observed: "absent or different".into(),
            });
        }

        let counters = dev.counters(&nl, &plan.network_id).await?;
        Ok(Observation { drifts, counters })
    }

    async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        let nl = self.netlink.get()?;
        let mut errors = Errors::new();
        let Some(devices) = errors.record(device::owned(&nl, plan, Role::KernelFan).await) else {
            return errors.into_result();
        };
        for dev in devices {
            errors.record(Self::delete_route(&nl, plan, dev.link.index).await);
            if !dev.sole_owner(&plan.network_id) {
                // Shared: only our map goes; the others stay as they are.
                if let Some(maps) = errors.record(Self::maps(&dev)) {
                    let changes = fan_map::changes_to_remove(&maps, plan.overlay);
                    if !changes.is_empty() {
                        errors.record(Self::write_maps(&nl, &dev, &changes).await);
                    }
                }
            }
            errors.record(device::leave(&nl, plan, &dev).await);
        }
        errors.into_result()
    }
}

impl KernelFanBackend {
    /// `apply` without the detection step: what `apply` does once the
    /// kernel fan is detected. Public so that tests can drive it on a
    /// kernel without the patch and check that it fails cleanly.
    pub async fn apply_unchecked(&self, plan: &NetworkPlan) -> Result<()> {
        let nl = self.netlink.get()?;
        let dev = {
            let dev = device::ensure(&nl, plan, Role::KernelFan).await?;
            if let Err(e) = Self::ensure_map(&nl, plan, &dev).await {
                // Do not leave a device (or our name on a shared one) behind
                // that carries no map of ours.
                let current = device::refresh(&nl, Role::KernelFan, dev.link.index)
                    .await
                    .ok()
                    .flatten();
                let has_ours = current
                    .as_ref()
                    .and_then(|d| Self::maps(d).ok())
                    .is_some_and(|m| m.contains(&Self::want(plan)));
                if !has_ours {
                    if let Err(cleanup) =
                        device::leave(&nl, plan, current.as_ref().unwrap_or(&dev)).await
                    {
                        warn!(error = %cleanup, "could not take back the tunnel device");
                    }
                }
                return Err(e);
            }
            dev
        };
        Self::ensure_route(&nl, plan, dev.link.index).await
    }
}
