//! Conversions between protobuf messages and domain types. Only shapes change
//! here; the rules live in `validate` and `agent`.

use std::time::{Duration, UNIX_EPOCH};

use fan_dataplane::{Availability, BackendKind, Counters, Drift, HostAddress};
use fan_proto::v1 as pb;

use crate::agent::{AgentInfo, AllocationView, NetworkHealth, NetworkView, Resolution};
use crate::error::{AgentError, Result};
use crate::model::{BackendChoice, Owner, Selector};
use crate::validate::{self, SpecInput};

/// Protobuf timestamp from epoch milliseconds.
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// The proto enum of a concrete backend.
pub fn backend(kind: BackendKind) -> pb::Backend {
    match kind {
        BackendKind::KernelFan => pb::Backend::KernelFan,
        BackendKind::Ebpf => pb::Backend::Ebpf,
        BackendKind::Ipip => pb::Backend::Ipip,
    }
}

fn backend_choice_to_pb(choice: BackendChoice) -> pb::Backend {
    match choice {
        BackendChoice::Auto => pb::Backend::Auto,
        BackendChoice::KernelFan => pb::Backend::KernelFan,
        BackendChoice::Ebpf => pb::Backend::Ebpf,
        BackendChoice::Ipip => pb::Backend::Ipip,
    }
}

/// Decodes a spec; unknown enum values are refused by field name.
pub fn spec_input(spec: Option<pb::NetworkSpec>) -> Result<SpecInput> {
    let spec = spec.ok_or_else(|| AgentError::invalid("spec", "is required"))?;
    let backend = match pb::Backend::try_from(spec.backend) {
        Ok(pb::Backend::Unspecified) => None,
        Ok(pb::Backend::Auto) => Some(BackendChoice::Auto),
        Ok(pb::Backend::KernelFan) => Some(BackendChoice::KernelFan),
        Ok(pb::Backend::Ebpf) => Some(BackendChoice::Ebpf),
        Ok(pb::Backend::Ipip) => Some(BackendChoice::Ipip),
        Err(_) => {
            return Err(AgentError::invalid(
                "spec.backend",
                format!("unknown backend value {}", spec.backend),
            ))
        }
    };
    Ok(SpecInput {
        overlay: spec.overlay,
        underlay: spec.underlay,
        host_reserve: spec.host_reserve,
        bridge: spec.bridge,
        mtu: spec.mtu,
        backend,
        masquerade: spec.masquerade,
        anti_spoofing: spec.anti_spoofing,
        allow_overlap: spec.allow_overlap,
        dhcp: spec.dhcp,
        dhcp_dns: spec.dhcp_dns,
        dhcp_lease_seconds: spec.dhcp_lease_seconds,
        labels: spec.labels.into_iter().collect(),
    })
}

/// Decodes and validates an owner.
pub fn owner(field: &str, owner: Option<pb::Owner>) -> Result<Owner> {
    let owner = owner.ok_or_else(|| AgentError::invalid(field, "is required"))?;
    validate::owner(field, &owner.container_id, &owner.interface)
}

/// Decodes a selector (owner or address).
pub fn selector(selector: Option<pb::AllocationSelector>) -> Result<Selector> {
    match selector.and_then(|s| s.selector) {
        Some(pb::allocation_selector::Selector::Owner(o)) => {
            Ok(Selector::Owner(owner("selector.owner", Some(o))?))
        }
        Some(pb::allocation_selector::Selector::Address(a)) => Ok(Selector::Address(
            validate::address("selector.address", &a)?,
        )),
        None => Err(AgentError::invalid(
            "selector",
            "set exactly one of owner or address",
        )),
    }
}

fn owner_to_pb(owner: &Owner) -> pb::Owner {
    pb::Owner {
        container_id: owner.container_id.clone(),
        interface: owner.interface.clone(),
    }
}

