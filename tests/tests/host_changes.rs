//! A host that changes under the agent (issue 9, items 6-8): the underlay
//! address removed or replaced (while running and across a restart), the
//! bridge renamed by hand, and an overlay that overlaps the host's own
//! addresses or routes. Real agents in namespaces.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fan_e2e::{reason_of, wait_until, Client, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
/// Agent arguments: no reconcile timer (drift stays until something repairs it).
const NO_RECONCILE: &[&str] = &["--reconcile-interval", "0"];
/// Long enough that nothing in these tests can come from the reconcile timer.
const NO_TIMER: &[&str] = &["--reconcile-interval", "3600"];
/// Bound for the agent to react to a netlink event (not a timing assertion:
/// the reaction is expected in milliseconds; this only stops a hung test).
const REACT: Duration = Duration::from_secs(5);

async fn status(client: &mut Client, id: &str) -> Result<pb::NetworkStatus> {
    fan_e2e::network_status(client, id).await
}

async fn drifts(client: &mut Client, id: &str) -> Result<Vec<pb::Drift>> {
    fan_e2e::check_network(client, id).await
}

async fn allocate(client: &mut Client, owner: &str) -> Result<pb::Allocation, tonic::Status> {
    fan_e2e::allocate_eth0(client, "fan", owner).await
}

async fn allocations(client: &mut Client) -> Result<Vec<pb::Allocation>> {
    Ok(client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: "fan".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocations)
}

fn create_request(id: &str, overlay: &str, allow_overlap: bool) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        network_id: id.into(),
        spec: Some(pb::NetworkSpec {
            overlay: overlay.into(),
            underlay: UNDERLAY.into(),
            allow_overlap,
            ..Default::default()
        }),
    }
}

/// Waits until the network has moved to `slice` and its data path is
/// programmed there (the move is persisted before it is applied, so the
/// status shows the new slice a moment before the pass ends), then checks
/// what a move promises: the old allocation is kept but stale, the new slice
/// hands out addresses and its containers reach the other host.
async fn expect_moved_to_29(bed: &mut Testbed, old_owner: &str) -> Result<()> {
    let mut client = bed.host("h28").client().await?;
    wait_until(REACT, "the network to move to 250.0.29.0/24", || {
        let mut client = client.clone();
        async move {
            let s = status(&mut client, "fan").await?;
            let moved = s.slice == "250.0.29.0/24" && s.underlay_address == "172.30.0.29";
            let programmed = !s.reason.contains("kernel differs");
            Ok(moved && programmed && s.state != pb::NetworkState::Failed as i32)
        }
    })
    .await
    .with_context(|| bed.host("h28").agent.log_tail())?;
    let s = status(&mut client, "fan").await?;
    assert_eq!(s.former_slices, vec!["250.0.28.0/24".to_string()]);
    assert_eq!(s.stale_allocations, 1, "{s:?}");
    assert_eq!(s.allocated, 0, "stale allocations are not counted as valid");
    assert_eq!(s.state, pb::NetworkState::Degraded as i32, "{s:?}");
    assert!(s.reason.contains("stale"), "{}", s.reason);

    // The old allocation is kept, flagged, with its own slice.
    let listed = allocations(&mut client).await?;
    let old = listed
        .iter()
        .find(|a| a.owner.as_ref().map(|o| o.container_id.as_str()) == Some(old_owner))
        .ok_or_else(|| anyhow!("old allocation of {old_owner} is gone: {listed:?}"))?;
    assert!(old.stale, "{old:?}");
    assert_eq!(old.stale_slice, "250.0.28.0/24");
    assert_eq!(old.gateway, "250.0.28.1");
    let got = client
        .get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Address(
                    old.address.clone(),
                )),
            }),
        })
        .await?
        .into_inner()
        .allocation
        .expect("allocation");
    assert!(got.stale);

    // New addresses come from the new slice; the data path carries them.
    let fresh = bed.add_container("h28", "fan", "fresh").await?;
    assert!(
        fresh.address.octets()[..3] == [250, 0, 29],
        "allocated {} after the move",
        fresh.address
    );
    let far = bed.container("far").address;
    bed.container("fresh").netns.ping(far, 1)?;
    assert!(drifts(&mut client, "fan").await?.is_empty());

    // Releasing the stale allocation (by owner, as CNI DEL does) clears it.
    client
        .release_address(pb::ReleaseAddressRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Owner(pb::Owner {
                    container_id: old_owner.into(),
                    interface: "eth0".into(),
                })),
            }),
            allow_missing: false,
        })
        .await?;
    let s = status(&mut client, "fan").await?;
    assert_eq!(s.stale_allocations, 0);
    assert_eq!(s.state, pb::NetworkState::Ready as i32, "{}", s.reason);
    Ok(())
}

