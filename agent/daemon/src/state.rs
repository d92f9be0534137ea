//! Durable state: networks and allocations in redb, with group commit.
//!
//! One [`Writer`] owns the database and an in-memory copy of every network's
//! allocator, behind a lock. A request queues itself and, if no commit is in
//! progress, leads one on its own thread (leader/follower group commit, no
//! hand-off to another thread): the leader takes every request that is
//! waiting, applies them to memory, writes all their changes in ONE frame of
//! the write-ahead log (`wal`: one write, one fdatasync), and only then
//! answers them; requests queued meanwhile just wait for the next round.
//! Concurrent clients therefore share one fdatasync instead of queueing for
//! one each, and no request is acknowledged before its change is on disk. A
//! background thread runs the idle checkpoints and the recovery retries. Checkpoints (one durable redb transaction) take the logged changes
//! into the database; the log is replayed at open.
//!
//! Every stored value is framed with a CRC-32 of its payload ([`seal`]) and
//! checked when loaded: a record that fails its check or does not decode stops
//! the start-up (its address could otherwise go to a second owner) until
//! `fan-agent --recover` quarantines it. A marker file written at first init
//! ([`MARKER_FILE`]) tells a new state directory from one whose database was
//! emptied or removed.
//!
//! If a commit fails (a full disk, an I/O error), the batch's changes are
//! undone in memory and every request of the batch gets UNAVAILABLE; the writer
//! then closes the database, reopens it, reloads memory from disk and probes
//! with a small write, retrying with backoff until the disk takes writes again.
//! Meanwhile changes fail fast with UNAVAILABLE, reads are served from memory,
//! and [`Store::health`] says why the store cannot write.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fan_core::ipam::{Allocator, IpamError, SlicePool};
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition,
};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};

use tokio::sync::{oneshot, watch};

use crate::error::{AgentError, Metadata, Reason, Resource, Result};
use crate::events::{Event, EventHub, EventKind};
use crate::model::{now_ms, AllocationRecord, NetworkRecord, Owner, Selector};

mod wal;
pub use wal::WAL_FILE;
use wal::{Op, Wal};

/// The on-disk layout version this agent writes. Version 1 (values without
/// checksums, cursors as bare integers) is migrated at open.
pub const SCHEMA_VERSION: u64 = 2;
/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.redb";
/// File written (and fsynced with the directory) once the state directory
/// holds a database: with it present, an empty or missing database means
/// lost state, not a new host.
pub const MARKER_FILE: &str = "initialized";
/// Container id prefix of the allocations that keep quarantined addresses
/// reserved (`fan-quarantine-<address>`, interface [`QUARANTINE_INTERFACE`]).
pub const QUARANTINE_OWNER_PREFIX: &str = "fan-quarantine-";
/// Interface of the quarantine reservations.
pub const QUARANTINE_INTERFACE: &str = "quarantine";
/// Most requests committed together in one transaction.
const MAX_BATCH: usize = 1024;
/// Bytes the writability probe writes (and then frees): enough new pages that
/// ordinary commits fit after it succeeds.
const PROBE_BYTES: usize = 256 * 1024;
/// First and longest wait between attempts to make the store writable again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// META key: drawn when the database is created; the log's frames carry it.
const WAL_EPOCH: &str = "wal_epoch";
/// META key: the sequence number of the last logged batch the database holds.
const WAL_SEQUENCE: &str = "wal_sequence";
/// Batches logged between two checkpoints at most: bounds the replay.
const CHECKPOINT_BATCHES: u32 = 1024;
/// Age of the oldest batch in the log that calls for a checkpoint: bounds
/// the redb pages a checkpoint writes and lets a full disk show soon, while
/// few requests (one in hundreds under load) wait behind a checkpoint.
const CHECKPOINT_AGE: Duration = Duration::from_millis(100);
/// A checkpoint follows this long without requests, so that an idle agent's
/// database file alone holds its state.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(50);
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const ALLOCATIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("allocations");
/// Schema 1's cursors: the address as a bare u32 (migrated to [`CURSORS`]).
const CURSORS_V1: TableDefinition<&str, u32> = TableDefinition::new("cursors");
const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors_v2");
/// Raw bytes of records that failed their check, keyed `<ms>/<kind>/<key>`.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its checksum frame.
    #[error("value is {len} bytes, shorter than its 4-byte checksum")]
    Truncated {
        /// The value's length.
        len: usize,
    },
    /// The checksum does not match the payload.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// CRC-32 stored with the value.
        stored: u32,
        /// CRC-32 of the payload as read.
        computed: u32,
    },
    /// The payload passed its checksum but does not decode or contradicts its key.
    #[error("{0}")]
    Invalid(String),
}

/// Frames a payload for storage: its CRC-32 (IEEE, little-endian), then the payload.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(payload.len() + 4);
    value.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    value.extend_from_slice(payload);
    value
}

/// Checks a value framed by [`seal`] and returns its payload.
pub fn unseal(value: &[u8]) -> std::result::Result<&[u8], RecordError> {
    let Some((head, payload)) = value.split_first_chunk::<4>() else {
        return Err(RecordError::Truncated { len: value.len() });
    };
    let stored = u32::from_le_bytes(*head);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    Ok(payload)
}

fn encode_json<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map(|payload| seal(&payload))
        .map_err(|e| AgentError::Storage(format!("encode {what}: {e}")))
}

fn decode_json<T: serde::de::DeserializeOwned>(
    value: &[u8],
) -> std::result::Result<T, RecordError> {
    serde_json::from_slice(unseal(value)?)
        .map_err(|e| RecordError::Invalid(format!("does not decode: {e}")))
}

fn decode_cursor(value: &[u8]) -> std::result::Result<Ipv4Addr, RecordError> {
    let payload = unseal(value)?;
    let bytes: [u8; 4] = payload
        .try_into()
        .map_err(|_| RecordError::Invalid(format!("cursor is {} bytes, not 4", payload.len())))?;
    Ok(Ipv4Addr::from(bytes))
}

/// One network in memory: its record, its allocator and the allocation details.
#[derive(Debug)]
pub struct NetworkMemory {
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
    pub networks: BTreeMap<String, NetworkMemory>,
    /// Allocations quarantined with a network that no longer exists, by
    /// network id: address → quarantine key. A network created again under
    /// that id starts with these addresses reserved.
    pub quarantined: BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
    /// The revision of the last committed event (the meta table's `revision`).
    pub revision: u64,
}

impl Memory {
    fn network(&self, id: &str) -> Result<&NetworkMemory> {
        self.networks
            .get(id)
            .ok_or_else(|| AgentError::network_not_found(id))
    }

    fn network_mut(&mut self, id: &str) -> Result<&mut NetworkMemory> {
        self.networks
            .get_mut(id)
            .ok_or_else(|| AgentError::network_not_found(id))
    }
}

/// A change to write in the batch's transaction. Each carries what undoing
/// it in memory needs, should the commit fail.
#[derive(Debug)]
enum Mutation {
    PutNetwork(NetworkRecord),
    /// The removed network, allocations included.
    DeleteNetwork(Box<NetworkMemory>),
    PutAllocation {
        network: String,
        record: AllocationRecord,
    },
    DeleteAllocation {
        network: String,
        address: Ipv4Addr,
        previous: Option<AllocationRecord>,
    },
    PutCursor {
        network: String,
        cursor: Ipv4Addr,
    },
    /// The network moved to another slice: new record, old cursor dropped.
    MoveNetwork {
        record: NetworkRecord,
        previous: Box<NetworkRecord>,
    },
    /// The network's spec changed in place (UpdateNetwork).
    UpdateNetwork {
        record: NetworkRecord,
        previous: Box<NetworkRecord>,
    },
    /// An event to number and publish once the batch commits; it writes only
    /// the revision counter.
    Event(Box<Event>),
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
/// A change request: given memory it applies itself and returns how to answer
/// once the commit is known; given an error (the store cannot write) it only answers.
type WriteJob = Box<
    dyn FnOnce(std::result::Result<(&mut Memory, &mut Vec<Mutation>), AgentError>) -> Completion
        + Send,
>;
type ReadJob = Box<dyn FnOnce(&Memory) + Send>;

enum Job {
    Write(WriteJob),
    Read(ReadJob),
    /// Checkpoint after the batch, then call this.
    Checkpoint(Box<dyn FnOnce() + Send>),
}

/// Whether the store can persist changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Commits succeed.
    Writable,
    /// The last commit or probe failed; changes are refused until one succeeds.
    Unwritable {
        /// The state directory and the error, e.g. "No space left on device (os error 28)".
        reason: String,
    },
}

impl StoreHealth {
    /// True while changes can be persisted.
    pub fn is_writable(&self) -> bool {
        matches!(self, StoreHealth::Writable)
    }
}

impl fmt::Display for StoreHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreHealth::Writable => f.write_str("writable"),
            StoreHealth::Unwritable { reason } => write!(f, "not writable: {reason}"),
        }
    }
}

/// How [`Store::open_with`] treats state it cannot trust.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Quarantine unreadable records (their addresses stay reserved) and
    /// accept an emptied database, instead of refusing to start.
    pub recover: bool,
    /// With `recover`: move a database redb cannot open aside
    /// (`state.redb.corrupt-<unix seconds>`) and start with empty state.
    pub move_aside_unopenable: bool,
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

