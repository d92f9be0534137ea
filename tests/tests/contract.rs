//! The error contract against a real agent over its unix socket: every
//! reason is specific, BadRequest lists every invalid field, NOT_FOUND and
//! FAILED_PRECONDITION carry ResourceInfo / PreconditionFailure and metadata
//! naming the resource, a malformed request is INVALID_ARGUMENT (not
//! INTERNAL) and audited, and audit lines of allocate/release carry the owner
//! and the address.

use anyhow::Result;
use fan_e2e::{reason_of, unix_channel, Client, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const HOST: &str = "172.30.0.28";

fn spec() -> Option<pb::NetworkSpec> {
    Some(pb::NetworkSpec {
        overlay: "250.0.0.0/8".into(),
        underlay: "172.30.0.0/16".into(),
        ..Default::default()
    })
}

fn owner(id: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: id.into(),
        interface: String::new(),
    })
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn metadata(status: &tonic::Status, key: &str) -> Option<String> {
    status.get_details_error_info()?.metadata.get(key).cloned()
}

async fn create(client: &mut Client, id: &str) -> Result<pb::Network, tonic::Status> {
    client
        .create_network(pb::CreateNetworkRequest {
            network_id: id.into(),
            spec: spec(),
        })
        .await
        .map(|r| r.into_inner().network.expect("network"))
}

#[tokio::test]
async fn network_ids_up_to_63_characters_work_and_longer_ones_are_refused_by_field() -> Result<()> {
    let (_bed, mut client) = fan_e2e::one_host().await?;

    // 63 characters (the DNS-label limit the API documents): programmed,
    // not refused by nftables afterwards as on earlier versions.
    let longest = format!("n{}", "x".repeat(62));
    let network = create(&mut client, &longest)
        .await
        .map_err(|s| anyhow::anyhow!("a 63-character id must work: {s:?}"))?;
    let status = network.status.expect("status");
    assert_eq!(status.state(), pb::NetworkState::Ready, "{}", status.reason);
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: longest.clone(),
            ..Default::default()
        })
        .await?;

    // 64 characters: refused up front, naming the field and the rule.
    let too_long = format!("{longest}x");
    let err = create(&mut client, &too_long).await.expect_err("64 chars");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err), "FIELD_INVALID");
    assert_eq!(fields(&err), ["network_id"]);
    assert!(
        err.message().contains("network_id") && err.message().contains("the limit is 63"),
        "{}",
        err.message()
    );
    let left = client
        .list_networks(pb::ListNetworksRequest::default())
        .await?
        .into_inner();
    assert!(left.networks.is_empty(), "nothing was created");
    Ok(())
}

/// AllocateAddressRequest with its string field 1 as raw bytes, to send
/// what a well-behaved client never would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawAllocateRequest {
    #[prost(bytes = "vec", tag = "1")]
    network_id: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_and_audited() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", HOST.parse()?)?;
    let socket = bed.host("h1").agent.socket.clone();
    let mut grpc = tonic::client::Grpc::new(unix_channel(&socket).await?);
    grpc.ready().await?;
    let codec =
        tonic_prost::ProstCodec::<RawAllocateRequest, pb::AllocateAddressResponse>::default();
    let err = grpc
        .unary(
            tonic::Request::new(RawAllocateRequest {
                network_id: vec![b'f', 0xff, 0xfe, b'n'],
            }),
            "/fan.agent.v1.FanAgentService/AllocateAddress"
                .parse()
                .expect("path"),
            codec,
        )
        .await
        .expect_err("not UTF-8");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err), "MALFORMED_REQUEST");
    assert!(err.message().contains("UTF-8"), "{}", err.message());

    // Audited with the caller and the method.
    let log = std::fs::read_to_string(&bed.host("h1").agent.log)?;
    let line = log
        .lines()
        .find(|l| l.contains("malformed request"))
        .unwrap_or_else(|| panic!("no audit line for the malformed request:\n{log}"));
    assert!(
        line.contains("AllocateAddress") && line.contains("unix:uid=0"),
        "{line}"
    );

    // The agent goes on serving.
    let mut client = bed.host("h1").client().await?;
    client.get_agent_info(pb::GetAgentInfoRequest {}).await?;
    Ok(())
}

