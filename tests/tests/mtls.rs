//! The agent's TCP listener (mutual TLS only), its start-up refusals, the
//! socket group, and the gRPC message size limit, with real `fan-agent`
//! processes in namespaces.
//!
//! The TLS agent listens on its underlay address inside its host namespace;
//! clients (the real `fan-client`, built with `--features fan-client/tls`)
//! run in that namespace under nsenter, so no traffic leaves namespaces the
//! test made. Certificates are made for each run with the test kit (rcgen).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::pki::Pki;
use fan_e2e::{binary, Netns, Testbed};
use fan_proto::v1 as pb;
use tonic::Code;

const HOST: &str = "172.30.0.28";
const LISTEN: &str = "172.30.0.28:7443";

/// A `fan-agent` this test started with its own flags; killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `fan-agent` in `netns` with the socket, state and pin directory
    /// of `host_dir` and `extra` flags; returns once the socket answers.
    fn start(netns: &Netns, dir: &Path, bpffs: &Path, extra: &[&str]) -> Result<Agent> {
        let log = dir.join("agent-mtls.log");
        let socket = dir.join("agent.sock");
        let file = std::fs::File::create(&log)?;
        let child = netns
            .command(binary("fan-agent")?)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--bpffs-dir")
            .arg(bpffs)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawn fan-agent")?;
        let mut agent = Agent { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!("fan-agent exited with {status}: {}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("fan-agent did not serve in 20 s: {}", agent.log_text())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `fan-agent ARGS` in `netns` expecting it to refuse to start; returns its stderr.
fn refused_start(netns: &Netns, dir: &Path, args: &[&str]) -> Result<String> {
    let mut child = netns
        .command(binary("fan-agent")?)
        .arg("--socket")
        .arg(dir.join("refused.sock"))
        .arg("--state-dir")
        .arg(dir.join("refused-state"))
        // Never the host's default pin root, should the agent get that far.
        .arg("--bpffs-dir")
        .arg(refused_pin_dir(dir))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("fan-agent {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    if status.success() {
        bail!("fan-agent {args:?} exited 0; stderr: {stderr}");
    }
    Ok(stderr)
}

/// The pin root of agents that must refuse to start (removed by the test).
fn refused_pin_dir(dir: &Path) -> PathBuf {
    let tag = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    PathBuf::from(format!("/sys/fs/bpf/{tag}-refused"))
}

/// Runs the real `fan-client` in `netns`.
fn fan_client(netns: &Netns, args: &[&str]) -> Result<Output> {
    netns
        .command(binary("fan-client")?)
        .env_remove("FAN_AGENT")
        .args(["--timeout", "10"])
        .args(args)
        .output()
        .context("run fan-client")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// `fan-client` over mutual TLS as `client` (None: without a client certificate).
fn tls_args(pki: &Pki, client: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--agent".to_owned(),
        format!("https://{LISTEN}"),
        "--tls-ca".to_owned(),
        pki.file("ca.pem"),
    ];
    if let Some(name) = client {
        args.extend([
            "--tls-cert".to_owned(),
            pki.file(&format!("{name}.pem")),
            "--tls-key".to_owned(),
            pki.file(&format!("{name}.key")),
        ]);
    }
    args
}

fn with<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

/// Starts one host whose agent serves TCP with mTLS (the harness's own agent
/// is stopped first: one agent per host).
fn tls_host(pki_dir: &str) -> Result<(Testbed, Pki)> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", HOST.parse()?)?;
    bed.host_mut("h1").agent.kill9()?;
    let pki = Pki::new(bed.dir.join(pki_dir), HOST)?;
    Ok((bed, pki))
}

fn start_tls_agent(bed: &Testbed, pki: &Pki) -> Result<Agent> {
    let host = bed.host("h1");
    let flags = pki.agent_flags(LISTEN);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let dir = host
        .agent
        .socket
        .parent()
        .ok_or_else(|| anyhow!("socket without a directory"))?;
    Agent::start(&host.netns, dir, &host.agent.bpffs_dir, &flags)
}

#[test]
fn mutual_tls_listener_serves_only_clients_of_its_ca() -> Result<()> {
    let (bed, pki) = tls_host("pki")?;
    let mut agent = start_tls_agent(&bed, &pki)?;
    let ns = &bed.host("h1").netns;

    // A client certificate of the CA: served, by the SDK inside fan-client.
    let alice = tls_args(&pki, Some("alice"));
    let out = fan_client(ns, &with(&alice, &["-o", "json", "info"]))?;
    if stderr_of(&out).contains("TLS_UNSUPPORTED") {
        bail!("fan-client was built without TLS: build it with --features fan-client/tls");
    }
    assert!(out.status.success(), "info over mTLS: {}", stderr_of(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        info["addresses"].to_string().contains(HOST),
        "GetAgentInfo over TCP names the host's address: {info}"
    );

    // A mutating call is audited with the certificate's subject.
    let out = fan_client(
        ns,
        &with(
            &alice,
            &[
                "network",
                "create",
                "mtls-net",
                "--overlay",
                "250.0.0.0/8",
                "--underlay",
                "172.30.0.0/16",
            ],
        ),
    )?;
    assert!(
        out.status.success(),
        "create over mTLS: {}",
        stderr_of(&out)
    );
    let log = agent.log_text();
    let audit = log
        .lines()
        .find(|l| l.contains("audit") && l.contains("CreateNetwork"))
        .ok_or_else(|| anyhow!("no audit line for CreateNetwork in:\n{log}"))?;
    eprintln!("audit line: {audit}");
    assert!(
        audit.contains("\"tls:O=fan, CN=ops-alice [DNS:alice.ops.fan.test] from 172.30.0.28:"),
        "the audit line names the client certificate: {audit}"
    );

    // No client certificate: refused.
    let out = fan_client(ns, &with(&tls_args(&pki, None), &["info"]))?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    eprintln!("without a certificate: {}", stderr_of(&out));
    assert!(out.stdout.is_empty());

    // A certificate of another CA (with the same subject): refused.
    let out = fan_client(ns, &with(&tls_args(&pki, Some("mallory")), &["info"]))?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    eprintln!("with a rogue CA's certificate: {}", stderr_of(&out));

    // Plain HTTP/2 to the TLS port: refused (there is no plaintext TCP mode).
    let out = fan_client(ns, &["--agent", &format!("http://{LISTEN}"), "info"])?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));

    // Refused peers leave the agent serving on both listeners, and a refused
    // peer's call never reached the API (one audit line so far).
    assert!(agent.is_running(), "agent died: {}", agent.log_text());
    let out = fan_client(ns, &with(&alice, &["network", "delete", "mtls-net"]))?;
    assert!(
        out.status.success(),
        "delete over mTLS: {}",
        stderr_of(&out)
    );
    let socket = bed.host("h1").agent.socket.display().to_string();
    let out = fan_client(ns, &["--agent", &format!("unix:{socket}"), "info"])?;
    assert!(
        out.status.success(),
        "info over the socket: {}",
        stderr_of(&out)
    );
    let log = agent.log_text();
    let audited: Vec<&str> = log.lines().filter(|l| l.contains("audit")).collect();
    assert_eq!(audited.len(), 2, "{audited:#?}");
    assert!(
        audited.iter().all(|l| l.contains("CN=ops-alice")),
        "{audited:#?}"
    );
    Ok(())
}

#[test]
fn agent_refuses_tcp_without_every_tls_flag() -> Result<()> {
    let bed = Testbed::new(16)?;
    let ns = &bed.underlay;
    let pki = Pki::new(bed.dir.join("pki"), HOST)?;
    let (cert, key, ca) = (
        pki.file("agent.pem"),
        pki.file("agent.key"),
        pki.file("ca.pem"),
    );

    let tcp = ["--listen", "127.0.0.1:7443"];
    let other_key = pki.file("alice.key");
    fn with<'a>(tcp: &[&'a str], tls: &[&'a str]) -> Vec<&'a str> {
        [tcp, tls].concat()
    }
    // (why, arguments, what stderr must say)
    let cases: [(&str, Vec<&str>, &[&str]); 7] = [
        (
            "TCP without TLS",
            tcp.to_vec(),
            &[
                "--listen 127.0.0.1:7443 needs --tls-cert, --tls-key and --tls-client-ca",
                "no plaintext TCP mode",
            ],
        ),
        (
            "a non-loopback address is refused the same way: TLS is never optional",
            vec!["--listen", "0.0.0.0:7443"],
            &["needs --tls-cert, --tls-key and --tls-client-ca"],
        ),
        (
            "each missing flag is named",
            with(&tcp, &["--tls-cert", &cert, "--tls-key", &key]),
            &["needs --tls-client-ca:"],
        ),
        (
            "each missing flag is named",
            with(&tcp, &["--tls-cert", &cert, "--tls-client-ca", &ca]),
            &["needs --tls-key:"],
        ),
        (
            "TLS flags alone would do nothing: refused too",
            vec!["--tls-client-ca", &ca],
            &["--tls-client-ca given without --listen"],
        ),
        (
            "a key that belongs to another certificate",
            with(
                &tcp,
                &[
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &other_key,
                    "--tls-client-ca",
                    &ca,
                ],
            ),
            &["TLS configuration"],
        ),
        (
            "an unknown socket group",
            vec!["--socket-group", "fan-no-such-group-e2e"],
            &["no group named fan-no-such-group-e2e"],
        ),
    ];
    for (why, args, expected) in cases {
        let stderr = refused_start(ns, &bed.dir, &args)?;
        let _ = std::fs::remove_dir_all(refused_pin_dir(&bed.dir));
        for text in expected {
            assert!(stderr.contains(text), "{why}: {args:?}: {stderr}");
        }
    }
    Ok(())
}

/// The group id of `name` from /etc/group.
fn group_id(name: &str) -> Result<u32> {
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name))
                .then(|| fields.nth(1).and_then(|gid| gid.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| anyhow!("no group {name} in /etc/group"))
}

