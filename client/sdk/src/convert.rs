//! Every conversion between the protobuf messages of `fan.agent.v1` and the
//! SDK's own types, in one place.
//!
//! Agent → SDK conversions are strict about what must parse (an allocation
//! without a valid address is a [`Error::BadResponse`]) and lenient about
//! what may be absent (an empty slice or gateway of a network that is not
//! programmed becomes `None`). Enum values newer than this SDK become the
//! `Unknown` variants instead of failing the call.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fan_proto::v1 as pb;

use crate::error::Error;
use crate::types::*;

// ---- enums -------------------------------------------------------------

pub(crate) fn backend_to_pb(b: Backend) -> pb::Backend {
    match b {
        Backend::Auto | Backend::Unknown => pb::Backend::Auto,
        Backend::KernelFan => pb::Backend::KernelFan,
        Backend::Ebpf => pb::Backend::Ebpf,
        Backend::Ipip => pb::Backend::Ipip,
    }
}

/// A backend where "unspecified" means "none" (status, auto_backend).
pub(crate) fn backend_opt_from_pb(v: i32) -> Option<Backend> {
    match pb::Backend::try_from(v) {
        Ok(pb::Backend::Unspecified) => None,
        Ok(pb::Backend::Auto) => Some(Backend::Auto),
        Ok(pb::Backend::KernelFan) => Some(Backend::KernelFan),
        Ok(pb::Backend::Ebpf) => Some(Backend::Ebpf),
        Ok(pb::Backend::Ipip) => Some(Backend::Ipip),
        Err(_) => Some(Backend::Unknown),
    }
}

/// A backend where "unspecified" means auto (spec, availability).
pub(crate) fn backend_from_pb(v: i32) -> Backend {
    backend_opt_from_pb(v).unwrap_or(Backend::Auto)
}

pub(crate) fn state_from_pb(v: i32) -> NetworkState {
    match pb::NetworkState::try_from(v) {
        Ok(pb::NetworkState::Ready) => NetworkState::Ready,
        Ok(pb::NetworkState::Degraded) => NetworkState::Degraded,
        Ok(pb::NetworkState::Failed) => NetworkState::Failed,
        Ok(pb::NetworkState::Unspecified) | Err(_) => NetworkState::Unknown,
    }
}

// ---- scalars -----------------------------------------------------------

fn addr(field: &str, s: &str) -> Result<Ipv4Addr, Error> {
    s.parse()
        .map_err(|_| Error::bad_response(format!("{field} {s:?} is not an IPv4 address")))
}

fn opt_addr(field: &str, s: &str) -> Result<Option<Ipv4Addr>, Error> {
    if s.is_empty() {
        Ok(None)
    } else {
        addr(field, s).map(Some)
    }
}

fn cidr(field: &str, s: &str) -> Result<Ipv4Cidr, Error> {
    s.parse()
        .map_err(|_| Error::bad_response(format!("{field} {s:?} is not an IPv4 CIDR")))
}

fn opt_cidr(field: &str, s: &str) -> Result<Option<Ipv4Cidr>, Error> {
    if s.is_empty() {
        Ok(None)
    } else {
        cidr(field, s).map(Some)
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn time_from_pb(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32))
}

// ---- messages: SDK -> proto -------------------------------------------

