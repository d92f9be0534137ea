//! The store's unit tests: records, group commit, the log, crash images,
//! recovery and quarantine, on temporary directories.

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
            allow_overlap: false,
            dhcp: false,
            dhcp_dns: Vec::new(),
            dhcp_lease_seconds: 0,
            labels: BTreeMap::new(),
        },
        underlay_network: "172.30.0.0/16".parse().unwrap(),
        underlay_address: "172.30.0.28".parse().unwrap(),
        underlay_interface: "eth0".into(),
        underlay_mtu: 1500,
        slice: "250.0.28.0/24".parse().unwrap(),
        backend: BackendKind::Ebpf,
        create_time_ms: 1,
        former_slices: Vec::new(),
    }
}

/// A store with network "fan" (250.0.0.0/8 over /16) and owners 0..3
/// allocated in it.
async fn store_with_three_allocations(dir: &Path) -> Store {
    let store = Store::open(dir).unwrap();
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
    store
}

fn owner(i: usize) -> Owner {
    Owner {
        container_id: format!("c{i}"),
        interface: "eth0".into(),
    }
}

/// Copies the state files as a crash would leave them: from a read job,
/// under the writer lock between two batches, so no checkpoint runs meanwhile.
async fn crash_image(store: &Store, to: &Path) {
    let (from, to) = (store.dir.to_path_buf(), to.to_owned());
    store
        .read(move |_| {
            std::fs::create_dir_all(&to).unwrap();
            for file in [WAL_FILE, DB_FILE, MARKER_FILE] {
                std::fs::copy(from.join(file), to.join(file)).unwrap();
            }
        })
        .await
        .unwrap();
}

/// How many logged batches the files in `dir` would replay at open.
fn pending_batches(dir: &Path) -> usize {
    let db = Database::open(dir.join(DB_FILE)).unwrap();
    let (epoch, applied) = log_position(&db).unwrap();
    Wal::open(dir)
        .unwrap()
        .replay(epoch, applied)
        .unwrap()
        .len()
}