#[test]
fn socket_group_owns_the_socket() -> Result<()> {
    // `daemon` exists on every Debian system; no group is created for the test.
    let gid = group_id("daemon")?;
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", HOST.parse()?)?;
    bed.host_mut("h1").agent.kill9()?;
    let host = bed.host("h1");
    let dir = host
        .agent
        .socket
        .parent()
        .ok_or_else(|| anyhow!("socket without a directory"))?;
    let _agent = Agent::start(
        &host.netns,
        dir,
        &host.agent.bpffs_dir,
        &["--socket-group", "daemon"],
    )?;
    let meta = std::fs::metadata(&host.agent.socket)?;
    assert_eq!(meta.gid(), gid, "the socket's group is daemon");
    assert_eq!(
        meta.mode() & 0o777,
        0o660,
        "mode 0660: owner and group only"
    );
    Ok(())
}

#[tokio::test]
async fn oversize_request_is_refused_and_the_agent_keeps_serving() -> Result<()> {
    let (_bed, mut client) = fan_e2e::one_host().await?;
    // A garbage collection naming many owners is the largest request by design.
    let gc = |owners: usize| pb::GarbageCollectAllocationsRequest {
        network_id: "no-such-net".into(),
        valid_owners: (0..owners)
            .map(|i| pb::Owner {
                container_id: format!("{i:08}-{}", "c".repeat(247)),
                interface: String::new(),
            })
            .collect(),
        dry_run: true,
    };
    // 262 bytes per owner on the wire.
    let (under, over) = (MAX_MESSAGE_BYTES / 262 - 100, MAX_MESSAGE_BYTES / 262 + 100);

    // Just under the limit: decoded, validated, then NOT_FOUND for the network.
    let status = client
        .garbage_collect_allocations(gc(under))
        .await
        .expect_err("the network does not exist");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Over the limit: refused before decoding.
    let status = client
        .garbage_collect_allocations(gc(over))
        .await
        .expect_err("an oversize request is refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    eprintln!("oversize request: {}", status.message());

    // The same connection and the agent go on serving.
    client
        .get_agent_info(pb::GetAgentInfoRequest {})
        .await
        .map_err(|s| anyhow!("info after an oversize request: {s}"))?;
    Ok(())
}

/// `fan_agent::server::MAX_MESSAGE_BYTES` (this crate does not link the agent).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