/// What the requests and the background thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the background thread: jobs nobody leads, a kick, shutdown.
    wake: Condvar,
    /// Whoever holds it commits (the leader); others queue and wait.
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Queue {
    /// Jobs waiting for a leader, in arrival order (= commit order).
    jobs: Vec<Job>,
    /// The background thread has a timer to (re)arm: the log or the health changed.
    kick: bool,
    /// Every [`Store`] handle is gone.
    closed: bool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn push(&self, job: Job) {
        locked(&self.queue).jobs.push(job);
    }

    /// Becomes the leader if no commit is in progress (else the leader, or
    /// the next one, takes the queued jobs).
    fn try_lead(&self) -> Option<MutexGuard<'_, Writer>> {
        match self.writer.try_lock() {
            Ok(writer) => Some(writer),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Runs batches until the queue is empty (or after one batch when
    /// `once`), then gives up the lead.
    fn drain(&self, mut writer: MutexGuard<'_, Writer>, once: bool) {
        loop {
            let batch = {
                let mut queue = locked(&self.queue);
                if queue.jobs.len() <= MAX_BATCH {
                    std::mem::take(&mut queue.jobs)
                } else {
                    queue.jobs.drain(..MAX_BATCH).collect()
                }
            };
            if batch.is_empty() {
                break;
            }
            let timer = writer.timer();
            writer.run_batch(batch, once);
            let after = writer.timer();
            if (timer.is_none() && after.is_some()) || after == Some(Duration::ZERO) {
                locked(&self.queue).kick = true;
                self.wake.notify_one();
            }
            if once {
                break;
            }
        }
        drop(writer);
    }

    /// The background thread: idle checkpoints, recovery retries, jobs that
    /// no request leads ([`Store::note`]), and the last checkpoint once every
    /// handle is gone.
    fn background(&self) {
        let mut wait = None;
        loop {
            let closed = {
                let queue = locked(&self.queue);
                let idle = |q: &mut Queue| q.jobs.is_empty() && !q.kick && !q.closed;
                let mut queue = match wait {
                    None => self
                        .wake
                        .wait_while(queue, idle)
                        .unwrap_or_else(PoisonError::into_inner),
                    Some(wait) => {
                        self.wake
                            .wait_timeout_while(queue, wait, idle)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
                queue.kick = false;
                queue.closed
            };
            let mut writer = locked(&self.writer);
            if closed {
                let jobs = std::mem::take(&mut locked(&self.queue).jobs);
                if !jobs.is_empty() {
                    writer.run_batch(jobs, false);
                }
                // Every handle is gone: leave the database file holding everything.
                if writer.health.borrow().is_writable() {
                    writer.checkpoint();
                }
                return;
            }
            writer.tick();
            wait = writer.timer();
            self.drain(writer, false);
        }
    }
}

/// Closes the store when the last [`Store`] clone drops.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        locked(&self.0.queue).closed = true;
        self.0.wake.notify_one();
    }
}

/// Handle to the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Handle>,
    path: Arc<PathBuf>,
    dir: Arc<PathBuf>,
    health: watch::Receiver<StoreHealth>,
    events: Arc<EventHub>,
}

impl Store {
    /// Opens (or creates) the database in `dir` and starts the state thread,
    /// refusing state it cannot trust (see [`Store::open_with`]).
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, OpenOptions::default()).map(|(store, _)| store)
    }

    /// Opens (or creates) the database in `dir` and starts the state thread
    /// (idle checkpoints, recovery retries).
    ///
    /// The directory is made 0700 and the database and marker 0600 (looser
    /// modes are tightened, with a warning). Fails when another agent holds
    /// the database or its schema is unknown; without `options.recover`, also
    /// when the database is empty or missing although the marker says the
    /// directory was initialized, when redb cannot open it, or when a record
    /// fails its checksum or does not decode. With `recover`, such records are
    /// moved to the quarantine table (raw bytes kept) and the addresses they
    /// name stay reserved; the returned lines say what was done.
    pub fn open_with(dir: &Path, options: OpenOptions) -> Result<(Store, Vec<String>)> {
        let mut report = Vec::new();
        secure_dir(dir)?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let marker = read_marker(dir)?;
        let length = match std::fs::metadata(&path) {
            Ok(meta) => Some(meta.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(AgentError::Storage(format!("stat {}: {e}", path.display()))),
        };
        if let Some(id) = &marker {
            if matches!(length, None | Some(0)) {
                let what = if length.is_none() {
                    "missing"
                } else {
                    "empty (0 bytes)"
                };
                if !options.recover {
                    return Err(AgentError::StateCorrupt(format!(
                        "state database {} is {what}, but {} says this state directory was \
                         initialized (id {id}): every network and allocation it held is gone, and \
                         starting empty could hand out addresses that containers still use. \
                         Refusing to start. Restore the database from a backup, or run \
                         `fan-agent --recover --state-dir {}` to start with empty state \
                         (see \"State and recovery\" in the README).",
                        path.display(),
                        dir.join(MARKER_FILE).display(),
                        dir.display()
                    )));
                }
                let line = format!(
                    "recover: state database {} was {what} although the directory was \
                     initialized (id {id}); starting with EMPTY state: addresses held by running \
                     containers are unknown to the agent, recreate its networks and re-plug them",
                    path.display()
                );
                tracing::error!("{line}");
                report.push(line);
            }
        }
        if length.is_some() {
            secure_file(&path)?;
        }
        let db = match open_database(&path) {
            Ok(db) => db,
            Err(OpenFailure::Other(err)) => return Err(err),
            Err(OpenFailure::Unreadable(why)) => {
                if !(options.recover && options.move_aside_unopenable) {
                    return Err(AgentError::StateCorrupt(format!(
                        "state database {} cannot be opened: {why}. Refusing to start. Restore it \
                         from a backup, or run `fan-agent --recover --recover-move-aside \
                         --state-dir {}` to move it aside (kept as {DB_FILE}.corrupt-<time>) and \
                         start with EMPTY state (see \"State and recovery\" in the README).",
                        path.display(),
                        dir.display()
                    )));
                }
                let aside = dir.join(format!("{DB_FILE}.corrupt-{}", now_ms() / 1000));
                std::fs::rename(&path, &aside).map_err(|e| {
                    AgentError::Storage(format!(
                        "move {} to {}: {e}",
                        path.display(),
                        aside.display()
                    ))
                })?;
                sync_dir(dir)?;
                let line = format!(
                    "recover: MOVED the unreadable state database aside to {} ({why}); starting \
                     with EMPTY state: addresses held by running containers are unknown to the \
                     agent, recreate its networks and re-plug them",
                    aside.display()
                );
                tracing::error!("{line}");
                report.push(line);
                open_database(&path).map_err(OpenFailure::into_error)?
            }
        };
        init_schema(&db)?;
        if dir.join(WAL_FILE).exists() {
            secure_file(&dir.join(WAL_FILE))?;
        }
        let wal = Wal::open(dir).map_err(|e| {
            AgentError::Storage(format!("open {}: {e}", dir.join(WAL_FILE).display()))
        })?;
        // Batches acknowledged after the last checkpoint live in the log only.
        let (epoch, sequence) = replay(&db, &wal, Durability::Immediate)?;
        let mut scan = scan(&db)?;
        if !scan.problems.is_empty() {
            if !options.recover {
                let listed: Vec<String> = scan.problems.iter().map(|p| p.to_string()).collect();
                return Err(AgentError::StateCorrupt(format!(
                    "state database {} has {} unreadable record(s): {}. Refusing to start, so \
                     that no address whose record cannot be read is handed out again. Run \
                     `fan-agent --recover --state-dir {}` to quarantine them (their addresses \
                     stay reserved; see \"State and recovery\" in the README).",
                    path.display(),
                    scan.problems.len(),
                    listed.join("; "),
                    dir.display()
                )));
            }
            report.extend(quarantine(&db, &scan.problems)?);
            scan = self::scan(&db)?;
            if let Some(problem) = scan.problems.first() {
                return Err(AgentError::StateCorrupt(format!(
                    "state database {}: still unreadable after quarantine: {problem}",
                    path.display()
                )));
            }
        }
        if marker.is_none() {
            write_marker(dir)?;
        }
        let (health_tx, health) = watch::channel(StoreHealth::Writable);
        let events = Arc::new(EventHub::new(scan.memory.revision));
        let writer = Writer {
            events: events.clone(),
            _lock: lock,
            dir: dir.to_owned(),
            path: path.clone(),
            db: Some(db),
            wal,
            epoch,
            sequence,
            unchecked: 0,
            unchecked_since: Instant::now(),
            last_job: Instant::now(),
            pending: Vec::new(),
            memory: scan.memory,
            health: health_tx,
            retry_after: RETRY_FIRST,
            next_retry: Instant::now(),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            writer: Mutex::new(writer),
        });
        let background = shared.clone();
        std::thread::Builder::new()
            .name("fan-state".into())
            .spawn(move || background.background())
            .map_err(|e| AgentError::Storage(format!("start state thread: {e}")))?;
        Ok((
            Store {
                shared: Arc::new(Handle(shared)),
                path: Arc::new(path),
                dir: Arc::new(dir.to_owned()),
                health,
                events,
            },
            report,
        ))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The event history, fed by every commit.
    pub fn events(&self) -> Arc<EventHub> {
        self.events.clone()
    }

    /// Records an event that changes no stored record (a network's observed
    /// state, drift): it gets the next revision once committed. Fire and
    /// forget: dropped (with a log line) when the store cannot take it.
    pub fn note(&self, event: Event) {
        let job: WriteJob = Box::new(move |state| {
            if let Ok((_, mutations)) = state {
                mutations.push(Mutation::Event(Box::new(event)));
            }
            Box::new(|_| {})
        });
        // Sync callers: the background thread leads (or a leader takes it first).
        let shared = &self.shared.0;
        shared.push(Job::Write(job));
        shared.wake.notify_one();
    }

    /// Makes everything committed durable in the database file itself (the
    /// log emptied), so that the file alone holds the state: called when the
    /// agent stops. Acknowledged changes are durable without it.
    pub async fn checkpoint(&self) {
        let (tx, rx) = oneshot::channel();
        let job = Job::Checkpoint(Box::new(move || {
            let _ = tx.send(());
        }));
        self.submit(job);
        let _ = rx.await;
    }

    /// Queues `job` and, unless a commit is in progress (its leader, or the
    /// next, runs the job), commits one batch on this thread: every job
    /// queued so far, this one included, so the caller's reply is ready
    /// without a wake-up. Jobs queued meanwhile go to the state thread,
    /// which leads until the queue is empty: under load one thread batches
    /// and no caller's reply waits behind other callers' batches.
    fn submit(&self, job: Job) {
        let shared = &self.shared.0;
        shared.push(job);
        // Followers skip the blocking section: they only await their reply.
        if let Some(writer) = shared.try_lead() {
            // On the worker itself: one write and one fdatasync (~0.1 ms),
            // cheaper than handing the core to another thread
            // (block_in_place, measured no faster than the old writer
            // thread). Checkpoints and recovery, which can take long, are
            // left to the state thread (see `Writer::run_batch`).
            shared.drain(writer, true);
            // Checked after the lead is given up: a job queued while it was
            // held (its submitter could not lead) is never left behind.
            if !locked(&shared.queue).jobs.is_empty() {
                shared.wake.notify_one();
            }
        }
    }

    /// Whether the store can write, and why not; changes whenever that does.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Memory) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |memory| {
            let _ = tx.send(f(memory));
        });
        self.submit(Job::Read(job));
        rx.await.map_err(|_| AgentError::ShuttingDown)
    }

    /// Runs `f` in a batch, under the writer lock. `f` must either fail without touching
    /// memory or succeed having pushed every change it made to memory as a
    /// mutation; the reply is sent once those mutations are durable. While the
    /// store cannot write, fails at once with UNAVAILABLE and `f` never runs.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory, &mut Vec<Mutation>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let StoreHealth::Unwritable { reason } = &*self.health.borrow() {
            return Err(unwritable(&self.dir, reason));
        }
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |state| {
            let outcome = match state {
                Ok((memory, mutations)) => f(memory, mutations),
                Err(err) => Err(err),
            };
            Box::new(move |committed: Result<()>| {
                let _ = tx.send(outcome.and_then(|value| committed.map(|()| value)));
            })
        });
        self.submit(Job::Write(job));
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
                    resource: Resource::network(&record.id),
                    metadata: Metadata::from([("network_id", record.id.clone())]),
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
                AgentError::precondition(Reason::TooManyNetworks, "no free network index")
                    .with("network_id", &record.id)
            })?;
            let record = NetworkRecord { index, ..record };
            let mut state = NetworkMemory {
                record: record.clone(),
                allocator: Allocator::new(pool),
                allocations: BTreeMap::new(),
            };
            mutations.push(Mutation::PutNetwork(record.clone()));
            // Addresses quarantined with an earlier network of this id stay out of circulation.
            for (address, key) in memory.quarantined.get(&record.id).into_iter().flatten() {
                let reserved = reservation(
                    *address,
                    "quarantined with an earlier network of this id",
                    key,
                );
                if pool.is_assignable(*address)
                    && state
                        .allocator
                        .allocate(reserved.owner.clone(), Some(*address))
                        .is_ok()
                {
                    state.allocations.insert(*address, reserved.clone());
                    mutations.push(Mutation::PutAllocation {
                        network: record.id.clone(),
                        record: reserved,
                    });
                }
            }
            memory.networks.insert(record.id.clone(), state);
            mutations.push(Mutation::Event(Box::new(Event::new(
                EventKind::NetworkCreated,
                &record,
            ))));
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
                    Reason::NetworkInUse,
                    format!(
                        "network {id:?} still has {count} allocation(s); release them first or delete with force"
                    ),
                )
                .with("network_id", &id));
            }
            let network = memory.networks.remove(&id).ok_or_else(|| AgentError::network_not_found(&id))?;
            let record = network.record.clone();
            for allocation in network.allocations.values() {
                mutations.push(Mutation::Event(Box::new(Event::allocation(EventKind::AllocationReleased, &record, allocation))));
            }
            mutations.push(Mutation::Event(Box::new(Event::new(EventKind::NetworkDeleted, &record))));
            mutations.push(Mutation::DeleteNetwork(Box::new(network)));
            Ok((record, count as u32))
        })
        .await
    }

    /// Moves a network to another slice (its host's underlay address
    /// changed): stores `moved` durably and rebuilds the allocator from the
    /// allocations inside the new slice. The others stay recorded as stale;
    /// they are never handed out again while the network is on this slice.
    pub async fn move_network(&self, moved: NetworkRecord) -> Result<NetworkRecord> {
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&moved.id)?;
            let pool = SlicePool::new(moved.slice, moved.spec.host_reserve)
                .map_err(|e| AgentError::Storage(format!("network {:?}: {e}", moved.id)))?;
            let allocator = Allocator::restore(
                pool,
                state
                    .allocations
                    .values()
                    .filter(|a| moved.slice.contains(a.address))
                    .map(|a| (a.address, a.owner.clone())),
                None,
            )
            .map_err(|e| {
                AgentError::Storage(format!(
                    "network {:?}: inconsistent allocations: {e}",
                    moved.id
                ))
            })?;
            state.allocator = allocator;
            let previous = std::mem::replace(&mut state.record, moved.clone());
            mutations.push(Mutation::MoveNetwork {
                record: moved.clone(),
                previous: Box::new(previous),
            });
            let mut event = Event::new(EventKind::NetworkUpdated, &moved);
            event.reason = format!(
                "the host's underlay address changed: moved to slice {}",
                moved.slice
            );
            mutations.push(Mutation::Event(Box::new(event)));
            Ok(moved)
        })
        .await
    }

    /// Changes a network's record in place (UpdateNetwork): `change` gets
    /// the stored record and returns the new one, or refuses. A new
    /// host_reserve that would cover an allocated address is refused with
    /// HOST_RESERVE_COVERS_ALLOCATION; allocations are kept. Returns the
    /// record and whether anything changed (no event when nothing did).
    pub async fn update_network(
        &self,
        id: &str,
        change: impl FnOnce(&NetworkRecord) -> Result<NetworkRecord> + Send + 'static,
    ) -> Result<(NetworkRecord, bool)> {
        let id = id.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&id)?;
            let updated = change(&state.record)?;
            if updated == state.record {
                return Ok((updated, false));
            }
            if updated.spec.host_reserve != state.record.spec.host_reserve {
                let pool = SlicePool::new(updated.slice, updated.spec.host_reserve)
                    .map_err(|e| AgentError::invalid("network.spec.host_reserve", e))?;
                let covered: Vec<String> = state
                    .allocations
                    .values()
                    .filter(|a| updated.slice.contains(a.address) && !pool.is_assignable(a.address))
                    .map(|a| format!("{} ({})", a.address, a.owner))
                    .collect();
                if let Some(first) = state
                    .allocations
                    .values()
                    .find(|a| updated.slice.contains(a.address) && !pool.is_assignable(a.address))
                {
                    return Err(AgentError::precondition(
                        Reason::HostReserveCoversAllocation,
                        format!(
                            "network.spec.host_reserve: {} would reserve allocated address(es) {} for the host; release them first",
                            updated.spec.host_reserve,
                            covered.join(", ")
                        ),
                    )
                    .with("network_id", &id)
                    .with("address", first.address));
                }
                state.allocator = Allocator::restore(
                    pool,
                    state
                        .allocations
                        .values()
                        .filter(|a| updated.slice.contains(a.address))
                        .map(|a| (a.address, a.owner.clone())),
                    state.allocator.cursor(),
                )
                .map_err(|e| AgentError::Storage(format!("network {id:?}: {e}")))?;
            }
            let previous = std::mem::replace(&mut state.record, updated.clone());
            mutations.push(Mutation::UpdateNetwork {
                record: updated.clone(),
                previous: Box::new(previous),
            });
            mutations.push(Mutation::Event(Box::new(Event::new(EventKind::NetworkUpdated, &updated))));
            Ok((updated, true))
        })
        .await
    }

    /// Every network record in id order, with the revision they reflect.
    pub async fn networks_at(&self) -> Result<(Vec<NetworkRecord>, u64)> {
        self.read(|m| {
            (
                m.networks.values().map(|n| n.record.clone()).collect(),
                m.revision,
            )
        })
        .await
    }

    /// Up to `limit` allocations passing `keep`, in (network id, address)
    /// order after `after`, of one network (or all when `network` is
    /// None); whether more follow; and the revision they reflect.
    #[allow(clippy::type_complexity)]
    pub async fn list_allocations(
        &self,
        network: Option<String>,
        after: Option<(String, Ipv4Addr)>,
        keep: impl Fn(&AllocationRecord) -> bool + Send + 'static,
        limit: usize,
    ) -> Result<(Vec<(NetworkRecord, AllocationRecord)>, bool, u64)> {
        self.read(move |m| {
            if let Some(id) = &network {
                m.network(id)?;
            }
            let mut iter = m
                .networks
                .values()
                .filter(|n| network.as_ref().is_none_or(|id| *id == n.record.id))
                .flat_map(|n| n.allocations.values().map(move |a| (&n.record, a)))
                .filter(|(n, a)| match &after {
                    Some((id, address)) => (&n.id, a.address) > (id, *address),
                    None => true,
                })
                .filter(|(_, a)| keep(a))
                .map(|(n, a)| (n.clone(), a.clone()));
            let page: Vec<_> = iter.by_ref().take(limit).collect();
            Ok((page, iter.next().is_some(), m.revision))
        })
        .await?
    }

    /// How many of a network's allocations are stale (outside its slice).
    pub async fn stale_count(&self, id: &str) -> Result<u32> {
        let id = id.to_owned();
        self.read(move |m| {
            m.network(&id)
                .map(|n| (n.allocations.len() - n.allocator.len()) as u32)
        })
        .await?
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
                .map_err(|e| {
                    ipam_error(&network, e)
                        .with("container_id", &owner.container_id)
                        .with("interface", &owner.interface)
                })?;
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
                // No labels in the request: a plain retry, whatever the
                // allocation carries. Labels given must match exactly.
                if !labels.is_empty() && record.labels != labels {
                    return Err(AgentError::precondition(
                        Reason::OwnerLabelsDiffer,
                        format!(
                            "labels: owner {} already holds {} with labels {:?}; labels are fixed at allocation time (release and allocate again to change them)",
                            owner, record.address, record.labels
                        ),
                    )
                    .with("network_id", &network)
                    .with("address", record.address)
                    .with("container_id", &owner.container_id)
                    .with("interface", &owner.interface)
                    .with("field", "labels"));
                }
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
            mutations.push(Mutation::Event(Box::new(Event::allocation(EventKind::AllocationCreated, &state.record, &record))));
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
            // Stale allocations (outside the slice, not in the allocator) go
            // too: by address, or every one of the owner's.
            let stale: Vec<Ipv4Addr> = state
                .allocations
                .values()
                .filter(|a| !state.record.slice.contains(a.address))
                .filter(|a| match &selector {
                    Selector::Owner(owner) => a.owner == *owner,
                    Selector::Address(address) => a.address == *address,
                })
                .map(|a| a.address)
                .collect();
            let mut record = None;
            for address in &stale {
                let removed = remove_allocation(
                    state,
                    &network,
                    *address,
                    EventKind::AllocationReleased,
                    None,
                    mutations,
                );
                record = record.or(removed);
            }
            let Some(address) = address else {
                return Ok(record);
            };
            state.allocator.release_address(address);
            let removed = remove_allocation(
                state,
                &network,
                address,
                EventKind::AllocationReleased,
                None,
                mutations,
            );
            let record = removed.or(record);
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
                    remove_allocation(
                        state,
                        &network,
                        record.address,
                        EventKind::AllocationCollected,
                        None,
                        mutations,
                    );
                }
                push_cursor(state, &network, mutations);
            }
            Ok(stale)
        })
        .await
    }

    /// Replaces the labels of the allocation of `owner` at `address`
    /// (durably, group-committed like any change). Fails with NOT_FOUND
    /// when `owner` does not hold `address`: a DHCP lease is only ever
    /// extended for the client that holds it.
    pub async fn relabel(
        &self,
        network: &str,
        owner: Owner,
        address: Ipv4Addr,
        labels: BTreeMap<String, String>,
    ) -> Result<AllocationRecord> {
        let network = network.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&network)?;
            let selector = Selector::Owner(owner.clone());
            if state.allocator.address_of(&owner) != Some(address) {
                return Err(AgentError::allocation_not_found(&network, &selector));
            }
            let record = state
                .allocations
                .get_mut(&address)
                .ok_or_else(|| AgentError::allocation_not_found(&network, &selector))?;
            let previous = record.clone();
            record.labels = labels;
            let record = record.clone();
            // Delete then put, so that a failed commit's undo restores the
            // previous record instead of dropping it.
            mutations.push(Mutation::DeleteAllocation {
                network: network.clone(),
                address,
                previous: Some(previous),
            });
            mutations.push(Mutation::PutAllocation {
                network: network.clone(),
                record: record.clone(),
            });
            Ok(record)
        })
        .await
    }

    /// Releases, in one transaction, every allocation of `network` that
    /// `pick` selects (e.g. expired DHCP leases); returns them. Each release
    /// is an `AllocationReleased` event carrying `why`.
    pub async fn release_where(
        &self,
        network: &str,
        why: &'static str,
        pick: impl Fn(&AllocationRecord) -> bool + Send + 'static,
    ) -> Result<Vec<AllocationRecord>> {
        let network = network.to_owned();
        self.write(move |memory, mutations| {
            let state = memory.network_mut(&network)?;
            let picked: Vec<AllocationRecord> = state
                .allocations
                .values()
                .filter(|a| pick(a))
                .cloned()
                .collect();
            if picked.is_empty() {
                return Ok(picked);
            }
            for record in &picked {
                state.allocator.release_address(record.address);
                remove_allocation(
                    state,
                    &network,
                    record.address,
                    EventKind::AllocationReleased,
                    Some(why),
                    mutations,
                );
            }
            push_cursor(state, &network, mutations);
            Ok(picked)
        })
        .await
    }

    /// One allocation, by owner or address.
    pub async fn allocation(&self, network: &str, selector: Selector) -> Result<AllocationRecord> {
        let network = network.to_owned();
        self.read(move |m| {
            let state = m.network(&network)?;
            let address = match &selector {
                // The owner's valid address, else a stale one it still holds.
                Selector::Owner(owner) => state.allocator.address_of(owner).or_else(|| {
                    state
                        .allocations
                        .values()
                        .find(|a| a.owner == *owner)
                        .map(|a| a.address)
                }),
                Selector::Address(address) => Some(*address),
            };
            address
                .and_then(|a| state.allocations.get(&a).cloned())
                .ok_or_else(|| AgentError::allocation_not_found(&network, &selector))
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
/// Takes the allocation at `address` out of memory and queues its delete and,
/// when there was one, its `kind` event (with `why` as the event's reason).
/// The allocator is the caller's business (stale addresses are not in it).
fn remove_allocation(
    state: &mut NetworkMemory,
    network: &str,
    address: Ipv4Addr,
    kind: EventKind,
    why: Option<&str>,
    mutations: &mut Vec<Mutation>,
) -> Option<AllocationRecord> {
    let removed = state.allocations.remove(&address);
    if let Some(removed) = &removed {
        let mut event = Event::allocation(kind, &state.record, removed);
        if let Some(why) = why {
            event.reason = why.to_owned();
        }
        mutations.push(Mutation::Event(Box::new(event)));
    }
    mutations.push(Mutation::DeleteAllocation {
        network: network.to_owned(),
        address,
        previous: removed.clone(),
    });
    removed
}

fn push_cursor(state: &NetworkMemory, network: &str, mutations: &mut Vec<Mutation>) {
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
                Reason::BridgeInUse,
                format!(
                    "bridge {} is already used by network {:?}",
                    other.spec.bridge, other.id
                ),
            )
            .with("network_id", &record.id)
            .with("bridge", &other.spec.bridge)
            .with("other_network_id", &other.id));
        }
        let (a, b) = (other.spec.overlay, record.spec.overlay);
        if a.contains(b.network()) || b.contains(a.network()) {
            return Err(AgentError::precondition(
                Reason::OverlayInUse,
                format!("overlay {b} overlaps overlay {a} of network {:?}", other.id),
            )
            .with("network_id", &record.id)
            .with("overlay", b)
            .with("other_network_id", &other.id));
        }
    }
    Ok(())
}