/// A network view as the API returns it.
pub fn network(view: &NetworkView) -> pb::Network {
    let r = &view.record;
    let s = &view.status;
    pb::Network {
        name: format!("networks/{}", r.id),
        network_id: r.id.clone(),
        spec: Some(pb::NetworkSpec {
            overlay: r.spec.overlay.to_string(),
            underlay: r.spec.underlay.clone(),
            host_reserve: Some(r.spec.host_reserve),
            bridge: r.spec.bridge.clone(),
            mtu: r.spec.mtu,
            backend: backend_choice_to_pb(r.spec.backend) as i32,
            masquerade: Some(r.spec.masquerade),
            anti_spoofing: Some(r.spec.anti_spoofing),
            allow_overlap: r.spec.allow_overlap,
            dhcp: r.spec.dhcp,
            dhcp_dns: r.spec.dhcp_dns.iter().map(|a| a.to_string()).collect(),
            dhcp_lease_seconds: r.spec.dhcp_lease_seconds,
            labels: r
                .spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }),
        status: Some(pb::NetworkStatus {
            underlay_address: r.underlay_address.to_string(),
            underlay_interface: r.underlay_interface.clone(),
            slice: r.slice.to_string(),
            gateway: r.gateway().to_string(),
            bridge: r.spec.bridge.clone(),
            mtu: r.effective_mtu(),
            backend: backend(r.backend) as i32,
            state: match s.state {
                NetworkHealth::Ready => pb::NetworkState::Ready,
                NetworkHealth::Degraded => pb::NetworkState::Degraded,
                NetworkHealth::Failed => pb::NetworkState::Failed,
            } as i32,
            reason: s.reason.clone(),
            allocated: s.allocated,
            capacity: s.capacity,
            counters: s.counters.map(counters),
            stale_allocations: s.stale_allocations,
            former_slices: r.former_slices.iter().map(ToString::to_string).collect(),
        }),
        create_time: Some(timestamp(r.create_time_ms)),
    }
}

fn counters(c: Counters) -> pb::DataplaneCounters {
    pb::DataplaneCounters {
        encapsulated: c.encapsulated,
        decapsulated: c.decapsulated,
        dropped_spoofed: c.dropped_spoofed,
        dropped_fragment: c.dropped_fragment,
        dropped_other: c.dropped_other,
        dropped_spoofed_egress: c.dropped_spoofed_egress,
    }
}

/// An allocation as the API returns it.
pub fn allocation(view: &AllocationView) -> pb::Allocation {
    let r = &view.record;
    pb::Allocation {
        name: format!("networks/{}/allocations/{}", view.network_id, r.address),
        network_id: view.network_id.clone(),
        owner: Some(owner_to_pb(&r.owner)),
        address: r.address.to_string(),
        prefix_length: u32::from(view.prefix_len),
        gateway: view.gateway.to_string(),
        mtu: view.mtu,
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_time: Some(timestamp(r.create_time_ms)),
        stale: view.stale_slice.is_some(),
        stale_slice: view.stale_slice.map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// Agent info as the API returns it.
pub fn agent_info(info: &AgentInfo) -> pb::GetAgentInfoResponse {
    pb::GetAgentInfoResponse {
        version: info.version.clone(),
        hostname: info.hostname.clone(),
        kernel_release: info.kernel_release.clone(),
        addresses: info.addresses.iter().map(host_address).collect(),
        backends: info.backends.iter().map(availability).collect(),
        auto_backend: info
            .auto_backend
            .map(backend)
            .unwrap_or(pb::Backend::Unspecified) as i32,
    }
}

fn host_address(a: &HostAddress) -> pb::HostAddress {
    pb::HostAddress {
        interface: a.interface.clone(),
        address: a.address.to_string(),
        mtu: a.mtu,
    }
}

fn availability(a: &Availability) -> pb::BackendAvailability {
    pb::BackendAvailability {
        backend: backend(a.backend) as i32,
        available: a.available,
        reason: a.reason.clone(),
    }
}

/// A drift as the API returns it.
pub fn drift(d: &Drift) -> pb::Drift {
    pb::Drift {
        object: d.object.clone(),
        expected: d.expected.clone(),
        observed: d.observed.clone(),
    }
}

/// A resolution as the API returns it.
pub fn resolution(r: &Resolution) -> pb::Resolution {
    pb::Resolution {
        network_id: r.network_id.clone(),
        is_overlay: r.is_overlay,
        underlay_host: r.underlay_host.to_string(),
        slice: r.slice.to_string(),
    }
}