#[tokio::test]
async fn every_invalid_field_is_listed_not_only_the_first() -> Result<()> {
    let (_bed, mut client) = fan_e2e::one_host().await?;

    let err = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "Not_An_Id".into(),
            owner: owner(""),
            address: "not-an-address".into(),
            ..Default::default()
        })
        .await
        .expect_err("three invalid fields");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(reason_of(&err), "FIELD_INVALID");
    assert_eq!(
        fields(&err),
        ["network_id", "owner.container_id", "address"],
        "{}",
        err.message()
    );

    let err = client
        .create_network(pb::CreateNetworkRequest {
            network_id: "-bad".into(),
            spec: Some(pb::NetworkSpec {
                overlay: "300.0.0.0/8".into(),
                underlay: "172.30.0.0/16".into(),
                mtu: 100,
                ..Default::default()
            }),
        })
        .await
        .expect_err("three invalid fields");
    assert_eq!(
        fields(&err),
        ["network_id", "spec.overlay", "spec.mtu"],
        "{}",
        err.message()
    );
    Ok(())
}

#[tokio::test]
async fn not_found_and_preconditions_name_the_resource() -> Result<()> {
    let (_bed, mut client) = fan_e2e::one_host().await?;

    let err = client
        .get_network(pb::GetNetworkRequest {
            network_id: "missing".into(),
        })
        .await
        .expect_err("no such network");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason_of(&err), "NETWORK_NOT_FOUND");
    assert_eq!(metadata(&err, "network_id").as_deref(), Some("missing"));
    let info = err.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_type, "fan.agent.v1.Network");
    assert_eq!(info.resource_name, "networks/missing");

    create(&mut client, "fan").await?;
    let err = client
        .get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Address(
                    "250.0.28.9".into(),
                )),
            }),
        })
        .await
        .expect_err("no such allocation");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason_of(&err), "ALLOCATION_NOT_FOUND");
    assert_eq!(metadata(&err, "address").as_deref(), Some("250.0.28.9"));
    let info = err.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_type, "fan.agent.v1.Allocation");
    assert_eq!(info.resource_name, "networks/fan/allocations/250.0.28.9");

    // An address held by another owner: the precondition names both.
    let first = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: owner("c1"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocation
        .expect("allocation");
    let err = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: owner("c2"),
            address: first.address.clone(),
            ..Default::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&err), "ADDRESS_HELD_BY_OTHER_OWNER");
    assert_eq!(metadata(&err, "address"), Some(first.address.clone()));
    assert_eq!(metadata(&err, "container_id").as_deref(), Some("c2"));
    assert_eq!(metadata(&err, "network_id").as_deref(), Some("fan"));
    let failure = err
        .get_details_precondition_failure()
        .expect("PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "ADDRESS_HELD_BY_OTHER_OWNER");
    assert_eq!(failure.violations[0].subject, "networks/fan");

    let err = client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            ..Default::default()
        })
        .await
        .expect_err("in use");
    assert_eq!(reason_of(&err), "NETWORK_IN_USE");
    assert_eq!(metadata(&err, "network_id").as_deref(), Some("fan"));
    Ok(())
}

#[tokio::test]
async fn audit_lines_of_allocate_and_release_carry_owner_and_address() -> Result<()> {
    let (bed, mut client) = fan_e2e::one_host().await?;
    create(&mut client, "fan").await?;
    let allocation = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: owner("audited-c1"),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocation
        .expect("allocation");
    client
        .release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Owner(pb::Owner {
                    container_id: "audited-c1".into(),
                    interface: String::new(),
                })),
            }),
            allow_missing: false,
        })
        .await?;
    let log = std::fs::read_to_string(&bed.host("h1").agent.log)?;
    for what in ["\"AllocateAddress\"", "\"ReleaseAddress\""] {
        let line = log
            .lines()
            .find(|l| l.contains("audit") && l.contains(what))
            .unwrap_or_else(|| panic!("no audit line for {what}:\n{log}"));
        assert!(
            line.contains("audited-c1/eth0") && line.contains(&allocation.address),
            "{what}: {line}"
        );
    }
    Ok(())
}
