//! The host part of a fan network, shared by every backend: the bridge with
//! the slice gateway address and MTU, the forwarding sysctls, and the
//! nftables table (outbound masquerade; anti-spoofing for the backends that
//! have no program of their own to do it, see [`nft`]).
//!
//! Ownership mark: the bridge's ifalias is `fan:<network_id>`. A device with
//! the bridge's name but without that mark belongs to someone else: `apply`
//! refuses to touch it and `remove` leaves it alone. The mark is the
//! bridge's identity, not its name: a marked bridge renamed by hand is
//! reported as drift, renamed back by `apply` (never duplicated) and deleted
//! by `remove` under whatever name it has. A bridge of the plan's name born
//! in [`crate::netlink::FAN_DEVICE_GROUP`] without any ifalias is the agent's
//! own creation cut short before marking: `apply` marks it, `remove` deletes it.

pub mod nft;

use ipnetwork::Ipv4Network;
use tracing::{info, warn};

use crate::netlink::{Link, Netlink};
use crate::sysctl;
use crate::{Counters, DataplaneError, Drift, NetworkPlan, Observation, Result};

pub use nft::Nft;

/// The ifalias that marks a bridge as the agent's for `network_id`.
pub fn bridge_mark(network_id: &str) -> String {
    format!("fan:{network_id}")
}

/// Collects errors so that teardown can carry on after a failure and report
/// everything at the end (netavark style).
#[derive(Debug, Default)]
pub struct Errors(Vec<DataplaneError>);

impl Errors {
    /// No errors yet.
    pub fn new() -> Self {
        Errors::default()
    }

    /// Records the error of `result`, if any, and logs it.
    pub fn record<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(error = %e, "teardown step failed, carrying on");
                // Keep the list flat when a step itself reports several errors.
                match e {
                    DataplaneError::Many(inner) => self.0.extend(inner),
                    e => self.0.push(e),
                }
                None
            }
        }
    }

    /// Ok when nothing failed, the error when one did, `Many` when several did.
    pub fn into_result(mut self) -> Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(DataplaneError::Many(self.0)),
        }
    }
}

fn bridge_object(plan: &NetworkPlan) -> String {
    format!("bridge {}", plan.bridge)
}

fn gateway_address(plan: &NetworkPlan) -> Result<Ipv4Network> {
    Ipv4Network::new(plan.gateway, plan.slice.prefix())
        .map_err(|e| DataplaneError::other(format!("gateway address of {}", plan.network_id), e))
}

fn drift(
    object: impl Into<String>,
    expected: impl Into<String>,
    observed: impl Into<String>,
) -> Drift {
    Drift {
        object: object.into(),
        expected: expected.into(),
        observed: observed.into(),
    }
}

fn describe_alias(link: &Link) -> String {
    match &link.alias {
        Some(a) => format!("ifalias {a:?}"),
        None if link.unmarked_fan_birth() => {
            "no ifalias yet: created by fan, its creator stopped before marking it".to_string()
        }
        None => "no ifalias".to_string(),
    }
}

/// Bridge, addresses, sysctls and nftables for one network.
#[derive(Debug, Clone)]
pub struct HostSetup {
    netlink: Netlink,
    nft: Nft,
}

impl HostSetup {
    /// Uses `netlink` and the `nft` binary from PATH.
    pub fn new(netlink: Netlink) -> Self {
        HostSetup {
            netlink,
            nft: Nft::new(),
        }
    }

    /// Uses `netlink` and the given nft runner.
    pub fn with_nft(netlink: Netlink, nft: Nft) -> Self {
        HostSetup { netlink, nft }
    }

