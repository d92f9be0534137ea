//! Orchestrator calls against real agents (issue 13): WatchEvents with
//! revisions (list-then-watch, restarts, slow watchers), UpdateNetwork on the
//! live data path, precise AllocateAddress idempotency, and request-bound
//! page tokens with filters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fan_e2e::{reason_of, Client, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
const HOST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 28);
/// Generous: no test asserts a time bound tighter than this.
const PATIENCE: Duration = Duration::from_secs(20);

type Events = tonic::Streaming<pb::WatchEventsResponse>;

async fn testbed() -> Result<(Testbed, Client)> {
    fan_e2e::one_host().await
}

async fn create(client: &mut Client, id: &str, overlay: &str) -> Result<pb::Network> {
    fan_e2e::create_network(client, "h1", id, fan_e2e::fan_spec(overlay, UNDERLAY)).await
}

fn owner(id: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: id.into(),
        interface: String::new(),
    })
}

async fn allocate(
    client: &mut Client,
    network: &str,
    id: &str,
    address: &str,
    labels: &[(&str, &str)],
) -> Result<pb::AllocateAddressResponse, tonic::Status> {
    client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: network.into(),
            owner: owner(id),
            address: address.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn release(client: &mut Client, network: &str, id: &str) -> Result<pb::Allocation> {
    client
        .release_address(pb::ReleaseAddressRequest {
            network_id: network.into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Owner(
                    owner(id).expect("owner"),
                )),
            }),
            allow_missing: false,
        })
        .await?
        .into_inner()
        .allocation
        .context("no allocation released")
}

async fn watch(
    client: &mut Client,
    network: &str,
    from: Option<u64>,
) -> Result<Events, tonic::Status> {
    client
        .watch_events(pb::WatchEventsRequest {
            network_id: network.into(),
            kinds: Vec::new(),
            start_revision: from,
        })
        .await
        .map(|r| r.into_inner())
}

/// The next event, or the status the stream ended with.
async fn next(events: &mut Events) -> Result<pb::Event, tonic::Status> {
    match tokio::time::timeout(PATIENCE, events.message()).await {
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "no event within the test's patience",
        )),
        Ok(Ok(Some(message))) => Ok(message.event.expect("event in message")),
        Ok(Ok(None)) => Err(tonic::Status::ok("stream ended without a status")),
        Ok(Err(status)) => Err(status),
    }
}

async fn list_revision(client: &mut Client, network: &str) -> Result<u64> {
    Ok(fan_e2e::list_allocations(client, network).await?.revision)
}