#[tokio::test]
async fn acknowledged_changes_survive_a_crash_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_network(record("fan", "250.0.0.0/8", "fan-250"))
        .await
        .unwrap();
    let mut held = BTreeMap::new();
    for i in 1..=5 {
        let allocated = store
            .allocate("fan", owner(i), None, BTreeMap::new())
            .await
            .unwrap();
        held.insert(allocated.record.address, allocated.record);
    }
    let released = store
        .release("fan", Selector::Owner(owner(2)))
        .await
        .unwrap()
        .unwrap();
    held.remove(&released.address);
    let (_, revision) = store.networks_at().await.unwrap();

    // Crashed right after the last reply: the database file alone lacks
    // the batches; the log brings them back.
    let crashed = dir.path().join("crashed");
    crash_image(&store, &crashed).await;
    assert!(pending_batches(&crashed) > 0, "the batches are in the log");
    let reopened = Store::open(&crashed).unwrap();
    let (page, _) = reopened.allocations_page("fan", None, 100).await.unwrap();
    let found: BTreeMap<_, _> = page.into_iter().map(|a| (a.address, a)).collect();
    assert_eq!(found, held);
    assert_eq!(reopened.networks_at().await.unwrap().1, revision);
    // Replayed into the database: a second crash right away loses nothing either.
    let again = dir.path().join("crashed-again");
    crash_image(&reopened, &again).await;
    assert_eq!(pending_batches(&again), 0);
    // Next-fit goes on after the released address, as without the crash.
    let next = reopened
        .allocate("fan", owner(6), None, BTreeMap::new())
        .await
        .unwrap();
    let expected = store
        .allocate("fan", owner(6), None, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(next.record.address, expected.record.address);

    // After a checkpoint the database file holds everything.
    store.checkpoint().await;
    let checkpointed = dir.path().join("checkpointed");
    crash_image(&store, &checkpointed).await;
    assert_eq!(pending_batches(&checkpointed), 0);
    let reopened = Store::open(&checkpointed).unwrap();
    let (page, _) = reopened.allocations_page("fan", None, 100).await.unwrap();
    assert_eq!(page.len(), held.len() + 1);
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
        // The state thread closes the database when the last handle drops; give it a moment.
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
async fn a_moved_network_keeps_old_allocations_stale_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let old_slice: ipnetwork::Ipv4Network = "250.0.28.0/24".parse().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let created = match store
            .create_network(record("fan", "250.0.0.0/8", "fan-250"))
            .await
            .unwrap()
        {
            Created::New(r) => r,
            other => panic!("{other:?}"),
        };
        for i in 1..=2 {
            store
                .allocate("fan", owner(i), None, BTreeMap::new())
                .await
                .unwrap();
        }
        let moved = NetworkRecord {
            underlay_address: "172.30.0.29".parse().unwrap(),
            slice: "250.0.29.0/24".parse().unwrap(),
            former_slices: vec![old_slice],
            ..created
        };
        store.move_network(moved).await.unwrap();
        assert_eq!(store.stale_count("fan").await.unwrap(), 2);
        assert_eq!(store.usage("fan").await.unwrap().0, 0);
        drop(store);
        for _ in 0..100 {
            if Database::create(dir.path().join(DB_FILE)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let store = Store::open(dir.path()).unwrap();
    let network = store.network("fan").await.unwrap();
    assert_eq!(network.slice, "250.0.29.0/24".parse().unwrap());
    assert_eq!(network.former_slices, vec![old_slice]);
    assert_eq!(store.stale_count("fan").await.unwrap(), 2);
    // The owner of a stale address gets a new one from the new slice.
    let fresh = store
        .allocate("fan", owner(1), None, BTreeMap::new())
        .await
        .unwrap();
    assert!(fresh.newly_allocated);
    assert_eq!(
        fresh.record.address,
        "250.0.29.2".parse::<Ipv4Addr>().unwrap()
    );
    // Release by owner takes the valid and the stale allocation; by address, a stale one.
    store
        .release("fan", Selector::Owner(owner(1)))
        .await
        .unwrap();
    let stale = store
        .release("fan", Selector::Address("250.0.28.3".parse().unwrap()))
        .await
        .unwrap()
        .expect("stale allocation released");
    assert_eq!(stale.owner, owner(2));
    assert_eq!(store.stale_count("fan").await.unwrap(), 0);
    assert_eq!(
        store.allocations_page("fan", None, 10).await.unwrap().0,
        vec![]
    );
}

#[tokio::test]
async fn release_where_releases_in_one_commit_and_reports_each_release() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_three_allocations(dir.path()).await;
    let from = store.events().revision();
    let released = store
        .release_where("fan", "DHCP lease expired", |a| a.owner != owner(1))
        .await
        .unwrap();
    assert_eq!(released.len(), 2);
    assert_eq!(store.usage("fan").await.unwrap().0, 1);
    let subscription = store.events().subscribe(Some(from)).unwrap();
    let reported: Vec<_> = subscription
        .backlog
        .iter()
        .filter(|e| e.kind == EventKind::AllocationReleased)
        .map(|e| (e.allocation.as_ref().unwrap().address, e.reason.clone()))
        .collect();
    let expected: Vec<_> = released
        .iter()
        .map(|a| (a.address, "DHCP lease expired".to_owned()))
        .collect();
    assert_eq!(reported, expected);
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
        Err(AgentError::AlreadyExists { message, .. }) => assert!(
            message.ends_with("different spec: host_reserve 1 -> 5, mtu auto -> 1400"),
            "{message}"
        ),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let same_bridge = record("b", "251.0.0.0/8", "fan-250");
    assert!(matches!(
        store.create_network(same_bridge).await,
        Err(AgentError::FailedPrecondition {
            reason: Reason::BridgeInUse,
            ..
        })
    ));
    let overlapping = record("c", "250.1.0.0/16", "fan-x");
    assert!(matches!(
        store.create_network(overlapping).await,
        Err(AgentError::FailedPrecondition {
            reason: Reason::OverlayInUse,
            ..
        })
    ));
}

#[tokio::test]
async fn delete_refuses_allocations_unless_forced_and_gc_releases_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_three_allocations(dir.path()).await;
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
            reason: Reason::NetworkInUse,
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

#[test]
fn seal_round_trips_and_unseal_catches_damage() {
    let payload = br#"{"address":"250.0.28.2"}"#;
    let sealed = seal(payload);
    assert_eq!(sealed.len(), payload.len() + 4);
    assert_eq!(unseal(&sealed).unwrap(), payload);
    for i in 0..sealed.len() {
        let mut damaged = sealed.clone();
        damaged[i] ^= 0x01;
        assert!(
            matches!(unseal(&damaged), Err(RecordError::Checksum { .. })),
            "flip at byte {i} not detected"
        );
    }
    assert_eq!(unseal(&[1, 2]), Err(RecordError::Truncated { len: 2 }));
    assert_eq!(unseal(&seal(b"")).unwrap(), b"");
    assert!(matches!(
        decode_json::<AllocationRecord>(&seal(b"not json")),
        Err(RecordError::Invalid(_))
    ));
    let cursor = Ipv4Addr::new(250, 0, 28, 7);
    assert_eq!(decode_cursor(&seal(&cursor.octets())).unwrap(), cursor);
}

/// Writes a schema-1 database by hand: bare JSON values, u32 cursors.
fn write_v1(dir: &Path, network: &NetworkRecord, allocations: &[AllocationRecord]) {
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
        txn.open_table(NETWORKS)
            .unwrap()
            .insert(
                network.id.as_str(),
                serde_json::to_vec(network).unwrap().as_slice(),
            )
            .unwrap();
        let mut table = txn.open_table(ALLOCATIONS).unwrap();
        for a in allocations {
            table
                .insert(
                    (network.id.as_str(), u32::from(a.address)),
                    serde_json::to_vec(a).unwrap().as_slice(),
                )
                .unwrap();
        }
        txn.open_table(CURSORS_V1)
            .unwrap()
            .insert(network.id.as_str(), u32::from(Ipv4Addr::new(250, 0, 28, 3)))
            .unwrap();
    }
    txn.commit().unwrap();
}

