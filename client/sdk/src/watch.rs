//! Types of the orchestrator calls: UpdateNetwork, filtered listing,
//! allocation outcome and WatchEvents events.

use std::collections::BTreeMap;
use std::time::SystemTime;

use fan_proto::v1 as pb;
use serde::Serialize;

use crate::convert;
use crate::error::Error;
use crate::types::{Allocation, Drift, NetworkSpec, NetworkState};

/// The outcome of [`crate::FanClient::allocate`]: the allocation and
/// whether this call created it (false: the owner already held it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allocated {
    /// The allocation.
    pub allocation: Allocation,
    /// True when this call created it.
    pub created: bool,
}

/// The spec fields [`crate::FanClient::update_network`] changes; `None`
/// leaves a field as it is (it is not put in the update mask).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkUpdate {
    /// Addresses .1 ..= .N kept for the host.
    pub host_reserve: Option<u32>,
    /// The MTU; `Some(0)` means the underlay MTU minus 20.
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the overlay.
    pub masquerade: Option<bool>,
    /// Anti-spoofing.
    pub anti_spoofing: Option<bool>,
    /// The network's labels (replace all).
    pub labels: Option<BTreeMap<String, String>>,
    /// Serve DHCPv4 on the bridge. Turning it off also clears the DHCP
    /// options below unless they are set here too.
    pub dhcp: Option<bool>,
    /// DNS servers handed to DHCP clients (replace all; only with DHCP on).
    pub dhcp_dns: Option<Vec<String>>,
    /// DHCP lease seconds, 10 ..= 604800; `Some(0)` means 3600 (only with DHCP on).
    pub dhcp_lease_seconds: Option<u32>,
}

impl NetworkUpdate {
    pub(crate) fn to_pb(&self, network_id: &str) -> pb::UpdateNetworkRequest {
        let mut paths = Vec::new();
        let mut spec = pb::NetworkSpec::default();
        if let Some(v) = self.host_reserve {
            paths.push("host_reserve".to_owned());
            spec.host_reserve = Some(v);
        }
        if let Some(v) = self.mtu {
            paths.push("mtu".to_owned());
            spec.mtu = v;
        }
        if let Some(v) = self.masquerade {
            paths.push("masquerade".to_owned());
            spec.masquerade = Some(v);
        }
        if let Some(v) = self.anti_spoofing {
            paths.push("anti_spoofing".to_owned());
            spec.anti_spoofing = Some(v);
        }
        if let Some(v) = &self.labels {
            paths.push("labels".to_owned());
            spec.labels = v.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        if let Some(v) = self.dhcp {
            paths.push("dhcp".to_owned());
            spec.dhcp = v;
        }
        if let Some(v) = &self.dhcp_dns {
            paths.push("dhcp_dns".to_owned());
            spec.dhcp_dns = v.clone();
        }
        if let Some(v) = self.dhcp_lease_seconds {
            paths.push("dhcp_lease_seconds".to_owned());
            spec.dhcp_lease_seconds = v;
        }
        pb::UpdateNetworkRequest {
            network_id: network_id.to_owned(),
            spec: Some(spec),
            update_mask: Some(prost_types::FieldMask { paths }),
        }
    }
}

/// Which allocations [`crate::FanClient::list_allocations_filtered_page`] lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    /// One network; empty means every network.
    pub network_id: String,
    /// Only this container id; empty means any.
    pub owner_container_id: String,
    /// Only allocations with all these labels: `"k=v,k2=v2"`; empty means any.
    pub label_selector: String,
}

/// What a [`WatchEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A network was created.
    NetworkCreated,
    /// A network's spec changed, or it moved to a new slice.
    NetworkUpdated,
    /// A network's state changed.
    NetworkStateChanged,
    /// A network was deleted.
    NetworkDeleted,
    /// An address was allocated.
    AllocationCreated,
    /// An allocation was released.
    AllocationReleased,
    /// An allocation was released by garbage collection.
    AllocationCollected,
    /// The kernel was found differing from the desired state.
    DriftDetected,
    /// The kernel matches again.
    DriftRepaired,
    /// A kind this SDK does not know (a newer agent).
    Unknown,
}