    /// The bridge if it exists and carries our mark; an error if a device of
    /// that name exists without it.
    async fn owned_bridge(&self, plan: &NetworkPlan) -> Result<Option<Link>> {
        let Some(mut link) = self.netlink.link_by_name(&plan.bridge).await? else {
            return Ok(None);
        };
        let mark = bridge_mark(&plan.network_id);
        if link.unmarked_fan_birth() && link.kind.as_deref() != Some("bridge") {
            return Err(DataplaneError::other(
                bridge_object(plan),
                format!(
                    "device {} was created by fan but never marked, and is a {}, not a bridge",
                    plan.bridge,
                    link.kind.as_deref().unwrap_or("device without rtnl kind")
                ),
            ));
        }
        if !self.netlink.claim(&mut link, &mark).await? {
            return Err(DataplaneError::other(
                bridge_object(plan),
                format!(
                    "device {} exists and is not managed by fan (expected ifalias {mark:?}, found {})",
                    plan.bridge,
                    describe_alias(&link)
                ),
            ));
        }
        if link.kind.as_deref() != Some("bridge") {
            return Err(DataplaneError::other(
                bridge_object(plan),
                format!(
                    "device {} carries the mark of network {} but is a {}, not a bridge",
                    plan.bridge,
                    plan.network_id,
                    link.kind.as_deref().unwrap_or("device without rtnl kind")
                ),
            ));
        }
        Ok(Some(link))
    }

    /// Bridges carrying this network's mark under another name than the
    /// plan's: ours by identity (the mark survives a rename), oldest first.
    async fn renamed_bridges(&self, plan: &NetworkPlan) -> Result<Vec<Link>> {
        let mark = bridge_mark(&plan.network_id);
        let mut found: Vec<Link> = self
            .netlink
            .links_of_kind("bridge")
            .await?
            .into_iter()
            .filter(|l| {
                l.name != plan.bridge
                    && l.kind.as_deref() == Some("bridge")
                    && l.alias.as_deref() == Some(mark.as_str())
            })
            .collect();
        found.sort_by_key(|l| l.index);
        Ok(found)
    }

    /// Folds other bridges with this network's mark into `bridge`: their
    /// ports move over, then they are deleted, so one bridge holds the gateway.
    async fn absorb_duplicates(&self, plan: &NetworkPlan, bridge: &Link) -> Result<()> {
        let duplicates = self.renamed_bridges(plan).await?;
        if duplicates.is_empty() {
            return Ok(());
        }
        let links = self.netlink.links().await?;
        for duplicate in duplicates {
            for port in links.iter().filter(|l| l.master == Some(duplicate.index)) {
                self.netlink
                    .set_master(port.index, Some(bridge.index))
                    .await?;
            }
            info!(bridge = %plan.bridge, duplicate = %duplicate.name, network = %plan.network_id, "deleting a second bridge of this network");
            self.netlink.delete_link(duplicate.index).await?;
        }
        Ok(())
    }

    /// The plan's bridge: found with our mark, or created and marked.
    async fn ensure_bridge(&self, plan: &NetworkPlan) -> Result<Link> {
        if let Some(link) = self.owned_bridge(plan).await? {
            self.absorb_duplicates(plan, &link).await?;
            return Ok(link);
        }
        // Our bridge renamed by hand keeps its mark: name it back instead of
        // creating a second bridge that would hold the same gateway address.
        if let Some(renamed) = self.renamed_bridges(plan).await?.into_iter().next() {
            info!(bridge = %plan.bridge, found = %renamed.name, network = %plan.network_id, "bridge was renamed: renaming it back");
            // The kernel refuses to rename a device that is up; apply brings it up again.
            if renamed.up {
                self.netlink.set_up(renamed.index, false).await?;
            }
            self.netlink.set_name(renamed.index, &plan.bridge).await?;
            return self.owned_bridge(plan).await?.ok_or_else(|| {
                DataplaneError::other(
                    bridge_object(plan),
                    format!("device {} vanished while being renamed back", renamed.name),
                )
            });
        }
        let Some(link) = self.netlink.add_bridge(&plan.bridge).await? else {
            // A device with this name appeared since we looked: usable only
            // if it carries our mark (owned_bridge errors otherwise).
            return self.owned_bridge(plan).await?.ok_or_else(|| {
                DataplaneError::other(
                    bridge_object(plan),
                    format!("device {} vanished while being created", plan.bridge),
                )
            });
        };
        // Mark it at once. The kernel ignores IFLA_IFALIAS on RTM_NEWLINK, so
        // a stop right here leaves an unmarked bridge, born in the fan device
        // group: the next apply claims it (owned_bridge). When marking merely
        // fails, take the unmarked bridge away again: add_bridge proved it is ours.
        let mark = bridge_mark(&plan.network_id);
        if let Err(e) = self.netlink.set_alias(link.index, &mark).await {
            if let Err(cleanup) = self.netlink.delete_link(link.index).await {
                warn!(error = %cleanup, "could not delete the unmarked bridge");
            }
            return Err(e);
        }
        info!(bridge = %plan.bridge, network = %plan.network_id, "created bridge");
        Ok(link)
    }