/// Maps an allocator refusal to the domain error, naming the request field.
fn ipam_error(network: &str, err: IpamError) -> AgentError {
    match err {
        IpamError::Exhausted { .. } => AgentError::Exhausted {
            message: format!("network {network:?}: {err}"),
            metadata: Metadata::from([("network_id", network.to_owned())]),
        },
        IpamError::Taken { address } => {
            AgentError::precondition(Reason::AddressHeldByOtherOwner, format!("address: {err}"))
                .with("network_id", network)
                .with("address", address)
        }
        IpamError::OwnerHasAddress { address, requested } => {
            AgentError::precondition(Reason::OwnerHasOtherAddress, format!("address: {err}"))
                .with("network_id", network)
                .with("address", address)
                .with("requested_address", requested)
                .with("field", "address")
        }
        other => AgentError::invalid("address", other),
    }
}

/// Names the step a redb call failed in: `Storage("<what>: <error>")`.
trait StorageContext<T> {
    fn storage(self, what: &str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> StorageContext<T> for std::result::Result<T, E> {
    fn storage(self, what: &str) -> Result<T> {
        self.map_err(|e| AgentError::Storage(format!("{what}: {}", e.into())))
    }
}

/// The error of a change refused because the state directory takes no writes.
fn unwritable(dir: &Path, reason: &str) -> AgentError {
    AgentError::Unavailable {
        reason: crate::reason::Reason::StateUnwritable,
        message: format!(
            "state directory {} is not writable ({reason}): changes are refused until it is \
             (reads still work; the agent retries by itself), nothing was changed",
            dir.display()
        ),
    }
}

/// Creates the state directory 0700, or tightens an existing looser one.
fn secure_dir(dir: &Path) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        AgentError::Storage(format!("{what} state directory {}: {e}", dir.display()))
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create", e))?;
    }
    tighten(dir, 0o700).map_err(|e| fail("secure", e))
}

