//! Durable state: networks and allocations in redb, with group commit.
//!
//! One writer thread owns the database and an in-memory copy of every network's
//! allocator. Requests reach it over a channel; it takes every request that is
//! waiting, applies them to memory, writes all their changes in ONE redb
//! transaction with immediate durability, and only then answers. Concurrent
//! clients therefore share one fsync instead of queueing for one each, and no
//! request is acknowledged before its change is on disk. If a commit fails,
//! memory is reloaded from disk and every request of the batch gets the error,
//! so memory never runs ahead of what is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fan_core::ipam::{Allocator, IpamError, SlicePool};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AgentError, Result};
use crate::model::{now_ms, AllocationRecord, NetworkRecord, Owner, Selector};

/// The on-disk layout version this agent reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.redb";
/// Most requests committed together in one transaction.
const MAX_BATCH: usize = 1024;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const ALLOCATIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("allocations");
const CURSORS: TableDefinition<&str, u32> = TableDefinition::new("cursors");

/// One network in memory: its record, its allocator and the allocation details.
#[derive(Debug)]
pub struct NetworkState {
    /// The persisted record.
    pub record: NetworkRecord,
    /// Who has which address; next-fit cursor.
    pub allocator: Allocator<Owner>,
    /// Allocation details by address, in address order.
    pub allocations: BTreeMap<Ipv4Addr, AllocationRecord>,
}

/// The in-memory copy of everything durable.
#[derive(Debug, Default)]
pub struct Memory {
    /// Networks by id.
    pub networks: BTreeMap<String, NetworkState>,
}

impl Memory {
    fn network(&self, id: &str) -> Result<&NetworkState> {
        self.networks
            .get(id)
            .ok_or_else(|| AgentError::network_not_found(id))
    }

    fn network_mut(&mut self, id: &str) -> Result<&mut NetworkState> {
        self.networks
            .get_mut(id)
            .ok_or_else(|| AgentError::network_not_found(id))
    }
}

/// A change to write in the batch's transaction.
#[derive(Debug)]
enum Mutation {
    PutNetwork(NetworkRecord),
    DeleteNetwork {
        id: String,
        addresses: Vec<Ipv4Addr>,
    },
    PutAllocation {
        network: String,
        record: AllocationRecord,
    },
    DeleteAllocation {
        network: String,
        address: Ipv4Addr,
    },
    PutCursor {
        network: String,
        cursor: Ipv4Addr,
    },
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type WriteJob = Box<dyn FnOnce(&mut Memory, &mut Vec<Mutation>) -> Completion + Send>;
type ReadJob = Box<dyn FnOnce(&Memory) + Send>;

enum Job {
    Write(WriteJob),
    Read(ReadJob),
}

/// The outcome of [`Store::create_network`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new network was stored.
    New(NetworkRecord),
    /// A network with the same spec already existed.
    Existing(NetworkRecord),
}

/// The outcome of [`Store::allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The allocation (the owner's existing one, if it had one).
    pub record: AllocationRecord,
    /// Whether this call allocated it.
    pub newly_allocated: bool,
    /// The network it belongs to (returned with it to save a second round trip).
    pub network: NetworkRecord,
}

/// Handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    path: Arc<PathBuf>,
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts the writer thread.
    /// Fails when another agent holds the database, or its schema is unknown.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::Storage(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path)
            .map_err(|e| AgentError::Storage(format!("open {}: {e}", path.display())))?;
        init_schema(&db)?;
        let memory = load(&db)?;
        let (jobs, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("fan-state".into())
            .spawn(move || writer_loop(db, memory, rx))
            .map_err(|e| AgentError::Storage(format!("start writer thread: {e}")))?;
        Ok(Store {
            jobs,
            path: Arc::new(path),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Memory) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |memory| {
            let _ = tx.send(f(memory));
        });
        self.jobs
            .send(Job::Read(job))
            .await
            .map_err(|_| AgentError::ShuttingDown)?;
        rx.await.map_err(|_| AgentError::ShuttingDown)
    }

    /// Runs `f` on the writer thread. `f` must either fail without touching
    /// memory or succeed having pushed every change it made to memory as a
    /// mutation; the reply is sent once those mutations are durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory, &mut Vec<Mutation>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |memory, mutations| {
            let outcome = f(memory, mutations);
            Box::new(move |committed: Result<()>| {
                let _ = tx.send(outcome.and_then(|value| committed.map(|()| value)));
            })
        });
        self.jobs
            .send(Job::Write(job))
            .await
            .map_err(|_| AgentError::ShuttingDown)?;
        rx.await.map_err(|_| AgentError::ShuttingDown)?
    }

    /// Every network record, in id order.
    pub async fn networks(&self) -> Result<Vec<NetworkRecord>> {
        self.read(|m| m.networks.values().map(|n| n.record.clone()).collect())
            .await
    }

    /// One network record.
    pub async fn network(&self, id: &str) -> Result<NetworkRecord> {
        let id = id.to_owned();
        self.read(move |m| m.network(&id).map(|n| n.record.clone()))
            .await?
    }

    /// Number of allocations and capacity of a network.
    pub async fn usage(&self, id: &str) -> Result<(u32, u32)> {
        let id = id.to_owned();
        self.read(move |m| {
            m.network(&id)
                .map(|n| (n.allocator.len() as u32, n.allocator.pool().capacity()))
        })
        .await?
    }

    /// Stores a new network, or returns the existing one when its spec is the
    /// same. `record.index` is assigned here (smallest free). Refuses a spec
    /// that differs from the stored one, and a bridge or overlay another
    /// network already uses.
    pub async fn create_network(&self, record: NetworkRecord) -> Result<Created> {
        self.write(move |memory, mutations| {
            if let Some(existing) = memory.networks.get(&record.id) {
                if existing.record.spec == record.spec {
                    return Ok(Created::Existing(existing.record.clone()));
                }
                return Err(AgentError::AlreadyExists {
                    message: format!(
                        "network {:?} already exists with a different spec: {}",
                        record.id,
                        existing.record.spec.differences(&record.spec).join(", ")
                    ),
                });
            }
            check_conflicts(memory, &record)?;
            let pool = SlicePool::new(record.slice, record.spec.host_reserve)
                .map_err(|e| AgentError::invalid("spec.host_reserve", e))?;
            let used: BTreeSet<u16> = memory.networks.values().map(|n| n.record.index).collect();
            let index = (1..=u16::MAX).find(|i| !used.contains(i)).ok_or_else(|| {
                AgentError::precondition("TOO_MANY_NETWORKS", "no free network index")
            })?;
            let record = NetworkRecord { index, ..record };
            memory.networks.insert(
                record.id.clone(),
                NetworkState {
                    record: record.clone(),
                    allocator: Allocator::new(pool),
                    allocations: BTreeMap::new(),
                },
            );
            mutations.push(Mutation::PutNetwork(record.clone()));
            Ok(Created::New(record))
        })
        .await
    }

    /// Deletes a network and its allocations. Refuses while allocations exist
    /// unless `force`. Returns the record and how many allocations went with it.
    pub async fn delete_network(&self, id: &str, force: bool) -> Result<(NetworkRecord, u32)> {
        let id = id.to_owned();
        self.write(move |memory, mutations| {
            let count = memory.network(&id)?.allocations.len();
            if count > 0 && !force {
                return Err(AgentError::precondition(
                    "NETWORK_IN_USE",
                    format!(
                        "network {id:?} still has {count} allocation(s); release them first or delete with force"
                    ),
                ));
            }
            let network = memory.networks.remove(&id).ok_or_else(|| AgentError::network_not_found(&id))?;
            mutations.push(Mutation::DeleteNetwork {
                id,
                addresses: network.allocations.keys().copied().collect(),
            });
            Ok((network.record, count as u32))
        })
        .await
    }

    /// Allocates an address for `owner` (its existing one if it has one).
    pub async fn allocate(
        &self,
        network: &str,
        owner: Owner,
        requested: Option<Ipv4Addr>,
        labels: BTreeMap<String, String>,
    ) -> Result<Allocated> {
        let network = network.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&network)?;
            let outcome = state
                .allocator
                .allocate(owner.clone(), requested)
                .map_err(|e| ipam_error(&network, e))?;
            if !outcome.newly_allocated {
                let record = state
                    .allocations
                    .get(&outcome.address)
                    .cloned()
                    .ok_or_else(|| {
                        AgentError::Storage(format!(
                            "network {network:?}: allocator and records disagree on {}",
                            outcome.address
                        ))
                    })?;
                return Ok(Allocated {
                    record,
                    newly_allocated: false,
                    network: state.record.clone(),
                });
            }
            let record = AllocationRecord {
                address: outcome.address,
                owner,
                labels,
                create_time_ms: now_ms(),
            };
            state.allocations.insert(outcome.address, record.clone());
            mutations.push(Mutation::PutAllocation {
                network: network.clone(),
                record: record.clone(),
            });
            push_cursor(state, &network, mutations);
            Ok(Allocated {
                record,
                newly_allocated: true,
                network: state.record.clone(),
            })
        })
        .await
    }

    /// Releases one allocation; `None` when there was none.
    pub async fn release(
        &self,
        network: &str,
        selector: Selector,
    ) -> Result<Option<AllocationRecord>> {
        let network = network.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&network)?;
            let address = match &selector {
                Selector::Owner(owner) => state.allocator.address_of(owner),
                Selector::Address(address) => state.allocator.owner_of(*address).map(|_| *address),
            };
            let Some(address) = address else {
                return Ok(None);
            };
            state.allocator.release_address(address);
            let record = state.allocations.remove(&address);
            mutations.push(Mutation::DeleteAllocation {
                network: network.clone(),
                address,
            });
            // Releasing can move the next-fit cursor (so the freed address goes last in line).
            push_cursor(state, &network, mutations);
            Ok(record)
        })
        .await
    }

    /// Releases every allocation whose owner is not in `valid` (or only lists
    /// them when `dry_run`).
    pub async fn garbage_collect(
        &self,
        network: &str,
        valid: BTreeSet<Owner>,
        dry_run: bool,
    ) -> Result<Vec<AllocationRecord>> {
        let network = network.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&network)?;
            let stale: Vec<AllocationRecord> = state
                .allocations
                .values()
                .filter(|a| !valid.contains(&a.owner))
                .cloned()
                .collect();
            if !dry_run {
                for record in &stale {
                    state.allocator.release_address(record.address);
                    state.allocations.remove(&record.address);
                    mutations.push(Mutation::DeleteAllocation {
                        network: network.clone(),
                        address: record.address,
                    });
                }
                push_cursor(state, &network, mutations);
            }
            Ok(stale)
        })
        .await
    }

    /// One allocation, by owner or address.
    pub async fn allocation(&self, network: &str, selector: Selector) -> Result<AllocationRecord> {
        let network = network.to_owned();
        self.read(move |m| {
            let state = m.network(&network)?;
            let address = match &selector {
                Selector::Owner(owner) => state.allocator.address_of(owner),
                Selector::Address(address) => Some(*address),
            };
            address
                .and_then(|a| state.allocations.get(&a).cloned())
                .ok_or_else(|| AgentError::NotFound {
                    resource: format!("allocation with {selector} in network {network:?}"),
                })
        })
        .await?
    }

    /// Up to `limit` allocations with addresses after `after`, and whether more follow.
    pub async fn allocations_page(
        &self,
        network: &str,
        after: Option<Ipv4Addr>,
        limit: usize,
    ) -> Result<(Vec<AllocationRecord>, bool)> {
        let network = network.to_owned();
        self.read(move |m| {
            let state = m.network(&network)?;
            let mut iter = match after {
                Some(after) => state
                    .allocations
                    .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
                None => state.allocations.range(..),
            }
            .map(|(_, record)| record.clone());
            let page: Vec<_> = iter.by_ref().take(limit).collect();
            Ok((page, iter.next().is_some()))
        })
        .await?
    }
}