impl EventKind {
    /// Every known kind.
    pub const ALL: [EventKind; 9] = [
        EventKind::NetworkCreated,
        EventKind::NetworkUpdated,
        EventKind::NetworkStateChanged,
        EventKind::NetworkDeleted,
        EventKind::AllocationCreated,
        EventKind::AllocationReleased,
        EventKind::AllocationCollected,
        EventKind::DriftDetected,
        EventKind::DriftRepaired,
    ];

    /// The kebab-case name (`allocation-created`).
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::NetworkCreated => "network-created",
            EventKind::NetworkUpdated => "network-updated",
            EventKind::NetworkStateChanged => "network-state-changed",
            EventKind::NetworkDeleted => "network-deleted",
            EventKind::AllocationCreated => "allocation-created",
            EventKind::AllocationReleased => "allocation-released",
            EventKind::AllocationCollected => "allocation-collected",
            EventKind::DriftDetected => "drift-detected",
            EventKind::DriftRepaired => "drift-repaired",
            EventKind::Unknown => "unknown",
        }
    }

    pub(crate) fn to_pb(self) -> pb::EventKind {
        match self {
            EventKind::NetworkCreated => pb::EventKind::NetworkCreated,
            EventKind::NetworkUpdated => pb::EventKind::NetworkUpdated,
            EventKind::NetworkStateChanged => pb::EventKind::NetworkStateChanged,
            EventKind::NetworkDeleted => pb::EventKind::NetworkDeleted,
            EventKind::AllocationCreated => pb::EventKind::AllocationCreated,
            EventKind::AllocationReleased => pb::EventKind::AllocationReleased,
            EventKind::AllocationCollected => pb::EventKind::AllocationCollected,
            EventKind::DriftDetected => pb::EventKind::DriftDetected,
            EventKind::DriftRepaired => pb::EventKind::DriftRepaired,
            EventKind::Unknown => pb::EventKind::Unspecified,
        }
    }

    fn from_pb(v: i32) -> EventKind {
        EventKind::ALL
            .into_iter()
            .find(|k| k.to_pb() as i32 == v)
            .unwrap_or(EventKind::Unknown)
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event kind {s:?} (one of {})", names.join(", "))
            })
    }
}

/// Where a watch starts and what it receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Only this network's events; empty means every network.
    pub network_id: String,
    /// Only these kinds; empty means every kind.
    pub kinds: Vec<EventKind>,
    /// Events after this revision (a list's `revision`, or the last one
    /// received); `None`: from now on.
    pub start_revision: Option<u64>,
}

/// One state change received from [`crate::FanClient::watch_events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    /// The revision (increases with every change on the agent).
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// The network concerned.
    pub network_id: String,
    /// When it happened.
    #[serde(serialize_with = "crate::types::serialize_time")]
    pub time: Option<SystemTime>,
    /// The network's spec, for network events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<NetworkSpec>,
    /// The allocation, for allocation events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// The new state, for state changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<NetworkState>,
    /// Why (a state's reason, a move's cause, a drift summary).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The differences, for drift events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drifts: Vec<Drift>,
}

impl WatchEvent {
    pub(crate) fn from_pb(e: pb::Event) -> Result<WatchEvent, Error> {
        Ok(WatchEvent {
            revision: e.revision,
            kind: EventKind::from_pb(e.kind),
            network_id: e.network_id,
            time: convert::time_from_pb(e.time),
            spec: e.network.and_then(|n| n.spec).map(convert::spec_from_pb),
            allocation: e.allocation.map(convert::allocation_from_pb).transpose()?,
            state: (e.state != pb::NetworkState::Unspecified as i32)
                .then(|| convert::state_from_pb(e.state)),
            reason: e.reason,
            drifts: e.drifts.into_iter().map(convert::drift_from_pb).collect(),
        })
    }
}
