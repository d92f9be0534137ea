//! SIGTERM while the reconciler works: the agent stops the tasks it runs
//! beside its listeners (readiness, address watch, reconciler, watch-stream
//! closing) and exits 0; the next start finds every network and allocation.
//!
//! The bridges of five networks are deleted while the agent is down, so the
//! pass it runs first thing at start repairs all five; SIGTERM is sent once
//! the log shows it repaired the first, while it is still at work.

use std::time::Duration;

use anyhow::{bail, Result};
use fan_e2e::{eventually, serving, wait_until, Client, Testbed};

const UNDERLAY: &str = "172.30.0.0/16";
const NETWORKS: [(&str, &str); 5] = [
    ("s246", "246.0.0.0/8"),
    ("s247", "247.0.0.0/8"),
    ("s248", "248.0.0.0/8"),
    ("s249", "249.0.0.0/8"),
    ("s250", "250.0.0.0/8"),
];

async fn bridge_of(client: &mut Client, network: &str) -> Result<String> {
    Ok(fan_e2e::network_status(client, network).await?.bridge)
}

async fn addresses(client: &mut Client, network: &str) -> Result<Vec<String>> {
    Ok(fan_e2e::list_allocations(client, network)
        .await?
        .allocations
        .into_iter()
        .map(|a| a.address)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_reconcile_stops_every_task_and_exits_cleanly() -> Result<()> {
    if fan_testkit::skip_unless_root() {
        return Ok(());
    }
    let mut bed = Testbed::new(16)?;
    bed.add_host_with(
        "h1",
        "172.30.0.28".parse()?,
        &["--reconcile-interval", "1"],
        &[],
    )?;
    let mut client = bed.host("h1").client().await?;
    let mut bridges = Vec::new();
    let mut allocated = Vec::new();
    for (id, overlay) in NETWORKS {
        fan_e2e::create_network(&mut client, "h1", id, fan_e2e::fan_spec(overlay, UNDERLAY))
            .await?;
        let allocation =
            fan_e2e::allocate_eth0(&mut client, id, &format!("{}-{id}", bed.id)).await?;
        bridges.push(bridge_of(&mut client, id).await?);
        allocated.push(allocation.address);
    }
    drop(client);

    for round in 0..3 {
        let host = bed.host_mut("h1");
        assert!(host.agent.terminate()?, "round {round}: clean exit");
        // A pass cut short in the round before may have left some missing.
        for bridge in &bridges {
            if host.netns.ip(&["link", "show", bridge]).is_ok() {
                host.netns.ip(&["link", "del", bridge])?;
            }
        }
        let logged = std::fs::metadata(&host.agent.log)?.len() as usize;
        host.start_agent()?;
        // SIGTERM once the start-up pass has repaired its first bridge.
        let log = host.agent.log.clone();
        eventually(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&log)?;
            if text[logged..].contains("created bridge") {
                Ok(())
            } else {
                bail!("the start-up pass has not repaired a bridge yet")
            }
        })?;
        let clean = host.agent.terminate()?;
        let log = host.agent.log_tail();
        assert!(clean, "round {round}: SIGTERM mid-reconcile exits 0: {log}");
        assert!(
            log.contains("background tasks stopped") && log.contains("stopped"),
            "round {round}: the agent stops its tasks before it exits: {log}"
        );
    }

    // Nothing was lost: the next start repairs every network and keeps every allocation.
    let host = bed.host_mut("h1");
    host.start_agent()?;
    let socket = host.agent.socket.clone();
    let ready = wait_until(Duration::from_secs(30), "every network programmed", || {
        serving(&socket)
    })
    .await;
    if let Err(err) = ready {
        bail!("{err}; the agent's log ends: {}", host.agent.log_tail());
    }
    let mut client = bed.host("h1").client().await?;
    for ((id, _), address) in NETWORKS.iter().zip(&allocated) {
        assert_eq!(
            addresses(&mut client, id).await?,
            vec![address.clone()],
            "{id}"
        );
    }
    Ok(())
}
