//! Start-up safety, honest readiness and connection limits, against real agents
//! (issue 9 items 1, 5 and 10).

use std::os::unix::fs::FileTypeExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fan_e2e::{binary, cpu_seconds, serving, unix_channel, wait_until, Testbed};
use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_client::FanAgentServiceClient;

const UNDERLAY: &str = "172.30.0.0/16";

fn owner() -> pb::Owner {
    pb::Owner {
        container_id: "kept".into(),
        interface: "eth0".into(),
    }
}

/// Runs the agent binary in `netns` with `args` and waits for it to exit
/// (it must refuse to start); returns its exit code and stderr.
fn run_refused_agent(netns: &str, args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(binary("fan-agent")?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawn fan-agent")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let output = child.wait_with_output()?;
            return Ok((
                status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("fan-agent did not exit: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_that_is_not_a_socket_is_refused_and_left_alone() -> Result<()> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    bed.create_network_everywhere("fan", "250.0.0.0/8", UNDERLAY)
        .await?;
    let mut client = bed.host("h28").client().await?;
    let allocated = client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: "fan".into(),
            owner: Some(owner()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocation
        .context("allocation")?
        .address;
    drop(client);
    let host = bed.host_mut("h28");
    assert!(host.agent.terminate()?, "clean exit");
    let state_dir = host.agent.state_dir.clone();
    let database = state_dir.join("state.redb");
    let before = std::fs::read(&database)?;
    let netns = host.netns.name.clone();

    // The typo the issue describes: the database path given as the socket.
    let db_arg = database.to_string_lossy().into_owned();
    let other_state = state_dir.with_file_name("other-state");
    let other_state_arg = other_state.to_string_lossy().into_owned();
    let (code, stderr) = run_refused_agent(
        &netns,
        &["--socket", &db_arg, "--state-dir", &other_state_arg],
    )?;
    assert_ne!(code, Some(0), "must refuse: {stderr}");
    assert!(
        stderr.contains(&db_arg) && stderr.contains("regular file"),
        "the refusal names the path and what is there: {stderr}"
    );
    assert_eq!(
        std::fs::read(&database)?,
        before,
        "the database is untouched"
    );

    // A directory in the way is refused as well, and kept.
    let dir_path = state_dir.with_file_name("a-directory");
    std::fs::create_dir_all(&dir_path)?;
    let dir_arg = dir_path.to_string_lossy().into_owned();
    let (code, stderr) = run_refused_agent(
        &netns,
        &["--socket", &dir_arg, "--state-dir", &other_state_arg],
    )?;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("a directory"), "{stderr}");
    assert!(dir_path.is_dir());

    // A stale socket (nobody answers) is replaced; the allocation is still there.
    let socket = bed.host("h28").agent.socket.clone();
    drop(std::os::unix::net::UnixListener::bind(&socket).ok());
    assert!(std::fs::symlink_metadata(&socket)?.file_type().is_socket());
    bed.host_mut("h28").start_agent()?;
    let mut client = bed.host("h28").client().await?;
    let got = client
        .get_allocation(pb::GetAllocationRequest {
            network_id: "fan".into(),
            selector: Some(pb::AllocationSelector {
                selector: Some(pb::allocation_selector::Selector::Owner(owner())),
            }),
        })
        .await?
        .into_inner()
        .allocation
        .context("allocation")?;
    assert_eq!(got.address, allocated);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_only_once_every_network_is_programmed() -> Result<()> {
    const NETWORKS: usize = 16;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    let mut client = bed.host("h28").client().await?;
    for i in 0..NETWORKS {
        client
            .create_network(pb::CreateNetworkRequest {
                network_id: format!("n{i}"),
                spec: Some(pb::NetworkSpec {
                    overlay: format!("{}.0.0.0/8", 200 + i),
                    underlay: UNDERLAY.into(),
                    ..Default::default()
                }),
            })
            .await?;
    }
    drop(client);
    let host = bed.host_mut("h28");
    host.agent.kill9()?;
    // Remove what the agent made, so the next start must program every network again.
    for i in 0..NETWORKS {
        host.netns
            .ip(&["link", "del", &format!("fan-{}", 200 + i)])
            .with_context(|| format!("delete bridge of n{i}"))?;
    }
    host.start_agent()?;
    let socket = bed.host("h28").agent.socket.clone();
    let netns = &bed.host("h28").netns;
    // Poll as fast as the agent answers: the first SERVING must find every bridge.
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = unix_channel(&socket).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("never became SERVING");
        }
    }
    let links = netns.ip(&["-br", "link", "show", "type", "bridge"])?;
    let present = (0..NETWORKS)
        .filter(|i| links.contains(&format!("fan-{}", 200 + i)))
        .count();
    assert_eq!(
        present, NETWORKS,
        "health said SERVING with {present} of {NETWORKS} bridges programmed:\n{links}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_descriptor_limit_do_not_lock_clients_out() -> Result<()> {
    const IDLE: usize = 2000;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h28", "172.30.0.28".parse()?)?;
    let agent = &bed.host("h28").agent;
    let pid = agent.pid().context("agent pid")?;
    // The agent sized its connection cap for its start-up limit; lowering the
    // limit under it drives accept() into EMFILE, the case that used to spin.
    fan_e2e::run("prlimit", &["--pid", &pid.to_string(), "--nofile=256:256"])?;
    let socket = agent.socket.clone();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(&socket),
        )
        .await
        {
            Ok(Ok(stream)) => idle.push(stream),
            Ok(Err(err)) => bail!("connect {}: {err}", idle.len()),
            Err(_) => bail!("connect {} did not complete", idle.len()),
        }
    }
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut client = FanAgentServiceClient::new(unix_channel(&socket).await?);
    let info = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_agent_info(pb::GetAgentInfoRequest {}),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "a normal client was not served while 2,000 idle connections were open: {}",
            bed.host("h28").agent.log_tail()
        )
    })??;
    let latency = started.elapsed();
    assert!(!info.into_inner().version.is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    println!(
        "served after {:.1} ms with {IDLE} idle connections at a 256-descriptor limit; agent CPU {:.2} s over {:.1} s",
        latency.as_secs_f64() * 1000.0,
        cpu,
        started.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&bed.host("h28").agent.log)?;
    assert!(
        log.contains("out of file descriptors") || log.contains("connection limit reached"),
        "the agent says why it closes connections: {}",
        bed.host("h28").agent.log_tail()
    );
    drop(idle);
    wait_until(Duration::from_secs(10), "agent healthy again", || {
        serving(&socket)
    })
    .await?;
    Ok(())
}
