//! The control plane as a user meets it: a real `fan-agent` process in a fresh
//! namespace whose underlay veth has 172.30.0.28/16, driven over its unix socket.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::Result;
use fan_e2e::{reason_of, Client, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";

fn spec(overlay: &str, underlay: &str) -> pb::NetworkSpec {
    pb::NetworkSpec {
        overlay: overlay.into(),
        underlay: underlay.into(),
        ..Default::default()
    }
}

fn owner(id: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: id.into(),
        interface: String::new(),
    })
}

async fn create(
    client: &mut Client,
    id: &str,
    spec: pb::NetworkSpec,
) -> Result<pb::Network, tonic::Status> {
    client
        .create_network(pb::CreateNetworkRequest {
            network_id: id.into(),
            spec: Some(spec),
        })
        .await
        .map(|r| r.into_inner().network.expect("network in response"))
}

/// DeleteNetwork "fan" with `force` and `allow_missing`.
async fn delete_fan(
    client: &mut Client,
    force: bool,
    allow_missing: bool,
) -> Result<pb::DeleteNetworkResponse, tonic::Status> {
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            force,
            allow_missing,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn allocate(
    client: &mut Client,
    network: &str,
    id: &str,
) -> Result<pb::Allocation, tonic::Status> {
    client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: network.into(),
            owner: owner(id),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().allocation.expect("allocation in response"))
}

async fn all_allocations(client: &mut Client, network: &str) -> Vec<pb::Allocation> {
    // Pages of 100: the 253-address slice takes three.
    fan_e2e::all_allocations(client, network, 100)
        .await
        .expect("list allocations")
}

/// `ip -j` output of a command in the host namespace, parsed.
fn ip_json(bed: &Testbed, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = bed.hosts[0].netns.ip(&full).expect("ip -j");
    serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).expect("ip json")
}