/// Persists the allocator's next-fit cursor, so a restart does not hand a
/// just-released address out again at once.
fn push_cursor(state: &NetworkState, network: &str, mutations: &mut Vec<Mutation>) {
    if let Some(cursor) = state.allocator.cursor() {
        mutations.push(Mutation::PutCursor {
            network: network.to_owned(),
            cursor,
        });
    }
}

/// Refuses a network whose bridge or overlay collides with another network's.
fn check_conflicts(memory: &Memory, record: &NetworkRecord) -> Result<()> {
    for other in memory.networks.values().map(|n| &n.record) {
        if other.spec.bridge == record.spec.bridge {
            return Err(AgentError::precondition(
                "BRIDGE_IN_USE",
                format!(
                    "bridge {} is already used by network {:?}",
                    other.spec.bridge, other.id
                ),
            ));
        }
        let (a, b) = (other.spec.overlay, record.spec.overlay);
        if a.contains(b.network()) || b.contains(a.network()) {
            return Err(AgentError::precondition(
                "OVERLAY_IN_USE",
                format!("overlay {b} overlaps overlay {a} of network {:?}", other.id),
            ));
        }
    }
    Ok(())
}

/// Maps an allocator refusal to the domain error, naming the request field.
fn ipam_error(network: &str, err: IpamError) -> AgentError {
    match err {
        IpamError::Exhausted { .. } => AgentError::Exhausted {
            message: format!("network {network:?}: {err}"),
        },
        IpamError::Taken { .. } | IpamError::OwnerHasAddress { .. } => {
            AgentError::precondition("ADDRESS_TAKEN", format!("address: {err}"))
        }
        other => AgentError::invalid("address", other),
    }
}