fn kind(event: &pb::Event) -> pb::EventKind {
    pb::EventKind::try_from(event.kind).unwrap_or(pb::EventKind::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_appears_on_a_watch_promptly() -> Result<()> {
    let (_bed, mut client) = testbed().await?;
    create(&mut client, "fan", OVERLAY).await?;
    let mut events = watch(&mut client, "fan", None).await?;
    let started = Instant::now();
    let response = allocate(&mut client, "fan", "c1", "", &[]).await?;
    let allocated = response.allocation.context("allocation")?;
    let event = next(&mut events).await?;
    let latency = started.elapsed();
    println!("watch: allocate call + delivery of its event took {latency:?}");
    assert_eq!(kind(&event), pb::EventKind::AllocationCreated);
    assert_eq!(event.network_id, "fan");
    assert_eq!(
        event.allocation.context("allocation in event")?.address,
        allocated.address
    );
    assert!(event.revision > 0);
    assert!(response.created);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_misses_nothing_and_repeats_nothing_across_1000_operations() -> Result<()> {
    let (_bed, mut client) = testbed().await?;
    create(&mut client, "fan", OVERLAY).await?;
    // Before the list: must not show up on the watch.
    let before = allocate(&mut client, "fan", "before", "", &[]).await?;
    let revision = list_revision(&mut client, "fan").await?;
    let mut events = watch(&mut client, "fan", Some(revision)).await?;

    const TASKS: usize = 20;
    const ROUNDS: usize = 25; // 20 × 25 × (allocate + release) = 1,000 operations
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for r in 0..ROUNDS {
                let id = format!("w{t}-{r}");
                let a = allocate(&mut client, "fan", &id, "", &[]).await?;
                let address = a.allocation.context("allocation")?.address;
                let released = release(&mut client, "fan", &id).await?;
                assert_eq!(released.address, address);
                done.push((id, address));
            }
            anyhow::Ok(done)
        }));
    }
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for task in tasks {
        for pair in task.await?? {
            *expected.entry(pair).or_default() += 1;
        }
    }
    let last = list_revision(&mut client, "fan").await?;

    let mut created: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut released: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut per_address: BTreeMap<String, Vec<pb::EventKind>> = BTreeMap::new();
    let mut previous = revision;
    while previous < last {
        let event = next(&mut events).await?;
        assert!(
            event.revision > previous,
            "revision {} after {previous}",
            event.revision
        );
        previous = event.revision;
        let Some(allocation) = event.allocation.clone() else {
            continue;
        };
        let key = (
            allocation.owner.clone().context("owner")?.container_id,
            allocation.address.clone(),
        );
        assert_ne!(
            key.0, "before",
            "an allocation older than the list's revision was sent"
        );
        per_address
            .entry(allocation.address.clone())
            .or_default()
            .push(kind(&event));
        match kind(&event) {
            pb::EventKind::AllocationCreated => *created.entry(key).or_default() += 1,
            pb::EventKind::AllocationReleased => *released.entry(key).or_default() += 1,
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(previous, last);
    assert_eq!(created, expected, "every allocation once");
    assert_eq!(released, expected, "every release once");
    // Per address, events alternate created, released, … in revision order.
    for (address, kinds) in &per_address {
        for (i, k) in kinds.iter().enumerate() {
            let want = if i % 2 == 0 {
                pb::EventKind::AllocationCreated
            } else {
                pb::EventKind::AllocationReleased
            };
            assert_eq!(*k, want, "{address}: {kinds:?}");
        }
    }
    println!(
        "list-then-watch: {} operations, {} addresses, revisions {revision}..{last}",
        TASKS * ROUNDS * 2,
        per_address.len()
    );
    assert!(before.created);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ends_watches_with_unavailable_and_a_resumed_watch_is_complete() -> Result<()> {
    let (mut bed, mut client) = testbed().await?;
    create(&mut client, "fan", OVERLAY).await?;
    let mut events = watch(&mut client, "", Some(0)).await?;
    allocate(&mut client, "fan", "a", "", &[]).await?;
    allocate(&mut client, "fan", "b", "", &[]).await?;
    let revision = list_revision(&mut client, "").await?;
    let mut last = 0;
    while last < revision {
        last = next(&mut events).await?.revision;
    }
    assert!(bed.host_mut("h1").agent.terminate()?, "clean exit");
    let status = loop {
        match next(&mut events).await {
            Ok(event) => last = event.revision,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    bed.host_mut("h1").start_agent()?;
    let mut client = bed.host("h1").client().await?;
    // Revisions survive the restart.
    assert_eq!(list_revision(&mut client, "").await?, last);
    let mut resumed = watch(&mut client, "", Some(last)).await?;
    let c = allocate(&mut client, "fan", "c", "", &[]).await?;
    release(&mut client, "fan", "a").await?;
    let event = next(&mut resumed).await?;
    assert_eq!(event.revision, last + 1);
    assert_eq!(kind(&event), pb::EventKind::AllocationCreated);
    assert_eq!(
        event.allocation.context("allocation")?.address,
        c.allocation.context("c")?.address
    );
    let event = next(&mut resumed).await?;
    assert_eq!(event.revision, last + 2);
    assert_eq!(kind(&event), pb::EventKind::AllocationReleased);

    // A revision from before the restart is compacted: the client relists.
    if last > 0 {
        let status = watch(&mut client, "", Some(last - 1))
            .await
            .err()
            .context("an older start must be refused")?;
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(reason_of(&status), "REVISION_COMPACTED");
    }
    let status = watch(&mut client, "", Some(last + 1_000_000))
        .await
        .err()
        .context("a future start must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_does_not_stop_allocations_and_is_ended_as_too_slow() -> Result<()> {
    let (bed, mut client) = testbed().await?;
    create(&mut client, "fan", OVERLAY).await?;
    // Never read until the end: its buffers fill, the agent must carry on.
    // Small HTTP/2 windows, so the transport holds few events for it.
    let socket = bed.host("h1").agent.socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    let mut slow = Client::new(channel);
    let mut stalled = watch(&mut slow, "fan", None).await?;
    let started = Instant::now();
    const ROUNDS: usize = 1500;
    for i in 0..ROUNDS {
        let id = format!("s{i}");
        allocate(&mut client, "fan", &id, "", &[]).await?;
        release(&mut client, "fan", &id).await?;
    }
    println!(
        "stalled watcher: {} operations in {:?}",
        ROUNDS * 2,
        started.elapsed()
    );
    let mut received = 0;
    let status = loop {
        match next(&mut stalled).await {
            Ok(_) => received += 1,
            Err(status) => break status,
        }
    };
    println!(
        "stalled watcher: received {received} of {} events before it was ended",
        ROUNDS * 2
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason_of(&status), "WATCHER_TOO_SLOW");
    assert!(received < ROUNDS * 2);
    Ok(())
}

/// The network's nft table as `nft` lists it; empty when the agent keeps
/// none (eBPF without masquerade has no rule left to hold).
fn nft_table(bed: &Testbed, network: &str) -> Result<String> {
    let name = format!("fan_{network}");
    let netns = &bed.host("h1").netns;
    let tables = netns.exec("nft", &["list", "tables"])?;
    if !String::from_utf8_lossy(&tables.stdout).contains(&format!("table ip {name}\n")) {
        return Ok(String::new());
    }
    let out = netns.exec("nft", &["list", "table", "ip", &name])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bridge_mtu(bed: &Testbed, bridge: &str) -> Result<u64> {
    let json = bed.host("h1").netns.ip(&["-j", "link", "show", bridge])?;
    let value: serde_json::Value = serde_json::from_str(&json)?;
    value[0]["mtu"].as_u64().context("mtu")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_network_changes_mtu_and_masquerade_live_and_keeps_allocations() -> Result<()> {
    let (bed, mut client) = testbed().await?;
    let network = create(&mut client, "fan", OVERLAY).await?;
    let bridge = network.status.context("status")?.bridge;
    let mut allocated = BTreeSet::new();
    for id in ["c1", "c2", "c3"] {
        let a = allocate(&mut client, "fan", id, "", &[]).await?;
        allocated.insert(a.allocation.context("allocation")?.address);
    }
    assert_eq!(bridge_mtu(&bed, &bridge)?, 1480);
    assert!(nft_table(&bed, "fan")?.contains("masquerade"));
    let mut events = watch(&mut client, "fan", None).await?;

    let response = client
        .update_network(fan_e2e::update_request(
            "fan",
            &["mtu", "masquerade", "labels"],
            |s| {
                s.mtu = 1400;
                s.masquerade = Some(false);
                s.labels = [("team".to_string(), "blue".to_string())].into();
            },
        ))
        .await?
        .into_inner();
    assert!(response.changed);
    let updated = response.network.context("network")?;
    let spec = updated.spec.context("spec")?;
    assert_eq!(spec.mtu, 1400);
    assert_eq!(spec.masquerade, Some(false));
    assert_eq!(spec.labels.get("team").map(String::as_str), Some("blue"));
    assert_eq!(updated.status.context("status")?.allocated, 3);
    // In the kernel.
    assert_eq!(bridge_mtu(&bed, &bridge)?, 1400);
    assert!(!nft_table(&bed, "fan")?.contains("masquerade"));
    // Allocations intact, and they now carry the new MTU.
    let listed = client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: "fan".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocations;
    assert_eq!(
        listed
            .iter()
            .map(|a| a.address.clone())
            .collect::<BTreeSet<_>>(),
        allocated
    );
    assert!(listed.iter().all(|a| a.mtu == 1400));
    let event = next(&mut events).await?;
    assert_eq!(kind(&event), pb::EventKind::NetworkUpdated);
    assert_eq!(
        event.network.context("network")?.spec.context("spec")?.mtu,
        1400
    );

    // The same values again change nothing.
    let again = client
        .update_network(fan_e2e::update_request("fan", &["mtu"], |s| s.mtu = 1400))
        .await?
        .into_inner();
    assert!(!again.changed);

    // Masquerade back on.
    client
        .update_network(fan_e2e::update_request("fan", &["masquerade"], |s| {
            s.masquerade = Some(true)
        }))
        .await?;
    assert!(nft_table(&bed, "fan")?.contains("masquerade"));

    // Refusals, each with its reason; nothing changes.
    let first = allocated.iter().next().context("an address")?.clone();
    let last_octet: u32 = first.rsplit('.').next().context("octet")?.parse()?;
    let status = client
        .update_network(fan_e2e::update_request("fan", &["host_reserve"], |s| {
            s.host_reserve = Some(last_octet + 1)
        }))
        .await
        .err()
        .context("a reserve over an allocation must be refused")?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), "HOST_RESERVE_COVERS_ALLOCATION");
    let failure = status
        .get_details_precondition_failure()
        .context("PreconditionFailure")?;
    assert_eq!(
        failure.violations[0].r#type,
        "HOST_RESERVE_COVERS_ALLOCATION"
    );
    assert_eq!(failure.violations[0].subject, "networks/fan");

    let status = client
        .update_network(fan_e2e::update_request("fan", &["mtu"], |s| s.mtu = 9000))
        .await
        .err()
        .context("an mtu above the underlay's must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = status.get_details_bad_request().context("BadRequest")?;
    assert_eq!(bad.field_violations[0].field, "spec.mtu");

    let status = client
        .update_network(fan_e2e::update_request("fan", &["overlay"], |_| {}))
        .await
        .err()
        .context("a non-updatable field must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad = status.get_details_bad_request().context("BadRequest")?;
    assert_eq!(bad.field_violations[0].field, "update_mask.paths[0]");

    let status = client
        .update_network(pb::UpdateNetworkRequest {
            network_id: "fan".into(),
            spec: None,
            update_mask: None,
        })
        .await
        .err()
        .context("an empty mask must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);

    // A reserve that covers no allocation is accepted and kept.
    let status = client
        .update_network(fan_e2e::update_request("fan", &["host_reserve"], |s| {
            s.host_reserve = Some(1)
        }))
        .await?;
    assert!(!status.into_inner().changed);
    assert_eq!(bridge_mtu(&bed, &bridge)?, 1400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_says_created_and_refuses_a_different_request_by_reason() -> Result<()> {
    let (_bed, mut client) = testbed().await?;
    create(&mut client, "fan", OVERLAY).await?;
    let first = allocate(&mut client, "fan", "c1", "", &[("app", "web")]).await?;
    assert!(first.created);
    let address = first.allocation.context("allocation")?.address;
    let again = allocate(&mut client, "fan", "c1", "", &[("app", "web")]).await?;
    assert!(!again.created);
    assert_eq!(again.allocation.context("allocation")?.address, address);
    let same_address = allocate(&mut client, "fan", "c1", &address, &[("app", "web")]).await?;
    assert!(!same_address.created);
    // No labels: a plain retry, whatever the allocation carries.
    let retry = allocate(&mut client, "fan", "c1", "", &[]).await?;
    assert!(!retry.created);
    assert_eq!(retry.allocation.context("allocation")?.address, address);

    let status = allocate(&mut client, "fan", "c1", "", &[("app", "db")])
        .await
        .err()
        .context("other labels must be refused")?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), "OWNER_LABELS_DIFFER");
    assert_eq!(
        status
            .get_details_error_info()
            .context("info")?
            .metadata
            .get("field")
            .map(String::as_str),
        Some("labels")
    );

    let status = allocate(&mut client, "fan", "c1", "250.0.28.200", &[("app", "web")])
        .await
        .err()
        .context("another address must be refused")?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), "OWNER_HAS_OTHER_ADDRESS");
    let info = status.get_details_error_info().context("info")?;
    assert_eq!(
        info.metadata.get("field").map(String::as_str),
        Some("address")
    );
    assert_eq!(info.metadata.get("address"), Some(&address));
    assert_eq!(
        info.metadata.get("requested_address").map(String::as_str),
        Some("250.0.28.200")
    );

    let status = allocate(&mut client, "fan", "c2", &address, &[])
        .await
        .err()
        .context("another owner's address must be refused")?;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), "ADDRESS_HELD_BY_OTHER_OWNER");
    let failure = status
        .get_details_precondition_failure()
        .context("PreconditionFailure")?;
    assert_eq!(failure.violations[0].r#type, "ADDRESS_HELD_BY_OTHER_OWNER");
    Ok(())
}

async fn list_page(
    client: &mut Client,
    network: &str,
    container: &str,
    selector: &str,
    size: u32,
    token: &str,
) -> Result<pb::ListAllocationsResponse, tonic::Status> {
    client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: network.into(),
            page_size: size,
            page_token: token.into(),
            owner_container_id: container.into(),
            label_selector: selector.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_are_bound_to_their_request_and_filters_work_across_networks() -> Result<()> {
    let (_bed, mut client) = testbed().await?;
    create(&mut client, "a", "250.0.0.0/8").await?;
    create(&mut client, "b", "251.0.0.0/8").await?;
    for i in 0..5 {
        let app = if i % 2 == 0 { "web" } else { "db" };
        allocate(&mut client, "a", &format!("a{i}"), "", &[("app", app)]).await?;
        allocate(
            &mut client,
            "b",
            &format!("b{i}"),
            "",
            &[("app", app), ("tier", "x")],
        )
        .await?;
    }
    allocate(&mut client, "b", "shared", "", &[]).await?;
    allocate(&mut client, "a", "shared", "", &[]).await?;

    let page = list_page(&mut client, "a", "", "", 2, "").await?;
    assert_eq!(page.allocations.len(), 2);
    let token = page.next_page_token.clone();
    assert!(!token.is_empty());
    assert!(!token.contains("250."), "the token is opaque: {token}");
    // Another network's, another filter's, or a made-up token: refused.
    for (network, selector, token) in [
        ("b", "", token.as_str()),
        ("", "", token.as_str()),
        ("a", "app=web", token.as_str()),
        ("a", "", "250.0.28.4"),
    ] {
        let status = list_page(&mut client, network, "", selector, 2, token)
            .await
            .err()
            .context("a foreign token must be refused")?;
        assert_eq!(status.code(), Code::InvalidArgument, "{network} {selector}");
        let bad = status.get_details_bad_request().context("BadRequest")?;
        assert_eq!(bad.field_violations[0].field, "page_token");
    }
    // Its own request follows on.
    let rest = list_page(&mut client, "a", "", "", 100, &token).await?;
    assert_eq!(rest.allocations.len(), 4);

    // Across networks, in (network, address) order, paginated.
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut client, "", "", "", 3, &token).await?;
        all.extend(page.allocations);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all.len(), 12);
    let networks: Vec<&str> = all.iter().map(|a| a.network_id.as_str()).collect();
    assert_eq!(networks.iter().filter(|n| **n == "a").count(), 6);
    let mut sorted = networks.clone();
    sorted.sort();
    assert_eq!(networks, sorted);

    // Filters.
    let shared = list_page(&mut client, "", "shared", "", 100, "").await?;
    assert_eq!(
        shared
            .allocations
            .iter()
            .map(|a| a.network_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let web = list_page(&mut client, "", "", "app=web", 100, "").await?;
    assert_eq!(web.allocations.len(), 6);
    let web_b = list_page(&mut client, "b", "", "app=web,tier=x", 100, "").await?;
    assert_eq!(web_b.allocations.len(), 3);
    let none = list_page(&mut client, "a", "", "app=web,tier=x", 100, "").await?;
    assert!(none.allocations.is_empty());
    let status = list_page(&mut client, "a", "", "app", 100, "")
        .await
        .err()
        .context("a malformed selector must be refused")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status
            .get_details_bad_request()
            .context("BadRequest")?
            .field_violations[0]
            .field,
        "label_selector"
    );
    assert!(web.revision > 0);

    // Network pages too.
    let networks = client
        .list_networks(pb::ListNetworksRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(networks.networks.len(), 1);
    assert!(!networks.next_page_token.is_empty());
    let status = client
        .list_networks(pb::ListNetworksRequest {
            page_size: 1,
            page_token: "a".into(),
        })
        .await
        .err()
        .context("a raw id is not a token")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_updates_a_network_and_prints_events_as_they_come() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let (bed, mut client) = testbed().await?;
    let network = create(&mut client, "fan", OVERLAY).await?;
    let bridge = network.status.context("status")?.bridge;
    let target = format!("unix://{}", bed.host("h1").agent.socket.display());
    let cli = fan_e2e::binary("fan-client")?;

    // `watch -o json` prints one JSON object per line as events come; from
    // the list's revision, so nothing is missed before its stream opens.
    let revision = list_revision(&mut client, "fan").await?.to_string();
    let mut watcher = Command::new(&cli)
        .args([
            "--agent",
            &target,
            "-o",
            "json",
            "watch",
            "--network",
            "fan",
            "--from",
            &revision,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = watcher.stdout.take().context("stdout")?;
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .take(2)
            .collect::<std::io::Result<Vec<String>>>()
    });
    let out = bed.host("h1").fan_client(&[
        "-o",
        "json",
        "network",
        "update",
        "fan",
        "--mtu",
        "1300",
        "--masquerade=false",
        "--label",
        "team=blue",
    ])?;
    let shown: serde_json::Value = serde_json::from_slice(&out)?;
    assert_eq!(shown["spec"]["mtu"], 1300, "{shown}");
    assert_eq!(shown["spec"]["masquerade"], false, "{shown}");
    assert_eq!(shown["spec"]["labels"]["team"], "blue", "{shown}");
    assert_eq!(bridge_mtu(&bed, &bridge)?, 1300);
    allocate(&mut client, "fan", "c1", "", &[]).await?;

    let joined =
        tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(move || lines.join())).await;
    // Killing it also ends the reader should the lines never come.
    let _ = watcher.kill();
    let _ = watcher.wait();
    let lines = joined
        .context("fan-client watch printed no two events")??
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    assert_eq!(events[0]["kind"], "network-updated", "{lines:?}");
    assert_eq!(events[0]["spec"]["mtu"], 1300, "{lines:?}");
    assert_eq!(events[1]["kind"], "allocation-created", "{lines:?}");
    assert_eq!(events[1]["network_id"], "fan", "{lines:?}");
    assert!(events[1]["revision"].as_u64() > events[0]["revision"].as_u64());

    // A refusal by the CLI names its reason.
    let out = Command::new(&cli)
        .args([
            "--agent",
            &target,
            "network",
            "update",
            "fan",
            "--host-reserve",
            "5",
        ])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HOST_RESERVE_COVERS_ALLOCATION"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_is_reported_once_detected_and_once_repaired() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host_with("h1", HOST, &["--reconcile-interval", "1"], &[])?;
    let mut client = bed.host("h1").client().await?;
    let network = create(&mut client, "fan", OVERLAY).await?;
    let bridge = network.status.context("status")?.bridge;
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            network_id: "fan".into(),
            kinds: vec![
                pb::EventKind::DriftDetected as i32,
                pb::EventKind::DriftRepaired as i32,
            ],
            start_revision: None,
        })
        .await?
        .into_inner();
    // Break the agent's own bridge MTU; the next pass finds and repairs it.
    bed.host("h1")
        .netns
        .ip(&["link", "set", &bridge, "mtu", "1300"])?;
    let detected = next(&mut events).await?;
    assert_eq!(kind(&detected), pb::EventKind::DriftDetected);
    assert!(!detected.drifts.is_empty());
    println!("drift detected: {}", detected.reason);
    let repaired = next(&mut events).await?;
    assert_eq!(kind(&repaired), pb::EventKind::DriftRepaired);
    assert!(repaired.revision > detected.revision);
    assert_eq!(bridge_mtu(&bed, &bridge)?, 1480);
    Ok(())
}