fn allocation(i: u8) -> AllocationRecord {
    AllocationRecord {
        address: Ipv4Addr::new(250, 0, 28, i),
        owner: owner(i as usize),
        labels: BTreeMap::from([("k".to_owned(), format!("v{i}"))]),
        create_time_ms: 7,
    }
}

async fn close(store: Store, dir: &Path) {
    drop(store);
    // The state thread closes the database when the last handle drops; wait until the file is free.
    for _ in 0..200 {
        if Database::open(dir.join(DB_FILE)).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("database still held");
}

#[tokio::test]
async fn schema_1_is_migrated_in_place_with_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let mut network = record("fan", "250.0.0.0/8", "fan-250");
    network.index = 1;
    write_v1(dir.path(), &network, &[allocation(2), allocation(3)]);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.network("fan").await.unwrap(), network);
    assert_eq!(
        store
            .allocation("fan", Selector::Owner(owner(3)))
            .await
            .unwrap(),
        allocation(3)
    );
    // The migrated cursor (.3) still orders the search: the next is .4.
    let next = store
        .allocate("fan", owner(9), None, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(next.record.address, Ipv4Addr::new(250, 0, 28, 4));
    close(store, dir.path()).await;
    let db = Database::open(dir.path().join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(version, SCHEMA_VERSION);
    let allocations = txn.open_table(ALLOCATIONS).unwrap();
    let raw = allocations
        .get(("fan", u32::from(Ipv4Addr::new(250, 0, 28, 2))))
        .unwrap()
        .unwrap();
    let decoded: AllocationRecord = decode_json(raw.value()).unwrap();
    assert_eq!(decoded, allocation(2));
    assert!(
        txn.open_table(CURSORS_V1).is_err(),
        "the schema-1 cursor table is dropped"
    );
    assert!(dir.path().join(MARKER_FILE).exists());
}

#[tokio::test]
async fn a_damaged_record_is_refused_and_recover_reserves_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_three_allocations(dir.path()).await;
    close(store, dir.path()).await;
    let victim = Ipv4Addr::new(250, 0, 28, 3);
    {
        let db = Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ALLOCATIONS).unwrap();
            let mut raw = table
                .get(("fan", u32::from(victim)))
                .unwrap()
                .unwrap()
                .value()
                .to_vec();
            raw[10] ^= 0x20;
            table
                .insert(("fan", u32::from(victim)), raw.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).err().expect("must refuse");
    let text = err.to_string();
    assert!(matches!(err, AgentError::StateCorrupt(_)), "{text}");
    assert!(
        text.contains("allocation 250.0.28.3 of network \"fan\": checksum mismatch"),
        "{text}"
    );
    assert!(text.contains("--recover"), "{text}");
    let (store, report) = Store::open_with(
        dir.path(),
        OpenOptions {
            recover: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("250.0.28.3"), "{report:?}");
    let held = store
        .allocation("fan", Selector::Address(victim))
        .await
        .unwrap();
    assert_eq!(
        held.owner.container_id,
        format!("{QUARANTINE_OWNER_PREFIX}{victim}")
    );
    // Every other address can be handed out; the quarantined one never is.
    let mut got = BTreeSet::new();
    for i in 100..400 {
        match store.allocate("fan", owner(i), None, BTreeMap::new()).await {
            Ok(a) => assert!(got.insert(a.record.address)),
            Err(AgentError::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!got.contains(&victim));
    assert_eq!(got.len(), 253 - 3);
    close(store, dir.path()).await;
    // The quarantine keeps the raw bytes, and a plain start is accepted again.
    {
        let db = Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let quarantine = txn.open_table(QUARANTINE).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&quarantine).unwrap(), 1);
    }
    Store::open(dir.path()).unwrap();
}

#[tokio::test]
async fn an_emptied_database_is_refused_once_initialized() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    close(store, dir.path()).await;
    std::fs::File::create(dir.path().join(DB_FILE)).unwrap();
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(err.to_string().contains("is empty (0 bytes)"), "{err}");
    std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(err.to_string().contains("is missing"), "{err}");
    let (_store, report) = Store::open_with(
        dir.path(),
        OpenOptions {
            recover: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report[0].contains("EMPTY state"), "{report:?}");
}

#[tokio::test]
async fn state_is_private_and_a_loose_directory_is_tightened() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let store = Store::open(&dir).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    assert_eq!(mode(&dir.join(MARKER_FILE)), 0o600);
    assert_eq!(mode(&dir.join(WAL_FILE)), 0o600);
    close(store, &dir).await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in [DB_FILE, WAL_FILE] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _store = Store::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    assert_eq!(mode(&dir.join(WAL_FILE)), 0o600);
}

