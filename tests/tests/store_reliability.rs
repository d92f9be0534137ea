//! The state store against real agent processes: an emptied database and a
//! damaged record stop the start-up until `--recover`, a full disk makes the
//! agent NOT_SERVING (writes UNAVAILABLE, reads served) until space is back,
//! and the state is private (0700/0600).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::{reason_of, serving, wait_until, Client, Host, Testbed};
use fan_proto::v1 as pb;
use redb::{ReadableTable, TableDefinition};

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
/// The agent's allocations table, as stored (network, address) → checksummed JSON.
const ALLOCATIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("allocations");

fn owner(name: &str) -> pb::Owner {
    pb::Owner {
        container_id: name.into(),
        interface: "eth0".into(),
    }
}

async fn create_network(client: &mut Client) -> Result<()> {
    let spec = fan_e2e::fan_spec(OVERLAY, UNDERLAY);
    fan_e2e::create_network(client, "the agent", "fan", spec).await?;
    Ok(())
}

async fn allocate(
    client: &mut Client,
    name: &str,
    labels: &[(&str, &str)],
) -> std::result::Result<String, tonic::Status> {
    let allocation = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: Some(owner(name)),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocation
        .ok_or_else(|| tonic::Status::internal("no allocation in the response"))?;
    Ok(allocation.address)
}

/// Every allocation of "fan": address → container id.
async fn allocations(client: &mut Client) -> Result<BTreeMap<String, String>> {
    Ok(fan_e2e::all_allocations(client, "fan", 1000)
        .await?
        .into_iter()
        .map(|a| {
            (
                a.address,
                a.owner.map(|o| o.container_id).unwrap_or_default(),
            )
        })
        .collect())
}

fn log_of(host: &Host) -> String {
    std::fs::read_to_string(&host.agent.log).unwrap_or_default()
}

/// Starts the agent expecting it to refuse; returns what it said.
fn refused_start(host: &mut Host) -> Result<String> {
    match host.start_agent() {
        Ok(()) => bail!(
            "the agent started on damaged state: {}",
            host.agent.log_tail()
        ),
        // The whole log: the refusal may sit above a long backtrace.
        Err(err) => Ok(format!("{err:#}\n{}", log_of(host))),
    }
}

