//! The `ipip` backend: the kernel's own IPIP tunnel (ipip.ko) plus one
//! computed route per remote slice. Works on any kernel with
//! CONFIG_NET_IPIP, no fan patch and no BPF needed; the wire format is the
//! same as the other backends' (outer IPv4, protocol 4, RFC 2003).
//!
//! What `apply` builds for a network:
//!
//! - an ipip device with no fixed remote, `local <plan.local_underlay>
//!   dev <plan.underlay_interface>`, MTU `plan.mtu`, up, rp_filter loose,
//!   send_redirects off, named `fanipip<plan.index>` and marked with the
//!   ifalias `fan:<network_id>` (see [`device`]: networks on the same
//!   underlay address share the device, because the kernel allows only one
//!   such tunnel per (local, remote, device));
//! - the routes of [`routes`]: `<slice> via <owner> dev fanipipN onlink
//!   src <gateway> proto 250` for every remote slice (65,533 for a /8
//!   overlay over a /16 underlay) and the catch-all `<overlay> dev
//!   fanipipN src <gateway> proto 250`.
//!
//! How packets flow: the kernel routes an overlay destination to its
//! slice's route; the tunnel has no remote, so it takes the route's
//! gateway (the owner's underlay address) as the outer destination. On
//! the receiving host the kernel matches the outer destination with the
//! device's local address and decapsulates.
//!
//! `apply` is a diff: it reads the main table once, keeps the routes that
//! are right, replaces ours whose next hop or source is wrong, deletes
//! ours the map no longer implies, and adds what is missing. Changes go to
//! the kernel [`ROUTE_BATCH_SIZE`] requests per system call
//! ([`Netlink::change_routes`]), with progress in the logs. A route of anyone else to a
//! slice is never replaced: `observe` reports it.
//!
//! `remove` deletes the device when the network is alone on it (the kernel
//! then drops its routes in one go); on a shared device it deletes exactly
//! this network's routes (protocol 250, through the device, inside the
//! overlay) and takes the network off the device's mark.
//!
//! Verified on a stock Debian 6.1 kernel in a VM (`make test-kernels`):
//! two hosts, ping and TCP both ways, interop with the eBPF backend in both
//! directions, and the /16 install and removal times.

pub mod routes;

use crate::iptun::{device, probe};

#[cfg(test)]
mod kernel_tests;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{info, warn};

use crate::host::Errors;
use crate::netlink::{Netlink, NetlinkSlot, RouteChange, ROUTE_BATCH_SIZE, TABLE_MAIN};
use crate::{
    Availability, BackendKind, DataplaneError, Drift, Encapsulation, NetworkPlan, Observation,
    Result,
};

use device::Role;

/// How often a long route batch logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs `changes` as one pipelined batch, logging progress for long ones
/// and a summary at the end. `what` names the batch ("routes of network fan").
pub(crate) async fn run_route_batch(
    nl: &Netlink,
    what: &str,
    changes: Vec<RouteChange>,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let mut last = start;
    let total = changes.len();
    let name = what.to_string();
    let report = nl
        .change_routes(changes, ROUTE_BATCH_SIZE, move |finished, total| {
            if finished < total && last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                info!(batch = %name, finished, total, "route changes in progress");
            }
        })
        .await;
    info!(
        batch = what,
        total,
        done = report.done,
        already = report.already,
        failed = report.failed,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "route changes finished"
    );
    report.into_result(what)
}

/// The ipip.ko backend. See the module docs for what it builds.
#[derive(Debug, Default)]
pub struct IpipBackend {
    netlink: NetlinkSlot,
}

impl IpipBackend {
    /// The backend (stateless: everything it needs is in the kernel).
    pub fn new() -> Self {
        IpipBackend::default()
    }

    fn unavailable(reason: String) -> DataplaneError {
        DataplaneError::Unavailable {
            backend: BackendKind::Ipip,
            reason,
        }
    }

    fn batch_name(plan: &NetworkPlan) -> String {
        format!("routes of network {}", plan.network_id)
    }
}

