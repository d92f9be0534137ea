//! `fan_agent::testing` as another crate's tests use it (the SDK's, through
//! a dev-dependency with the `testing` feature): the real agent on the fake
//! data plane, reached over its unix socket, faults injected through the
//! fake's handle. Runs without root.

use fan_agent::testing::{Op, TestAgent};
use fan_proto::v1 as pb;
use tonic_types::StatusExt;

fn create(id: &str, overlay: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        network_id: id.into(),
        spec: Some(pb::NetworkSpec {
            overlay: overlay.into(),
            underlay: "172.30.0.0/16".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn the_real_agent_serves_on_a_socket_keeps_state_across_a_restart_and_takes_faults() {
    let agent = TestAgent::start().await.unwrap();
    assert!(agent.target().starts_with("unix:///"), "{}", agent.target());
    assert!(agent.socket().exists());
    let mut client = agent.client().await.unwrap();
    let network = client
        .create_network(create("fan", "250.0.0.0/8"))
        .await
        .unwrap()
        .into_inner()
        .network
        .unwrap();
    assert_eq!(network.status.unwrap().slice, "250.0.28.0/24");
    let allocated = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: Some(pb::Owner {
                container_id: "c1".into(),
                interface: "eth0".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .allocation
        .unwrap();

    // A fault injected through the handle reaches the client as the
    // agent's own error.
    agent
        .dataplane()
        .fail_always(Op::Apply, "broken", "Operation not permitted");
    let status = client
        .create_network(create("broken", "251.0.0.0/8"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "NETWORK_PROGRAMMING_FAILED"
    );
    assert_eq!(agent.dataplane().programmed_networks(), ["fan"]);

    // Stopped like SIGTERM: the socket goes; restarted on the same state
    // and the same fake host, the acknowledged allocation is still there.
    drop(client);
    let socket = agent.socket().to_owned();
    let fake = agent.dataplane().clone();
    let dir = agent.stop().await.unwrap();
    assert!(!socket.exists(), "no socket left behind");
    let agent = TestAgent::builder()
        .dataplane(fake)
        .directory(dir)
        .start()
        .await
        .unwrap();
    let mut client = agent.client().await.unwrap();
    let listed = client
        .list_allocations(pb::ListAllocationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .allocations;
    assert_eq!(listed, [allocated]);
}