/// Takes an exclusive lock on the state directory: one agent per directory.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let handle = std::fs::File::open(dir)
        .map_err(|e| AgentError::Storage(format!("open {}: {e}", dir.display())))?;
    nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                AgentError::Storage(format!(
                    "state directory {} is in use by another agent (only one agent may use a state directory)",
                    dir.display()
                ))
            } else {
                AgentError::Storage(format!("lock {}: {errno}", dir.display()))
            }
        },
    )
}

/// Tightens an existing file to 0600.
fn secure_file(path: &Path) -> Result<()> {
    tighten(path, 0o600).map_err(|e| AgentError::Storage(format!("secure {}: {e}", path.display())))
}

/// Sets `mode` when group or others have any access, saying so.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "state path was mode {current:04o} (readable by other users); tightening it to {mode:04o}"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::Storage(format!("fsync {}: {e}", dir.display())))
}

/// The id in the marker file, if the directory was initialized.
fn read_marker(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            secure_file(&path)?;
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap_or("unknown")
                .trim()
                .to_owned();
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::Storage(format!("read {}: {e}", path.display()))),
    }
}

/// A unique number: from urandom, else time and pid (unique enough: an id,
/// not a secret).
fn random_u64() -> u64 {
    let mut random = [0u8; 8];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
    {
        Ok(()) => u64::from_le_bytes(random),
        Err(_) => now_ms() << 20 ^ u64::from(std::process::id()),
    }
}