#[async_trait]
impl Encapsulation for IpipBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ipip
    }

    fn use_netlink(&self, netlink: &Netlink) {
        self.netlink.set(netlink);
    }

    async fn availability(&self) -> Availability {
        let (available, reason) = match probe::ipip_module() {
            Ok(()) => (
                true,
                "ipip module present: ipip device plus one onlink route per remote slice"
                    .to_string(),
            ),
            Err(reason) => (false, reason),
        };
        Availability {
            backend: BackendKind::Ipip,
            available,
            reason,
        }
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        probe::ipip_module().map_err(Self::unavailable)?;
        let nl = self.netlink.get()?;
        let dev = device::ensure(&nl, plan, Role::Ipip).await?;
        let desired = routes::desired_routes(plan, dev.link.index)?;
        let current = nl.ipv4_routes_bulk(Some(TABLE_MAIN)).await?;
        let diff = routes::diff(desired, &current, dev.link.index, plan.overlay);
        if !diff.conflicts.is_empty() {
            warn!(
                network = %plan.network_id,
                blocked = diff.conflicts.len(),
                example = %diff.conflicts[0].destination,
                "routes not made by fan are in the way of some slices; left alone"
            );
        }
        if !diff.missing.is_empty() || !diff.wrong.is_empty() || !diff.stale.is_empty() {
            info!(
                network = %plan.network_id,
                device = %dev.link.name,
                present = diff.ok,
                missing = diff.missing.len(),
                wrong = diff.wrong.len(),
                stale = diff.stale.len(),
                "syncing slice routes"
            );
        }
        run_route_batch(&nl, &Self::batch_name(plan), diff.changes()).await
    }

    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        let nl = self.netlink.get()?;
        let mut drifts = Vec::new();
        let devices = device::owned(&nl, plan, Role::Ipip).await?;
        let underlay = nl.link_by_name(&plan.underlay_interface).await?;
        let Some(dev) = devices.first() else {
            drifts.push(Drift {
                object: format!("ipip tunnel of network {}", plan.network_id),
                expected: format!(
                    "ipip device local {} dev {}, marked fan:{}",
                    plan.local_underlay, plan.underlay_interface, plan.network_id
                ),
                observed: "absent".into(),
            });
            return Ok(Observation {
                drifts,
                counters: None,
            });
        };
        if devices.len() > 1 {
            drifts.push(Drift {
                object: format!("ipip tunnel of network {}", plan.network_id),
                expected: "one device".into(),
                observed: devices
                    .iter()
                    .map(|d| d.link.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        drifts.extend(device::device_drifts(plan, dev, underlay.map(|u| u.index)));

        let desired = routes::desired_routes(plan, dev.link.index)?;
        let want = desired.len();
        let current = nl.ipv4_routes_bulk(Some(TABLE_MAIN)).await?;
        let diff = routes::diff(desired, &current, dev.link.index, plan.overlay);
        if !diff.is_clean() {
            drifts.push(Drift {
                object: format!(
                    "routes of network {} via {} (proto {})",
                    plan.network_id,
                    dev.link.name,
                    crate::ROUTE_PROTOCOL
                ),
                expected: format!("{want} (the overlay catch-all and one per remote slice)"),
                observed: diff.summary(),
            });
        }

        let counters = dev.counters(&nl, &plan.network_id).await?;
        Ok(Observation { drifts, counters })
    }

    async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        let nl = self.netlink.get()?;
        let mut errors = Errors::new();
        let Some(devices) = errors.record(device::owned(&nl, plan, Role::Ipip).await) else {
            return errors.into_result();
        };
        for dev in devices {
            if !dev.sole_owner(&plan.network_id) {
                // Shared: take exactly our routes off it.
                if let Some(current) = errors.record(nl.ipv4_routes_bulk(Some(TABLE_MAIN)).await) {
                    let ours: Vec<RouteChange> = current
                        .iter()
                        .filter(|r| routes::is_ours(r, dev.link.index, plan.overlay))
                        .map(|r| RouteChange::Delete(routes::delete_form(r)))
                        .collect();
                    errors.record(run_route_batch(&nl, &Self::batch_name(plan), ours).await);
                }
            }
            // Alone: deleting the device drops its routes in the kernel.
            let start = Instant::now();
            if let Some(true) = errors.record(device::leave(&nl, plan, &dev).await) {
                info!(
                    device = %dev.link.name,
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "tunnel device and its routes removed"
                );
            }
        }
        errors.into_result()
    }
}
