//! Crash storm: 16 clients allocate and release 10,000 times while the agent is
//! SIGKILLed at random moments and restarted 20 times. Afterwards every
//! acknowledged allocation exists exactly once, no address has two owners, and
//! every acknowledged release is free. An operation whose reply was lost to a
//! kill may or may not have happened; the client keeps retrying it (both calls
//! are idempotent per owner), exactly as a container runtime would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Result};
use fan_e2e::{Client, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;

const CLIENTS: usize = 16;
const OPERATIONS: usize = 10_000;
const _: () = assert!(OPERATIONS.is_multiple_of(CLIENTS));
const KILLS: usize = 20;
/// Owners each client cycles through: allocations and releases interleave.
const OWNERS_PER_CLIENT: usize = 24;

/// A tiny deterministic PRNG (xorshift64*), seeded and printed so a run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a client knows of one owner after its acknowledged operations.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Allocated(String),
    Free,
}

#[derive(Default)]
struct Counts {
    allocations_acked: AtomicU64,
    releases_acked: AtomicU64,
    retried: AtomicU64,
}

async fn connect(socket: &Path) -> Client {
    loop {
        if let Ok(channel) = fan_e2e::unix_channel(socket).await {
            return fan_proto::v1::fan_agent_service_client::FanAgentServiceClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one call until the agent acknowledges it; a lost reply is retried.
async fn until_acked<T, F, Fut>(
    socket: &Path,
    client: &mut Client,
    counts: &Counts,
    mut call: F,
) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call(client.clone()).await {
            Ok(value) => return Ok(value),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) =>
            {
                if Instant::now() > deadline {
                    return Err(anyhow!("agent unavailable for 60 s: {status}"));
                }
                counts.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                *client = connect(socket).await;
            }
            Err(status) => return Err(anyhow!("refused: {status}")),
        }
    }
}