fn db_path(host: &Host) -> PathBuf {
    host.agent.state_dir.join("state.redb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_database_is_refused_until_recover() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    let host = bed.add_host("h28", "172.30.0.28".parse()?)?;
    let mut client = host.client().await?;
    create_network(&mut client).await?;
    allocate(&mut client, "before", &[]).await?;
    drop(client);
    assert!(host.agent.terminate()?, "clean exit");

    std::fs::File::create(db_path(host))?; // truncates to 0 bytes
    let said = refused_start(host)?;
    assert!(said.contains("is empty (0 bytes)"), "{said}");
    assert!(said.contains("was initialized"), "{said}");
    assert!(
        said.contains(&format!(
            "fan-agent --recover --state-dir {}",
            host.agent.state_dir.display()
        )),
        "the refusal names the recovery command: {said}"
    );

    host.agent.extra_args.push("--recover".into());
    host.start_agent()?;
    let log = log_of(host);
    assert!(
        log.contains("recover: state database") && log.contains("EMPTY state"),
        "--recover reports what it did: {log}"
    );
    let mut client = host.client().await?;
    let networks = client
        .list_networks(pb::ListNetworksRequest::default())
        .await?
        .into_inner()
        .networks;
    assert!(networks.is_empty(), "{networks:?}");
    // Serving normally afterwards: the network can be created again.
    create_network(&mut client).await?;
    Ok(())
}

/// Flips one bit of a label value inside a stored allocation, the way bit rot
/// would, with redb offline (so the page checksums stay valid and only the
/// record's own checksum can tell).
fn rot_label(db: &Path, address: &str, label_value: &str) -> Result<()> {
    let address: std::net::Ipv4Addr = address.parse()?;
    let db = redb::Database::open(db).context("open the database offline")?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(ALLOCATIONS)?;
        let mut raw = table
            .get(("fan", u32::from(address)))?
            .ok_or_else(|| anyhow!("no record for {address}"))?
            .value()
            .to_vec();
        let at = raw
            .windows(label_value.len())
            .position(|w| w == label_value.as_bytes())
            .ok_or_else(|| anyhow!("label value not in the record"))?;
        raw[at] ^= 0x01; // 'x' → 'y': still valid JSON, silently different
        table.insert(("fan", u32::from(address)), raw.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_allocation_is_refused_then_quarantined_and_never_handed_out() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    let host = bed.add_host("h28", "172.30.0.28".parse()?)?;
    let mut client = host.client().await?;
    create_network(&mut client).await?;
    allocate(&mut client, "a", &[]).await?;
    let victim = allocate(&mut client, "b", &[("note", "xxxxxxxx")]).await?;
    allocate(&mut client, "c", &[]).await?;
    drop(client);
    assert!(host.agent.terminate()?, "clean exit");

    rot_label(&db_path(host), &victim, "xxxxxxxx")?;
    let said = refused_start(host)?;
    assert!(
        said.contains(&format!(
            "allocation {victim} of network \"fan\": checksum mismatch"
        )),
        "the refusal names the record: {said}"
    );
    assert!(said.contains("fan-agent --recover"), "{said}");

    host.agent.extra_args.push("--recover".into());
    host.start_agent()?;
    let log = log_of(host);
    assert!(
        log.contains(&format!(
            "quarantined allocation {victim} of network \"fan\""
        )),
        "--recover reports the quarantine: {log}"
    );
    let mut client = host.client().await?;
    let held = allocations(&mut client).await?;
    assert_eq!(
        held.get(&victim).map(String::as_str),
        Some(format!("fan-quarantine-{victim}").as_str()),
        "the quarantined address stays reserved: {held:?}"
    );
    // Take every remaining address: the quarantined one never comes out.
    let mut handed = Vec::new();
    for i in 0.. {
        match allocate(&mut client, &format!("fill{i}"), &[]).await {
            Ok(address) => handed.push(address),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => break,
            Err(status) => bail!("allocate: {status}"),
        }
    }
    assert!(!handed.contains(&victim), "{victim} was handed out again");
    assert_eq!(handed.len(), 253 - 3, "every other address was free");

    // A plain restart accepts the repaired state and keeps the reservation.
    drop(client);
    assert!(host.agent.terminate()?, "clean exit");
    host.agent.extra_args.clear();
    host.start_agent()?;
    let mut client = host.client().await?;
    let held = allocations(&mut client).await?;
    assert_eq!(held.len(), 253);
    assert!(held[&victim].starts_with("fan-quarantine-"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_agent_not_serving_until_space_is_back() -> Result<()> {
    // Declared first, dropped last: the agent is gone before the unmount.
    let tmpfs = fan_e2e::Tmpfs::mount("fan-e2e", "4m")?;
    let mut bed = Testbed::new(16)?;
    let host = bed.add_host("h28", "172.30.0.28".parse()?)?;
    host.move_state_to(tmpfs.dir.join("state")).await?;
    let socket = host.agent.socket.clone();
    let mut client = host.client().await?;
    create_network(&mut client).await?;
    wait_until(Duration::from_secs(20), "health SERVING", || {
        serving(&socket)
    })
    .await?;
    let mut acked = BTreeMap::new();
    for i in 0..5 {
        let name = format!("early{i}");
        acked.insert(allocate(&mut client, &name, &[]).await?, name);
    }

    let filler = tmpfs.fill()?;
    // The database may still have a few free pages: allocate until a commit needs more.
    let mut refusal = None;
    for i in 0..250 {
        let name = format!("full{i}");
        match allocate(&mut client, &name, &[("pad", &"p".repeat(200))]).await {
            Ok(address) => {
                acked.insert(address, name);
            }
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.context("no allocation failed on a full disk")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(reason_of(&status), "STATE_UNWRITABLE", "{status:?}");
    assert!(
        status.message().contains(&tmpfs.dir.display().to_string())
            && status.message().contains("No space left on device"),
        "the error names the state directory and the OS error: {}",
        status.message()
    );
    assert!(!serving(&socket).await?, "health must be NOT_SERVING");
    let log = log_of(host);
    assert!(
        log.contains("health NOT_SERVING") && log.contains("No space left on device"),
        "the agent says why it is not serving: {log}"
    );
    // Changes fail fast, reads are served from memory.
    let again = allocate(&mut client, "while-full", &[]).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");
    assert_eq!(allocations(&mut client).await?, acked);
    fan_e2e::get_network(&mut client, "fan")
        .await
        .context("get network while full")?;

    // Space back: writes resume without a restart.
    std::fs::remove_file(&filler)?;
    wait_until(Duration::from_secs(30), "health SERVING again", || {
        serving(&socket)
    })
    .await?;
    acked.insert(allocate(&mut client, "after", &[]).await?, "after".into());
    assert!(log_of(host).contains("state store writable again"));

    // Every acknowledged allocation is on disk.
    drop(client);
    assert!(host.agent.terminate()?, "clean exit");
    host.start_agent()?;
    let mut client = host.client().await?;
    assert_eq!(allocations(&mut client).await?, acked);
    let mode = std::fs::metadata(tmpfs.dir.join("state"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(bed);
    Ok(())
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_private_and_a_loose_directory_is_tightened() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    let host = bed.add_host("h28", "172.30.0.28".parse()?)?;
    let dir = host.agent.state_dir.clone();
    assert_eq!(mode(&dir)?, 0o700, "new state directory");
    assert_eq!(mode(&dir.join("state.redb"))?, 0o600, "new database");
    assert_eq!(mode(&dir.join("initialized"))?, 0o600, "marker");
    // One answered call: the agent handles SIGTERM from here on.
    host.client()
        .await?
        .list_networks(pb::ListNetworksRequest::default())
        .await?;
    assert!(host.agent.terminate()?, "clean exit");

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        dir.join("state.redb"),
        std::fs::Permissions::from_mode(0o644),
    )?;
    host.start_agent()?;
    assert_eq!(mode(&dir)?, 0o700, "tightened directory");
    assert_eq!(mode(&dir.join("state.redb"))?, 0o600, "tightened database");
    let log = log_of(host);
    assert!(
        log.contains("was mode 0755") && log.contains("tightening it to 0700"),
        "the agent says it tightened the directory: {log}"
    );
    assert!(log.contains("was mode 0644"), "{log}");
    Ok(())
}