async fn two_hosts(h28_args: &[&str]) -> Result<Testbed> {
    fan_e2e::one_far_container(h28_args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_address_removed_fails_the_network_and_a_new_one_moves_it() -> Result<()> {
    let mut bed = two_hosts(NO_TIMER).await?;
    let mut client = bed.host("h28").client().await?;
    let old = allocate(&mut client, "old").await?;
    assert!(old.address.starts_with("250.0.28."));
    assert!(drifts(&mut client, "fan").await?.is_empty());

    bed.host("h28")
        .netns
        .ip(&["addr", "del", "172.30.0.28/16", "dev", "eth0"])?;
    // The netlink watch reports it: the timer is an hour away.
    wait_until(REACT, "the network to fail", || {
        let mut client = client.clone();
        async move { Ok(status(&mut client, "fan").await?.state == pb::NetworkState::Failed as i32) }
    })
    .await
    .with_context(|| bed.host("h28").agent.log_tail())?;
    let s = status(&mut client, "fan").await?;
    assert!(
        s.reason
            .contains("underlay address 172.30.0.28 is gone from eth0"),
        "{}",
        s.reason
    );
    let refused = allocate(&mut client, "late").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert_eq!(reason_of(&refused), "SLICE_NOT_OWNED");
    assert!(refused.message().contains("172.30.0.28"), "{refused}");
    let found = drifts(&mut client, "fan").await?;
    assert!(
        found
            .iter()
            .any(|d| d.object.contains("underlay address 172.30.0.28")),
        "check must report the lost address: {found:?}"
    );

    bed.host("h28")
        .netns
        .ip(&["addr", "add", "172.30.0.29/16", "dev", "eth0"])?;
    expect_moved_to_29(&mut bed, "old").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_address_changed_while_the_agent_was_down() -> Result<()> {
    let mut bed = two_hosts(NO_TIMER).await?;
    let mut client = bed.host("h28").client().await?;
    allocate(&mut client, "old").await?;
    drop(client);

    let host = bed.host_mut("h28");
    assert!(host.agent.terminate()?);
    host.netns
        .ip(&["addr", "del", "172.30.0.28/16", "dev", "eth0"])?;
    host.netns
        .ip(&["addr", "add", "172.30.0.29/16", "dev", "eth0"])?;
    host.start_agent()?;
    expect_moved_to_29(&mut bed, "old").await?;

    // The move is durable: another restart keeps the new slice and the rule's result.
    let host = bed.host_mut("h28");
    assert!(host.agent.terminate()?);
    host.start_agent()?;
    let mut client = bed.host("h28").client().await?;
    let s = status(&mut client, "fan").await?;
    assert_eq!(s.slice, "250.0.29.0/24");
    assert_eq!(s.former_slices, vec!["250.0.28.0/24".to_string()]);
    let fresh = bed.container("fresh").address.to_string();
    assert!(allocations(&mut client)
        .await?
        .iter()
        .any(|a| a.address == fresh && !a.stale));
    Ok(())
}

fn bridges_with_gateway(bed: &Testbed) -> Result<Vec<String>> {
    let text = bed.host("h28").netns.ip(&["-o", "-4", "addr", "show"])?;
    Ok(text
        .lines()
        .filter(|l| l.contains("inet 250.0.28.1/"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect())
}

fn bridges(bed: &Testbed) -> Result<Vec<String>> {
    let text = bed
        .host("h28")
        .netns
        .ip(&["-o", "link", "show", "type", "bridge"])?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect())
}

fn rename_bridge(bed: &Testbed, to: &str) -> Result<()> {
    let ns = &bed.host("h28").netns;
    ns.ip(&["link", "set", "fan-250", "down"])?;
    ns.ip(&["link", "set", "fan-250", "name", to])?;
    ns.ip(&["link", "set", to, "up"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_bridge_is_drift_repaired_to_one_bridge_and_deleted_with_force() -> Result<()> {
    let mut bed = two_hosts(&["--reconcile-interval", "0"]).await?;
    bed.add_container("h28", "fan", "near").await?;
    let far = bed.container("far").address;
    let mut client = bed.host("h28").client().await?;

    rename_bridge(&bed, "byhand0")?;
    let found = drifts(&mut client, "fan").await?;
    assert!(
        found
            .iter()
            .any(|d| d.object == "bridge fan-250" && d.observed.contains("renamed to byhand0")),
        "check must report the rename: {found:?}"
    );
    assert_eq!(
        status(&mut client, "fan").await?.state,
        pb::NetworkState::Degraded as i32
    );

    // Repair (re-create with the same spec) names it back: one bridge, one gateway.
    client
        .create_network(create_request("fan", OVERLAY, false))
        .await?;
    assert_eq!(bridges(&bed)?, vec!["fan-250".to_string()]);
    assert_eq!(bridges_with_gateway(&bed)?, vec!["fan-250".to_string()]);
    assert!(drifts(&mut client, "fan").await?.is_empty());
    // The container stayed plugged (a rename keeps the ports).
    bed.container("near").netns.ping(far, 1)?;

    // delete --force removes the bridge under whatever name it has now.
    rename_bridge(&bed, "byhand1")?;
    client
        .delete_network(pb::DeleteNetworkRequest {
            network_id: "fan".into(),
            force: true,
            allow_missing: false,
        })
        .await?;
    assert!(bridges(&bed)?.is_empty(), "left: {:?}", bridges(&bed)?);
    assert!(bridges_with_gateway(&bed)?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_overlapping_the_host_is_refused_unless_allowed_and_later_overlap_is_drift(
) -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host_with("h28", "172.30.0.28".parse()?, NO_RECONCILE, &[])?;
    let ns = &bed.host("h28").netns;
    // A LAN on 10.0.50.0/24 (a veth: this kernel may have no dummy module).
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ])?;
    ns.ip(&["addr", "add", "10.0.50.2/24", "dev", "lan0"])?;
    ns.ip(&["link", "set", "lan0p", "up"])?;
    ns.ip(&["link", "set", "lan0", "up"])?;
    let mut client = bed.host("h28").client().await?;

    let refused = client
        .create_network(create_request("ten", "10.0.0.0/8", false))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert_eq!(reason_of(&refused), "OVERLAY_OVERLAPS_HOST");
    assert!(
        refused.message().contains("route 10.0.50.0/24 dev lan0"),
        "{refused}"
    );
    assert!(refused.message().contains("10.0.50.2/24"), "{refused}");
    // Nothing was made.
    let nets = client
        .list_networks(pb::ListNetworksRequest::default())
        .await?
        .into_inner()
        .networks;
    assert!(nets.is_empty());
    assert!(bridges(&bed)?.is_empty());

    // The explicit override accepts it, and the overlap is then not drift.
    let ten = client
        .create_network(create_request("ten", "10.0.0.0/8", true))
        .await?
        .into_inner()
        .network
        .expect("network");
    assert!(ten.spec.expect("spec").allow_overlap);
    assert!(drifts(&mut client, "ten").await?.is_empty());

    // An overlap appearing later is reported.
    client
        .create_network(create_request("fan", OVERLAY, false))
        .await?;
    assert!(drifts(&mut client, "fan").await?.is_empty());
    ns.ip(&["route", "add", "250.9.0.0/16", "dev", "lan0"])?;
    let found = drifts(&mut client, "fan").await?;
    assert!(
        found
            .iter()
            .any(|d| d.object == "route 250.9.0.0/16 dev lan0"),
        "{found:?}"
    );
    let s = status(&mut client, "fan").await?;
    assert_eq!(s.state, pb::NetworkState::Degraded as i32);
    assert!(s.reason.contains("250.9.0.0/16"), "{}", s.reason);
    Ok(())
}
