//! The real gRPC API over a unix socket, served by `server::run` on the
//! fake data plane: error reasons and request validation, without root.

use std::collections::BTreeSet;
use std::sync::Arc;

use fan_dataplane::fake::DEFAULT_MTU;
use fan_dataplane::{BackendKind, DataplaneError};
use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_client::FanAgentServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{FakeDataplane, Op, TestAgent};
use crate::api::status::{code_of, ERROR_DOMAIN};
use crate::error::Reason;

type Client = FanAgentServiceClient<Channel>;

fn spec(overlay: &str) -> pb::NetworkSpec {
    pb::NetworkSpec {
        overlay: overlay.into(),
        underlay: "172.30.0.0/16".into(),
        ..Default::default()
    }
}

fn create(id: &str, spec: pb::NetworkSpec) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        network_id: id.into(),
        spec: Some(spec),
    }
}

fn owner(container: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: container.into(),
        interface: "eth0".into(),
    })
}

fn allocate(network: &str, container: &str) -> pb::AllocateAddressRequest {
    pb::AllocateAddressRequest {
        network_id: network.into(),
        owner: owner(container),
        ..Default::default()
    }
}

fn by_owner(container: &str) -> Option<pb::AllocationSelector> {
    Some(pb::AllocationSelector {
        selector: owner(container).map(pb::allocation_selector::Selector::Owner),
    })
}

/// The reason a status carries, after checking its domain.
fn reason_of(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, ERROR_DOMAIN);
    info.reason
}

