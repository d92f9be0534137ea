//! The real container engines of Debian 12 on a fan: Docker (docker.io
//! 20.10 with the `fan-docker-ipam` plugin), podman (4.3, CNI backend with
//! `fan-ipam`) and containerd (1.6, `ctr run --cni` with `fan-bridge` and `fan-ipam`).
//!
//! Two hosts (namespaces at 172.30.0.28 and .27, each with its own agent);
//! every engine daemon runs in its host's namespace under `nsenter --net`
//! (`ip netns exec` would remount /sys and hide the cgroup mounts), with its
//! own data, state and socket paths under the testbed's directory, so these
//! tests run in parallel with each other and with anything else. Images are
//! a busybox rootfs built from Debian's busybox-static: no registry.
//!
//! What each test proves for its engine: containers on both hosts ping and
//! talk TCP to each other over the fan; every container's address is the
//! agent's allocation for that container; `--ip` gives exactly that address
//! or a clear error; removing containers releases their addresses (a
//! killed `ctr run -d` task through `fan-client address gc`, which leaves
//! hand-made allocations alone).
//!
//! Cleanup runs on drop, also when a test fails: containers removed through
//! the engine, daemons stopped (SIGTERM, then SIGKILL), processes still
//! naming the test directory (shims, conmon) killed by pid, mounts under it
//! unmounted, plugin sockets removed, then the testbed (agents, namespaces).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_e2e::gso::{set_ipv4_gso_gro, wait_for_ipv4_gso_at};
use fan_e2e::{binary, Client, Netns, Testbed};
use fan_proto::v1 as pb;

const OVERLAY: &str = "250.0.0.0/8";
const UNDERLAY: &str = "172.30.0.0/16";
const NETWORK: &str = "fan-250";
/// An IPv4 GSO limit above the legacy 64 KB (BIG TCP).
const BIG_TCP: u32 = 196_608;
const HOSTS: [(&str, Ipv4Addr); 2] = [
    ("h28", Ipv4Addr::new(172, 30, 0, 28)),
    ("h27", Ipv4Addr::new(172, 30, 0, 27)),
];
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
const PODMAN: &str = "/usr/bin/podman";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const BUSYBOX: &str = "/bin/busybox";
/// Every container serves this line on TCP 5000, again and again.
const SERVE: &str = "while true; do echo here come the bits from $(hostname) | nc -l -p 5000; done";