fn storage(context: &str) -> impl Fn(redb::Error) -> AgentError + '_ {
    move |e| AgentError::Storage(format!("{context}: {e}"))
}

fn init_schema(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(|e| storage("begin")(e.into()))?;
    {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| storage("open meta")(e.into()))?;
        let version = meta
            .get("schema_version")
            .map_err(|e| storage("read schema version")(e.into()))?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(|e| storage("write schema version")(e.into()))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(AgentError::Storage(format!(
                    "state schema version {other} is not supported by this agent (it reads version {SCHEMA_VERSION})"
                )))
            }
        }
        // Create the other tables so read transactions can open them.
        txn.open_table(NETWORKS)
            .map_err(|e| storage("open networks")(e.into()))?;
        txn.open_table(ALLOCATIONS)
            .map_err(|e| storage("open allocations")(e.into()))?;
        txn.open_table(CURSORS)
            .map_err(|e| storage("open cursors")(e.into()))?;
    }
    txn.commit().map_err(|e| storage("commit schema")(e.into()))
}

/// Reads everything durable into memory.
fn load(db: &Database) -> Result<Memory> {
    let txn = db
        .begin_read()
        .map_err(|e| storage("begin read")(e.into()))?;
    let networks = txn
        .open_table(NETWORKS)
        .map_err(|e| storage("open networks")(e.into()))?;
    let allocations = txn
        .open_table(ALLOCATIONS)
        .map_err(|e| storage("open allocations")(e.into()))?;
    let cursors = txn
        .open_table(CURSORS)
        .map_err(|e| storage("open cursors")(e.into()))?;
    let mut memory = Memory::default();
    for entry in networks
        .iter()
        .map_err(|e| storage("scan networks")(e.into()))?
    {
        let (key, value) = entry.map_err(|e| storage("scan networks")(e.into()))?;
        let id = key.value().to_owned();
        let record: NetworkRecord = serde_json::from_slice(value.value())
            .map_err(|e| AgentError::Storage(format!("network {id:?}: corrupt record: {e}")))?;
        let mut details = BTreeMap::new();
        let range = allocations
            .range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX))
            .map_err(|e| storage("scan allocations")(e.into()))?;
        for entry in range {
            let (_, value) = entry.map_err(|e| storage("scan allocations")(e.into()))?;
            let allocation: AllocationRecord =
                serde_json::from_slice(value.value()).map_err(|e| {
                    AgentError::Storage(format!("network {id:?}: corrupt allocation: {e}"))
                })?;
            details.insert(allocation.address, allocation);
        }
        let cursor = cursors
            .get(id.as_str())
            .map_err(|e| storage("read cursor")(e.into()))?
            .map(|v| Ipv4Addr::from(v.value()));
        let pool = SlicePool::new(record.slice, record.spec.host_reserve)
            .map_err(|e| AgentError::Storage(format!("network {id:?}: {e}")))?;
        let allocator = Allocator::restore(
            pool,
            details.values().map(|a| (a.address, a.owner.clone())),
            cursor,
        )
        .map_err(|e| {
            AgentError::Storage(format!("network {id:?}: inconsistent allocations: {e}"))
        })?;
        memory.networks.insert(
            id,
            NetworkState {
                record,
                allocator,
                allocations: details,
            },
        );
    }
    Ok(memory)
}

