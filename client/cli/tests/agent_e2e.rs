//! The real `fan-client` binary against real `fan-agent` processes, each in
//! its own network namespace on a shared underlay bridge (the fan-e2e
//! harness). Needs root, like every namespace test of the workspace (skipped
//! with a message otherwise), and the agent binary built beside this test
//! (`cargo build --workspace --bins`).

use std::process::Command;

use fan_e2e::Testbed;
use serde_json::{json, Value};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fan_client(target: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_fan-client"))
        .env_remove("FAN_AGENT")
        .arg("--agent")
        .arg(target)
        .args(args)
        .output()
        .expect("run fan-client");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(target: &str, args: &[&str]) -> String {
    let out = fan_client(target, args);
    assert_eq!(out.code, 0, "fan-client {args:?}: {}", out.stderr);
    assert_eq!(out.stderr, "", "fan-client {args:?}");
    out.stdout
}

fn ok_json(target: &str, args: &[&str]) -> Value {
    let mut full = vec!["-o", "json"];
    full.extend_from_slice(args);
    let out = ok(target, &full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Expects a refusal: exit 1, one line on stderr, nothing on stdout.
fn refused(target: &str, args: &[&str]) -> String {
    let out = fan_client(target, args);
    assert_eq!(
        out.code, 1,
        "fan-client {args:?}: {} {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.stdout, "", "fan-client {args:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let line = out.stderr.trim_end().to_string();
    eprintln!("fan-client {args:?} -> {line}");
    assert!(line.starts_with("fan-client: "), "{line}");
    line
}

fn target_of(bed: &Testbed, host: usize) -> String {
    format!("unix:{}", bed.hosts[host].agent.socket.display())
}

#[test]
fn cli_against_real_agents() -> anyhow::Result<()> {
    if fan_testkit::skip_unless_root() {
        return Ok(());
    }
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", "172.30.0.28".parse()?)?;
    bed.add_host("h2", "172.30.0.29".parse()?)?;
    let h1 = target_of(&bed, 0);
    let h2 = target_of(&bed, 1);

    // info
    let info = ok_json(&h1, &["info"]);
    assert!(!info["version"].as_str().unwrap().is_empty());
    assert!(info["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["address"] == json!("172.30.0.28/16")));
    let text = ok(&h1, &["info"]);
    eprintln!("{text}");
    assert!(text.starts_with("Version:"), "{text}");

    // fanctl up / show, on both hosts
    let up = ok(&h1, &["up", "-o", "250", "-u", "172.30.0.0/16"]);
    assert_eq!(up, "fan-250: 250.0.0.0/8 172.30.0.0/16 up\n");
    ok(&h1, &["up", "-o", "250", "-u", "172.30.0.0/16"]); // idempotent
    ok(&h2, &["up", "-o", "250.0.0.0/8", "-u", "eth0/16"]);
    let show = ok(&h1, &["show"]);
    assert_eq!(
        show,
        "Bridge   Underlay        Overlay      Flags\n\
         fan-250  172.30.0.28/16  250.0.0.0/8  host-reserve 1\n"
    );
    let show = ok(&h2, &["show"]);
    assert!(
        show.ends_with("fan-250  172.30.0.29/16  250.0.0.0/8  host-reserve 1\n"),
        "{show}"
    );

    // network commands
    let nets = ok_json(&h1, &["network", "list"]);
    assert_eq!(nets.as_array().unwrap().len(), 1);
    let n = &nets[0];
    assert_eq!(n["id"], json!("fan-250"));
    assert_eq!(n["status"]["slice"], json!("250.0.28.0/24"));
    assert_eq!(n["status"]["gateway"], json!("250.0.28.1"));
    assert_eq!(n["status"]["state"], json!("ready"), "{n}");
    eprintln!("{}", ok(&h1, &["network", "show", "fan-250"]));
    eprintln!("{}", ok(&h1, &["network", "list"]));
    let shown = ok_json(&h1, &["network", "show", "fan-250"]);
    assert_eq!(shown["spec"]["overlay"], json!("250.0.0.0/8"));
    let check = ok_json(&h1, &["network", "check", "fan-250"]);
    assert_eq!(check, json!({"network": "fan-250", "drifts": []}));
    let line = refused(&h1, &["network", "show", "nope"]);
    assert!(line.ends_with("(NETWORK_NOT_FOUND)"), "{line}");
    let line = refused(
        &h1,
        &[
            "network",
            "create",
            "bad",
            "--overlay",
            "127",
            "--underlay",
            "eth0/16",
        ],
    );
    assert!(line.ends_with("(FIELD_INVALID)"), "{line}");

    // addresses
    let a = ok_json(
        &h1,
        &[
            "address", "allocate", "fan-250", "--owner", "web-1", "--label", "app=web",
        ],
    );
    assert_eq!(a["address"], json!("250.0.28.2"));
    assert_eq!(a["prefix_length"], json!(24));
    assert_eq!(a["gateway"], json!("250.0.28.1"));
    assert_eq!(a["labels"], json!({"app": "web"}));
    let again = ok_json(&h1, &["address", "allocate", "fan-250", "--owner", "web-1"]);
    assert_eq!(again["address"], a["address"]);
    ok(
        &h1,
        &[
            "address",
            "allocate",
            "fan-250",
            "--owner",
            "db",
            "--interface",
            "net1",
            "--address",
            "250.0.28.77",
        ],
    );
    ok(&h1, &["address", "allocate", "fan-250", "--owner", "stale"]);
    let list = ok(&h1, &["address", "list", "fan-250"]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 4, "{list}");
    assert!(rows[0].starts_with("ADDRESS"));
    assert!(
        rows[1].starts_with("250.0.28.2/24   web-1  eth0       app=web"),
        "{list}"
    );
    let shown = ok_json(
        &h1,
        &["address", "show", "fan-250", "--address", "250.0.28.77"],
    );
    assert_eq!(
        shown["owner"],
        json!({"container_id": "db", "interface": "net1"})
    );
    let gc = ok_json(
        &h1,
        &[
            "address",
            "gc",
            "fan-250",
            "--valid-owner",
            "web-1",
            "--valid-owner",
            "db/net1",
            "--all",
            "--dry-run",
        ],
    );
    assert_eq!(gc["released"].as_array().unwrap().len(), 1);
    assert_eq!(gc["released"][0]["owner"]["container_id"], json!("stale"));
    let gc = ok_json(
        &h1,
        &[
            "address",
            "gc",
            "fan-250",
            "--valid-owner",
            "web-1",
            "--valid-owner",
            "db/net1",
            "--all",
            "--yes",
        ],
    );
    assert_eq!(gc["dry_run"], json!(false));
    assert_eq!(
        ok_json(&h1, &["address", "list", "fan-250"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // resolve: pure arithmetic, any agent answers for any host
    let r = ok_json(&h2, &["resolve", "250.0.28.2"]);
    assert_eq!(r["resolutions"][0]["underlay_host"], json!("172.30.0.28"));
    assert_eq!(r["resolutions"][0]["slice"], json!("250.0.28.0/24"));
    let r = ok_json(
        &h2,
        &[
            "resolve",
            "99.6.7.8",
            "--overlay",
            "99",
            "--underlay",
            "10.88.0.0/16",
        ],
    );
    assert_eq!(r["resolutions"][0]["underlay_host"], json!("10.88.6.7"));

    // cluster status over both agents and a missing one
    let agents = format!("{h1},{h2},unix:/nonexistent/fan.sock");
    let status = fan_client(
        &h1,
        &["-o", "json", "cluster", "status", "--agents", &agents],
    );
    assert_eq!(status.code, 0, "{}", status.stderr);
    let rows: Value = serde_json::from_str(&status.stdout)?;
    assert_eq!(rows[0]["reachable"], json!(true));
    assert_eq!(rows[0]["allocations"], json!(2));
    assert_eq!(rows[0]["slices"], json!(["250.0.28.0/24"]));
    assert_eq!(rows[1]["slices"], json!(["250.0.29.0/24"]));
    assert_eq!(rows[1]["dataplane"], json!("ready"));
    assert_eq!(rows[2]["reachable"], json!(false));
    eprintln!(
        "{}",
        fan_client(&h1, &["cluster", "status", "--agents", &agents]).stdout
    );
    let strict = fan_client(&h1, &["cluster", "status", "--agents", &agents, "--strict"]);
    assert_eq!(strict.code, 1);
    assert!(
        strict.stderr.ends_with("(CLUSTER_NOT_HEALTHY)\n"),
        "{}",
        strict.stderr
    );
    let strict = fan_client(
        &h1,
        &[
            "cluster",
            "status",
            "--agents",
            &format!("{h1},{h2}"),
            "--strict",
        ],
    );
    assert_eq!(strict.code, 0, "{}{}", strict.stdout, strict.stderr);

    // fanctl down refuses while containers hold addresses, like fanctl
    let line = refused(&h1, &["down", "-o", "250", "-u", "172.30.0.28/16"]);
    assert!(line.contains("fan-250"), "{line}");
    ok(&h1, &["address", "release", "fan-250", "--owner", "web-1"]);
    ok(
        &h1,
        &["address", "release", "fan-250", "--address", "250.0.28.77"],
    );
    let released = ok_json(
        &h1,
        &[
            "address",
            "release",
            "fan-250",
            "--owner",
            "web-1",
            "--allow-missing",
        ],
    );
    assert_eq!(released["released"], Value::Null);
    let down = ok(&h1, &["down", "-o", "250", "-u", "172.30.0.28/16"]);
    assert_eq!(down, "fan-250: 250.0.0.0/8 172.30.0.28/16 down\n");
    assert_eq!(ok(&h1, &["show"]), "Bridge  Underlay  Overlay  Flags\n");
    let down = ok(&h2, &["down", "-e"]);
    assert_eq!(down, "fan-250: 250.0.0.0/8 eth0/16 down\n");
    Ok(())
}

#[test]
fn fanctl_config_file_against_a_real_agent() -> anyhow::Result<()> {
    if fan_testkit::skip_unless_root() {
        return Ok(());
    }
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", "172.30.0.28".parse()?)?;
    let h1 = target_of(&bed, 0);
    let config = bed.dir.join("fan");
    std::fs::write(
        &config,
        "# fans of this host\n\
         250.0.0.0/8 172.30.0.0/16 host-reserve 3\n\
         251 eth0/16 off\n\
         252 eth0/16 auto bridge fanb\n",
    )?;
    let config = config.to_str().unwrap();
    let up = ok(&h1, &["up", "-a", "--config", config]);
    assert_eq!(
        up,
        "fan-250: 250.0.0.0/8 172.30.0.0/16 up\nfan-252: 252.0.0.0/8 eth0/16 up\n"
    );
    let show = ok(&h1, &["show"]);
    assert_eq!(
        show,
        "Bridge   Underlay        Overlay      Flags\n\
         fan-250  172.30.0.28/16  250.0.0.0/8  host-reserve 3\n\
         fanb     172.30.0.28/16  252.0.0.0/8  host-reserve 1\n"
    );
    let down = ok_json(&h1, &["down", "-a", "--config", config]);
    assert_eq!(down.as_array().unwrap().len(), 2);
    assert!(down
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["changed"] == json!(true)));
    assert_eq!(ok(&h1, &["show"]), "Bridge  Underlay  Overlay  Flags\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_survives_an_agent_restart() -> anyhow::Result<()> {
    use fan_client::{AllocationRequest, FanClient, NetworkSpec, Owner};
    if fan_testkit::skip_unless_root() {
        return Ok(());
    }
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", "172.30.0.28".parse()?)?;
    let client = FanClient::connect(&target_of(&bed, 0)).await?;
    let net = client
        .create_network("fan-250", &NetworkSpec::new("250", "172.30.0.0/16"))
        .await?;
    let first = client
        .allocate_address(&net.id, &AllocationRequest::new(Owner::new("c1")))
        .await?;

    // The agent is down: the same client reports it as unreachable.
    bed.hosts[0].agent.kill9()?;
    let err = client.get_agent_info().await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(err.reason(), "AGENT_UNREACHABLE", "{err}");
    assert!(!err.to_string().contains('\n'));

    // The agent is back: the same client reconnects, and the owner keeps
    // its address (state is durable, allocation idempotent).
    bed.hosts[0].start_agent()?;
    let again = client
        .allocate_address(&net.id, &AllocationRequest::new(Owner::new("c1")))
        .await?;
    assert_eq!(again.address, first.address);
    assert_eq!(client.list_allocations(&net.id).await?.len(), 1);
    Ok(())
}