/// Writes the marker (0600) durably: temporary file, fsync, rename, fsync of the directory.
fn write_marker(dir: &Path) -> Result<String> {
    let path = dir.join(MARKER_FILE);
    let tmp = dir.join(format!("{MARKER_FILE}.tmp"));
    let id = format!("{:016x}", random_u64());
    let text = format!(
        "fan-agent state directory: with this file present, an empty or missing {DB_FILE} \
         means lost state, and the agent refuses to start (see fan-agent --recover)\n\
         id: {id}\ncreated_ms: {}\n",
        now_ms()
    );
    let fail = |e: std::io::Error| AgentError::Storage(format!("write {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    sync_dir(dir)?;
    Ok(id)
}

/// Why the database could not be opened.
enum OpenFailure {
    /// The file is not a database redb can read: corruption, not a passing condition.
    Unreadable(String),
    /// Held by another agent, permissions, I/O: reported as is.
    Other(AgentError),
}

impl OpenFailure {
    fn into_error(self) -> AgentError {
        match self {
            OpenFailure::Unreadable(why) => AgentError::StateCorrupt(why),
            OpenFailure::Other(err) => err,
        }
    }
}

/// Opens (or creates, mode 0600) the database, checking every page's checksum.
fn open_database(path: &Path) -> std::result::Result<Database, OpenFailure> {
    let other = |e: String| {
        OpenFailure::Other(AgentError::Storage(format!("open {}: {e}", path.display())))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| other(e.to_string()))?;
    // redb may panic on a file altered outside it (debug builds assert); that
    // is an unreadable database, not a crash of the agent.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Database::builder()
            .set_check_integrity_on_open(true)
            .create_with_backend(redb::backends::FileBackend::new(file)?)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(other(
            "another agent holds this database (only one agent may use a state directory)".into(),
        )),
        Ok(Err(DatabaseError::Storage(StorageError::Io(e))))
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(other(e.to_string()))
        }
        Ok(Err(e)) => Err(OpenFailure::Unreadable(e.to_string())),
        Err(_) => Err(OpenFailure::Unreadable(
            "redb failed while reading it (the file is damaged)".into(),
        )),
    }
}

/// Creates the tables of a new database, migrates schema 1, refuses other versions.
fn init_schema(db: &Database) -> Result<()> {
    let txn = db.begin_write().storage("begin")?;
    {
        let mut meta = txn.open_table(META).storage("open meta")?;
        let version = meta
            .get("schema_version")
            .storage("read schema version")?
            .map(|v| v.value());
        match version {
            None | Some(SCHEMA_VERSION) => {}
            Some(1) => {
                migrate_v1(&txn)?;
                tracing::info!(
                    from = 1,
                    to = SCHEMA_VERSION,
                    "state migrated: every record now carries a checksum"
                );
            }
            Some(other) => {
                return Err(AgentError::Storage(format!(
                    "state schema version {other} is not supported by this agent (it reads versions 1 and {SCHEMA_VERSION})"
                )))
            }
        }
        meta.insert("schema_version", SCHEMA_VERSION)
            .storage("write schema version")?;
        if meta.get(WAL_EPOCH).storage("read log epoch")?.is_none() {
            meta.insert(WAL_EPOCH, random_u64().max(1))
                .storage("write log epoch")?;
        }
        // Create the other tables so read transactions can open them.
        txn.open_table(NETWORKS).storage("open networks")?;
        txn.open_table(ALLOCATIONS).storage("open allocations")?;
        txn.open_table(CURSORS).storage("open cursors")?;
        txn.open_table(QUARANTINE).storage("open quarantine")?;
    }
    txn.commit().storage("commit schema")
}

/// Schema 1 → 2, inside the caller's transaction: every network and
/// allocation value gets its checksum frame (the payload is kept byte for
/// byte, so a record that was already damaged still fails to decode at load),
/// and cursors move to a checksummed table.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<()> {
    {
        let mut networks = txn.open_table(NETWORKS).storage("open networks")?;
        let mut rows = Vec::new();
        for entry in networks.iter().storage("scan networks")? {
            let (key, value) = entry.storage("scan networks")?;
            rows.push((key.value().to_owned(), value.value().to_vec()));
        }
        for (key, payload) in rows {
            networks
                .insert(key.as_str(), seal(&payload).as_slice())
                .storage("migrate network")?;
        }
    }
    {
        let mut allocations = txn.open_table(ALLOCATIONS).storage("open allocations")?;
        let mut rows = Vec::new();
        for entry in allocations.iter().storage("scan allocations")? {
            let (key, value) = entry.storage("scan allocations")?;
            let (network, address) = key.value();
            rows.push((network.to_owned(), address, value.value().to_vec()));
        }
        for (network, address, payload) in rows {
            allocations
                .insert((network.as_str(), address), seal(&payload).as_slice())
                .storage("migrate allocation")?;
        }
    }
    {
        let old = txn.open_table(CURSORS_V1).storage("open cursors")?;
        let mut cursors = txn.open_table(CURSORS).storage("open cursors")?;
        for entry in old.iter().storage("scan cursors")? {
            let (key, value) = entry.storage("scan cursors")?;
            cursors
                .insert(key.value(), seal(&value.value().to_be_bytes()).as_slice())
                .storage("migrate cursor")?;
        }
    }
    txn.delete_table(CURSORS_V1).storage("drop old cursors")?;
    Ok(())
}

/// A stored record that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The network record: the network, its allocations and cursor go to quarantine.
    Network { id: String, why: String },
    /// One allocation; `reserve` keeps its (assignable) address out of circulation.
    Allocation {
        network: String,
        address: u32,
        why: String,
        reserve: bool,
    },
    /// A next-fit cursor (only a search hint: dropped, nothing to reserve).
    Cursor { network: String, why: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Network { id, why } => write!(f, "network {id:?}: {why}"),
            Problem::Allocation {
                network,
                address,
                why,
                ..
            } => write!(
                f,
                "allocation {} of network {network:?}: {why}",
                Ipv4Addr::from(*address)
            ),
            Problem::Cursor { network, why } => {
                write!(f, "next-fit cursor of network {network:?}: {why}")
            }
        }
    }
}

/// Memory built from every readable record, and the records that were not.
struct Scan {
    memory: Memory,
    problems: Vec<Problem>,
}