/// Everything in the host namespace that is not the test's own underlay: must be empty
/// after the network is deleted.
fn leftovers(bed: &Testbed) -> Vec<String> {
    let mut found = Vec::new();
    for link in ip_json(bed, &["link", "show"]).as_array().unwrap() {
        let name = link["ifname"].as_str().unwrap_or_default();
        if name != "lo" && name != "eth0" {
            found.push(format!("link {name}"));
        }
    }
    for route in ip_json(bed, &["route", "show", "table", "all"])
        .as_array()
        .unwrap()
    {
        if route["protocol"].as_str() == Some("250") || route["protocol"].as_u64() == Some(250) {
            found.push(format!("route {route}"));
        }
    }
    let tables = bed.hosts[0]
        .netns
        .exec("nft", &["list", "tables"])
        .expect("nft list tables");
    let tables = String::from_utf8_lossy(&tables.stdout).trim().to_owned();
    if !tables.is_empty() {
        found.push(format!("nft {tables}"));
    }
    for hook in ["ingress", "egress"] {
        let filters = bed.hosts[0]
            .netns
            .exec("tc", &["filter", "show", "dev", "eth0", hook]);
        if let Ok(out) = filters {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !text.is_empty() {
                found.push(format!("tc {hook}: {text}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_allocate_exhaust_survive_kill9_and_delete() -> Result<()> {
    let (mut bed, mut client) = fan_e2e::one_host().await?;

    let network = create(&mut client, "fan", spec(OVERLAY, UNDERLAY)).await?;
    let status = network.status.clone().expect("status");
    assert_eq!(status.slice, "250.0.28.0/24");
    assert_eq!(status.gateway, "250.0.28.1");
    assert_eq!(status.bridge, "fan-250");
    assert_eq!(status.mtu, 1480);
    assert_eq!(status.underlay_address, "172.30.0.28");
    assert_eq!(
        status.state,
        pb::NetworkState::Ready as i32,
        "reason: {}",
        status.reason
    );
    assert_eq!(status.capacity, 253);

    // Idempotent create with the same spec; another spec is refused.
    let again = create(&mut client, "fan", spec(OVERLAY, UNDERLAY)).await?;
    assert_eq!(again.status.unwrap().slice, "250.0.28.0/24");
    let mut other = spec(OVERLAY, UNDERLAY);
    other.host_reserve = Some(10);
    let err = create(&mut client, "fan", other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // The bridge carries the gateway with the slice prefix and MTU 1480.
    let bridge = ip_json(&bed, &["-4", "addr", "show", "dev", "fan-250"]);
    let bridge = &bridge[0];
    assert_eq!(bridge["mtu"], 1480);
    let addrs: Vec<String> = bridge["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, vec!["250.0.28.1/24".to_owned()]);
    let bridge_index = bridge["ifindex"].clone();
    // A fixed MAC (02:fa + the gateway address): the containers' gateway MAC
    // does not change when the container whose port lent its MAC leaves.
    let link = ip_json(&bed, &["link", "show", "dev", "fan-250"]);
    assert_eq!(link[0]["address"], "02:fa:fa:00:1c:01");

    // 253 owners: all distinct, none of .0/.1/.255.
    let mut seen = BTreeSet::new();
    for i in 0..253 {
        let a = allocate(&mut client, "fan", &format!("c{i}")).await?;
        let address: Ipv4Addr = a.address.parse()?;
        let last = address.octets()[3];
        assert!(
            last != 0 && last != 1 && last != 255,
            "{address} must not be handed out"
        );
        assert_eq!(a.prefix_length, 24);
        assert_eq!(a.gateway, "250.0.28.1");
        assert_eq!(a.mtu, 1480);
        assert!(seen.insert(address), "{address} handed out twice");
    }
    let err = allocate(&mut client, "fan", "one-too-many")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Same owner twice: same address.
    let first = allocate(&mut client, "fan", "c7").await?;
    let second = allocate(&mut client, "fan", "c7").await?;
    assert_eq!(first.address, second.address);

    // kill -9 and start again: every allocation still there, bridge unchanged.
    let before = all_allocations(&mut client, "fan").await;
    assert_eq!(before.len(), 253);
    drop(client);
    bed.hosts[0].agent.kill9()?;
    bed.hosts[0].start_agent()?;
    let mut client = bed.hosts[0].client().await?;
    let after = all_allocations(&mut client, "fan").await;
    assert_eq!(before, after);
    let bridge = ip_json(&bed, &["addr", "show", "dev", "fan-250"]);
    assert_eq!(
        bridge[0]["ifindex"], bridge_index,
        "the bridge must not be recreated"
    );
    let err = allocate(&mut client, "fan", "still-too-many")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Delete with allocations is refused; with force everything of ours goes.
    let err = delete_fan(&mut client, false, false).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&err), "NETWORK_IN_USE");
    let deleted = delete_fan(&mut client, true, false).await?;
    assert!(deleted.deleted);
    assert_eq!(deleted.released_allocations, 253);
    assert_eq!(leftovers(&bed), Vec::<String>::new());
    // Deleting again: NOT_FOUND, or success with allow_missing.
    let err = delete_fan(&mut client, false, false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let gone = delete_fan(&mut client, false, true).await?;
    assert!(!gone.deleted);
    Ok(())
}

/// One malformed request: what to send, the code and the field the message must name.
struct Bad {
    what: &'static str,
    code: Code,
    field: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_by_field_and_change_nothing() -> Result<()> {
    let (bed, mut client) = fan_e2e::one_host().await?;
    create(&mut client, "fan", spec(OVERLAY, UNDERLAY)).await?;
    let kept = allocate(&mut client, "fan", "keeper").await?;

    let networks_before = client
        .list_networks(pb::ListNetworksRequest::default())
        .await?
        .into_inner();
    let allocations_before = all_allocations(&mut client, "fan").await;

    let long_name = "n".repeat(64);
    let long_bridge = "b".repeat(16);
    let long_owner = "o".repeat(300);
    let mut cases: Vec<(Bad, Result<(), tonic::Status>)> = Vec::new();
    macro_rules! case {
        ($what:expr, $code:expr, $field:expr, $call:expr) => {
            let result = $call.await.map(|_| ());
            cases.push((
                Bad {
                    what: $what,
                    code: $code,
                    field: $field,
                },
                result,
            ));
        };
    }
    // CreateNetwork (all InvalidArgument) with a bad overlay or underlay.
    let request_for = |id: &str, spec| pb::CreateNetworkRequest {
        network_id: id.into(),
        spec,
    };
    for (what, field, overlay, underlay) in [
        ("bad overlay CIDR", "spec.overlay", "250.0.0/8", UNDERLAY),
        ("overlay host bits", "spec.overlay", "250.1.0.0/8", UNDERLAY),
        ("overlay /0", "spec.overlay", "0.0.0.0/0", UNDERLAY),
        ("overlay 127/8", "spec.overlay", "127.0.0.0/8", UNDERLAY),
        ("overlay multicast", "spec.overlay", "224.0.0.0/8", UNDERLAY),
        ("overlay missing", "spec.overlay", "", UNDERLAY),
        (
            "underlay garbage",
            "spec.underlay",
            "251.0.0.0/8",
            "172.30/x",
        ),
        (
            "underlay prefix 33",
            "spec.underlay",
            "251.0.0.0/8",
            "172.30.0.0/33",
        ),
        ("slice longer than /30", "spec", "251.1.1.0/24", UNDERLAY),
        (
            "overlay not shorter than underlay",
            "spec",
            "251.0.0.0/16",
            "172.30.0.0/16",
        ),
    ] {
        let request = request_for("a", Some(spec(overlay, underlay)));
        case!(
            what,
            Code::InvalidArgument,
            field,
            client.create_network(request)
        );
    }
    // ... with a bad network id.
    for (what, id) in [
        ("oversize network id", long_name.as_str()),
        ("network id with capitals", "Fan"),
        ("empty network id", ""),
    ] {
        let request = request_for(id, Some(spec("251.0.0.0/8", UNDERLAY)));
        case!(
            what,
            Code::InvalidArgument,
            "network_id",
            client.create_network(request)
        );
    }
    // ... with a bad or missing spec.
    let changed = |change: &dyn Fn(&mut pb::NetworkSpec)| {
        let mut s = spec("251.0.0.0/8", UNDERLAY);
        change(&mut s);
        Some(s)
    };
    for (what, field, spec) in [
        ("missing spec", "spec", None),
        (
            "oversize bridge",
            "spec.bridge",
            changed(&|s| s.bridge = long_bridge.clone()),
        ),
        ("mtu above underlay", "spec.mtu", changed(&|s| s.mtu = 9000)),
        (
            "host reserve fills the slice",
            "spec.host_reserve",
            changed(&|s| s.host_reserve = Some(254)),
        ),
        (
            "unknown backend",
            "spec.backend",
            changed(&|s| s.backend = 42),
        ),
    ] {
        case!(
            what,
            Code::InvalidArgument,
            field,
            client.create_network(request_for("a", spec))
        );
    }
    case!(
        "unknown network (get)",
        Code::NotFound,
        "network",
        client.get_network(pb::GetNetworkRequest {
            network_id: "nope".into()
        })
    );
    // AllocateAddress with a bad network or owner.
    let allocate_as = |network: &str, owner| pb::AllocateAddressRequest {
        network_id: network.into(),
        owner,
        ..Default::default()
    };
    let bad_interface = Some(pb::Owner {
        container_id: "x".into(),
        interface: "eth0/1".into(),
    });
    for (what, code, field, network, owner) in [
        (
            "unknown network (allocate)",
            Code::NotFound,
            "network",
            "nope",
            owner("x"),
        ),
        (
            "empty owner",
            Code::InvalidArgument,
            "owner.container_id",
            "fan",
            owner(""),
        ),
        ("missing owner", Code::InvalidArgument, "owner", "fan", None),
        (
            "oversize owner",
            Code::InvalidArgument,
            "owner.container_id",
            "fan",
            owner(&long_owner),
        ),
        (
            "bad interface",
            Code::InvalidArgument,
            "owner.interface",
            "fan",
            bad_interface,
        ),
    ] {
        case!(
            what,
            code,
            field,
            client.allocate_address(allocate_as(network, owner))
        );
    }
    // ... or a requested address it cannot have.
    for (what, code, address) in [
        (
            "requested address outside slice",
            Code::InvalidArgument,
            "250.0.27.5",
        ),
        ("requested gateway", Code::InvalidArgument, "250.0.28.1"),
        ("requested broadcast", Code::InvalidArgument, "250.0.28.255"),
        ("requested malformed", Code::InvalidArgument, "250.0.28"),
        (
            "requested taken",
            Code::FailedPrecondition,
            kept.address.as_str(),
        ),
    ] {
        let request = pb::AllocateAddressRequest {
            address: address.into(),
            ..allocate_as("fan", owner("x"))
        };
        case!(what, code, "address", client.allocate_address(request));
    }
    case!(
        "release without selector",
        Code::InvalidArgument,
        "selector",
        client.release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            ..Default::default()
        })
    );
    case!(
        "release unknown address",
        Code::NotFound,
        "allocation",
        client.release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Address(
                    "250.0.28.200".into()
                ))
            }),
            ..Default::default()
        })
    );
    for (what, field, page_size, page_token) in [
        ("page size too large", "page_size", 5000, ""),
        ("bad page token", "page_token", 0, "xyz"),
    ] {
        let request = pb::ListAllocationsRequest {
            network_id: "fan".into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        };
        case!(
            what,
            Code::InvalidArgument,
            field,
            client.list_allocations(request)
        );
    }
    case!(
        "resolve garbage",
        Code::InvalidArgument,
        "address",
        client.resolve_address(pb::ResolveAddressRequest {
            address: "1.2.3".into(),
            ..Default::default()
        })
    );
    let mut labels = std::collections::HashMap::new();
    labels.insert(String::new(), "v".to_owned());
    case!(
        "empty label key",
        Code::InvalidArgument,
        "labels",
        client.allocate_address(pb::AllocateAddressRequest {
            labels,
            ..allocate_as("fan", owner("x"))
        })
    );

    assert!(cases.len() >= 20, "at least 20 malformed requests");
    let mut failures = Vec::new();
    for (bad, result) in &cases {
        match result {
            Ok(()) => failures.push(format!("{}: accepted", bad.what)),
            Err(status) => {
                if status.code() != bad.code {
                    failures.push(format!(
                        "{}: code {:?}, want {:?} ({})",
                        bad.what,
                        status.code(),
                        bad.code,
                        status.message()
                    ));
                }
                if !status.message().contains(bad.field) {
                    failures.push(format!(
                        "{}: message {:?} does not name {:?}",
                        bad.what,
                        status.message(),
                        bad.field
                    ));
                }
                if reason_of(status).is_empty() {
                    failures.push(format!("{}: no ErrorInfo reason", bad.what));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    let networks_after = client
        .list_networks(pb::ListNetworksRequest::default())
        .await?
        .into_inner();
    let ids = |l: &pb::ListNetworksResponse| {
        l.networks
            .iter()
            .map(|n| (n.network_id.clone(), n.spec.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&networks_before),
        ids(&networks_after),
        "networks changed"
    );
    assert_eq!(
        allocations_before,
        all_allocations(&mut client, "fan").await,
        "allocations changed"
    );
    // A huge value is refused without being echoed back or logged in full.
    let huge = "x".repeat(1 << 20);
    let err = create(&mut client, &huge, spec("251.0.0.0/8", UNDERLAY))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().len() < 1024,
        "message of {} bytes",
        err.message().len()
    );
    let log = std::fs::read_to_string(&bed.hosts[0].agent.log)?;
    assert!(
        log.lines().all(|l| l.len() < 4096),
        "an audit line echoed the whole value"
    );
    // Nothing half-made on the host either: only the one bridge.
    let links = bed.hosts[0]
        .netns
        .ip(&["-o", "link", "show", "type", "bridge"])?;
    assert_eq!(links.lines().count(), 1, "{links}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_resolve() -> Result<()> {
    let (bed, mut client) = fan_e2e::one_host().await?;
    create(&mut client, "fan", spec(OVERLAY, UNDERLAY)).await?;
    // Resolve: overlay → owner host and slice; underlay → its slice. Any host, pure arithmetic.
    let r = client
        .resolve_address(pb::ResolveAddressRequest {
            address: "250.0.27.9".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.resolutions.len(), 1);
    assert_eq!(r.resolutions[0].underlay_host, "172.30.0.27");
    assert_eq!(r.resolutions[0].slice, "250.0.27.0/24");
    assert!(r.resolutions[0].is_overlay);
    let r = client
        .resolve_address(pb::ResolveAddressRequest {
            address: "10.1.2.7".into(),
            overlay: "250.0.0.0/8".into(),
            underlay: "10.1.2.0/24".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r.resolutions[0].slice, "250.7.0.0/16");

    let info = client
        .get_agent_info(pb::GetAgentInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(
        info.addresses.iter().any(|a| a.address == "172.30.0.28/16"),
        "{:?}",
        info.addresses
    );
    let ebpf = info
        .backends
        .iter()
        .find(|b| b.backend == pb::Backend::Ebpf as i32)
        .expect("ebpf listed");
    assert!(
        ebpf.available,
        "ebpf must be available here: {}",
        ebpf.reason
    );
    assert_eq!(info.backends.len(), 3, "every backend is reported");

    // Health is served (SERVING once the network is programmed).
    let socket = bed.hosts[0].agent.socket.clone();
    fan_e2e::wait_until(std::time::Duration::from_secs(5), "SERVING", || {
        fan_e2e::serving(&socket)
    })
    .await?;
    // grpcurl-style reflection works without the proto: v1 and v1alpha list our service.
    for version in ["v1", "v1alpha"] {
        let services = reflection_services(&bed, version)?;
        assert!(
            services.contains("fan.agent.v1.FanAgentService"),
            "{version}: {services}"
        );
    }
    Ok(())
}

/// Lists services through server reflection (v1 or v1alpha), as grpcurl does
/// when it is given no proto.
fn reflection_services(bed: &Testbed, version: &str) -> Result<String> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| rt.block_on(list_services(&bed.hosts[0].agent.socket, version)))
}

async fn list_services(socket: &std::path::Path, version: &str) -> Result<String> {
    let channel = fan_e2e::unix_channel(socket).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<ReflectionRequest, ReflectionResponse>::default();
    let path = if version == "v1" {
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    } else {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    };
    let request = ReflectionRequest {
        host: String::new(),
        list_services: Some(String::new()),
    };
    let stream = tokio_stream::iter(vec![request]);
    let mut responses = grpc
        .streaming(
            tonic::Request::new(stream),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await?
        .into_inner();
    let first = responses
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no reflection response"))?;
    let names: Vec<String> = first
        .list_services_response
        .map(|l| l.service.into_iter().map(|s| s.name).collect())
        .unwrap_or_default();
    Ok(names.join(","))
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionRequest {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(string, optional, tag = "7")]
    list_services: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionResponse {
    #[prost(message, optional, tag = "6")]
    list_services_response: Option<ListServiceResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceResponse>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceResponse {
    #[prost(string, tag = "1")]
    name: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_all_succeed() -> Result<()> {
    let (_bed, mut client) = fan_e2e::one_host().await?;
    create(&mut client, "fan", spec(OVERLAY, UNDERLAY)).await?;
    // Status reads observe the kernel (netlink dumps); allocations commit to disk.
    // Many at once must neither fail nor make a ready network look degraded.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => client
                    .get_agent_info(pb::GetAgentInfoRequest {})
                    .await
                    .map(|_| ()),
                1 => client
                    .list_networks(pb::ListNetworksRequest::default())
                    .await
                    .map(|_| ()),
                2 => allocate(&mut client, "fan", &format!("par{i}"))
                    .await
                    .map(|_| ()),
                _ => {
                    let n = client
                        .get_network(pb::GetNetworkRequest {
                            network_id: "fan".into(),
                        })
                        .await?;
                    let status = n
                        .into_inner()
                        .network
                        .and_then(|n| n.status)
                        .expect("status");
                    assert_eq!(
                        status.state,
                        pb::NetworkState::Ready as i32,
                        "{}",
                        status.reason
                    );
                    Ok(())
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(all_allocations(&mut client, "fan").await.len(), 6);
    Ok(())
}
