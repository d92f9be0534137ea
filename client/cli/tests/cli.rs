//! The real `fan-client` binary against the real agent, served in-process
//! on the in-memory data plane (no root needed): output for people, JSON
//! shapes, exit codes, the one-line errors, fanctl forms.

// The SDK's test support, shared (the CLI crate has no tests/support of its own).
#[path = "../../sdk/tests/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use support::{BackendKind, Drift, FakeDataplane, FaultProxy, HostAddress, TestAgent};
use tokio::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

async fn fan_client(agent: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fan-client"));
    cmd.env_remove("FAN_AGENT");
    if let Some(a) = agent {
        cmd.arg("--agent").arg(a);
    }
    let out = cmd.args(args).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs and expects success, no stderr.
async fn ok(agent: &TestAgent, args: &[&str]) -> Out {
    let out = fan_client(Some(&agent.target()), args).await;
    assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
    assert_eq!(out.stderr, "", "{args:?}");
    out
}

/// Runs and expects failure with one stderr line and nothing on stdout.
async fn fails(agent: Option<&str>, args: &[&str], code: i32) -> String {
    let out = fan_client(agent, args).await;
    assert_eq!(out.code, code, "{args:?}: {} / {}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "", "{args:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
    out.stderr.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn info() {
    // A host whose kernel has no fan patch: the agent picks eBPF.
    let host = FakeDataplane::new();
    host.set_availability(BackendKind::KernelFan, false, "no fan patch in this kernel");
    let agent = support::start_on(host).await;
    let out = ok(&agent, &["info"]).await;
    assert!(
        out.stdout
            .starts_with(&format!("Version:       {}\n", env!("CARGO_PKG_VERSION"))),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Auto backend:  ebpf\n"));
    assert!(out
        .stdout
        .contains("INTERFACE  ADDRESS         MTU\neth0       172.30.0.28/16  1500\n"));
    assert!(out
        .stdout
        .contains("kernel-fan  no         no fan patch in this kernel\n"));
    let v = ok(&agent, &["-o", "json", "info"]).await.json();
    // The agent reports this machine's name.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(v["hostname"], json!(hostname.trim()));
    assert_eq!(v["auto_backend"], json!("ebpf"));
    assert_eq!(
        v["backends"][1],
        json!({"backend": "ebpf", "available": true, "reason": "fake data plane"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn networks() {
    let agent = support::start().await;
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "network",
            "create",
            "fan-250",
            "--overlay",
            "250",
            "--underlay",
            "172.30.0.28/16",
            "--host-reserve",
            "4",
            "--backend",
            "ebpf",
            "--no-masquerade",
        ],
    )
    .await
    .json();
    assert_eq!(v["id"], json!("fan-250"));
    assert_eq!(v["spec"]["overlay"], json!("250.0.0.0/8"));
    assert_eq!(v["spec"]["host_reserve"], json!(4));
    assert_eq!(v["spec"]["backend"], json!("ebpf"));
    assert_eq!(v["spec"]["masquerade"], json!(false));
    assert_eq!(v["spec"]["anti_spoofing"], json!(true));
    assert_eq!(v["status"]["slice"], json!("250.0.28.0/24"));
    assert!(is_utc_time(v["create_time"].as_str().unwrap()), "{v}");

    let out = ok(
        &agent,
        &[
            "network",
            "create",
            "fan-10",
            "--overlay",
            "10.20.0.0/16",
            "--underlay",
            "eth0/24",
        ],
    )
    .await;
    assert!(
        out.stdout
            .starts_with("Network:           fan-10\nState:             ready\n"),
        "{}",
        out.stdout
    );

    let out = ok(&agent, &["network", "list"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("NAME     OVERLAY       UNDERLAY        SLICE"));
    assert!(
        lines[1].starts_with("fan-10   10.20.0.0/16  eth0/24"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("fan-250  250.0.0.0/8   172.30.0.28/16  250.0.28.0/24"),
        "{}",
        lines[2]
    );
    let v = ok(&agent, &["-o", "json", "network", "list"]).await.json();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let out = ok(&agent, &["network", "show", "fan-250"]).await;
    assert!(out.stdout.contains("Slice:             250.0.28.0/24\n"));
    assert!(out
        .stdout
        .contains("Backend:           ebpf (asked: ebpf)\n"));

    let out = ok(&agent, &["network", "check", "fan-250"]).await;
    assert_eq!(
        out.stdout,
        "network fan-250: the kernel matches the desired state\n"
    );
    let v = ok(&agent, &["-o", "json", "network", "check", "fan-250"])
        .await
        .json();
    assert_eq!(v, json!({"network": "fan-250", "drifts": []}));

    let line = fails(Some(&agent.target()), &["network", "show", "nope"], 1).await;
    assert_eq!(
        line,
        "fan-client: network \"nope\" not found (NETWORK_NOT_FOUND)"
    );
    let line = fails(
        Some(&agent.target()),
        &[
            "network",
            "create",
            "bad",
            "--overlay",
            "127",
            "--underlay",
            "eth0/16",
        ],
        1,
    )
    .await;
    assert!(line.starts_with("fan-client: spec.overlay: "), "{line}");
    assert!(line.ends_with("(FIELD_INVALID)"), "{line}");

    let out = ok(&agent, &["network", "delete", "fan-10"]).await;
    assert_eq!(
        out.stdout,
        "network fan-10 deleted (0 allocations released)\n"
    );
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "network",
            "delete",
            "fan-10",
            "--allow-missing",
        ],
    )
    .await
    .json();
    assert_eq!(
        v,
        json!({"network": "fan-10", "deleted": false, "released_allocations": 0})
    );
    fails(Some(&agent.target()), &["network", "delete", "fan-10"], 1).await;
}

/// RFC 3339 in UTC, as the CLI prints times: 2025-01-01T00:00:00.123Z.
fn is_utc_time(text: &str) -> bool {
    text.len() >= 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T'
}

/// A table without its last column (the agent's clock: CREATED), each
/// time checked.
fn without_times(table: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let mut out = format!("{}\n", header.trim_end_matches("CREATED").trim_end());
    for line in lines {
        let (rest, time) = line.trim_end().rsplit_once(' ').unwrap();
        assert!(is_utc_time(time), "{line}");
        out.push_str(rest.trim_end());
        out.push('\n');
    }
    out
}

/// Creates fan-250 over the fake host's underlay.
async fn up_fan_250(agent: &TestAgent) {
    ok(agent, &["up", "-o", "250", "-u", "172.30.0.0/16"]).await;
}

/// The drift the kernel shows when someone deleted fan-250's bridge.
fn bridge_missing() -> Drift {
    Drift {
        object: "bridge fan-250".into(),
        expected: "present".into(),
        observed: "missing".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn degraded_network_check_lists_drifts() {
    let agent = support::start().await;
    up_fan_250(&agent).await;
    agent.dataplane().pin_drift("fan-250", bridge_missing());
    let out = ok(&agent, &["network", "check", "fan-250"]).await;
    assert_eq!(
        out.stdout,
        "OBJECT          EXPECTED  OBSERVED\nbridge fan-250  present   missing\n"
    );
    let out = ok(&agent, &["network", "list"]).await;
    assert!(
        out.stdout.contains(
            "  degraded: kernel differs from the desired state: bridge fan-250: expected present, found missing  "
        ),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses() {
    let agent = support::start().await;
    ok(
        &agent,
        &[
            "network",
            "create",
            "fan-250",
            "--overlay",
            "250.0.0.0/8",
            "--underlay",
            "172.30.0.28/16",
        ],
    )
    .await;
    let out = ok(
        &agent,
        &[
            "address", "allocate", "fan-250", "--owner", "web-1", "--label", "app=web",
        ],
    )
    .await;
    assert!(
        out.stdout
            .starts_with("Address:    250.0.28.2/24\nGateway:    250.0.28.1\nMTU:        1480\n"),
        "{}",
        out.stdout
    );
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "address",
            "allocate",
            "fan-250",
            "--owner",
            "db",
            "--interface",
            "net1",
            "--address",
            "250.0.28.50",
        ],
    )
    .await
    .json();
    assert_eq!(v["address"], json!("250.0.28.50"));
    assert_eq!(
        v["owner"],
        json!({"container_id": "db", "interface": "net1"})
    );
    assert_eq!(v["prefix_length"], json!(24));
    ok(
        &agent,
        &["address", "allocate", "fan-250", "--owner", "stale"],
    )
    .await;

    // The agent hands out the next address after the last one given.
    let out = ok(&agent, &["address", "list", "fan-250"]).await;
    assert_eq!(
        without_times(&out.stdout),
        "ADDRESS         OWNER  INTERFACE  LABELS\n\
         250.0.28.2/24   web-1  eth0       app=web\n\
         250.0.28.50/24  db     net1       -\n\
         250.0.28.51/24  stale  eth0       -\n"
    );
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "address",
            "show",
            "fan-250",
            "--address",
            "250.0.28.50",
        ],
    )
    .await
    .json();
    assert_eq!(v["owner"]["container_id"], json!("db"));
    let out = ok(
        &agent,
        &[
            "address",
            "show",
            "fan-250",
            "--owner",
            "db",
            "--interface",
            "net1",
        ],
    )
    .await;
    assert!(out.stdout.contains("Interface:  net1\n"));

    let out = ok(
        &agent,
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
    )
    .await;
    assert!(
        out.stdout
            .starts_with("would release 1 allocation(s) in fan-250\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("250.0.28.51/24  stale"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .ends_with("run again with --yes to release them\n"));
    // Scoped: "stale" was allocated by hand, so neither CNI's nor Docker's.
    for maker in ["cni", "docker"] {
        let out = ok(
            &agent,
            &["address", "gc", "fan-250", "--created-by", maker, "--yes"],
        )
        .await;
        assert_eq!(out.stdout, "released 0 allocation(s) in fan-250\n");
    }
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
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
    )
    .await
    .json();
    assert_eq!(v["dry_run"], json!(false));
    assert_eq!(v["released"][0]["owner"]["container_id"], json!("stale"));

    let out = ok(
        &agent,
        &["address", "release", "fan-250", "--owner", "web-1"],
    )
    .await;
    assert_eq!(out.stdout, "released 250.0.28.2 of web-1/eth0 in fan-250\n");
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "address",
            "release",
            "fan-250",
            "--address",
            "250.0.28.2",
            "--allow-missing",
        ],
    )
    .await
    .json();
    assert_eq!(v, json!({"network": "fan-250", "released": null}));
    let line = fails(
        Some(&agent.target()),
        &["address", "release", "fan-250", "--owner", "web-1"],
        1,
    )
    .await;
    assert_eq!(
        line,
        "fan-client: allocation with owner web-1/eth0 in network \"fan-250\" not found (ALLOCATION_NOT_FOUND)"
    );

    let line = fails(Some(&agent.target()), &["network", "delete", "fan-250"], 1).await;
    assert_eq!(
        line,
        "fan-client: network \"fan-250\" still has 1 allocation(s); release them first or delete with force (NETWORK_IN_USE)"
    );
    let out = ok(&agent, &["network", "delete", "fan-250", "--force"]).await;
    assert_eq!(
        out.stdout,
        "network fan-250 deleted (1 allocations released)\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve() {
    let agent = support::start().await;
    ok(
        &agent,
        &[
            "network",
            "create",
            "fan-250",
            "--overlay",
            "250",
            "--underlay",
            "172.30.0.28/16",
        ],
    )
    .await;
    let out = ok(&agent, &["resolve", "250.0.99.7"]).await;
    assert_eq!(
        out.stdout,
        "NETWORK  KIND     UNDERLAY-HOST  SLICE\nfan-250  overlay  172.30.0.99    250.0.99.0/24\n"
    );
    let v = ok(
        &agent,
        &[
            "-o",
            "json",
            "resolve",
            "99.6.7.8",
            "--overlay",
            "99",
            "--underlay",
            "10.88.0.0/16",
        ],
    )
    .await
    .json();
    assert_eq!(
        v,
        json!({"address": "99.6.7.8", "resolutions": [
            {"network_id": null, "is_overlay": true, "underlay_host": "10.88.6.7", "slice": "99.6.7.0/24"}]})
    );
    let out = ok(&agent, &["resolve", "8.8.8.8"]).await;
    assert_eq!(out.stdout, "8.8.8.8 is in no known fan\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn fanctl_up_show_down() {
    let agent = support::start().await;
    let out = ok(
        &agent,
        &[
            "up",
            "-o",
            "250",
            "-u",
            "172.30.0.28/16",
            "--host-reserve",
            "2",
        ],
    )
    .await;
    assert_eq!(out.stdout, "fan-250: 250.0.0.0/8 172.30.0.28/16 up\n");
    // idempotent
    ok(
        &agent,
        &[
            "up",
            "-o",
            "250.0.0.0/8",
            "-u",
            "172.30.0.28/16",
            "--host-reserve",
            "2",
        ],
    )
    .await;
    ok(&agent, &["up", "-o", "10.20.0.0/16", "-u", "eth0/24"]).await;

    let out = ok(&agent, &["show"]).await;
    assert_eq!(
        out.stdout,
        "Bridge     Underlay        Overlay       Flags\n\
         fan-10-20  172.30.0.28/24  10.20.0.0/16  host-reserve 1\n\
         fan-250    172.30.0.28/16  250.0.0.0/8   host-reserve 2\n"
    );
    let v = ok(&agent, &["-o", "json", "show"]).await.json();
    assert_eq!(
        v[1],
        json!({"bridge": "fan-250", "underlay": "172.30.0.28/16", "overlay": "250.0.0.0/8",
               "flags": ["host-reserve 2"], "network": "fan-250"})
    );

    let line = fails(
        Some(&agent.target()),
        &["down", "-o", "250", "-u", "10.1.0.1/16"],
        1,
    )
    .await;
    assert_eq!(
        line,
        "fan-client: no fan with overlay 250.0.0.0/8 and underlay 10.1.0.1/16 is up; with that overlay: fan-250 (underlay 172.30.0.28/16) (FAN_NOT_FOUND)"
    );
    // the underlay network names the same fan as the host address
    let v = ok(
        &agent,
        &["-o", "json", "down", "-o", "250", "-u", "172.30.0.0/16"],
    )
    .await
    .json();
    assert_eq!(
        v,
        json!([{"network": "fan-250", "overlay": "250.0.0.0/8", "underlay": "172.30.0.0/16",
                "changed": true, "line": null}])
    );
    let out = ok(&agent, &["down", "-e"]).await;
    assert_eq!(out.stdout, "fan-10-20: 10.20.0.0/16 eth0/24 down\n");
    assert_eq!(
        ok(&agent, &["show"]).await.stdout,
        "Bridge  Underlay  Overlay  Flags\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fanctl_config_file() {
    let agent = support::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fan");
    std::fs::write(
        &config,
        "# test fans\n250.0.0.0/8 172.30.0.0/16 host-reserve 3\n251 eth0/16 off\n252 172.30.0.28 auto bridge fanb\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = ok(&agent, &["up", "-a", "--config", config]).await;
    assert_eq!(
        out.stdout,
        "fan-250: 250.0.0.0/8 172.30.0.0/16 up\nfan-252: 252.0.0.0/8 172.30.0.28/16 up\n"
    );
    let out = ok(&agent, &["show"]).await;
    assert!(
        out.stdout
            .contains("fanb     172.30.0.28/16  252.0.0.0/8  host-reserve 1\n"),
        "{}",
        out.stdout
    );
    ok(&agent, &["up", "-o", "253", "-u", "eth0/16"]).await;
    let v = ok(&agent, &["-o", "json", "down", "-a", "--config", config])
        .await
        .json();
    assert_eq!(v[0]["network"], json!("fan-250"));
    assert_eq!(v[0]["changed"], json!(true));
    assert_eq!(v[0]["line"], json!(2));
    assert_eq!(v[1]["network"], json!("fan-252"));
    // the fan not in the file stays up
    let out = ok(&agent, &["show"]).await;
    assert_eq!(out.stdout.lines().count(), 2);
    assert!(out.stdout.contains("fan-253"));
    // down -a again: nothing is up, not an error
    let out = ok(&agent, &["down", "-a", "--config", config]).await;
    assert_eq!(
        out.stdout,
        "fan-250: 250.0.0.0/8 172.30.0.0/16 was not up\nfan-252: 252.0.0.0/8 172.30.0.28/16 was not up\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    // Behind the proxy, which counts the calls that reach the agent.
    let proxied = FaultProxy::start().await;
    let agent = &proxied.agent;
    let t = Some(proxied.target.as_str());
    // fanctl's positional form with a flag it does not know
    let line = fails(t, &["up", "250.0.0.0/8", "eth0/16", "dhcpx"], 2).await;
    assert!(line.contains("dhcpx"), "{line}");
    assert_eq!(proxied.calls("CreateNetwork"), 0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fan");
    std::fs::write(&config, "250 eth0/16\n251 eth0/16 dhcpx\n").unwrap();
    let line = fails(t, &["up", "-a", "--config", config.to_str().unwrap()], 2).await;
    assert!(line.ends_with("(CONFIG_INVALID)"), "{line}");
    assert_eq!(proxied.calls("CreateNetwork"), 0);

    // the seed's own line works as written, and `show` prints its flags
    let out = ok(
        agent,
        &["up", "250.0.0.0/8", "eth0/16", "dhcp", "host-reserve", "1"],
    )
    .await;
    assert!(
        out.stdout.starts_with("fan-250: 250.0.0.0/8 eth0/16 up"),
        "{}",
        out.stdout
    );
    let out = ok(agent, &["show"]).await;
    assert!(out.stdout.contains("dhcp host-reserve 1"), "{}", out.stdout);
    let out = ok(agent, &["down", "250.0.0.0/8", "eth0/16"]).await;
    assert!(out.stdout.contains("fan-250"), "{}", out.stdout);

    // clap's own usage errors exit 2 too (its message spans several lines)
    for args in [
        &["up", "-o", "250"][..],
        &["network", "frob"],
        &["-o", "yaml", "info"],
        &["resolve", "x"],
    ] {
        let out = fan_client(t, args).await;
        assert_eq!(out.code, 2, "{args:?}");
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_agent_and_fan_agent_env() {
    let line = fails(Some("unix:/nonexistent/agent.sock"), &["info"], 1).await;
    assert!(
        line.starts_with(
            "fan-client: cannot connect to the agent at unix:/nonexistent/agent.sock: "
        ),
        "{line}"
    );
    assert!(line.ends_with(" (AGENT_UNREACHABLE)"), "{line}");
    let line = fails(Some("bogus"), &["info"], 1).await;
    assert!(line.ends_with("(INVALID_TARGET)"), "{line}");

    let agent = support::start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_fan-client"))
        .env("FAN_AGENT", agent.target())
        .args(["-o", "json", "info"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], json!(env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status() {
    // Two hosts of one underlay; b's bridge has gone.
    let a = support::start().await;
    let host_b = FakeDataplane::new();
    host_b.set_addresses(vec![HostAddress {
        interface: "eth0".into(),
        address: "172.30.0.29/16".parse().unwrap(),
        mtu: 1500,
    }]);
    let b = support::start_on(host_b).await;
    up_fan_250(&a).await;
    up_fan_250(&b).await;
    b.dataplane().pin_drift("fan-250", bridge_missing());
    let agents = format!("{},{},unix:/nonexistent/c.sock", a.target(), b.target());

    let out = fan_client(None, &["cluster", "status", "--agents", &agents]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // stderr is not a terminal here: no progress output
    assert_eq!(out.stderr, "");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(lines[0].starts_with("TARGET"));
    assert!(
        lines[1].contains(" yes ")
            && lines[1].contains("250.0.28.0/24")
            && lines[1].contains(" ready"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("degraded (0/1 ready)"), "{}", lines[2]);
    assert!(
        lines[3].starts_with("unix:/nonexistent/c.sock") && lines[3].contains(" no "),
        "{}",
        lines[3]
    );

    let out = fan_client(
        None,
        &[
            "-o", "json", "cluster", "status", "--agents", &agents, "--strict",
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "fan-client: 2 of 3 agents not healthy (1 unreachable) (CLUSTER_NOT_HEALTHY)"
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["slices"], json!(["250.0.28.0/24"]));
    assert_eq!(v[0]["dataplane"], json!("ready"));
    assert_eq!(v[1]["dataplane"], json!("degraded"));
    assert_eq!(v[2]["reachable"], json!(false));

    let out = fan_client(
        None,
        &["cluster", "status", "--agents", &a.target(), "--strict"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = fan_client(None, &["completions", shell]).await;
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("fan-client"));
    }
}

/// Output piped into a reader that stops early (`fan-client … | head -1`)
/// ends the command quietly: no panic, no backtrace, exit 0.
#[tokio::test]
async fn a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    // Large enough to overflow the pipe buffer once the reader has gone.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fan-client"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fan-client");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("some output");
    // The read end is closed here, as `head` closes it.
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
}