/// Reads everything durable, verifying every record.
fn scan(db: &Database) -> Result<Scan> {
    let txn = db.begin_read().storage("begin read")?;
    let Records {
        networks,
        allocations,
        cursors,
    } = Records::read(&txn)?;
    let mut problems = Vec::new();
    let mut bad_networks = BTreeSet::new();
    let mut good: BTreeMap<String, (NetworkRecord, SlicePool)> = BTreeMap::new();
    for entry in networks.iter().storage("scan networks")? {
        let (key, value) = entry.storage("scan networks")?;
        let id = key.value().to_owned();
        let checked = decode_json::<NetworkRecord>(value.value()).and_then(|record| {
            if record.id != id {
                return Err(RecordError::Invalid(format!(
                    "record names network {:?}",
                    record.id
                )));
            }
            let pool = SlicePool::new(record.slice, record.spec.host_reserve)
                .map_err(|e| RecordError::Invalid(e.to_string()))?;
            Ok((record, pool))
        });
        match checked {
            Ok(network) => {
                good.insert(id, network);
            }
            Err(why) => {
                bad_networks.insert(id.clone());
                problems.push(Problem::Network {
                    id,
                    why: why.to_string(),
                });
            }
        }
    }
    let mut details: BTreeMap<String, BTreeMap<Ipv4Addr, AllocationRecord>> = BTreeMap::new();
    let mut owners: BTreeSet<(String, Owner)> = BTreeSet::new();
    for entry in allocations.iter().storage("scan allocations")? {
        let (key, value) = entry.storage("scan allocations")?;
        let (network, address) = key.value();
        if bad_networks.contains(network) {
            continue; // quarantined with its network
        }
        let Some((network_record, pool)) = good.get(network) else {
            problems.push(Problem::Allocation {
                network: network.to_owned(),
                address,
                why: "its network has no record".into(),
                reserve: false,
            });
            continue;
        };
        let keyed = Ipv4Addr::from(address);
        let checked = decode_json::<AllocationRecord>(value.value()).and_then(|record| {
            if record.address != keyed {
                return Err(RecordError::Invalid(format!(
                    "record names address {}",
                    record.address
                )));
            }
            // Outside the current slice, an allocation is valid only in a
            // slice the network moved away from: it is stale, kept and listed.
            let stale = network_record
                .former_slices
                .iter()
                .any(|former| former.contains(keyed));
            if stale {
                return Ok(record);
            }
            pool.check_assignable(keyed)
                .map_err(|e| RecordError::Invalid(e.to_string()))?;
            if owners.contains(&(network.to_owned(), record.owner.clone())) {
                return Err(RecordError::Invalid(format!(
                    "owner {} holds another address too",
                    record.owner
                )));
            }
            Ok(record)
        });
        match checked {
            Ok(record) => {
                if network_record.slice.contains(keyed) {
                    owners.insert((network.to_owned(), record.owner.clone()));
                }
                details
                    .entry(network.to_owned())
                    .or_default()
                    .insert(keyed, record);
            }
            Err(why) => problems.push(Problem::Allocation {
                network: network.to_owned(),
                address,
                why: why.to_string(),
                reserve: pool.is_assignable(keyed),
            }),
        }
    }
    let mut cursor_of = BTreeMap::new();
    for entry in cursors.iter().storage("scan cursors")? {
        let (key, value) = entry.storage("scan cursors")?;
        let network = key.value().to_owned();
        if bad_networks.contains(&network) {
            continue;
        }
        let checked = decode_cursor(value.value()).and_then(|cursor| match good.get(&network) {
            Some((record, _)) if record.slice.contains(cursor) => Ok(cursor),
            Some((record, _)) => Err(RecordError::Invalid(format!(
                "cursor {cursor} is outside slice {}",
                record.slice
            ))),
            None => Err(RecordError::Invalid("its network has no record".into())),
        });
        match checked {
            Ok(cursor) => {
                cursor_of.insert(network, cursor);
            }
            Err(why) => problems.push(Problem::Cursor {
                network,
                why: why.to_string(),
            }),
        }
    }
    let revision = txn
        .open_table(META)
        .storage("open meta")?
        .get("revision")
        .storage("read revision")?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut memory = Memory {
        revision,
        ..Memory::default()
    };
    let quarantine = txn.open_table(QUARANTINE).storage("open quarantine")?;
    for entry in quarantine.iter().storage("scan quarantine")? {
        let (key, _) = entry.storage("scan quarantine")?;
        let key = key.value();
        // "<ms>/allocation/<network>/<address>"
        let Some((network, address)) = key
            .split_once("/allocation/")
            .and_then(|(_, rest)| rest.rsplit_once('/'))
        else {
            continue;
        };
        if let (false, Ok(address)) = (good.contains_key(network), address.parse()) {
            memory
                .quarantined
                .entry(network.to_owned())
                .or_default()
                .insert(address, key.to_owned());
        }
    }
    for (id, (record, pool)) in good {
        let allocations = details.remove(&id).unwrap_or_default();
        // Allocations outside the current slice are stale (the host's
        // underlay moved): kept and listed, never in the allocator.
        let allocator = Allocator::restore(
            pool,
            allocations
                .values()
                .filter(|a| record.slice.contains(a.address))
                .map(|a| (a.address, a.owner.clone())),
            cursor_of.get(&id).copied(),
        )
        .map_err(|e| {
            AgentError::Storage(format!("network {id:?}: inconsistent allocations: {e}"))
        })?;
        memory.networks.insert(
            id,
            NetworkMemory {
                record,
                allocator,
                allocations,
            },
        );
    }
    Ok(Scan { memory, problems })
}

/// The reservation that keeps a quarantined allocation's address out of circulation.
fn reservation(address: Ipv4Addr, why: &str, key: &str) -> AllocationRecord {
    AllocationRecord {
        address,
        owner: Owner {
            container_id: format!("{QUARANTINE_OWNER_PREFIX}{address}"),
            interface: QUARANTINE_INTERFACE.into(),
        },
        labels: BTreeMap::from([
            ("fan.quarantine.reason".to_owned(), why.to_owned()),
            ("fan.quarantine.record".to_owned(), key.to_owned()),
        ]),
        create_time_ms: now_ms(),
    }
}

/// Moves every unreadable record to the quarantine table (raw bytes kept) in
/// one transaction, reserving the addresses of unreadable allocations.
/// Returns one line per action.
fn quarantine(db: &Database, problems: &[Problem]) -> Result<Vec<String>> {
    let stamp = now_ms();
    let mut report = Vec::new();
    let txn = db.begin_write().storage("begin")?;
    {
        let Records {
            mut networks,
            mut allocations,
            mut cursors,
        } = Records::write(&txn)?;
        let mut quarantine = txn.open_table(QUARANTINE).storage("open quarantine")?;
        let mut keep = |key: String, raw: Vec<u8>| -> Result<String> {
            quarantine
                .insert(key.as_str(), raw.as_slice())
                .storage("write quarantine")?;
            Ok(key)
        };
        for problem in problems {
            match problem {
                Problem::Network { id, why } => {
                    let raw = networks
                        .remove(id.as_str())
                        .storage("move network")?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    keep(format!("{stamp}/network/{id}"), raw)?;
                    let mut moved = Vec::new();
                    for entry in allocations
                        .range((id.as_str(), 0u32)..=(id.as_str(), u32::MAX))
                        .storage("scan allocations")?
                    {
                        let (key, value) = entry.storage("scan allocations")?;
                        moved.push((key.value().1, value.value().to_vec()));
                    }
                    for (address, raw) in &moved {
                        allocations
                            .remove((id.as_str(), *address))
                            .storage("move allocation")?;
                        keep(
                            format!("{stamp}/allocation/{id}/{}", Ipv4Addr::from(*address)),
                            raw.clone(),
                        )?;
                    }
                    if let Some(raw) = cursors
                        .remove(id.as_str())
                        .storage("move cursor")?
                        .map(|v| v.value().to_vec())
                    {
                        keep(format!("{stamp}/cursor/{id}"), raw)?;
                    }
                    report.push(format!(
                        "recover: quarantined network {id:?} ({why}) with its {} allocation(s): \
                         the network is gone from the agent; created again under this id, it \
                         starts with those addresses reserved",
                        moved.len()
                    ));
                }
                Problem::Allocation {
                    network,
                    address,
                    why,
                    reserve,
                } => {
                    let addr = Ipv4Addr::from(*address);
                    let raw = allocations
                        .remove((network.as_str(), *address))
                        .storage("move allocation")?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    let key = keep(format!("{stamp}/allocation/{network}/{addr}"), raw)?;
                    if *reserve {
                        let record = reservation(addr, why, &key);
                        allocations
                            .insert(
                                (network.as_str(), *address),
                                encode_json("allocation", &record)?.as_slice(),
                            )
                            .storage("write reservation")?;
                        report.push(format!(
                            "recover: quarantined allocation {addr} of network {network:?} ({why}); \
                             the address stays reserved for owner {} until you release it \
                             (once no container uses it)",
                            record.owner
                        ));
                    } else {
                        report.push(format!(
                            "recover: quarantined allocation {addr} of network {network:?} ({why})"
                        ));
                    }
                }
                Problem::Cursor { network, why } => {
                    let raw = cursors
                        .remove(network.as_str())
                        .storage("move cursor")?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    keep(format!("{stamp}/cursor/{network}"), raw)?;
                    report.push(format!(
                        "recover: quarantined the next-fit cursor of network {network:?} ({why})"
                    ));
                }
            }
        }
    }
    txn.commit().storage("commit quarantine")?;
    for line in &report {
        tracing::warn!("{line}");
    }
    Ok(report)
}

/// The three record tables, opened in one transaction.
struct Records<N, A, C> {
    networks: N,
    allocations: A,
    cursors: C,
}

type Writable<'t, K, V> = redb::Table<'t, K, V>;
type RecordTables<'t> = Records<
    Writable<'t, &'static str, &'static [u8]>,
    Writable<'t, (&'static str, u32), &'static [u8]>,
    Writable<'t, &'static str, &'static [u8]>,