/// The fields a BadRequest names.
fn fields_of(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A request that cannot succeed: its status.
macro_rules! refused {
    ($call:expr) => {
        match $call.await {
            Ok(response) => panic!("{} succeeded: {response:?}", stringify!($call)),
            Err(status) => status,
        }
    };
}

/// Everything a client can read of the agent's state, to show a refused
/// request changed nothing.
async fn everything(client: &mut Client) -> (Vec<pb::Network>, Vec<pb::Allocation>) {
    let networks = client
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .networks;
    let allocations = client
        .list_allocations(pb::ListAllocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .allocations;
    (networks, allocations)
}

/// Reasons no request can produce on a healthy agent over the fake, and
/// why. `api::status`'s table test maps each of them.
const NOT_FROM_A_REQUEST: [(Reason, &str); 7] = [
    (Reason::AddressTaken, "deprecated, never sent"),
    (Reason::TooManyNetworks, "needs 65535 networks on one host"),
    (Reason::StateStoreFailed, "needs a failing disk"),
    (Reason::StateUnwritable, "needs a disk that takes no writes"),
    (
        Reason::StateCorrupt,
        "refuses the start-up (state tests), not a request",
    ),
    (
        Reason::ShuttingDown,
        "only between the stop signal and the last stream",
    ),
    (
        Reason::WatcherTooSlow,
        "needs a watcher over 1024 events behind",
    ),
];

#[tokio::test]
async fn every_reason_a_request_can_cause_leaves_with_its_code() {
    let agent = TestAgent::start().await.unwrap();
    let fake = agent.dataplane().clone();
    let mut c = agent.client().await.unwrap();
    let mut seen: Vec<(Reason, Status)> = Vec::new();

    c.create_network(create("fan", spec("250.0.0.0/8")))
        .await
        .unwrap();
    c.allocate_address(allocate("fan", "c1")).await.unwrap();

    seen.push((
        Reason::FieldInvalid,
        refused!(c.get_network(pb::GetNetworkRequest {
            network_id: "Not An Id".into()
        })),
    ));
    // The bytes of another message: field 1 as a varint, not a string.
    seen.push((Reason::MalformedRequest, {
        let mut grpc = tonic::client::Grpc::new(agent.channel().await.unwrap());
        grpc.ready().await.unwrap();
        let codec =
            tonic_prost::ProstCodec::<pb::ListNetworksRequest, pb::GetNetworkResponse>::default();
        grpc.unary(
            tonic::Request::new(pb::ListNetworksRequest {
                page_size: 7,
                ..Default::default()
            }),
            "/fan.agent.v1.FanAgentService/GetNetwork".parse().unwrap(),
            codec,
        )
        .await
        .unwrap_err()
    }));
    seen.push((
        Reason::NetworkNotFound,
        refused!(c.get_network(pb::GetNetworkRequest {
            network_id: "nope".into()
        })),
    ));
    seen.push((
        Reason::AllocationNotFound,
        refused!(c.release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            selector: by_owner("nobody"),
            allow_missing: false,
        })),
    ));
    seen.push((
        Reason::NetworkExists,
        refused!(c.create_network(create(
            "fan",
            pb::NetworkSpec {
                mtu: 1400,
                ..spec("250.0.0.0/8")
            }
        ))),
    ));
    seen.push((
        Reason::NetworkInUse,
        refused!(c.delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            ..Default::default()
        })),
    ));
    seen.push((
        Reason::BridgeInUse,
        refused!(c.create_network(create(
            "other",
            pb::NetworkSpec {
                bridge: "fan-250".into(),
                ..spec("251.0.0.0/8")
            }
        ))),
    ));
    seen.push((
        Reason::OverlayInUse,
        refused!(c.create_network(create(
            "other",
            pb::NetworkSpec {
                bridge: "other".into(),
                ..spec("250.0.0.0/8")
            }
        ))),
    ));
    seen.push((
        Reason::UnderlayNotFound,
        refused!(c.create_network(create(
            "other",
            pb::NetworkSpec {
                underlay: "10.9.0.0/16".into(),
                ..spec("251.0.0.0/8")
            }
        ))),
    ));
    fake.fail_next(
        Op::Apply,
        "other",
        DataplaneError::other("load the eBPF program", "EPERM"),
    );
    seen.push((
        Reason::NetworkProgrammingFailed,
        refused!(c.create_network(create("other", spec("251.0.0.0/8")))),
    ));
    fake.set_host_prefixes(vec![fan_core::host_change::HostPrefix {
        kind: fan_core::host_change::PrefixKind::Route,
        prefix: "252.1.0.0/16".parse().unwrap(),
        interface: "eth1".into(),
    }]);
    seen.push((
        Reason::OverlayOverlapsHost,
        refused!(c.create_network(create("other", spec("252.0.0.0/8")))),
    ));
    // One assignable address: .254 of the slice.
    c.create_network(create(
        "tiny",
        pb::NetworkSpec {
            host_reserve: Some(253),
            ..spec("253.0.0.0/8")
        },
    ))
    .await
    .unwrap();
    c.allocate_address(allocate("tiny", "c1")).await.unwrap();
    seen.push((
        Reason::SliceExhausted,
        refused!(c.allocate_address(allocate("tiny", "c2"))),
    ));
    let held = c
        .get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: by_owner("c1"),
        })
        .await
        .unwrap()
        .into_inner()
        .allocation
        .unwrap()
        .address;
    seen.push((
        Reason::AddressHeldByOtherOwner,
        refused!(c.allocate_address(pb::AllocateAddressRequest {
            address: held.clone(),
            ..allocate("fan", "c2")
        })),
    ));
    seen.push((
        Reason::OwnerHasOtherAddress,
        refused!(c.allocate_address(pb::AllocateAddressRequest {
            address: "250.0.28.200".into(),
            ..allocate("fan", "c1")
        })),
    ));
    seen.push((
        Reason::OwnerLabelsDiffer,
        refused!(c.allocate_address(pb::AllocateAddressRequest {
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ..allocate("fan", "c1")
        })),
    ));
    seen.push((
        Reason::HostReserveCoversAllocation,
        refused!(c.update_network(pb::UpdateNetworkRequest {
            network_id: "fan".into(),
            spec: Some(pb::NetworkSpec {
                host_reserve: Some(250),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["host_reserve".into()],
            }),
        })),
    ));
    fake.fail_next(
        Op::Observe,
        "fan",
        DataplaneError::other("dump links", "ENOBUFS"),
    );
    seen.push((
        Reason::DataplaneFailed,
        refused!(c.check_network(pb::CheckNetworkRequest {
            network_id: "fan".into()
        })),
    ));

    // The host loses the underlay address: the address watch takes the
    // slice away from the network.
    fake.set_addresses(Vec::new());
    loop {
        let network = c
            .get_network(pb::GetNetworkRequest {
                network_id: "fan".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .network
            .unwrap();
        if network
            .status
            .is_some_and(|s| s.state == pb::NetworkState::Failed as i32)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    seen.push((
        Reason::SliceNotOwned,
        refused!(c.allocate_address(allocate("fan", "c3"))),
    ));

    // A restarted agent's history starts after the revision it stopped at.
    drop(c);
    let dir = agent.stop().await.unwrap();
    let agent = TestAgent::builder()
        .dataplane(fake.clone())
        .directory(dir)
        .start()
        .await
        .unwrap();
    let mut c = agent.client().await.unwrap();
    seen.push((Reason::RevisionCompacted, {
        let watch = c.watch_events(pb::WatchEventsRequest {
            start_revision: Some(0),
            ..Default::default()
        });
        refused!(watch)
    }));

    // Backends: asked by name, or none for auto.
    let none = Arc::new(FakeDataplane::new());
    for backend in BackendKind::ALL {
        none.set_availability(backend, false, "not in this kernel");
    }
    let bare = TestAgent::builder().dataplane(none).start().await.unwrap();
    let mut b = bare.client().await.unwrap();
    seen.push((
        Reason::BackendUnavailable,
        refused!(b.create_network(create(
            "fan",
            pb::NetworkSpec {
                backend: pb::Backend::Ebpf as i32,
                ..spec("250.0.0.0/8")
            }
        ))),
    ));
    seen.push((
        Reason::NoBackendAvailable,
        refused!(b.create_network(create("fan", spec("250.0.0.0/8")))),
    ));

    let mut covered = BTreeSet::new();
    for (reason, status) in &seen {
        assert_eq!(reason_of(status), reason.as_str(), "{status:?}");
        assert_eq!(status.code(), code_of(*reason), "{reason}: {status:?}");
        assert!(covered.insert(*reason), "{reason} listed twice");
    }
    // The codes as the API promises them, spelled out.
    let code = |r: Reason| seen.iter().find(|(s, _)| *s == r).unwrap().1.code();
    assert_eq!(code(Reason::FieldInvalid), Code::InvalidArgument);
    assert_eq!(code(Reason::MalformedRequest), Code::InvalidArgument);
    assert_eq!(code(Reason::NetworkNotFound), Code::NotFound);
    assert_eq!(code(Reason::NetworkExists), Code::AlreadyExists);
    assert_eq!(code(Reason::SliceExhausted), Code::ResourceExhausted);
    assert_eq!(code(Reason::DataplaneFailed), Code::Internal);
    assert_eq!(code(Reason::RevisionCompacted), Code::OutOfRange);
    assert_eq!(code(Reason::SliceNotOwned), Code::FailedPrecondition);
    for (reason, why) in NOT_FROM_A_REQUEST {
        assert!(covered.insert(reason), "{reason} ({why}) was reached");
    }
    assert_eq!(
        covered,
        Reason::ALL.into_iter().collect::<BTreeSet<_>>(),
        "every reason is reached through the API or said why not"
    );
}

/// One refused request: what it is and the fields its BadRequest must name.
struct Bad {
    what: &'static str,
    fields: &'static [&'static str],
    status: Status,
}

#[tokio::test]
async fn every_field_rule_is_invalid_argument_naming_the_field_and_changes_nothing() {
    let agent = TestAgent::start().await.unwrap();
    let mut c = agent.client().await.unwrap();
    c.create_network(create("fan", spec("250.0.0.0/8")))
        .await
        .unwrap();
    c.allocate_address(allocate("fan", "c1")).await.unwrap();
    let before = everything(&mut c).await;
    agent.dataplane().clear_calls();

    let network_spec = |f: fn(&mut pb::NetworkSpec)| {
        let mut s = spec("251.0.0.0/8");
        f(&mut s);
        create("new", s)
    };
    let mask = |paths: &[&str], s: pb::NetworkSpec| pb::UpdateNetworkRequest {
        network_id: "fan".into(),
        spec: Some(s),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    };
    let mut bad = Vec::new();
    macro_rules! case {
        ($what:expr, $fields:expr, $call:expr) => {
            bad.push(Bad {
                what: $what,
                fields: &$fields,
                status: refused!($call),
            })
        };
    }

    // CreateNetwork
    case!(
        "empty id",
        ["network_id"],
        c.create_network(create("", spec("251.0.0.0/8")))
    );
    case!(
        "upper-case id",
        ["network_id"],
        c.create_network(create("Fan", spec("251.0.0.0/8")))
    );
    case!(
        "id of 64 characters",
        ["network_id"],
        c.create_network(create(&"a".repeat(64), spec("251.0.0.0/8")))
    );
    case!(
        "no spec",
        ["spec"],
        c.create_network(pb::CreateNetworkRequest {
            network_id: "new".into(),
            spec: None
        })
    );
    case!(
        "no overlay",
        ["spec.overlay"],
        c.create_network(network_spec(|s| s.overlay.clear()))
    );
    case!(
        "overlay not a CIDR",
        ["spec.overlay"],
        c.create_network(network_spec(|s| s.overlay = "250.0.0.0/99".into()))
    );
    case!(
        "no underlay",
        ["spec.underlay"],
        c.create_network(network_spec(|s| s.underlay.clear()))
    );
    case!(
        "underlay not a CIDR",
        ["spec.underlay"],
        c.create_network(network_spec(|s| s.underlay = "eth0/x".into()))
    );
    case!(
        "bridge name too long",
        ["spec.bridge"],
        c.create_network(network_spec(|s| s.bridge = "b".repeat(16)))
    );
    case!(
        "bridge name with a slash",
        ["spec.bridge"],
        c.create_network(network_spec(|s| s.bridge = "a/b".into()))
    );
    case!(
        "MTU below 576",
        ["spec.mtu"],
        c.create_network(network_spec(|s| s.mtu = 575))
    );
    case!(
        "MTU above 65535",
        ["spec.mtu"],
        c.create_network(network_spec(|s| s.mtu = 65536))
    );
    case!(
        "MTU above the underlay's minus 20",
        ["spec.mtu"],
        c.create_network(network_spec(|s| s.mtu = DEFAULT_MTU - 19))
    );
    case!(
        "host reserve 0",
        ["spec.host_reserve"],
        c.create_network(network_spec(|s| s.host_reserve = Some(0)))
    );
    case!(
        "host reserve leaving nothing",
        ["spec.host_reserve"],
        c.create_network(network_spec(|s| s.host_reserve = Some(254)))
    );
    case!(
        "unknown backend",
        ["spec.backend"],
        c.create_network(network_spec(|s| s.backend = 99))
    );
    case!(
        "DHCP options without DHCP",
        ["spec.dhcp_dns", "spec.dhcp_lease_seconds"],
        c.create_network(network_spec(|s| {
            s.dhcp_dns = vec!["10.0.0.53".into()];
            s.dhcp_lease_seconds = 600;
        }))
    );
    case!(
        "DHCP DNS not an address",
        ["spec.dhcp_dns[1]"],
        c.create_network(network_spec(|s| {
            s.dhcp = true;
            s.dhcp_dns = vec!["10.0.0.53".into(), "dns".into()];
        }))
    );
    case!(
        "nine DHCP DNS servers",
        ["spec.dhcp_dns"],
        c.create_network(network_spec(|s| {
            s.dhcp = true;
            s.dhcp_dns = vec!["10.0.0.53".into(); 9];
        }))
    );
    case!(
        "DHCP lease of 5 s",
        ["spec.dhcp_lease_seconds"],
        c.create_network(network_spec(|s| {
            s.dhcp = true;
            s.dhcp_lease_seconds = 5;
        }))
    );
    case!(
        "label key with a space",
        ["spec.labels[\"a b\"]"],
        c.create_network(network_spec(|s| {
            s.labels.insert("a b".into(), "v".into());
        }))
    );
    case!(
        "every bad field at once",
        ["network_id", "spec.overlay", "spec.underlay", "spec.mtu"],
        c.create_network(pb::CreateNetworkRequest {
            network_id: "-".into(),
            spec: Some(pb::NetworkSpec {
                overlay: "x".into(),
                underlay: String::new(),
                mtu: 1,
                ..Default::default()
            })
        })
    );

    // Reads and deletes of a network
    case!(
        "GetNetwork id",
        ["network_id"],
        c.get_network(pb::GetNetworkRequest {
            network_id: "a_b".into()
        })
    );
    case!(
        "CheckNetwork id",
        ["network_id"],
        c.check_network(pb::CheckNetworkRequest {
            network_id: String::new()
        })
    );
    case!(
        "DeleteNetwork id",
        ["network_id"],
        c.delete_network(pb::DeleteNetworkRequest {
            network_id: "FAN".into(),
            force: true,
            allow_missing: true
        })
    );
    case!(
        "ListNetworks page size",
        ["page_size"],
        c.list_networks(pb::ListNetworksRequest {
            page_size: 1001,
            ..Default::default()
        })
    );
    case!(
        "ListNetworks page token",
        ["page_token"],
        c.list_networks(pb::ListNetworksRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
    );

    // UpdateNetwork
    case!(
        "no update mask",
        ["update_mask"],
        c.update_network(pb::UpdateNetworkRequest {
            network_id: "fan".into(),
            spec: None,
            update_mask: None
        })
    );
    case!(
        "a field that cannot change",
        ["update_mask.paths[0]"],
        c.update_network(mask(&["overlay"], spec("251.0.0.0/8")))
    );
    case!(
        "update id",
        ["network_id"],
        c.update_network(pb::UpdateNetworkRequest {
            network_id: "Fan".into(),
            ..mask(&["mtu"], spec(""))
        })
    );
    case!(
        "update MTU",
        ["spec.mtu"],
        c.update_network(mask(
            &["mtu"],
            pb::NetworkSpec {
                mtu: 100,
                ..Default::default()
            }
        ))
    );
    case!(
        "update MTU above the underlay's",
        ["spec.mtu"],
        c.update_network(mask(
            &["mtu"],
            pb::NetworkSpec {
                mtu: DEFAULT_MTU,
                ..Default::default()
            }
        ))
    );
    case!(
        "update host reserve",
        ["spec.host_reserve"],
        c.update_network(mask(
            &["host_reserve"],
            pb::NetworkSpec {
                host_reserve: Some(0),
                ..Default::default()
            }
        ))
    );
    case!(
        "update labels",
        ["spec.labels[\"\"]"],
        c.update_network(mask(
            &["labels"],
            pb::NetworkSpec {
                labels: [(String::new(), "v".to_owned())].into(),
                ..Default::default()
            }
        ))
    );
    case!(
        "update DHCP lease without DHCP",
        ["spec.dhcp_lease_seconds"],
        c.update_network(mask(
            &["dhcp_lease_seconds"],
            pb::NetworkSpec {
                dhcp_lease_seconds: 60,
                ..Default::default()
            }
        ))
    );

    // Allocations
    case!(
        "AllocateAddress id",
        ["network_id"],
        c.allocate_address(allocate("", "c2"))
    );
    case!(
        "no owner",
        ["owner"],
        c.allocate_address(pb::AllocateAddressRequest {
            owner: None,
            ..allocate("fan", "c2")
        })
    );
    case!(
        "empty container id",
        ["owner.container_id"],
        c.allocate_address(allocate("fan", ""))
    );
    case!(
        "interface name with a slash",
        ["owner.interface"],
        c.allocate_address(pb::AllocateAddressRequest {
            owner: Some(pb::Owner {
                container_id: "c2".into(),
                interface: "eth/0".into()
            }),
            ..allocate("fan", "c2")
        })
    );
    case!(
        "requested address not IPv4",
        ["address"],
        c.allocate_address(pb::AllocateAddressRequest {
            address: "250.0.28.300".into(),
            ..allocate("fan", "c2")
        })
    );
    case!(
        "allocation label",
        ["labels[\"a b\"]"],
        c.allocate_address(pb::AllocateAddressRequest {
            labels: [("a b".to_owned(), "v".to_owned())].into(),
            ..allocate("fan", "c2")
        })
    );
    case!(
        "no selector",
        ["selector"],
        c.get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: None
        })
    );
    case!(
        "selector address",
        ["selector.address"],
        c.get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Address("x".into()))
            })
        })
    );
    case!(
        "release: id and selector owner",
        ["network_id", "selector.owner.container_id"],
        c.release_address(pb::ReleaseAddressRequest {
            network_id: "F".into(),
            selector: by_owner(""),
            allow_missing: true
        })
    );
    case!(
        "ListAllocations id",
        ["network_id"],
        c.list_allocations(pb::ListAllocationsRequest {
            network_id: "F".into(),
            ..Default::default()
        })
    );
    case!(
        "ListAllocations owner of 257 characters",
        ["owner_container_id"],
        c.list_allocations(pb::ListAllocationsRequest {
            owner_container_id: "c".repeat(257),
            ..Default::default()
        })
    );
    case!(
        "ListAllocations label selector",
        ["label_selector"],
        c.list_allocations(pb::ListAllocationsRequest {
            label_selector: "novalue".into(),
            ..Default::default()
        })
    );
    case!(
        "ListAllocations page size",
        ["page_size"],
        c.list_allocations(pb::ListAllocationsRequest {
            page_size: 5000,
            ..Default::default()
        })
    );
    case!(
        "ListAllocations page token",
        ["page_token"],
        c.list_allocations(pb::ListAllocationsRequest {
            page_token: "AAAA".into(),
            ..Default::default()
        })
    );
    case!(
        "GC id and owner",
        ["network_id", "valid_owners[1].container_id"],
        c.garbage_collect_allocations(pb::GarbageCollectAllocationsRequest {
            network_id: String::new(),
            valid_owners: vec![owner("c1").unwrap(), pb::Owner::default()],
            dry_run: false
        })
    );

    // Resolve and watch
    case!(
        "resolve address",
        ["address"],
        c.resolve_address(pb::ResolveAddressRequest {
            address: "nine".into(),
            ..Default::default()
        })
    );
    case!(
        "resolve overlay without underlay",
        ["underlay"],
        c.resolve_address(pb::ResolveAddressRequest {
            address: "250.0.28.2".into(),
            overlay: "250.0.0.0/8".into(),
            ..Default::default()
        })
    );
    case!(
        "resolve underlay without overlay",
        ["overlay"],
        c.resolve_address(pb::ResolveAddressRequest {
            address: "250.0.28.2".into(),
            underlay: "172.30.0.0/16".into(),
            ..Default::default()
        })
    );
    case!(
        "resolve bad overlay",
        ["overlay"],
        c.resolve_address(pb::ResolveAddressRequest {
            address: "250.0.28.2".into(),
            overlay: "x".into(),
            underlay: "172.30.0.0/16".into(),
            ..Default::default()
        })
    );
    case!(
        "resolve network id",
        ["network_id"],
        c.resolve_address(pb::ResolveAddressRequest {
            address: "250.0.28.2".into(),
            network_id: "F".into(),
            ..Default::default()
        })
    );
    case!(
        "watch network id",
        ["network_id"],
        c.watch_events(pb::WatchEventsRequest {
            network_id: "F".into(),
            ..Default::default()
        })
    );
    case!(
        "watch event kind",
        ["kinds[0]"],
        c.watch_events(pb::WatchEventsRequest {
            kinds: vec![0],
            ..Default::default()
        })
    );
    case!(
        "watch from the future",
        ["start_revision"],
        c.watch_events(pb::WatchEventsRequest {
            start_revision: Some(1 << 40),
            ..Default::default()
        })
    );

    for Bad {
        what,
        fields,
        status,
    } in &bad
    {
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(reason_of(status), "FIELD_INVALID", "{what}");
        assert_eq!(&fields_of(status), fields, "{what}: {}", status.message());
        for field in *fields {
            assert!(
                status
                    .message()
                    .contains(field.split('[').next().unwrap_or(field)),
                "{what}: the message names {field}: {}",
                status.message()
            );
        }
    }
    assert_eq!(everything(&mut c).await, before, "nothing changed");
    let calls = agent.dataplane().calls();
    assert!(
        calls.iter().all(|call| call.op() == Op::Observe),
        "only reads reached the data plane: {calls:?}"
    );
}