#[test]
fn undo_takes_a_failed_batch_back_out_of_memory() {
    let mut memory = Memory::default();
    let mut record = record("fan", "250.0.0.0/8", "fan-250");
    record.index = 1;
    let pool = SlicePool::new(record.slice, 1).unwrap();
    let kept = allocation(2);
    let mut allocator = Allocator::new(pool);
    allocator
        .allocate(kept.owner.clone(), Some(kept.address))
        .unwrap();
    memory.networks.insert(
        "fan".into(),
        NetworkMemory {
            record: record.clone(),
            allocator,
            allocations: BTreeMap::from([(kept.address, kept.clone())]),
        },
    );
    // The batch: release .2, allocate .3.
    let state = memory.networks.get_mut("fan").unwrap();
    state.allocator.release_address(kept.address);
    state.allocations.remove(&kept.address);
    let new = allocation(3);
    state
        .allocator
        .allocate(new.owner.clone(), Some(new.address))
        .unwrap();
    state.allocations.insert(new.address, new.clone());
    let mutations = vec![
        Mutation::DeleteAllocation {
            network: "fan".into(),
            address: kept.address,
            previous: Some(kept.clone()),
        },
        Mutation::PutAllocation {
            network: "fan".into(),
            record: new.clone(),
        },
    ];
    undo(&mut memory, mutations);
    let state = &memory.networks["fan"];
    assert_eq!(state.allocations.len(), 1);
    assert_eq!(state.allocator.owner_of(kept.address), Some(&kept.owner));
    assert_eq!(state.allocator.owner_of(new.address), None);
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(err.to_string().contains("in use by another agent"), "{err}");
}

#[tokio::test]
async fn a_damaged_network_is_quarantined_and_its_addresses_stay_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .create_network(record("fan", "250.0.0.0/8", "fan-250"))
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..2 {
        held.push(
            store
                .allocate("fan", owner(i), None, BTreeMap::new())
                .await
                .unwrap()
                .record
                .address,
        );
    }
    close(store, dir.path()).await;
    {
        let db = Database::open(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(NETWORKS)
            .unwrap()
            .insert("fan", b"garbage".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(
        err.to_string()
            .contains("network \"fan\": checksum mismatch"),
        "{err}"
    );
    let (store, report) = Store::open_with(
        dir.path(),
        OpenOptions {
            recover: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report[0].contains("with its 2 allocation(s)"), "{report:?}");
    assert!(store.network("fan").await.is_err());
    store
        .create_network(record("fan", "250.0.0.0/8", "fan-250"))
        .await
        .unwrap();
    for address in held {
        let reserved = store
            .allocation("fan", Selector::Address(address))
            .await
            .unwrap();
        assert!(reserved
            .owner
            .container_id
            .starts_with(QUARANTINE_OWNER_PREFIX));
    }
    let next = store
        .allocate("fan", owner(9), None, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(next.record.address, Ipv4Addr::new(250, 0, 28, 4));
}

#[tokio::test]
async fn an_unopenable_database_is_moved_aside_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    close(store, dir.path()).await;
    std::fs::write(dir.path().join(DB_FILE), vec![0xab; 64 * 1024]).unwrap();
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(err.to_string().contains("cannot be opened"), "{err}");
    assert!(err.to_string().contains("--recover-move-aside"), "{err}");
    let recover = OpenOptions {
        recover: true,
        ..Default::default()
    };
    assert!(Store::open_with(dir.path(), recover).is_err());
    assert_eq!(
        std::fs::read(dir.path().join(DB_FILE)).unwrap(),
        vec![0xab; 64 * 1024],
        "--recover alone leaves the file as it is"
    );
    let (store, report) = Store::open_with(
        dir.path(),
        OpenOptions {
            move_aside_unopenable: true,
            ..recover
        },
    )
    .unwrap();
    assert!(report[0].contains("MOVED"), "{report:?}");
    assert!(store.networks().await.unwrap().is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.redb.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap().len(), 64 * 1024);
}