>;
type ReadRecordTables = Records<
    redb::ReadOnlyTable<&'static str, &'static [u8]>,
    redb::ReadOnlyTable<(&'static str, u32), &'static [u8]>,
    redb::ReadOnlyTable<&'static str, &'static [u8]>,
>;

impl<'t> RecordTables<'t> {
    fn write(txn: &'t redb::WriteTransaction) -> Result<Self> {
        Ok(Records {
            networks: txn.open_table(NETWORKS).storage("open networks")?,
            allocations: txn.open_table(ALLOCATIONS).storage("open allocations")?,
            cursors: txn.open_table(CURSORS).storage("open cursors")?,
        })
    }
}

impl ReadRecordTables {
    fn read(txn: &redb::ReadTransaction) -> Result<Self> {
        Ok(Records {
            networks: txn.open_table(NETWORKS).storage("open networks")?,
            allocations: txn.open_table(ALLOCATIONS).storage("open allocations")?,
            cursors: txn.open_table(CURSORS).storage("open cursors")?,
        })
    }
}

/// A batch's mutations as the key/value writes that store them (the events
/// write only the revision counter, first).
fn ops_of(mutations: &[Mutation]) -> Result<Vec<Op>> {
    let mut ops = Vec::with_capacity(mutations.len());
    let revision = mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Event(event) => Some(event.revision),
            _ => None,
        })
        .max();
    ops.extend(revision.map(Op::Revision));
    let network = |record: &NetworkRecord| -> Result<Op> {
        Ok(Op::PutNetwork {
            id: record.id.clone(),
            value: encode_json("network", record)?,
        })
    };
    for mutation in mutations {
        match mutation {
            Mutation::PutNetwork(record) | Mutation::UpdateNetwork { record, .. } => {
                ops.push(network(record)?)
            }
            Mutation::DeleteNetwork(state) => {
                let id = &state.record.id;
                ops.push(Op::DeleteNetwork { id: id.clone() });
                ops.push(Op::DeleteCursor {
                    network: id.clone(),
                });
                ops.extend(
                    state
                        .allocations
                        .keys()
                        .map(|address| Op::DeleteAllocation {
                            network: id.clone(),
                            address: u32::from(*address),
                        }),
                );
            }
            Mutation::PutAllocation { network, record } => ops.push(Op::PutAllocation {
                network: network.clone(),
                address: u32::from(record.address),
                value: encode_json("allocation", record)?,
            }),
            Mutation::DeleteAllocation {
                network, address, ..
            } => ops.push(Op::DeleteAllocation {
                network: network.clone(),
                address: u32::from(*address),
            }),
            Mutation::Event(_) => {}
            Mutation::MoveNetwork { record, .. } => {
                ops.push(network(record)?);
                ops.push(Op::DeleteCursor {
                    network: record.id.clone(),
                });
            }
            Mutation::PutCursor { network, cursor } => ops.push(Op::PutCursor {
                network: network.clone(),
                value: seal(&cursor.octets()),
            }),
        }
    }
    Ok(ops)
}

/// Writes `ops` (batch `sequence` of the log) in one transaction.
fn commit_ops(db: &Database, ops: &[Op], sequence: u64, durability: Durability) -> Result<()> {
    let mut txn = db.begin_write().storage("begin")?;
    txn.set_durability(durability).storage("set durability")?;
    apply(&txn, ops, sequence)?;
    txn.commit().storage("commit")
}

/// Applies `ops` inside `txn` and records `sequence` as the last batch it holds.
fn apply(txn: &redb::WriteTransaction, ops: &[Op], sequence: u64) -> Result<()> {
    let mut meta = txn.open_table(META).storage("open meta")?;
    meta.insert(WAL_SEQUENCE, sequence)
        .storage("write log sequence")?;
    let Records {
        mut networks,
        mut allocations,
        mut cursors,
    } = Records::write(txn)?;
    for op in ops {
        match op {
            Op::Revision(revision) => {
                meta.insert("revision", *revision)
                    .storage("write revision")?;
            }
            Op::PutNetwork { id, value } => {
                networks
                    .insert(id.as_str(), value.as_slice())
                    .storage("write network")?;
            }
            Op::DeleteNetwork { id } => {
                networks.remove(id.as_str()).storage("delete network")?;
            }
            Op::PutAllocation {
                network,
                address,
                value,
            } => {
                allocations
                    .insert((network.as_str(), *address), value.as_slice())
                    .storage("write allocation")?;
            }
            Op::DeleteAllocation { network, address } => {
                allocations
                    .remove((network.as_str(), *address))
                    .storage("delete allocation")?;
            }
            Op::PutCursor { network, value } => {
                cursors
                    .insert(network.as_str(), value.as_slice())
                    .storage("write cursor")?;
            }
            Op::DeleteCursor { network } => {
                cursors.remove(network.as_str()).storage("delete cursor")?;
            }
        }
    }
    Ok(())
}