pub(crate) fn spec_to_pb(s: &NetworkSpec) -> pb::NetworkSpec {
    pb::NetworkSpec {
        overlay: s.overlay.clone(),
        underlay: s.underlay.clone(),
        host_reserve: s.host_reserve,
        bridge: s.bridge.clone().unwrap_or_default(),
        mtu: s.mtu.unwrap_or(0),
        backend: backend_to_pb(s.backend) as i32,
        masquerade: s.masquerade,
        anti_spoofing: s.anti_spoofing,
        allow_overlap: s.allow_overlap,
        dhcp: s.dhcp,
        dhcp_dns: s.dhcp_dns.clone(),
        dhcp_lease_seconds: s.dhcp_lease_seconds.unwrap_or(0),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn owner_to_pb(o: &Owner) -> pb::Owner {
    pb::Owner {
        container_id: o.container_id.clone(),
        interface: o.interface.clone(),
    }
}

pub(crate) fn selector_to_pb(s: &Selector) -> pb::AllocationSelector {
    use pb::allocation_selector::Selector as S;
    pb::AllocationSelector {
        selector: Some(match s {
            Selector::Owner(o) => S::Owner(owner_to_pb(o)),
            Selector::Address(a) => S::Address(a.to_string()),
        }),
    }
}

pub(crate) fn allocate_to_pb(
    network_id: &str,
    r: &AllocationRequest,
) -> pb::AllocateAddressRequest {
    pb::AllocateAddressRequest {
        network_id: network_id.to_string(),
        owner: Some(owner_to_pb(&r.owner)),
        address: r.address.map(|a| a.to_string()).unwrap_or_default(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn resolve_to_pb(address: Ipv4Addr, scope: &ResolveScope) -> pb::ResolveAddressRequest {
    let mut req = pb::ResolveAddressRequest {
        address: address.to_string(),
        ..Default::default()
    };
    match scope {
        ResolveScope::AllNetworks => {}
        ResolveScope::Network(id) => req.network_id = id.clone(),
        ResolveScope::AdHoc { overlay, underlay } => {
            req.overlay = overlay.to_string();
            req.underlay = underlay.to_string();
        }
    }
    req
}

// ---- messages: proto -> SDK -------------------------------------------

pub(crate) fn spec_from_pb(s: pb::NetworkSpec) -> NetworkSpec {
    NetworkSpec {
        overlay: s.overlay,
        underlay: s.underlay,
        host_reserve: s.host_reserve,
        bridge: non_empty(s.bridge),
        mtu: (s.mtu != 0).then_some(s.mtu),
        backend: backend_from_pb(s.backend),
        masquerade: s.masquerade,
        anti_spoofing: s.anti_spoofing,
        allow_overlap: s.allow_overlap,
        dhcp: s.dhcp,
        dhcp_dns: s.dhcp_dns,
        dhcp_lease_seconds: (s.dhcp_lease_seconds != 0).then_some(s.dhcp_lease_seconds),
        labels: s.labels.into_iter().collect(),
    }
}

pub(crate) fn counters_from_pb(c: pb::DataplaneCounters) -> DataplaneCounters {
    DataplaneCounters {
        encapsulated: c.encapsulated,
        decapsulated: c.decapsulated,
        dropped_spoofed: c.dropped_spoofed,
        dropped_fragment: c.dropped_fragment,
        dropped_other: c.dropped_other,
        dropped_spoofed_egress: c.dropped_spoofed_egress,
    }
}

pub(crate) fn status_from_pb(s: pb::NetworkStatus) -> Result<NetworkStatus, Error> {
    Ok(NetworkStatus {
        underlay_address: opt_addr("status.underlay_address", &s.underlay_address)?,
        underlay_interface: s.underlay_interface,
        slice: opt_cidr("status.slice", &s.slice)?,
        gateway: opt_addr("status.gateway", &s.gateway)?,
        bridge: s.bridge,
        mtu: s.mtu,
        backend: backend_opt_from_pb(s.backend),
        state: state_from_pb(s.state),
        reason: s.reason,
        allocated: s.allocated,
        capacity: s.capacity,
        counters: s.counters.map(counters_from_pb),
    })
}

pub(crate) fn network_from_pb(n: pb::Network) -> Result<Network, Error> {
    let id = if n.network_id.is_empty() {
        n.name
            .strip_prefix("networks/")
            .unwrap_or_default()
            .to_string()
    } else {
        n.network_id
    };
    if id.is_empty() {
        return Err(Error::bad_response("network without an id"));
    }
    let spec = n
        .spec
        .ok_or_else(|| Error::bad_response(format!("network {id:?} without spec")))?;
    Ok(Network {
        name: if n.name.is_empty() {
            format!("networks/{id}")
        } else {
            n.name
        },
        spec: spec_from_pb(spec),
        status: status_from_pb(n.status.unwrap_or_default())?,
        create_time: time_from_pb(n.create_time),
        id,
    })
}

pub(crate) fn required_network(n: Option<pb::Network>) -> Result<Network, Error> {
    network_from_pb(n.ok_or_else(|| Error::bad_response("answer without network"))?)
}

pub(crate) fn owner_from_pb(o: pb::Owner) -> Owner {
    Owner {
        container_id: o.container_id,
        interface: if o.interface.is_empty() {
            DEFAULT_INTERFACE.to_string()
        } else {
            o.interface
        },
    }
}

pub(crate) fn allocation_from_pb(a: pb::Allocation) -> Result<Allocation, Error> {
    let prefix_length = u8::try_from(a.prefix_length)
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| {
            Error::bad_response(format!("allocation prefix length {}", a.prefix_length))
        })?;
    Ok(Allocation {
        address: addr("allocation.address", &a.address)?,
        gateway: addr("allocation.gateway", &a.gateway)?,
        owner: owner_from_pb(
            a.owner
                .ok_or_else(|| Error::bad_response("allocation without owner"))?,
        ),
        name: a.name,
        network_id: a.network_id,
        prefix_length,
        mtu: a.mtu,
        labels: a.labels.into_iter().collect(),
        create_time: time_from_pb(a.create_time),
    })
}

pub(crate) fn required_allocation(a: Option<pb::Allocation>) -> Result<Allocation, Error> {
    allocation_from_pb(a.ok_or_else(|| Error::bad_response("answer without allocation"))?)
}

pub(crate) fn drift_from_pb(d: pb::Drift) -> Drift {
    Drift {
        object: d.object,
        expected: d.expected,
        observed: d.observed,
    }
}

pub(crate) fn agent_info_from_pb(r: pb::GetAgentInfoResponse) -> Result<AgentInfo, Error> {
    Ok(AgentInfo {
        version: r.version,
        hostname: r.hostname,
        kernel_release: r.kernel_release,
        addresses: r
            .addresses
            .into_iter()
            .map(|a| {
                Ok(HostAddress {
                    address: cidr("host address", &a.address)?,
                    interface: a.interface,
                    mtu: a.mtu,
                })
            })
            .collect::<Result<_, Error>>()?,
        backends: r
            .backends
            .into_iter()
            .map(|b| BackendAvailability {
                backend: backend_from_pb(b.backend),
                available: b.available,
                reason: b.reason,
            })
            .collect(),
        auto_backend: backend_opt_from_pb(r.auto_backend),
    })
}

pub(crate) fn resolution_from_pb(r: pb::Resolution) -> Result<Resolution, Error> {
    Ok(Resolution {
        network_id: non_empty(r.network_id),
        is_overlay: r.is_overlay,
        underlay_host: addr("resolution.underlay_host", &r.underlay_host)?,
        slice: cidr("resolution.slice", &r.slice)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_network() -> pb::Network {
        pb::Network {
            name: "networks/fan-250".into(),
            network_id: "fan-250".into(),
            spec: Some(pb::NetworkSpec {
                overlay: "250.0.0.0/8".into(),
                underlay: "172.30.0.28/16".into(),
                host_reserve: Some(1),
                bridge: "fan-250".into(),
                mtu: 1480,
                backend: pb::Backend::Auto as i32,
                masquerade: Some(true),
                anti_spoofing: Some(false),
                allow_overlap: true,
                labels: Default::default(),
                ..Default::default()
            }),
            status: Some(pb::NetworkStatus {
                underlay_address: "172.30.0.28".into(),
                underlay_interface: "eth0".into(),
                slice: "250.0.28.0/24".into(),
                gateway: "250.0.28.1".into(),
                bridge: "fan-250".into(),
                mtu: 1480,
                backend: pb::Backend::Ebpf as i32,
                state: pb::NetworkState::Ready as i32,
                reason: String::new(),
                allocated: 3,
                capacity: 252,
                counters: Some(pb::DataplaneCounters {
                    encapsulated: 10,
                    decapsulated: 9,
                    dropped_spoofed: 1,
                    dropped_fragment: 0,
                    dropped_other: 2,
                    dropped_spoofed_egress: 3,
                }),
                ..Default::default()
            }),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_735_689_600,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn network_from_proto() {
        let n = network_from_pb(pb_network()).unwrap();
        assert_eq!(n.id, "fan-250");
        assert_eq!(n.name, "networks/fan-250");
        assert_eq!(n.spec.overlay, "250.0.0.0/8");
        assert_eq!(n.spec.host_reserve, Some(1));
        assert_eq!(n.spec.bridge.as_deref(), Some("fan-250"));
        assert_eq!(n.spec.mtu, Some(1480));
        assert_eq!(n.spec.backend, Backend::Auto);
        assert_eq!(n.spec.anti_spoofing, Some(false));
        assert_eq!(
            n.status.underlay_address,
            Some(Ipv4Addr::new(172, 30, 0, 28))
        );
        assert_eq!(n.status.slice.unwrap().to_string(), "250.0.28.0/24");
        assert_eq!(n.status.gateway, Some(Ipv4Addr::new(250, 0, 28, 1)));
        assert_eq!(n.status.backend, Some(Backend::Ebpf));
        assert_eq!(n.status.state, NetworkState::Ready);
        let counters = n.status.counters.unwrap();
        assert_eq!(counters.dropped_other, 2);
        assert_eq!(counters.dropped_spoofed_egress, 3);
        assert_eq!(
            n.create_time.map(format_rfc3339).as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn unprogrammed_network_has_empty_status_fields_as_none() {
        let mut p = pb_network();
        p.status = Some(pb::NetworkStatus {
            state: pb::NetworkState::Failed as i32,
            reason: "no local address in 172.30.0.0/16".into(),
            ..Default::default()
        });
        p.create_time = None;
        let n = network_from_pb(p).unwrap();
        assert_eq!(n.status.underlay_address, None);
        assert_eq!(n.status.slice, None);
        assert_eq!(n.status.gateway, None);
        assert_eq!(n.status.backend, None);
        assert_eq!(n.status.state, NetworkState::Failed);
        assert_eq!(n.create_time, None);
    }

    #[test]
    fn malformed_network_is_bad_response() {
        let mut p = pb_network();
        p.spec = None;
        assert_eq!(network_from_pb(p).unwrap_err().reason(), "BAD_RESPONSE");
        let mut p = pb_network();
        p.status.as_mut().unwrap().gateway = "not-an-ip".into();
        assert_eq!(network_from_pb(p).unwrap_err().reason(), "BAD_RESPONSE");
        // id falls back to the resource name
        let mut p = pb_network();
        p.network_id.clear();
        assert_eq!(network_from_pb(p).unwrap().id, "fan-250");
    }

    #[test]
    fn unknown_enum_values_do_not_fail() {
        let mut p = pb_network();
        p.spec.as_mut().unwrap().backend = 99;
        p.status.as_mut().unwrap().backend = 99;
        p.status.as_mut().unwrap().state = 42;
        let n = network_from_pb(p).unwrap();
        assert_eq!(n.spec.backend, Backend::Unknown);
        assert_eq!(n.status.backend, Some(Backend::Unknown));
        assert_eq!(n.status.state, NetworkState::Unknown);
        assert_eq!(backend_from_pb(0), Backend::Auto);
    }

    #[test]
    fn spec_round_trip() {
        let spec = NetworkSpec {
            overlay: "250".into(),
            underlay: "eth0/16".into(),
            host_reserve: Some(4),
            bridge: Some("fanbr".into()),
            mtu: Some(1400),
            backend: Backend::KernelFan,
            masquerade: Some(false),
            anti_spoofing: None,
            allow_overlap: true,
            dhcp: true,
            dhcp_dns: vec!["250.0.28.1".into()],
            dhcp_lease_seconds: Some(60),
            labels: [("team".to_string(), "blue".to_string())].into(),
        };
        let p = spec_to_pb(&spec);
        assert_eq!(p.backend, pb::Backend::KernelFan as i32);
        assert_eq!(p.bridge, "fanbr");
        assert_eq!(p.anti_spoofing, None);
        assert_eq!(spec_from_pb(p), spec);
        let defaults = spec_to_pb(&NetworkSpec::new("250.0.0.0/8", "10.0.0.0/16"));
        assert_eq!(defaults.bridge, "");
        assert_eq!(defaults.mtu, 0);
        assert_eq!(defaults.host_reserve, None);
        assert_eq!(defaults.backend, pb::Backend::Auto as i32);
    }

    #[test]
    fn allocation_conversions() {
        let req = AllocationRequest::new(Owner::new("c1"))
            .address(Ipv4Addr::new(250, 0, 28, 7))
            .label("app", "web");
        let p = allocate_to_pb("fan-250", &req);
        assert_eq!(p.network_id, "fan-250");
        assert_eq!(p.owner.as_ref().unwrap().interface, "eth0");
        assert_eq!(p.address, "250.0.28.7");
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));

        let a = allocation_from_pb(pb::Allocation {
            name: "networks/fan-250/allocations/250.0.28.7".into(),
            network_id: "fan-250".into(),
            owner: Some(pb::Owner {
                container_id: "c1".into(),
                interface: String::new(),
            }),
            address: "250.0.28.7".into(),
            prefix_length: 24,
            gateway: "250.0.28.1".into(),
            mtu: 1480,
            labels: p.labels.clone(),
            create_time: None,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.owner, Owner::new("c1"));
        assert_eq!(a.cidr().to_string(), "250.0.28.7/24");
        assert_eq!(a.labels.get("app").map(String::as_str), Some("web"));

        let bad = pb::Allocation {
            owner: Some(pb::Owner::default()),
            address: "250.0.28.7".into(),
            gateway: "250.0.28.1".into(),
            prefix_length: 40,
            ..Default::default()
        };
        assert!(allocation_from_pb(bad).is_err());
    }

    #[test]
    fn selectors_and_resolve_requests() {
        use pb::allocation_selector::Selector as S;
        let s = selector_to_pb(&Selector::Address(Ipv4Addr::new(250, 0, 28, 2)));
        assert_eq!(s.selector, Some(S::Address("250.0.28.2".into())));
        let s = selector_to_pb(&Owner::with_interface("c", "net1").into());
        assert_eq!(
            s.selector,
            Some(S::Owner(pb::Owner {
                container_id: "c".into(),
                interface: "net1".into()
            }))
        );
        let a = Ipv4Addr::new(250, 0, 28, 2);
        let r = resolve_to_pb(a, &ResolveScope::AllNetworks);
        assert_eq!((r.network_id.as_str(), r.overlay.as_str()), ("", ""));
        let r = resolve_to_pb(a, &ResolveScope::Network("fan-250".into()));
        assert_eq!(r.network_id, "fan-250");
        let r = resolve_to_pb(
            a,
            &ResolveScope::AdHoc {
                overlay: "250.0.0.0/8".parse().unwrap(),
                underlay: "172.30.0.0/16".parse().unwrap(),
            },
        );
        assert_eq!(
            (r.overlay.as_str(), r.underlay.as_str()),
            ("250.0.0.0/8", "172.30.0.0/16")
        );
    }

    #[test]
    fn agent_info_and_resolution() {
        let info = agent_info_from_pb(pb::GetAgentInfoResponse {
            version: "0.1.0".into(),
            hostname: "h1".into(),
            kernel_release: "6.8.0".into(),
            addresses: vec![pb::HostAddress {
                interface: "eth0".into(),
                address: "172.30.0.28/16".into(),
                mtu: 1500,
            }],
            backends: vec![pb::BackendAvailability {
                backend: pb::Backend::KernelFan as i32,
                available: false,
                reason: "no fan patch".into(),
            }],
            auto_backend: pb::Backend::Ebpf as i32,
        })
        .unwrap();
        assert_eq!(info.addresses[0].address.to_string(), "172.30.0.28/16");
        assert_eq!(info.backends[0].backend, Backend::KernelFan);
        assert_eq!(info.auto_backend, Some(Backend::Ebpf));

        let r = resolution_from_pb(pb::Resolution {
            network_id: String::new(),
            is_overlay: true,
            underlay_host: "172.30.0.28".into(),
            slice: "250.0.28.0/24".into(),
        })
        .unwrap();
        assert_eq!(r.network_id, None);
        assert_eq!(r.underlay_host, Ipv4Addr::new(172, 30, 0, 28));
    }
}