    /// Makes the host match the plan; idempotent.
    pub async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        self.apply_devices(plan).await?;
        self.apply_nft(plan).await
    }

    /// The bridge, its addresses and the sysctls: what the backends build
    /// on. The nft table ([`HostSetup::apply_nft`]) refers to the bridge by
    /// name only, so it may be written at the same time as the backend.
    pub async fn apply_devices(&self, plan: &NetworkPlan) -> Result<()> {
        let gateway = gateway_address(plan)?;
        let bridge_phase = crate::timing::phase("host.bridge");
        let bridge = self.ensure_bridge(plan).await?;
        let index = bridge.index;

        // A bridge without a set address takes its lowest port's MAC, so the
        // containers' gateway MAC would change whenever that container left.
        let mac = bridge_mac(plan);
        if bridge.mac != Some(mac) {
            self.netlink.set_mac(index, mac).await?;
        }

        if bridge.mtu != plan.mtu {
            info!(bridge = %plan.bridge, from = bridge.mtu, to = plan.mtu, "setting bridge MTU");
            self.netlink.set_mtu(index, plan.mtu).await?;
        }

        let addresses = self.netlink.ipv4_addresses(index).await?;
        for stale in addresses.iter().filter(|a| **a != gateway) {
            // The bridge is ours: an old slice's gateway (the host's underlay
            // address changed) or a hand-added address must go.
            info!(bridge = %plan.bridge, address = %stale, "removing stale address");
            self.netlink.delete_ipv4_address(index, *stale).await?;
        }
        if !addresses.contains(&gateway) {
            info!(bridge = %plan.bridge, address = %gateway, "adding gateway address");
            self.netlink.add_ipv4_address(index, gateway).await?;
        }

        if !bridge.up {
            self.netlink.set_up(index, true).await?;
        }
        drop(bridge_phase);

        let sysctl_phase = crate::timing::phase("host.sysctl");
        sysctl::set_ip_forward(true)?;
        // The kernel uses max(all, dev) for rp_filter, so loose on the device
        // wins over a strict `all`.
        sysctl::set_rp_filter(&plan.bridge, sysctl::RP_FILTER_LOOSE)?;
        // Note: the kernel ORs send_redirects with conf.all, which the agent
        // leaves to the host's administrator.
        sysctl::set_send_redirects(&plan.bridge, false)?;
        // Decapsulated packets arrive on the underlay device with overlay
        // sources: strict rp_filter would drop them.
        sysctl::set_rp_filter(&plan.underlay_interface, sysctl::RP_FILTER_LOOSE)?;
        drop(sysctl_phase);
        Ok(())
    }

    /// The network's nftables table (written, replaced or deleted as the
    /// plan asks); idempotent.
    pub async fn apply_nft(&self, plan: &NetworkPlan) -> Result<()> {
        let _nft_phase = crate::timing::phase("host.nft");
        if nft::needs_table(plan) {
            self.nft.ensure_table(plan).await?;
        } else {
            self.nft.delete_table(&plan.network_id).await?;
        }
        Ok(())
    }

    /// Lists every difference between the host and the plan.
    pub async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        let mut drifts = Vec::new();
        let gateway = gateway_address(plan)?;
        let object = bridge_object(plan);

        let renamed = self.renamed_bridges(plan).await?;
        match self.netlink.link_by_name(&plan.bridge).await? {
            None => match renamed.first() {
                Some(link) => drifts.push(drift(
                    &object,
                    "present",
                    format!(
                        "renamed to {} (ifalias {:?}, mac {})",
                        link.name,
                        bridge_mark(&plan.network_id),
                        link.mac.map(format_mac).unwrap_or_default()
                    ),
                )),
                None => drifts.push(drift(&object, "present", "absent")),
            },
            Some(link) => {
                let mark = bridge_mark(&plan.network_id);
                if link.alias.as_deref() != Some(mark.as_str()) {
                    drifts.push(drift(
                        &object,
                        format!("managed by fan (ifalias {mark:?})"),
                        format!("not managed by fan ({})", describe_alias(&link)),
                    ));
                } else {
                    self.observe_bridge(plan, &link, gateway, &mut drifts)
                        .await?;
                }
            }
        }

        // A second bridge of this network (after a rename) is drift too.
        for extra in renamed.iter().skip(usize::from(
            self.netlink.link_by_name(&plan.bridge).await?.is_none(),
        )) {
            drifts.push(drift(
                format!("bridge {}", extra.name),
                format!(
                    "absent (network {} has one bridge, {})",
                    plan.network_id, plan.bridge
                ),
                "present with the network's mark",
            ));
        }

        if !sysctl::ip_forward()? {
            drifts.push(drift(sysctl::key_name(&["ip_forward"]), "1", "0"));
        }
        if self
            .netlink
            .link_by_name(&plan.underlay_interface)
            .await?
            .is_none()
        {
            drifts.push(drift(
                format!("underlay device {}", plan.underlay_interface),
                "present",
                "absent",
            ));
        } else {
            let underlay_rp = sysctl::rp_filter(&plan.underlay_interface)?;
            if underlay_rp != sysctl::RP_FILTER_LOOSE {
                drifts.push(drift(
                    sysctl::key_name(&["conf", &plan.underlay_interface, "rp_filter"]),
                    "2 (loose)",
                    rp_filter_text(underlay_rp),
                ));
            }
        }

        let counters = self.observe_nft(plan, &mut drifts).await?;
        Ok(Observation { drifts, counters })
    }

    async fn observe_bridge(
        &self,
        plan: &NetworkPlan,
        link: &Link,
        gateway: Ipv4Network,
        drifts: &mut Vec<Drift>,
    ) -> Result<()> {
        let object = bridge_object(plan);
        if link.kind.as_deref() != Some("bridge") {
            drifts.push(drift(
                &object,
                "kind bridge",
                format!("kind {}", link.kind.as_deref().unwrap_or("none")),
            ));
            return Ok(());
        }
        if !link.up {
            drifts.push(drift(&object, "up", "down"));
        }
        if link.mtu != plan.mtu {
            drifts.push(drift(
                &object,
                format!("mtu {}", plan.mtu),
                format!("mtu {}", link.mtu),
            ));
        }
        // apply sets it: the containers' gateway MAC must not change.
        let mac = bridge_mac(plan);
        if link.mac != Some(mac) {
            drifts.push(drift(
                &object,
                format!("mac {}", format_mac(mac)),
                format!("mac {}", link.mac.map(format_mac).unwrap_or_default()),
            ));
        }
        let addresses = self.netlink.ipv4_addresses(link.index).await?;
        if !addresses.contains(&gateway) {
            drifts.push(drift(
                format!("address {gateway} on {}", plan.bridge),
                "present",
                "absent",
            ));
        }
        for extra in addresses.iter().filter(|a| **a != gateway) {
            drifts.push(drift(
                format!("address {extra} on {}", plan.bridge),
                "absent",
                "present",
            ));
        }
        let rp = sysctl::rp_filter(&plan.bridge)?;
        if rp != sysctl::RP_FILTER_LOOSE {
            drifts.push(drift(
                sysctl::key_name(&["conf", &plan.bridge, "rp_filter"]),
                "2 (loose)",
                rp_filter_text(rp),
            ));
        }
        if sysctl::send_redirects(&plan.bridge)? {
            drifts.push(drift(
                sysctl::key_name(&["conf", &plan.bridge, "send_redirects"]),
                "0",
                "1",
            ));
        }
        Ok(())
    }

    /// Compares the nft table with the plan; returns the anti-spoofing
    /// rules' counters when the table carries them.
    async fn observe_nft(
        &self,
        plan: &NetworkPlan,
        drifts: &mut Vec<Drift>,
    ) -> Result<Option<Counters>> {
        let object = nft::table_object(&plan.network_id);
        let name = nft::table_name(&plan.network_id);
        if !nft::has_anti_spoofing(plan) {
            // No counters to read: the cached summary does.
            let summary = self.nft.table_summary(&name).await?;
            return Ok(match (nft::needs_table(plan), summary) {
                (false, None) => None,
                (false, Some(_)) => {
                    drifts.push(drift(
                        object,
                        "absent (masquerade off, no anti-spoofing rules)",
                        "present",
                    ));
                    None
                }
                (true, None) => {
                    drifts.push(drift(object, "present", "absent"));
                    None
                }
                (true, Some(observed)) => {
                    let expected = nft::expected_summary(plan);
                    if observed != expected {
                        drifts.push(drift(object, expected.join("; "), observed.join("; ")));
                    }
                    None
                }
            });
        }
        let listing = self.nft.list_table(&name).await?;
        match (nft::needs_table(plan), listing) {
            (false, None) => Ok(None),
            (false, Some(_)) => {
                drifts.push(drift(
                    object,
                    "absent (masquerade off, no anti-spoofing rules)",
                    "present",
                ));
                Ok(None)
            }
            (true, None) => {
                drifts.push(drift(object, "present", "absent"));
                Ok(None)
            }
            (true, Some(listing)) => {
                let expected = nft::expected_summary(plan);
                let observed = nft::summarize(&listing);
                if observed != expected {
                    drifts.push(drift(object, expected.join("; "), observed.join("; ")));
                }
                Ok(nft::has_anti_spoofing(plan).then(|| nft::anti_spoofing_counters(&listing)))
            }
        }
    }

    /// Removes the nft table and the bridge (only when it carries our mark).
    /// Carries on after errors and reports them all; what is already gone
    /// counts as removed. Sysctls are left as they are: ip_forward and the
    /// underlay's rp_filter may be relied on by others.
    pub async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        let mut errors = Errors::new();
        errors.record(self.nft.delete_table(&plan.network_id).await);
        match self.netlink.link_by_name(&plan.bridge).await {
            Ok(None) => {}
            // An unmarked fan birth of this name is this network's bridge
            // whose creation was cut short.
            Ok(Some(link)) if link.owned_by(&bridge_mark(&plan.network_id)) => {
                if errors
                    .record(self.netlink.delete_link(link.index).await)
                    .is_some()
                {
                    info!(bridge = %plan.bridge, network = %plan.network_id, "deleted bridge");
                }
            }
            Ok(Some(link)) => warn!(
                bridge = %plan.bridge,
                found = %describe_alias(&link),
                "not deleting device: it is not managed by fan"
            ),
            Err(e) => {
                errors.record::<()>(Err(e));
            }
        }
        // Ours by identity even under another name (renamed by hand).
        if let Some(renamed) = errors.record(self.renamed_bridges(plan).await) {
            for link in renamed {
                if errors
                    .record(self.netlink.delete_link(link.index).await)
                    .is_some()
                {
                    info!(bridge = %link.name, network = %plan.network_id, "deleted renamed bridge");
                }
            }
        }
        errors.into_result()
    }
}

fn rp_filter_text(value: u32) -> String {
    match value {
        0 => "0 (off)".to_string(),
        1 => "1 (strict)".to_string(),
        2 => "2 (loose)".to_string(),
        v => v.to_string(),
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The bridge's fixed MAC: locally administered (02), our mark (fa), then the
/// gateway address, so it is stable for the network's life and unique per slice.
pub fn bridge_mac(plan: &NetworkPlan) -> [u8; 6] {
    let [a, b, c, d] = plan.gateway.octets();
    [0x02, 0xfa, a, b, c, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_collapse() {
        assert!(Errors::new().into_result().is_ok());
        let mut one = Errors::new();
        one.record::<()>(Err(DataplaneError::other("a", "b")));
        assert!(matches!(
            one.into_result(),
            Err(DataplaneError::Other { .. })
        ));
        let mut two = Errors::new();
        two.record::<()>(Err(DataplaneError::other("a", "b")));
        two.record::<()>(Err(DataplaneError::other("c", "d")));
        let err = two.into_result().unwrap_err();
        assert!(matches!(&err, DataplaneError::Many(v) if v.len() == 2));
        assert_eq!(err.to_string(), "a: b; c: d");
    }
}