async fn client_loop(
    id: usize,
    socket: PathBuf,
    operations: usize,
    seed: u64,
    counts: Arc<Counts>,
) -> Result<BTreeMap<String, Known>> {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut client = connect(&socket).await;
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    for _ in 0..operations {
        let owner = format!("storm-{id}-{}", rng.below(OWNERS_PER_CLIENT as u64));
        let allocated = matches!(known.get(&owner), Some(Known::Allocated(_)));
        let pb_owner = pb::Owner {
            container_id: owner.clone(),
            interface: String::new(),
        };
        if allocated {
            let request = pb::ReleaseAddressRequest {
                network_id: "storm".into(),
                selector: Some(pb::AllocationSelector {
                    selector: Some(pb::allocation_selector::Selector::Owner(pb_owner)),
                }),
                // A retried release whose first try committed finds nothing: that is success.
                allow_missing: true,
            };
            until_acked(&socket, &mut client, &counts, |mut c| {
                let request = request.clone();
                async move { c.release_address(request).await }
            })
            .await?;
            known.insert(owner, Known::Free);
            counts.releases_acked.fetch_add(1, Ordering::Relaxed);
        } else {
            let request = pb::AllocateAddressRequest {
                network_id: "storm".into(),
                owner: Some(pb_owner),
                ..Default::default()
            };
            let response = until_acked(&socket, &mut client, &counts, |mut c| {
                let request = request.clone();
                async move { c.allocate_address(request).await }
            })
            .await?;
            let address = response
                .into_inner()
                .allocation
                .map(|a| a.address)
                .unwrap_or_default();
            known.insert(owner, Known::Allocated(address));
            counts.allocations_acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(known)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_state_survives_twenty_sigkills_under_load() -> Result<()> {
    let seed = std::env::var("FAN_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("crash storm seed {seed} (FAN_STORM_SEED={seed} replays the client choices)");
    let mut bed = Testbed::new(24)?;
    // Reconcile off: the storm is about state, and every restart re-applies anyway.
    bed.add_host_with(
        "h7",
        "10.1.2.7".parse()?,
        &["--reconcile-interval", "0"],
        &[],
    )?;
    // /8 over /24: a /16 slice, so the storm never runs out of addresses.
    bed.create_network_everywhere("storm", "250.0.0.0/8", "10.1.2.0/24")
        .await?;
    let socket = bed.host("h7").agent.socket.clone();

    let counts = Arc::new(Counts::default());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        // 10,000 divides evenly among 16 clients.
        let operations = OPERATIONS / CLIENTS;
        let (socket, counts, finished) = (socket.clone(), counts.clone(), finished.clone());
        clients.push(tokio::spawn(async move {
            let result = client_loop(id, socket, operations, seed, counts).await;
            finished.fetch_add(1, Ordering::SeqCst);
            result
        }));
    }

    // The killer: 20 SIGKILLs at random moments while the clients run.
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut kills_under_load = 0;
    while kills < KILLS {
        if finished.load(Ordering::SeqCst) < CLIENTS {
            kills_under_load += 1;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        let host = bed.host_mut("h7");
        tokio::task::block_in_place(|| -> Result<()> {
            host.agent.kill9()?;
            host.start_agent()
        })?;
        kills += 1;
    }
    let mut known = BTreeMap::new();
    for client in clients {
        known.extend(client.await??);
    }

    // One last kill with no one talking, then check everything against the acks.
    let host = bed.host_mut("h7");
    tokio::task::block_in_place(|| -> Result<()> {
        host.agent.kill9()?;
        host.start_agent()
    })?;
    let mut client = bed.host("h7").client().await?;
    let listed = fan_e2e::all_allocations(&mut client, "storm", 1000).await?;
    let mut by_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut addresses = BTreeSet::new();
    for allocation in &listed {
        let owner = allocation
            .owner
            .as_ref()
            .map(|o| o.container_id.clone())
            .unwrap_or_default();
        assert!(
            addresses.insert(allocation.address.clone()),
            "address {} listed twice",
            allocation.address
        );
        by_owner
            .entry(owner)
            .or_default()
            .push(allocation.address.clone());
    }
    let mut lost = Vec::new();
    let mut resurrected = Vec::new();
    for (owner, state) in &known {
        let present = by_owner.get(owner).cloned().unwrap_or_default();
        assert!(present.len() <= 1, "{owner} holds {present:?}");
        match state {
            Known::Allocated(address) if present != vec![address.clone()] => {
                lost.push(format!("{owner}: acked {address}, found {present:?}"))
            }
            Known::Free if !present.is_empty() => {
                resurrected.push(format!("{owner}: released, found {present:?}"))
            }
            _ => {}
        }
    }
    let unknown_owners: Vec<_> = by_owner
        .keys()
        .filter(|o| !known.contains_key(*o))
        .collect();
    println!(
        "crash storm: {} operations by {CLIENTS} clients in {:.1} s, {KILLS} SIGKILLs + restarts ({kills_under_load} while clients ran, +1 at the end); \
         {} allocations and {} releases acknowledged, {} calls retried after a kill; \
         final: {} allocations held, {} owners known allocated, {} known free; \
         lost {}, resurrected {}, double-owned 0",
        OPERATIONS,
        started.elapsed().as_secs_f64(),
        counts.allocations_acked.load(Ordering::Relaxed),
        counts.releases_acked.load(Ordering::Relaxed),
        counts.retried.load(Ordering::Relaxed),
        listed.len(),
        known.values().filter(|k| matches!(k, Known::Allocated(_))).count(),
        known.values().filter(|k| matches!(k, Known::Free)).count(),
        lost.len(),
        resurrected.len(),
    );
    assert!(
        lost.is_empty(),
        "acknowledged allocations lost:\n{}",
        lost.join("\n")
    );
    assert!(
        resurrected.is_empty(),
        "acknowledged releases undone:\n{}",
        resurrected.join("\n")
    );
    assert!(
        unknown_owners.is_empty(),
        "allocations nobody asked for: {unknown_owners:?}"
    );
    assert_eq!(
        counts.allocations_acked.load(Ordering::Relaxed)
            + counts.releases_acked.load(Ordering::Relaxed),
        OPERATIONS as u64
    );
    Ok(())
}