/// Writes one batch of mutations in one durable transaction.
fn persist(db: &Database, mutations: &[Mutation]) -> Result<()> {
    let txn = db.begin_write().map_err(|e| storage("begin")(e.into()))?;
    {
        let mut networks = txn
            .open_table(NETWORKS)
            .map_err(|e| storage("open networks")(e.into()))?;
        let mut allocations = txn
            .open_table(ALLOCATIONS)
            .map_err(|e| storage("open allocations")(e.into()))?;
        let mut cursors = txn
            .open_table(CURSORS)
            .map_err(|e| storage("open cursors")(e.into()))?;
        for mutation in mutations {
            match mutation {
                Mutation::PutNetwork(record) => {
                    let bytes = serde_json::to_vec(record)
                        .map_err(|e| AgentError::Storage(format!("encode network: {e}")))?;
                    networks
                        .insert(record.id.as_str(), bytes.as_slice())
                        .map_err(|e| storage("write network")(e.into()))?;
                }
                Mutation::DeleteNetwork { id, addresses } => {
                    networks
                        .remove(id.as_str())
                        .map_err(|e| storage("delete network")(e.into()))?;
                    cursors
                        .remove(id.as_str())
                        .map_err(|e| storage("delete cursor")(e.into()))?;
                    for address in addresses {
                        allocations
                            .remove((id.as_str(), u32::from(*address)))
                            .map_err(|e| storage("delete allocation")(e.into()))?;
                    }
                }
                Mutation::PutAllocation { network, record } => {
                    let bytes = serde_json::to_vec(record)
                        .map_err(|e| AgentError::Storage(format!("encode allocation: {e}")))?;
                    allocations
                        .insert(
                            (network.as_str(), u32::from(record.address)),
                            bytes.as_slice(),
                        )
                        .map_err(|e| storage("write allocation")(e.into()))?;
                }
                Mutation::DeleteAllocation { network, address } => {
                    allocations
                        .remove((network.as_str(), u32::from(*address)))
                        .map_err(|e| storage("delete allocation")(e.into()))?;
                }
                Mutation::PutCursor { network, cursor } => {
                    cursors
                        .insert(network.as_str(), u32::from(*cursor))
                        .map_err(|e| storage("write cursor")(e.into()))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| storage("commit")(e.into()))
}

fn writer_loop(db: Database, mut memory: Memory, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut mutations = Vec::new();
        let mut completions = Vec::new();
        let mut reads = Vec::new();
        for job in batch {
            match job {
                Job::Write(write) => completions.push(write(&mut memory, &mut mutations)),
                // Reads run after the commit so they never see undurable changes.
                Job::Read(read) => reads.push(read),
            }
        }
        let committed = if mutations.is_empty() {
            Ok(())
        } else {
            persist(&db, &mutations)
        };
        if let Err(err) = &committed {
            tracing::error!(error = %err, requests = completions.len(), "state commit failed; reloading from disk");
            match load(&db) {
                Ok(reloaded) => memory = reloaded,
                Err(reload_err) => {
                    tracing::error!(error = %reload_err, "reloading state failed; stopping the state writer");
                    for completion in completions {
                        completion(Err(err.clone()));
                    }
                    return;
                }
            }
        }
        for completion in completions {
            completion(committed.clone());
        }
        for read in reads {
            read(&memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendChoice, NetworkSpec};
    use fan_dataplane::BackendKind;

    fn record(id: &str, overlay: &str, bridge: &str) -> NetworkRecord {
        NetworkRecord {
            id: id.into(),
            index: 0,
            spec: NetworkSpec {
                overlay: overlay.parse().unwrap(),
                underlay: "172.30.0.0/16".into(),
                host_reserve: 1,
                bridge: bridge.into(),
                mtu: 0,
                backend: BackendChoice::Auto,
                masquerade: true,
                anti_spoofing: true,
            },
            underlay_network: "172.30.0.0/16".parse().unwrap(),
            underlay_address: "172.30.0.28".parse().unwrap(),
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            slice: "250.0.28.0/24".parse().unwrap(),
            backend: BackendKind::Ebpf,
            create_time_ms: 1,
        }
    }

    fn owner(i: usize) -> Owner {
        Owner {
            container_id: format!("c{i}"),
            interface: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn allocations_survive_reopen_and_keep_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .create_network(record("fan", "250.0.0.0/8", "fan-250"))
                .await
                .unwrap();
            first = store
                .allocate("fan", owner(1), None, BTreeMap::new())
                .await
                .unwrap();
            assert_eq!(
                first.record.address,
                "250.0.28.2".parse::<Ipv4Addr>().unwrap()
            );
            store
                .allocate("fan", owner(2), None, BTreeMap::new())
                .await
                .unwrap();
            store
                .release("fan", Selector::Owner(owner(2)))
                .await
                .unwrap();
            drop(store);
            // The writer thread exits when the last handle drops; give it a moment to close the file.
            for _ in 0..100 {
                if Database::create(dir.path().join(DB_FILE)).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let again = store
            .allocation("fan", Selector::Owner(owner(1)))
            .await
            .unwrap();
        assert_eq!(again, first.record);
        // Next-fit continues after .3 (released), so .3 is not handed out at once.
        let next = store
            .allocate("fan", owner(3), None, BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(
            next.record.address,
            "250.0.28.4".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[tokio::test]
    async fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_network(record("fan", "250.0.0.0/8", "fan-250"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..15 {
                    let a = store
                        .allocate("fan", owner(t * 100 + i), None, BTreeMap::new())
                        .await;
                    got.push(a.unwrap().record.address);
                }
                got
            }));
        }
        let mut all = BTreeSet::new();
        for task in tasks {
            for address in task.await.unwrap() {
                assert!(all.insert(address), "{address} handed out twice");
            }
        }
        assert_eq!(all.len(), 240);
        assert_eq!(store.usage("fan").await.unwrap(), (240, 253));
    }

    #[tokio::test]
    async fn create_is_idempotent_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let created = store
            .create_network(record("fan", "250.0.0.0/8", "fan-250"))
            .await
            .unwrap();
        let Created::New(created) = created else {
            panic!("expected a new network")
        };
        assert_eq!(created.index, 1);
        let again = store
            .create_network(record("fan", "250.0.0.0/8", "fan-250"))
            .await
            .unwrap();
        assert_eq!(again, Created::Existing(created));
        let mut other = record("fan", "250.0.0.0/8", "fan-250");
        other.spec.host_reserve = 5;
        other.spec.mtu = 1400;
        match store.create_network(other).await {
            Err(AgentError::AlreadyExists { message }) => assert!(
                message.ends_with("different spec: host_reserve 1 -> 5, mtu auto -> 1400"),
                "{message}"
            ),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        let same_bridge = record("b", "251.0.0.0/8", "fan-250");
        assert!(matches!(
            store.create_network(same_bridge).await,
            Err(AgentError::FailedPrecondition {
                reason: "BRIDGE_IN_USE",
                ..
            })
        ));
        let overlapping = record("c", "250.1.0.0/16", "fan-x");
        assert!(matches!(
            store.create_network(overlapping).await,
            Err(AgentError::FailedPrecondition {
                reason: "OVERLAY_IN_USE",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn delete_refuses_allocations_unless_forced_and_gc_releases_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_network(record("fan", "250.0.0.0/8", "fan-250"))
            .await
            .unwrap();
        for i in 0..3 {
            store
                .allocate("fan", owner(i), None, BTreeMap::new())
                .await
                .unwrap();
        }
        let valid: BTreeSet<Owner> = [owner(1)].into();
        let dry = store
            .garbage_collect("fan", valid.clone(), true)
            .await
            .unwrap();
        assert_eq!(dry.len(), 2);
        assert_eq!(store.usage("fan").await.unwrap().0, 3);
        let released = store.garbage_collect("fan", valid, false).await.unwrap();
        assert_eq!(released.len(), 2);
        assert_eq!(store.usage("fan").await.unwrap().0, 1);
        assert!(matches!(
            store.delete_network("fan", false).await,
            Err(AgentError::FailedPrecondition {
                reason: "NETWORK_IN_USE",
                ..
            })
        ));
        let (_, released) = store.delete_network("fan", true).await.unwrap();
        assert_eq!(released, 1);
        assert!(matches!(
            store.network("fan").await,
            Err(AgentError::NotFound { .. })
        ));
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