/// The database's log epoch and the last logged batch it holds.
fn log_position(db: &Database) -> Result<(u64, u64)> {
    let txn = db.begin_read().storage("begin read")?;
    let meta = txn.open_table(META).storage("open meta")?;
    let read = |key: &str| -> Result<u64> {
        Ok(meta
            .get(key)
            .storage("read log position")?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    Ok((read(WAL_EPOCH)?, read(WAL_SEQUENCE)?))
}

/// Applies the batches the log holds beyond the database, in one
/// transaction of `durability`; returns the epoch and the last batch's sequence.
fn replay(db: &Database, wal: &Wal, durability: Durability) -> Result<(u64, u64)> {
    let (epoch, applied) = log_position(db)?;
    let frames = wal
        .replay(epoch, applied)
        .map_err(|e| AgentError::Storage(format!("read {WAL_FILE}: {e}")))?;
    let Some(last) = frames.last().map(|(sequence, _)| *sequence) else {
        return Ok((epoch, applied));
    };
    let mut txn = db.begin_write().storage("begin")?;
    txn.set_durability(durability).storage("set durability")?;
    for (sequence, ops) in &frames {
        apply(&txn, ops, *sequence)?;
    }
    txn.commit().storage("commit replayed log")?;
    tracing::info!(
        batches = frames.len(),
        through = last,
        "state log replayed: the batches committed after the last checkpoint"
    );
    Ok((epoch, last))
}

/// Takes a failed batch's changes back out of memory, newest first, so memory
/// holds only what is durable even while the database cannot be reopened.
/// Allocators of touched networks are rebuilt from their allocations (their
/// next-fit cursor stays where the batch left it: it only orders the search).
fn undo(memory: &mut Memory, mutations: Vec<Mutation>) {
    let mut touched = BTreeSet::new();
    for mutation in mutations.into_iter().rev() {
        match mutation {
            Mutation::PutNetwork(record) => {
                memory.networks.remove(&record.id);
                touched.remove(&record.id);
            }
            Mutation::DeleteNetwork(network) => {
                memory.networks.insert(network.record.id.clone(), *network);
            }
            Mutation::PutAllocation { network, record } => {
                if let Some(state) = memory.networks.get_mut(&network) {
                    state.allocations.remove(&record.address);
                    touched.insert(network);
                }
            }
            Mutation::DeleteAllocation {
                network, previous, ..
            } => {
                if let (Some(state), Some(previous)) = (memory.networks.get_mut(&network), previous)
                {
                    state.allocations.insert(previous.address, previous);
                    touched.insert(network);
                }
            }
            Mutation::PutCursor { .. } | Mutation::Event(_) => {}
            Mutation::MoveNetwork { previous, .. } | Mutation::UpdateNetwork { previous, .. } => {
                if let Some(state) = memory.networks.get_mut(&previous.id) {
                    touched.insert(previous.id.clone());
                    state.record = *previous;
                }
            }
        }
    }
    for id in touched {
        let Some(state) = memory.networks.get_mut(&id) else {
            continue;
        };
        // The record's slice decides the pool: a move undone goes back to the old one.
        let pool = SlicePool::new(state.record.slice, state.record.spec.host_reserve)
            .unwrap_or(*state.allocator.pool());
        let slice = state.record.slice;
        match Allocator::restore(
            pool,
            state
                .allocations
                .values()
                .filter(|a| slice.contains(a.address))
                .map(|a| (a.address, a.owner.clone())),
            state.allocator.cursor().filter(|c| slice.contains(*c)),
        ) {
            Ok(allocator) => state.allocator = allocator,
            Err(err) => {
                tracing::error!(network = %id, error = %err, "undoing a failed commit left an inconsistent allocator")
            }
        }
    }
}

/// Writes (and frees) [`PROBE_BYTES`] in two durable transactions: the
/// store is writable again when this succeeds.
fn probe(db: &Database) -> Result<()> {
    let txn = db.begin_write().storage("begin")?;
    {
        let mut table = txn.open_table(PROBE).storage("open probe")?;
        table
            .insert("probe", vec![0x5a; PROBE_BYTES].as_slice())
            .storage("write probe")?;
    }
    txn.commit().storage("commit")?;
    let txn = db.begin_write().storage("begin")?;
    {
        let mut table = txn.open_table(PROBE).storage("open probe")?;
        table.remove("probe").storage("clear probe")?;
    }
    txn.commit().storage("commit")
}

/// The committer: owns the database (while it is usable) and memory; used
/// by whoever holds [`Shared::writer`].
struct Writer {
    /// Held for the writer's life, also while the database is closed after a
    /// failure, so no second agent opens the directory meanwhile. First field:
    /// released before the database closes.
    _lock: nix::fcntl::Flock<std::fs::File>,
    dir: PathBuf,
    path: PathBuf,
    /// None while the database is closed after a failure.
    db: Option<Database>,
    /// Where batches become durable between checkpoints.
    wal: Wal,
    /// The database's log epoch, carried by every frame.
    epoch: u64,
    /// The last batch's sequence number (logged or checkpointed).
    sequence: u64,
    /// Batches logged since the last checkpoint.
    unchecked: u32,
    /// When the first of them was logged.
    unchecked_since: Instant,
    /// When the last batch ran: the idle checkpoint counts from it.
    last_job: Instant,
    /// Their writes, for redb at the next checkpoint (memory serves reads).
    pending: Vec<Op>,
    memory: Memory,
    health: watch::Sender<StoreHealth>,
    retry_after: Duration,
    next_retry: Instant,
    events: Arc<EventHub>,
}

impl Writer {
    /// The background thread's timed work: a checkpoint once the agent is
    /// idle with batches in the log, a recovery attempt when one is due.
    fn tick(&mut self) {
        if !self.health.borrow().is_writable() {
            if Instant::now() >= self.next_retry {
                self.try_recover();
            }
        } else if self.checkpoint_due()
            || (!self.wal.is_empty() && self.last_job.elapsed() >= CHECKPOINT_IDLE)
        {
            self.checkpoint();
        }
    }

    /// Enough batches logged, or the oldest old enough, for a checkpoint.
    fn checkpoint_due(&self) -> bool {
        self.unchecked >= CHECKPOINT_BATCHES
            || (self.unchecked > 0 && self.unchecked_since.elapsed() >= CHECKPOINT_AGE)
    }

    /// How long until [`Writer::tick`] has work; `None`: nothing to time.
    fn timer(&self) -> Option<Duration> {
        if !self.health.borrow().is_writable() {
            Some(self.next_retry.saturating_duration_since(Instant::now()))
        } else if self.checkpoint_due() {
            Some(Duration::ZERO)
        } else if !self.wal.is_empty() {
            Some(CHECKPOINT_IDLE.saturating_sub(self.last_job.elapsed()))
        } else {
            None
        }
    }

    /// Makes everything logged durable in the database itself (one durable
    /// redb commit) and starts the log again. On failure the store turns
    /// unwritable; what was logged stays in the log (and in memory).
    fn checkpoint(&mut self) {
        if self.wal.is_empty() {
            return;
        }
        let Some(db) = &self.db else {
            return;
        };
        let pending = std::mem::take(&mut self.pending);
        // Timed and counted like a batch's commit: a full disk shows here first.
        let sequence = self.sequence;
        match crate::metrics::time_commit(|| {
            commit_ops(db, &pending, sequence, Durability::Immediate)
        }) {
            Ok(()) => {
                self.wal.reset();
                self.unchecked = 0;
            }
            Err(err) => {
                tracing::error!(error = %err, "state checkpoint failed; reopening the database");
                self.set_unwritable(&err);
                self.try_recover();
            }
        }
    }

    /// Commits one batch's mutations to the log with one write and one
    /// fdatasync; redb takes them at the next checkpoint. A batch too large
    /// for the log's room goes to redb durably at once, with everything
    /// pending (a checkpoint).
    fn commit(&mut self, mutations: &[Mutation]) -> Result<()> {
        let Some(db) = &self.db else {
            return Err(AgentError::Storage("state database is closed".into()));
        };
        let ops = ops_of(mutations)?;
        let mut payload = Vec::with_capacity(512);
        wal::encode(&ops, &mut payload);
        let sequence = self.sequence + 1;
        if !self.wal.fits(payload.len()) {
            // On failure the log still holds the pending batches: the
            // recovery that must succeed before the next commit replays them.
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend(ops);
            commit_ops(db, &pending, sequence, Durability::Immediate)?;
            self.sequence = sequence;
            self.wal.reset();
            self.unchecked = 0;
            return Ok(());
        }
        self.wal
            .append(self.epoch, sequence, &payload)
            .map_err(|e| {
                AgentError::Storage(format!("write {}: {e}", self.dir.join(WAL_FILE).display()))
            })?;
        self.sequence = sequence;
        self.pending.extend(ops);
        if self.unchecked == 0 {
            self.unchecked_since = Instant::now();
        }
        self.unchecked += 1;
        Ok(())
    }

    fn refusal(&self) -> Option<AgentError> {
        match &*self.health.borrow() {
            StoreHealth::Writable => None,
            StoreHealth::Unwritable { reason } => Some(unwritable(&self.dir, reason)),
        }
    }

    /// Runs `batch`. When `deferred` (a request's task leads), a due
    /// checkpoint and the recovery after a failure are left to the state
    /// thread, so the task's worker never waits on them.
    fn run_batch(&mut self, batch: Vec<Job>, deferred: bool) {
        self.last_job = Instant::now();
        let mut mutations = Vec::new();
        let mut completions = Vec::new();
        let mut reads = Vec::new();
        let mut checkpoints = Vec::new();
        let refusal = self.refusal();
        for job in batch {
            match job {
                Job::Write(write) => match &refusal {
                    None => completions.push(write(Ok((&mut self.memory, &mut mutations)))),
                    Some(err) => completions.push(write(Err(err.clone()))),
                },
                // Reads run after the commit so they never see undurable changes.
                Job::Read(read) => reads.push(read),
                Job::Checkpoint(done) => checkpoints.push(done),
            }
        }
        // Events are numbered in commit order; the counter is persisted with the batch.
        let revision_before = self.memory.revision;
        for mutation in &mut mutations {
            if let Mutation::Event(event) = mutation {
                self.memory.revision += 1;
                event.revision = self.memory.revision;
            }
        }
        let committed = match mutations.is_empty() {
            true => Ok(()),
            false => crate::metrics::time_commit(|| self.commit(&mutations)),
        };
        let committed = match committed {
            Ok(()) => {
                // Published before anyone hears of the commit, so a watch
                // started from a List's revision misses nothing.
                let events: Vec<Event> = mutations
                    .into_iter()
                    .filter_map(|m| match m {
                        Mutation::Event(event) => Some(*event),
                        _ => None,
                    })
                    .collect();
                if !events.is_empty() {
                    self.events.publish(events);
                }
                Ok(())
            }
            Err(err) => {
                tracing::error!(error = %err, requests = completions.len(), "state commit failed; undoing the batch and reopening the database");
                self.memory.revision = revision_before;
                undo(&mut self.memory, mutations);
                self.set_unwritable(&err);
                if deferred {
                    self.next_retry = Instant::now();
                } else {
                    self.try_recover();
                }
                // Whatever the reopen found, this batch was not acknowledged.
                Err(unwritable(&self.dir, &reason_of(&err)))
            }
        };
        for completion in completions {
            completion(committed.clone());
        }
        for read in reads {
            read(&self.memory);
        }
        if !deferred && self.checkpoint_due() {
            self.checkpoint();
        }
        for checkpoint in checkpoints {
            self.checkpoint();
            checkpoint();
        }
    }

    fn set_unwritable(&mut self, err: &AgentError) {
        let reason = reason_of(err);
        let changed = self.health.send_if_modified(|health| {
            let next = StoreHealth::Unwritable {
                reason: reason.clone(),
            };
            let changed = *health != next;
            *health = next;
            changed
        });
        if changed {
            tracing::error!(state_dir = %self.dir.display(), reason = %reason, "state store NOT WRITABLE: changes are refused until it is; reads are still served");
        }
    }

    /// Closes the database, reopens it, reloads memory and probes with a
    /// write; on success the store is writable again, else the next attempt
    /// is scheduled with backoff.
    fn try_recover(&mut self) {
        // redb refuses every operation after an I/O error until the database is reopened.
        self.db = None;
        let attempt = (|| -> Result<(Database, u64)> {
            let db = Database::open(&self.path)
                .map_err(|e| AgentError::Storage(format!("reopen {}: {e}", self.path.display())))?;
            // Without durability: the probe's durable commits below carry it.
            let (_, sequence) = replay(&db, &self.wal, Durability::None)?;
            let scan = scan(&db)?;
            if let Some(problem) = scan.problems.first() {
                return Err(AgentError::Storage(format!(
                    "reloading {}: {problem}",
                    self.path.display()
                )));
            }
            // Memory follows the disk: a commit reported failed may still have landed.
            self.memory = scan.memory;
            probe(&db)?;
            Ok((db, sequence))
        })();
        match attempt {
            Ok((db, sequence)) => {
                self.db = Some(db);
                self.sequence = sequence;
                self.wal.reset();
                self.unchecked = 0;
                self.pending.clear();
                self.retry_after = RETRY_FIRST;
                if !self.health.borrow().is_writable() {
                    self.health.send_replace(StoreHealth::Writable);
                    tracing::info!(state_dir = %self.dir.display(), "state store writable again: changes are accepted");
                }
            }
            Err(err) => {
                self.set_unwritable(&err);
                tracing::debug!(error = %err, retry_in = ?self.retry_after, "state store still not writable");
                self.next_retry = Instant::now() + self.retry_after;
                self.retry_after = (self.retry_after * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The OS-level cause of a storage failure, for health and error messages.
fn reason_of(err: &AgentError) -> String {
    match err {
        AgentError::Storage(message) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