#[tokio::test]
async fn health_is_serving_only_after_the_start_up_pass() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    let agent = TestAgent::start().await.unwrap();
    let fake = agent.dataplane().clone();
    let mut c = agent.client().await.unwrap();
    c.create_network(create("fan", spec("250.0.0.0/8")))
        .await
        .unwrap();
    drop(c);
    let dir = agent.stop().await.unwrap();

    // Restarted with its start-up pass held in the apply of "fan".
    let paused = fake.pause(Op::Apply).await;
    fake.clear_calls();
    let agent = TestAgent::builder()
        .dataplane(fake.clone())
        .directory(dir)
        .start()
        .await
        .unwrap();
    let mut health = HealthClient::new(agent.channel().await.unwrap());
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    fake.wait_for_calls(|calls| calls.iter().any(|c| c.op() == Op::Apply))
        .await;
    let status = |r: &tonic_health::pb::HealthCheckResponse| r.status;
    let first = statuses.message().await.unwrap().unwrap();
    assert_eq!(status(&first), ServingStatus::NotServing as i32);
    let check = health
        .check(HealthCheckRequest {
            service: "fan.agent.v1.FanAgentService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status, ServingStatus::NotServing as i32);
    drop(paused);
    // The watch reports NOT_SERVING until the flip to SERVING.
    loop {
        let next = statuses.message().await.unwrap().unwrap();
        if status(&next) == ServingStatus::Serving as i32 {
            break;
        }
        assert_eq!(status(&next), ServingStatus::NotServing as i32);
    }
    assert!(fake.programmed("fan").unwrap().complete);
}