fn need(paths: &[&str]) -> Result<()> {
    for p in paths {
        if !Path::new(p).exists() {
            bail!("{p} not found: install docker.io, podman, containerd and busybox-static (scripts/install-deps.sh)");
        }
    }
    Ok(())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command; Ok(stdout) on success, else an error with its output.
fn check(mut command: Command) -> Result<String> {
    let what = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text(&out).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a command that must fail; returns its output.
fn refused(mut command: Command) -> Result<String> {
    let what = format!("{command:?}");
    let out = command.stdin(Stdio::null()).output()?;
    if out.status.success() {
        bail!("{what} should have failed: {}", text(&out));
    }
    Ok(text(&out))
}

/// Polls until `f` succeeds (bounded: a failure bound, not a timing assertion).
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: still failing after {limit:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A busybox rootfs (`rootfs/`) and its tarball (`busybox.tar`) in `dir`.
fn busybox_rootfs(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for tool in [
        "sh", "ping", "nc", "sleep", "ip", "cat", "echo", "hostname", "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool))?;
    }
    let tar = dir.join("busybox.tar");
    let mut c = Command::new("tar");
    c.arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".");
    check(c)?;
    Ok((root, tar))
}

/// A daemon started by a test; stopped on drop (SIGTERM, up to 10 s, then SIGKILL).
struct Daemon {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        host: &Netns,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Daemon> {
        let file = std::fs::File::create(&log)?;
        let child = host
            .command(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawn {program}"))?;
        Ok(Daemon {
            child,
            what: format!("{program} in {}", host.name),
            log,
        })
    }

    /// Waits until `ready` succeeds, failing early (with the log) if the daemon exits.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> Result<()>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.what, self.log_tail());
            }
            match ready() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "{} not ready after 60 s: {e:#}\n{}",
                        self.what,
                        self.log_tail()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (by pid) the processes whose command line names `dir`: what our
/// daemons started (containerd shims, conmon) and survived them.
fn kill_strays(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", &p])
            .stderr(Stdio::null())
            .status();
    }
}

/// Two hosts with agents and the fan network, plus the engine's daemons.
/// Field order is drop order after [`Drop::drop`] ran the engine cleanup.
struct Bed {
    /// Removes the engine's containers (run first on drop).
    cleanup: Vec<Command>,
    daemons: Vec<Daemon>,
    /// Files outside the testbed directory to remove (plugin sockets).
    files: Vec<PathBuf>,
    rootfs: PathBuf,
    tar: PathBuf,
    tb: Testbed,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.cleanup {
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        // Reverse start order: engines before the plugins they use.
        while let Some(daemon) = self.daemons.pop() {
            drop(daemon);
        }
        kill_strays(&self.tb.dir);
        unmount_under(&self.tb.dir);
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Bed {
    async fn new() -> Result<Bed> {
        Bed::with_host_reserve(0).await
    }

    /// `host_reserve` 0: the agent's default.
    async fn with_host_reserve(host_reserve: u32) -> Result<Bed> {
        let mut tb = Testbed::new(16)?;
        for (name, addr) in HOSTS {
            tb.add_host(name, addr)?;
        }
        for host in &tb.hosts {
            host.client()
                .await?
                .create_network(pb::CreateNetworkRequest {
                    network_id: NETWORK.into(),
                    spec: Some(pb::NetworkSpec {
                        overlay: OVERLAY.into(),
                        underlay: UNDERLAY.into(),
                        host_reserve: (host_reserve > 0).then_some(host_reserve),
                        ..Default::default()
                    }),
                })
                .await?;
        }
        let (rootfs, tar) = busybox_rootfs(&tb.dir)?;
        Ok(Bed {
            cleanup: Vec::new(),
            daemons: Vec::new(),
            files: Vec::new(),
            rootfs,
            tar,
            tb,
        })
    }

    fn host(&self, name: &str) -> &Netns {
        &self.tb.host(name).netns
    }

    fn dir(&self, host: &str) -> PathBuf {
        self.tb.dir.join(host)
    }

    fn agent(&self, host: &str) -> String {
        format!("unix://{}", self.tb.host(host).agent.socket.display())
    }

    async fn client(&self, host: &str) -> Result<Client> {
        self.tb.host(host).client().await
    }

    /// The host's slice as the agent reports it.
    async fn slice(&self, host: &str) -> Result<String> {
        let n = self
            .client(host)
            .await?
            .get_network(pb::GetNetworkRequest {
                network_id: NETWORK.into(),
            })
            .await?
            .into_inner()
            .network
            .ok_or_else(|| anyhow!("no network"))?;
        Ok(n.status.ok_or_else(|| anyhow!("no status"))?.slice)
    }

    async fn allocations(&self, host: &str) -> Result<Vec<pb::Allocation>> {
        Ok(self
            .client(host)
            .await?
            .list_allocations(pb::ListAllocationsRequest {
                network_id: NETWORK.into(),
                page_size: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .allocations)
    }

    /// owner container id -> address, of every allocation on `host`.
    async fn owners(&self, host: &str) -> Result<BTreeMap<String, String>> {
        Ok(self
            .allocations(host)
            .await?
            .into_iter()
            .map(|a| {
                (
                    a.owner.map(|o| o.container_id).unwrap_or_default(),
                    a.address,
                )
            })
            .collect())
    }

    /// Allocates an address by hand (no labels), as a user would with fan-client.
    async fn allocate_by_hand(&self, host: &str, owner: &str, address: &str) -> Result<()> {
        self.client(host)
            .await?
            .allocate_address(pb::AllocateAddressRequest {
                network_id: NETWORK.into(),
                owner: Some(pb::Owner {
                    container_id: owner.into(),
                    interface: "eth0".into(),
                }),
                address: address.into(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    fn fan_client(&self, host: &str) -> Result<Command> {
        let mut c = Command::new(binary("fan-client")?);
        c.arg("--agent").arg(self.agent(host));
        Ok(c)
    }
}

/// A command run inside a container: (host, container, command line).
type Exec<'a> = &'a dyn Fn(&str, &str, &[&str]) -> Command;

/// Both directions over the fan between containers `a` and `b`, each given
/// as (host, container, address), commands run in them by `exec`: ping,
/// and the TCP line each side serves.
fn exchange(exec: Exec, a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<()> {
    for (from, to, to_name) in [(a, b.2, "b"), (b, a.2, "a")] {
        let (host, container, _) = from;
        let run = |args: &[&str]| exec(host, container, args);
        check(run(&["ping", "-c", "2", "-W", "3", to]))
            .with_context(|| format!("ping {to_name} at {to}"))?;
        // The server loop may be between two nc runs: retry briefly.
        let line = until("TCP over the fan", Duration::from_secs(15), || {
            let out = check(run(&["timeout", "5", "nc", to, "5000"]))?;
            if out.contains("here come the bits") {
                Ok(out)
            } else {
                bail!("got {out:?}")
            }
        })?;
        eprintln!("{to}: {line}");
    }
    Ok(())
}

/// The end of an engine's run on the bed: containers `a` (h28) and `b`
/// (h27) serving, `with_ip` (h28) at 250.0.28.200 and "hand-1" made by hand
/// on h28 hold every allocation there is; then traffic both ways between
/// `a` and `b` (see [`exchange`]).
async fn check_allocations_and_exchange(
    bed: &Bed,
    addrs: &BTreeMap<&str, String>,
    [a, b, with_ip]: [&str; 3],
    exec: Exec<'_>,
) -> Result<()> {
    assert_eq!(addrs[with_ip], "250.0.28.200");
    assert_eq!(
        bed.allocations("h28").await?.len(),
        3,
        "{a}, {with_ip}, hand-1 and nothing else"
    );
    assert_eq!(bed.allocations("h27").await?.len(), 1);
    exchange(exec, ("h28", a, &addrs[a]), ("h27", b, &addrs[b]))
}

/// BIG TCP: once `host` raises its NIC's IPv4 GSO limit, the engine's
/// container (whose pid `inspect_pid` prints) gets it on its `eth0`: the
/// agent reaches its namespace through the container's process (the test
/// daemons keep their netns mounts under their own directories).
async fn big_tcp_reaches(bed: &Bed, host: &str, inspect_pid: Command) -> Result<()> {
    if !set_ipv4_gso_gro(bed.host(host), "eth0", BIG_TCP)? {
        eprintln!("BIG TCP part skipped: this kernel has no gso_ipv4_max_size (Linux 6.3+)");
        return Ok(());
    }
    let pid = check(inspect_pid)?;
    wait_for_ipv4_gso_at(&format!("/proc/{pid}/ns/net"), "eth0", BIG_TCP).await
}

/// Runs, through `run` (the engine's command on a host with these
/// arguments), `a` on h28 and `b` on h27 serving [`SERVE`], and `with_ip`
/// on h28 at 250.0.28.200; allocates 250.0.28.201 by hand and checks that a
/// container asking for it is refused, naming the address.
async fn start_containers(
    bed: &Bed,
    run: &dyn Fn(&str, &[&str]) -> Command,
    image: &str,
    [a, b, with_ip]: [&str; 3],
) -> Result<()> {
    for (host, name) in [("h28", a), ("h27", b)] {
        let serve = [
            "--hostname",
            name,
            "--network",
            "fan",
            image,
            "sh",
            "-c",
            SERVE,
        ];
        check(run(
            host,
            &[&["run", "-d", "--name", name][..], &serve].concat(),
        ))?;
    }
    fn at<'a>(name: &'a str, ip: &'a str, image: &'a str) -> [&'a str; 11] {
        [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "fan",
            "--ip",
            ip,
            image,
            "sleep",
            "600",
        ]
    }
    check(run("h28", &at(with_ip, "250.0.28.200", image)))?;
    bed.allocate_by_hand("h28", "hand-1", "250.0.28.201")
        .await?;
    let taken = format!("{a}taken");
    let out = refused(run("h28", &at(&taken, "250.0.28.201", image)))?;
    assert!(out.contains("250.0.28.201 is already assigned"), "{out}");
    Ok(())
}

// ---- Docker ----------------------------------------------------------------------

fn docker(bed: &Bed, host: &str) -> Command {
    let mut c = Command::new(DOCKER);
    c.arg("-H")
        .arg(format!("unix://{}/docker.sock", bed.dir(host).display()));
    c
}

fn docker_args(bed: &Bed, host: &str, args: &[&str]) -> Command {
    let mut c = docker(bed, host);
    c.args(args);
    c
}

/// `docker exec NAME ARGS…` on `host`.
fn docker_exec(bed: &Bed, host: &str, name: &str, args: &[&str]) -> Command {
    let mut c = docker(bed, host);
    c.args(["exec", name]).args(args);
    c
}

/// Starts the plugin and dockerd on `host`; returns the plugin name.
fn start_docker(bed: &mut Bed, host: &str) -> Result<String> {
    let dir = bed.dir(host);
    let plugin = format!("{}-{host}", bed.tb.id);
    let socket = PathBuf::from(format!("/run/docker/plugins/{plugin}.sock"));
    bed.files.push(socket.clone());
    // The plugin talks to the agent over its unix socket: it needs no namespace.
    let log = dir.join("fan-docker-ipam.log");
    let file = std::fs::File::create(&log)?;
    let child = Command::new(binary("fan-docker-ipam")?)
        .arg("--agent")
        .arg(bed.agent(host))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    let mut plugin_daemon = Daemon {
        child,
        what: format!("fan-docker-ipam for {host}"),
        log,
    };
    plugin_daemon.wait_ready(|| {
        std::os::unix::net::UnixStream::connect(&socket)?;
        Ok(())
    })?;
    bed.daemons.push(plugin_daemon);
    start_dockerd(bed, host, &["--bridge=none", "--iptables=false"])?;
    Ok(plugin)
}

/// Starts dockerd on `host` with its own roots and socket plus `extra`,
/// and imports the busybox image.
fn start_dockerd(bed: &mut Bed, host: &str, extra: &[&str]) -> Result<()> {
    let dir = bed.dir(host);
    let d = dir.display().to_string();
    let mut args: Vec<String> = vec![
        "--data-root".into(),
        format!("{d}/docker"),
        "--exec-root".into(),
        format!("{d}/dx"),
        "-H".into(),
        format!("unix://{d}/docker.sock"),
        "--pidfile".into(),
        format!("{d}/docker.pid"),
        "--storage-driver".into(),
        "vfs".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dockerd = Daemon::spawn(bed.host(host), DOCKERD, &args, &[], dir.join("dockerd.log"))?;
    dockerd.wait_ready(|| check(docker_args(bed, host, &["version"])).map(|_| ()))?;
    bed.daemons.push(dockerd);
    let mut rm = Command::new("sh");
    rm.arg("-c").arg(format!(
        "{DOCKER} -H unix://{d}/docker.sock ps -aq | xargs -r {DOCKER} -H unix://{d}/docker.sock rm -f"
    ));
    bed.cleanup.push(rm);
    let mut import = docker(bed, host);
    import.arg("import").arg(&bed.tar).arg("fanbox:test");
    check(import)?;
    Ok(())
}

/// `docker inspect` of the container's address and MAC on network `fan`.
fn docker_address(bed: &Bed, host: &str, name: &str) -> Result<(String, String)> {
    let out = check(docker_args(
        bed,
        host,
        &[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.fan.IPAddress}} {{.NetworkSettings.Networks.fan.MacAddress}}",
            name,
        ],
    ))?;
    let (ip, mac) = out
        .split_once(' ')
        .ok_or_else(|| anyhow!("inspect: {out}"))?;
    Ok((ip.to_string(), mac.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_with_the_fan_ipam_plugin() -> Result<()> {
    need(&[DOCKER, DOCKERD, BUSYBOX])?;
    let mut bed = Bed::new().await?;
    // Daemons stop when `bed` drops, so start them inside it.
    for (host, _) in HOSTS {
        let plugin = start_docker(&mut bed, host)?;
        // The documented command, as `fan-client docker recipe` prints it.
        let mut recipe = bed.fan_client(host)?;
        recipe.args([
            "docker", "recipe", NETWORK, "--plugin", &plugin, "--name", "fan",
        ]);
        let recipe = check(recipe)?;
        let line = recipe
            .lines()
            .find(|l| l.starts_with("docker network create"))
            .ok_or_else(|| anyhow!("no command in {recipe}"))?;
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        check(docker_args(&bed, host, &args))?;

        // A pool that is not this host's slice is refused by name.
        let other = if host == "h28" {
            "250.0.27.0/24"
        } else {
            "250.0.28.0/24"
        };
        // `docker network create` of a bridge "fanbad" with the plugin and `ipam` options.
        let create_bad = |ipam: &[&str]| {
            let head = [
                "network",
                "create",
                "--driver",
                "bridge",
                "--ipam-driver",
                &plugin,
            ];
            let tail = ["-o", "com.docker.network.bridge.name=fan-250", "fanbad"];
            docker_args(&bed, host, &[&head[..], ipam, &tail].concat())
        };
        let out = refused(create_bad(&[
            "--ipam-opt",
            "fan-network=fan-250",
            "--subnet",
            other,
        ]))?;
        assert!(
            out.contains(&format!("--subnet {other} is outside this host's slice")),
            "{out}"
        );
        let slice = bed.slice(host).await?;
        let out = refused(create_bad(&[]))?;
        assert!(
            out.contains(&format!("--subnet is required: pass --subnet {slice}")),
            "{out}"
        );
    }

    // --ip: exactly that address; a taken one is refused clearly and leaks nothing.
    let run = |host: &str, args: &[&str]| docker_args(&bed, host, args);
    start_containers(&bed, &run, "fanbox:test", ["c28", "c27", "c28ip"]).await?;

    // Every container's address is the agent's allocation for its endpoint.
    let mut addrs = BTreeMap::new();
    for (host, name) in [("h28", "c28"), ("h27", "c27"), ("h28", "c28ip")] {
        let (ip, mac) = docker_address(&bed, host, name)?;
        let alloc = bed
            .allocations(host)
            .await?
            .into_iter()
            .find(|a| a.address == ip)
            .ok_or_else(|| anyhow!("{name}'s {ip} is not allocated by the agent"))?;
        assert_eq!(
            alloc.owner.as_ref().unwrap().container_id,
            format!("docker-{mac}")
        );
        assert_eq!(
            alloc.labels.get("fan.io/created-by").map(String::as_str),
            Some("docker")
        );
        addrs.insert(name, ip);
    }
    check_allocations_and_exchange(
        &bed,
        &addrs,
        ["c28", "c27", "c28ip"],
        &|host, name, args| docker_exec(&bed, host, name, args),
    )
    .await?;

    big_tcp_reaches(
        &bed,
        "h28",
        docker_args(&bed, "h28", &["inspect", "-f", "{{.State.Pid}}", "c28"]),
    )
    .await?;

    // docker rm -f releases; the hand-made allocation stays.
    check(docker_args(&bed, "h28", &["rm", "-f", "c28", "c28ip"]))?;
    check(docker_args(&bed, "h27", &["rm", "-f", "c27"]))?;
    assert_eq!(
        bed.owners("h28").await?.into_keys().collect::<Vec<_>>(),
        ["hand-1"]
    );
    assert!(bed.allocations("h27").await?.is_empty());
    // Removing the Docker network keeps the agent's bridge and gateway.
    check(docker_args(&bed, "h28", &["network", "rm", "fan"]))?;
    let addr = bed
        .host("h28")
        .ip(&["-4", "-o", "addr", "show", "dev", "fan-250"])?;
    assert!(addr.contains("250.0.28.1/24"), "{addr}");
    Ok(())
}

/// The seed's recipe: Docker's default bridge network on the agent's bridge
/// (`dockerd -b fan-250 --fixed-cidr …`), the range inside the agent's host
/// reserve as `fan-client docker recipe --bridge-mode` computes it, so
/// Docker's own IPAM and the agent never hand out the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_bridge_mode_recipe() -> Result<()> {
    need(&[DOCKER, DOCKERD, BUSYBOX])?;
    let mut bed = Bed::with_host_reserve(127).await?;
    let mut addrs = BTreeMap::new();
    for (host, _) in HOSTS {
        let mut recipe = bed.fan_client(host)?;
        recipe.args(["docker", "recipe", NETWORK, "--bridge-mode"]);
        let recipe = check(recipe)?;
        let line = recipe
            .lines()
            .find(|l| l.starts_with("dockerd "))
            .ok_or_else(|| anyhow!("no dockerd line in {recipe}"))?;
        let octet = &host[1..];
        assert_eq!(
            line,
            format!(
                "dockerd -b fan-250 --fixed-cidr 250.0.{octet}.0/25 --mtu 1480 --iptables=false"
            )
        );
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        start_dockerd(&mut bed, host, &args)?;
        // The agent's next address lies above Docker's range.
        bed.allocate_by_hand(host, "hand-1", "").await?;
        let name = format!("b{octet}");
        check(docker_args(
            &bed,
            host,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--hostname",
                &name,
                "fanbox:test",
                "sh",
                "-c",
                SERVE,
            ],
        ))?;
        let ip = check(docker_args(
            &bed,
            host,
            &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name],
        ))?;
        let last: u8 = ip.rsplit('.').next().unwrap_or_default().parse()?;
        assert!(
            ip.starts_with(&format!("250.0.{octet}.")) && (2..128).contains(&last),
            "{ip}"
        );
        let owners = bed.owners(host).await?;
        assert_eq!(owners.len(), 1, "{owners:?}");
        let hand: Ipv4Addr = owners["hand-1"].parse()?;
        assert!(
            hand.octets()[3] >= 128,
            "the agent allocates above the reserve: {hand}"
        );
        addrs.insert(host, ip);
    }
    exchange(
        &|host, name, args| docker_exec(&bed, host, name, args),
        ("h28", "b28", &addrs["h28"]),
        ("h27", "b27", &addrs["h27"]),
    )?;
    Ok(())
}

// ---- podman (CNI backend) --------------------------------------------------------

fn podman(bed: &Bed, host: &str) -> Command {
    let d = bed.dir(host).display().to_string();
    let mut c = bed.host(host).command(PODMAN);
    c.env("CONTAINERS_CONF", format!("{d}/containers.conf"))
        .args([
            "--root",
            &format!("{d}/proot"),
            "--runroot",
            &format!("{d}/prun"),
        ])
        .args(["--storage-driver", "vfs"]);
    c
}

fn podman_args(bed: &Bed, host: &str, args: &[&str]) -> Command {
    let mut c = podman(bed, host);
    c.args(args);
    c
}

/// The CNI plugin directory: Debian's plugins, fan-ipam and fan-bridge, by symlink.
fn cni_bin(bed: &Bed) -> Result<PathBuf> {
    let dir = bed.tb.dir.join("cni-bin");
    if !dir.exists() {
        std::fs::create_dir_all(&dir)?;
        for p in ["bridge", "loopback", "portmap"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), dir.join(p))?;
        }
        for p in ["fan-ipam", "fan-bridge"] {
            std::os::unix::fs::symlink(binary(p)?, dir.join(p))?;
        }
    }
    Ok(dir)
}

/// `fan-ipam conflist` for `host`, CNI network `name`; without `agent`
/// when `via_env` (fan-ipam then takes FAN_AGENT from the runtime). Not
/// for podman: its network teardown often runs in `podman container
/// cleanup`, started by conmon without the caller's environment. With
/// `fan_bridge`, the main plugin is fan-bridge instead of bridge.
fn conflist(bed: &Bed, host: &str, name: &str, via_env: bool, fan_bridge: bool) -> Result<String> {
    let mut c = Command::new(binary("fan-ipam")?);
    c.env("FAN_AGENT", bed.agent(host))
        .args(["conflist", NETWORK, "--name", name]);
    if fan_bridge {
        c.arg("--fan-bridge");
    }
    let list = check(c)?;
    let mut v: serde_json::Value = serde_json::from_str(&list)?;
    assert_eq!(
        v["plugins"][0]["ipam"]["agent"],
        bed.agent(host).as_str(),
        "FAN_AGENT honoured"
    );
    if via_env {
        v["plugins"][0]["ipam"]
            .as_object_mut()
            .ok_or_else(|| anyhow!("no ipam in {list}"))?
            .remove("agent");
    }
    Ok(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_with_fan_ipam() -> Result<()> {
    need(&[PODMAN, BUSYBOX, "/usr/lib/cni/bridge"])?;
    let mut bed = Bed::new().await?;
    let bin = cni_bin(&bed)?;
    for (host, _) in HOSTS {
        let d = bed.dir(host);
        std::fs::create_dir_all(d.join("net.d"))?;
        std::fs::write(
            d.join("net.d/fan.conflist"),
            conflist(&bed, host, "fan", false, false)?,
        )?;
        // Debian 12's podman runs CNI plugins; this sandbox lacks
        // CAP_SYS_RESOURCE, so rlimits are lowered rather than raised.
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{d}/net.d\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/podman-events.log\"\ntmp_dir = \"{d}/ptmp\"\nruntime = \"runc\"\n",
                bin = bin.display(),
                d = d.display()
            ),
        )?;
        let mut rm = podman(&bed, host);
        rm.args(["rm", "-af", "-t", "0"]);
        bed.cleanup.push(rm);
        let mut import = podman(&bed, host);
        import
            .arg("import")
            .arg(&bed.tar)
            .arg("localhost/fanbox:test");
        check(import)?;
        let backend = check(podman_args(
            &bed,
            host,
            &["info", "--format", "{{.Host.NetworkBackend}}"],
        ))?;
        assert_eq!(backend, "cni");
    }
    // --ip: exactly that address; a taken one is refused clearly.
    let run = |host: &str, args: &[&str]| podman_args(&bed, host, args);
    start_containers(&bed, &run, "localhost/fanbox:test", ["p28", "p27", "p28ip"]).await?;
    let out = refused(podman_args(
        &bed,
        "h28",
        &[
            "run",
            "-d",
            "--name",
            "p28out",
            "--network",
            "fan",
            "--ip",
            "250.0.27.77",
            "localhost/fanbox:test",
            "sleep",
            "600",
        ],
    ))?;
    assert!(
        out.contains("250.0.27.77 is outside slice 250.0.28.0/24"),
        "{out}"
    );

    let mut addrs = BTreeMap::new();
    for (host, name) in [("h28", "p28"), ("h27", "p27"), ("h28", "p28ip")] {
        let out = check(podman_args(
            &bed,
            host,
            &[
                "inspect",
                "-f",
                "{{.Id}} {{(index .NetworkSettings.Networks \"fan\").IPAddress}}",
                name,
            ],
        ))?;
        let (id, ip) = out
            .split_once(' ')
            .ok_or_else(|| anyhow!("inspect: {out}"))?;
        let owners = bed.owners(host).await?;
        assert_eq!(owners.get(id), Some(&ip.to_string()), "{name}: {owners:?}");
        addrs.insert(name, ip.to_string());
    }
    check_allocations_and_exchange(
        &bed,
        &addrs,
        ["p28", "p27", "p28ip"],
        &|host, name, args| {
            let mut c = podman(&bed, host);
            c.args(["exec", name]).args(args);
            c
        },
    )
    .await?;
    big_tcp_reaches(
        &bed,
        "h28",
        podman_args(&bed, "h28", &["inspect", "-f", "{{.State.Pid}}", "p28"]),
    )
    .await?;

    check(podman_args(
        &bed,
        "h28",
        &["rm", "-f", "-t", "0", "p28", "p28ip"],
    ))?;
    check(podman_args(&bed, "h27", &["rm", "-f", "-t", "0", "p27"]))?;
    let left = bed.owners("h28").await?;
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["hand-1"],
        "{left:?} {}",
        check(podman_args(&bed, "h28", &["ps", "-a", "--no-trunc"]))?
    );
    assert!(bed.allocations("h27").await?.is_empty());
    Ok(())
}

// ---- containerd (ctr run --cni) --------------------------------------------------

/// `ctr` against `host`'s containerd.
fn ctr(bed: &Bed, host: &str, args: &[&str]) -> Command {
    let mut c = Command::new(CTR);
    c.arg("--address")
        .arg(bed.dir(host).join("ctrd/c.sock"))
        .args(args);
    c
}

/// `ctr run --cni -d` in `host`'s namespace. ctr 1.6 reads CNI from
/// /etc/cni/net.d and /opt/cni/bin only, so it runs in a private mount
/// namespace where those are this host's directories.
fn ctr_run(bed: &Bed, host: &str, id: &str, cmd: &[&str]) -> Result<String> {
    let d = bed.dir(host);
    let script = format!(
        "mount -t tmpfs fan-cni /opt && mkdir -p /opt/cni/bin && \
         for p in {bin}/*; do ln -s \"$(readlink -f \"$p\")\" /opt/cni/bin/; done && \
         mount --bind {netd} /etc/cni/net.d && exec \"$@\"",
        bin = cni_bin(bed)?.display(),
        netd = d.join("ctr-net.d").display(),
    );
    let mut c = bed.host(host).command("unshare");
    // ctr runs the plugins itself, in this process: FAN_AGENT reaches fan-ipam.
    c.env("FAN_AGENT", bed.agent(host))
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            CTR,
        ])
        .arg("--address")
        .arg(d.join("ctrd/c.sock"))
        .args([
            "run",
            "--rootfs",
            "--cni",
            "-d",
            "--null-io",
            "--env",
            "PATH=/bin",
        ])
        .arg(&bed.rootfs)
        .arg(id)
        .args(cmd);
    check(c)
}

/// containerd with our own main plugin: the list from `fan-ipam conflist
/// --fan-bridge` (fan-bridge + fan-ipam + portmap); fan-bridge makes veth
/// pairs on this kernel (netkit where the kernel has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ctr_run_with_fan_bridge_and_fan_ipam() -> Result<()> {
    need(&[CONTAINERD, CTR, BUSYBOX, "/usr/lib/cni/bridge"])?;
    if !Path::new("/etc/cni/net.d").is_dir() {
        std::fs::create_dir_all("/etc/cni/net.d")?; // the standard CNI directory, as a mount point
    }
    let mut bed = Bed::new().await?;
    for (host, _) in HOSTS {
        let d = bed.dir(host);
        std::fs::create_dir_all(d.join("ctr-net.d"))?;
        std::fs::create_dir_all(d.join("ctrd"))?;
        std::fs::write(
            d.join("ctr-net.d/10-fan.conflist"),
            conflist(&bed, host, "fanc", true, true)?,
        )?;
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/ctrd/root\"\nstate = \"{d}/ctrd/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/ctrd/c.sock\"\n[ttrpc]\n  address = \"{d}/ctrd/c.sock.ttrpc\"\n",
                d = d.display()
            ),
        )?;
        let config = d.join("containerd.toml").display().to_string();
        let mut daemon = Daemon::spawn(
            bed.host(host),
            CONTAINERD,
            &["--config", &config],
            &[],
            d.join("containerd.log"),
        )?;
        daemon.wait_ready(|| check(ctr(&bed, host, &["version"])).map(|_| ()))?;
        bed.daemons.push(daemon);
        let mut rm = Command::new("sh");
        let c = format!("{CTR} --address {}/ctrd/c.sock", d.display());
        rm.arg("-c").arg(format!(
            "for t in $({c} task ls -q); do {c} task rm -f $t; done; for k in $({c} c ls -q); do {c} c rm $k; done"
        ));
        bed.cleanup.push(rm);
    }
    for (host, id) in [("h28", "k28"), ("h27", "k27"), ("h28", "k28b")] {
        ctr_run(
            &bed,
            host,
            id,
            &["sh", "-c", &SERVE.replace("$(hostname)", id)],
        )?;
    }
    // Owner = containerd's namespace + id; the address inside is the agent's.
    let mut addrs = BTreeMap::new();
    for (host, id) in [("h28", "k28"), ("h27", "k27"), ("h28", "k28b")] {
        let owners = bed.owners(host).await?;
        let ip = owners
            .get(&format!("default-{id}"))
            .ok_or_else(|| anyhow!("no allocation for {id}: {owners:?}"))?
            .clone();
        // Under load the task may answer before its interface shows the address: ask again.
        let expected = format!("inet {ip}/24");
        let inside = fan_e2e::eventually(std::time::Duration::from_secs(15), || {
            let inside = check(ctr(
                &bed,
                host,
                &[
                    "task",
                    "exec",
                    "--exec-id",
                    "ip",
                    id,
                    "ip",
                    "-4",
                    "-o",
                    "addr",
                    "show",
                    "eth0",
                ],
            ))?;
            if inside.contains(&expected) {
                Ok(inside)
            } else {
                Err(anyhow!("{id}: {inside}"))
            }
        })?;
        assert!(inside.contains(&expected), "{id}: {inside}");
        addrs.insert(id, ip);
    }
    // fan-bridge plugged them: its host ends (`fan` + 8 hex digits) are the
    // bridge's ports, veth pairs on this kernel.
    let ports = bed
        .host("h28")
        .ip(&["-o", "-d", "link", "show", "master", NETWORK])?;
    let ours = ports
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with("fan"))
        })
        .count();
    assert_eq!(ours, 2, "{ports}");
    exchange(
        &|host, id, args| {
            let mut c = ctr(&bed, host, &["task", "exec", "--exec-id", "x"]);
            c.arg(id).args(args);
            c
        },
        ("h28", "k28", &addrs["k28"]),
        ("h27", "k27", &addrs["k27"]),
    )?;

    // A detached task killed and removed: ctr never runs CNI DEL for it.
    check(ctr(&bed, "h28", &["task", "rm", "-f", "k28b"]))?;
    check(ctr(&bed, "h28", &["containers", "rm", "k28b"]))?;
    bed.allocate_by_hand("h28", "hand-1", "250.0.28.201")
        .await?;
    assert!(
        bed.owners("h28").await?.contains_key("default-k28b"),
        "the leak GC is for"
    );

    // GC scoped to CNI-made allocations: lists first, releases with --yes,
    // never the hand-made one.
    let scope = ["--created-by", "cni", "--valid-owner", "default-k28"];
    let mut dry = bed.fan_client("h28")?;
    dry.args(["address", "gc", NETWORK]).args(scope);
    let listed = check(dry)?;
    assert!(
        listed.starts_with("would release 1 allocation(s) in fan-250"),
        "{listed}"
    );
    assert!(
        listed.contains("default-k28b") && !listed.contains("hand-1"),
        "{listed}"
    );
    assert!(
        bed.owners("h28").await?.contains_key("default-k28b"),
        "a listing releases nothing"
    );
    let mut gc = bed.fan_client("h28")?;
    gc.args(["-o", "json", "address", "gc", NETWORK])
        .args(scope)
        .arg("--yes");
    let released: serde_json::Value = serde_json::from_str(&check(gc)?)?;
    assert_eq!(
        released["released"][0]["owner"]["container_id"], "default-k28b",
        "{released}"
    );
    let owners = bed.owners("h28").await?;
    assert_eq!(
        owners.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default-k28", "hand-1"]
    );

    // Stopped the way ctr's own foreground path does not run: the rest goes through GC too.
    for (host, id) in [("h28", "k28"), ("h27", "k27")] {
        check(ctr(&bed, host, &["task", "rm", "-f", id]))?;
        check(ctr(&bed, host, &["containers", "rm", id]))?;
        let mut gc = bed.fan_client(host)?;
        gc.args([
            "address",
            "gc",
            NETWORK,
            "--selector",
            "fan-ipam/cni-network=fanc",
            "--yes",
        ]);
        check(gc)?;
    }
    assert_eq!(
        bed.owners("h28").await?.into_keys().collect::<Vec<_>>(),
        ["hand-1"]
    );
    assert!(bed.allocations("h27").await?.is_empty());
    Ok(())
}
