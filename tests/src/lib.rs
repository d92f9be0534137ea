//! End-to-end harness: real hosts as network namespaces on an underlay bridge,
//! a real `fan-agent` process per host, containers as namespaces plugged into the
//! fan bridge with addresses from the agent.
//!
//! Everything a [`Testbed`] creates carries its unique prefix (`fe<id>`, the
//! test kit's one naming rule: [`fan_testkit::unique_id`]), and is removed
//! when the testbed drops, also when the test panics; every removal is tried
//! and every failure reported. Leftovers of a killed test run (whose process
//! no longer exists) are swept at the next start.
//!
//! Agents run under `nsenter --net`, not `ip netns exec`: they share the root
//! mount namespace, so the bpffs they pin maps in outlives an agent process and
//! a restarted agent finds (and adopts) what its predecessor attached.

/// Hand-made packets and captures, from the shared test kit.
pub use fan_testkit::packets;
pub mod gso;
pub mod pki;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_client::FanAgentServiceClient;
use fan_testkit::netns::{unmount_and_remove, veth_pair, Teardown};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated gRPC client over a unix socket.
pub type Client = FanAgentServiceClient<Channel>;

pub use fan_testkit::netns::Netns;
pub use fan_testkit::{ip, run};

/// Where the workspace's binaries are (`target/<profile>/`), from the test executable's path.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FAN_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Tests run from target/<profile>/deps/, binaries such as fan-bench from target/<profile>/.
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, failing clearly when it was not built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace's root directory (the parent of this crate's).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The Python of the venv `scripts/install-deps.sh` makes (or FAN_PYTHON).
pub fn venv_python() -> Result<PathBuf> {
    let python = std::env::var_os("FAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python"));
    if !python.exists() {
        bail!(
            "{} not found: run scripts/install-deps.sh (make test does)",
            python.display()
        );
    }
    Ok(python)
}

/// The output of a command that ran and exited 0; otherwise an error naming
/// `what`, with its exit status, stdout and stderr.
pub fn succeeded(
    what: &str,
    out: std::io::Result<std::process::Output>,
) -> Result<std::process::Output> {
    let out = out.with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Generates the Python messages and gRPC stubs of `proto/` into `dir`
/// with `python`'s grpcio-tools, as another language's user would.
pub fn python_stubs(python: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(workspace().join("proto"))
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg("fan/agent/v1/agent.proto")
        .output();
    succeeded("grpc_tools.protoc", out).map(drop)
}

/// A running (or stopped) agent on a host.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its bpffs pin root.
    pub bpffs_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Extra command-line arguments (e.g. `--reconcile-interval 1`).
    pub extra_args: Vec<String>,
    /// Extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub extra_env: Vec<(String, String)>,
    netns: String,
}

impl AgentProcess {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(binary("fan-agent")?)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("FAN_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn fan-agent")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("fan-agent exited with {status}: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "fan-agent did not open {} in 20 s: {}",
            self.socket.display(),
            self.log_tail()
        )
    }

    /// The agent's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        run("kill", &["-TERM", &child.id().to_string()])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        bail!("fan-agent ignored SIGTERM for 10 s")
    }

    /// Connects a gRPC client over the unix socket.
    pub async fn client(&self) -> Result<Client> {
        Ok(FanAgentServiceClient::new(
            unix_channel(&self.socket).await?,
        ))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// A tonic channel over a unix socket.
pub async fn unix_channel(socket: &Path) -> Result<Channel> {
    let socket = socket.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// One host: a namespace with an underlay address and an agent.
#[derive(Debug)]
pub struct Host {
    /// Short name ("h1").
    pub name: String,
    /// Underlay address.
    pub address: Ipv4Addr,
    /// The agent.
    pub agent: AgentProcess,
    /// The host namespace (dropped after the agent).
    pub netns: Netns,
}

impl Host {
    /// A gRPC client to this host's agent.
    pub async fn client(&self) -> Result<Client> {
        self.agent.client().await
    }

    /// Starts the agent again (after kill9/terminate).
    pub fn start_agent(&mut self) -> Result<()> {
        self.agent.start()
    }

    /// `fan-client --agent unix://<this agent's socket>` with `args`, run
    /// to the end: its stdout, or a failure with its stderr.
    pub fn fan_client(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = Command::new(binary("fan-client")?)
            .arg("--agent")
            .arg(format!("unix://{}", self.agent.socket.display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "fan-client {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    }

    /// Moves the agent to the state directory `dir`: once it serves (its
    /// SIGTERM handler in place) it is stopped, which must be a clean exit,
    /// and started again there.
    pub async fn move_state_to(&mut self, dir: PathBuf) -> Result<()> {
        self.client()
            .await?
            .list_networks(pb::ListNetworksRequest::default())
            .await?;
        if !self.agent.terminate()? {
            bail!("{}: the agent did not exit cleanly", self.name);
        }
        self.agent.state_dir = dir;
        self.start_agent()
    }
}

/// A container: a namespace with `eth0` plugged into a fan bridge.
#[derive(Debug)]
pub struct Container {
    /// Its address.
    pub address: Ipv4Addr,
    /// The owner id used for the allocation.
    pub owner: String,
    /// The namespace.
    pub netns: Netns,
    /// The host side of its veth (the bridge port), in the host's namespace.
    pub port: String,
}

/// A set of hosts on one underlay bridge; tears everything down on drop.
#[derive(Debug)]
pub struct Testbed {
    /// The unique prefix of every object ("fe1a2b3").
    pub id: String,
    /// Hosts, in creation order.
    pub hosts: Vec<Host>,
    /// Containers, in creation order (dropped before hosts).
    pub containers: Vec<Container>,
    /// The underlay namespace holding the bridge.
    pub underlay: Netns,
    /// Scratch directory (sockets, state, logs).
    pub dir: PathBuf,
    underlay_prefix: u8,
}

impl Testbed {
    /// Creates the underlay (a bridge in its own namespace) for `prefix`-long underlay addresses.
    pub fn new(underlay_prefix: u8) -> Result<Testbed> {
        fan_testkit::sweep_leftovers();
        ensure_bpffs()?;
        let id = fan_testkit::unique_id();
        let dir = std::env::temp_dir().join(format!("fan-e2e-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let underlay = Netns::new(&format!("{id}-ul"))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        Ok(Testbed {
            id,
            hosts: Vec::new(),
            containers: Vec::new(),
            underlay,
            dir,
            underlay_prefix,
        })
    }

    /// Adds a host with `address` on the underlay and starts its agent.
    pub fn add_host(&mut self, name: &str, address: Ipv4Addr) -> Result<&mut Host> {
        self.add_host_with(name, address, &[], &[])
    }

    /// Adds a host whose agent gets extra arguments and environment variables.
    pub fn add_host_with(
        &mut self,
        name: &str,
        address: Ipv4Addr,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<&mut Host> {
        let netns = Netns::new(&format!("{}-{name}", self.id))?;
        let outside = format!("{}{name}", self.id);
        veth_pair(&netns, "eth0", &self.underlay, &outside)?;
        self.underlay
            .ip(&["link", "set", &outside, "master", "br0", "up"])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{address}/{}", self.underlay_prefix),
            "dev",
            "eth0",
        ])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        let host_dir = self.dir.join(name);
        std::fs::create_dir_all(&host_dir)?;
        let mut agent = AgentProcess {
            child: None,
            socket: host_dir.join("agent.sock"),
            state_dir: host_dir.join("state"),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/{}-{name}", self.id)),
            log: host_dir.join("agent.log"),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns: netns.name.clone(),
        };
        agent.start()?;
        self.hosts.push(Host {
            name: name.to_owned(),
            address,
            agent,
            netns,
        });
        Ok(self.hosts.last_mut().expect("just pushed"))
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("no such host")
    }

    /// The host called `name`, mutable.
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .expect("no such host")
    }

    /// Plugs a new container into `network` on `host`: allocates its address
    /// from the agent, creates the namespace and a veth on the fan bridge.
    pub async fn add_container(
        &mut self,
        host: &str,
        network: &str,
        name: &str,
    ) -> Result<&Container> {
        self.add_container_with(host, network, name, PortKind::Veth)
            .await
    }

    /// [`Testbed::add_container`] with the pair of devices `kind`.
    pub async fn add_container_with(
        &mut self,
        host: &str,
        network: &str,
        name: &str,
        kind: PortKind,
    ) -> Result<&Container> {
        let owner = format!("{}-{name}", self.id);
        let host = self.host(host);
        let mut client = host.client().await?;
        let allocation = allocate_eth0(&mut client, network, &owner)
            .await
            .map_err(|s| anyhow!("allocate: {s}"))?;
        let bridge = network_status(&mut client, network).await?.bridge;
        let netns = Netns::new(&format!("{}-{}-{name}", self.id, host.name))?;
        let outside = format!("{}c{}", self.id, self.containers.len());
        let cidr = format!("{}/{}", allocation.address, allocation.prefix_length);
        plug_with(
            kind,
            &host.netns,
            &bridge,
            &outside,
            &netns,
            &cidr,
            &allocation.gateway,
            allocation.mtu,
        )?;
        let address = allocation.address.parse()?;
        self.containers.push(Container {
            address,
            owner,
            netns,
            port: outside,
        });
        Ok(self.containers.last().expect("just pushed"))
    }
}

/// Plugs `container` into `bridge` of `host` the way a CNI bridge plugin does:
/// a veth named `outside` on the host side, `eth0` with `cidr` inside, MTU on
/// both ends, default route via `gateway`.
pub fn plug(
    host: &Netns,
    bridge: &str,
    outside: &str,
    container: &Netns,
    cidr: &str,
    gateway: &str,
    mtu: u32,
) -> Result<()> {
    plug_with(
        PortKind::Veth,
        host,
        bridge,
        outside,
        container,
        cidr,
        gateway,
        mtu,
    )
}

/// The pair of devices that links a container to its host's bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A veth pair, as every runtime makes.
    Veth,
    /// A netkit pair in L2 mode (Linux 6.7+), the primary on the host side.
    Netkit,
}

/// A netkit pair: primary `outside` in `host`, its peer `inside` in
/// `container` (both down). Created in `host` (iproute2 6.1 knows no
/// netkit), then the peer moves.
pub fn netkit_pair(host: &Netns, outside: &str, container: &Netns, inside: &str) -> Result<()> {
    let temporary = format!("{outside}p");
    let (primary, peer) = (outside.to_string(), temporary.clone());
    host.block_on(move || async move {
        let nl = fan_dataplane::netlink::Netlink::new()?;
        nl.create_netkit(&primary, &peer).await?;
        anyhow::Ok(())
    })?;
    host.ip(&["link", "set", &temporary, "netns", &container.name])?;
    container.ip(&["link", "set", &temporary, "name", inside])?;
    Ok(())
}

/// Whether this kernel creates netkit devices (tried in a throwaway namespace).
pub fn netkit_supported() -> Result<bool> {
    let probe = Netns::unique("nkprobe")?;
    let created = probe.block_on(|| async {
        let nl = fan_dataplane::netlink::Netlink::new()?;
        anyhow::Ok(nl.create_netkit("nk0", "nk1").await.is_ok())
    });
    probe.delete()?;
    created
}

/// The ids of the agent's programs (by name) on the netkit peer hook of
/// `port` in `host`.
pub fn netkit_peer_programs(host: &Netns, port: &str) -> Result<Vec<u32>> {
    let port = port.to_string();
    host.block_on(move || async move {
        let nl = fan_dataplane::netlink::Netlink::new()?;
        let Some(link) = nl.link_by_name(&port).await? else {
            bail!("no device {port}");
        };
        anyhow::Ok(fan_dataplane::ebpf::netkit::ours(link.index)?)
    })
}

/// Waits until the agent of `host` runs (or stopped running) the fast path
/// on the netkit peer hook of `port`.
pub fn netkit_peer_program_becomes(host: &Netns, port: &str, on: bool) -> Result<()> {
    eventually(std::time::Duration::from_secs(10), || {
        let ids = netkit_peer_programs(host, port)?;
        match (on, ids.len()) {
            (true, 1) | (false, 0) => Ok(()),
            _ => bail!("fan_fastpath on the netkit peer of {port}: {ids:?}, want on={on}"),
        }
    })
}

/// [`plug`] with the pair of devices `kind`.
#[allow(clippy::too_many_arguments)]
pub fn plug_with(
    kind: PortKind,
    host: &Netns,
    bridge: &str,
    outside: &str,
    container: &Netns,
    cidr: &str,
    gateway: &str,
    mtu: u32,
) -> Result<()> {
    let mtu = mtu.to_string();
    match kind {
        PortKind::Veth => veth_pair(host, outside, container, "eth0")?,
        PortKind::Netkit => netkit_pair(host, outside, container, "eth0")?,
    }
    host.ip(&["link", "set", outside, "mtu", &mtu, "master", bridge, "up"])?;
    container.ip(&["addr", "add", cidr, "dev", "eth0"])?;
    container.ip(&["link", "set", "eth0", "mtu", &mtu, "up"])?;
    container.ip(&["route", "add", "default", "via", gateway])?;
    Ok(())
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Every step runs whatever fails before it; the failures are reported together.
        let mut teardown = Teardown::new();
        // Containers first (their veths live in host namespaces), then agents, then hosts.
        for container in self.containers.drain(..) {
            let what = format!("delete container {}", container.netns.name);
            teardown.check(&what, container.netns.delete());
        }
        for host in &mut self.hosts {
            let what = format!("stop the agent of {}", host.name);
            teardown.check(&what, host.agent.kill9());
        }
        let mut pin_dirs = Vec::new();
        for host in self.hosts.drain(..) {
            pin_dirs.push(host.agent.bpffs_dir.clone());
            let what = format!("delete host {}", host.netns.name);
            teardown.check(&what, host.netns.delete());
        }
        for dir in pin_dirs {
            let what = format!("remove pins {}", dir.display());
            teardown.check(&what, unmount_and_remove(&dir));
        }
        if std::env::var_os("FAN_E2E_KEEP").is_none() {
            let what = format!("remove {}", self.dir.display());
            teardown.check(&what, std::fs::remove_dir_all(&self.dir));
        }
        if let Err(err) = teardown.run() {
            eprintln!("testbed {}: {err}", self.id);
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf when nothing is mounted there, as systemd does on boot.
pub fn ensure_bpffs() -> Result<()> {
    // Tests run in parallel threads and processes: mount at most once, or a
    // second bpffs would stack on the first and hide its pins.
    let lock = std::fs::File::create("/run/fan-e2e-bpffs.lock")?;
    lock.lock()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()?;
    if !status.success() {
        bail!("mount -t bpf bpf /sys/fs/bpf failed");
    }
    Ok(())
}

/// The gRPC status of a failed call, with its ErrorInfo reason.
pub fn reason_of(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Polls `check` until it returns Ok or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The spec of a fan over `underlay`: `overlay` and `underlay`, the rest
/// the agent's defaults.
pub fn fan_spec(overlay: &str, underlay: &str) -> pb::NetworkSpec {
    pb::NetworkSpec {
        overlay: overlay.into(),
        underlay: underlay.into(),
        ..Default::default()
    }
}

/// Creates network `id` with `spec` through `client` (CreateNetwork);
/// returns the network as the agent reports it. `on` names the agent in
/// the error.
pub async fn create_network(
    client: &mut Client,
    on: &str,
    id: &str,
    spec: pb::NetworkSpec,
) -> Result<pb::Network> {
    client
        .create_network(pb::CreateNetworkRequest {
            network_id: id.into(),
            spec: Some(spec),
        })
        .await
        .map_err(|s| anyhow!("create {id} on {on}: {s}"))?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("create {id} on {on}: no network in the response"))
}

/// Allocates an address in `network` for the `eth0` of container
/// `container_id` (AllocateAddress); a refusal is the agent's status as is.
pub async fn allocate_eth0(
    client: &mut Client,
    network: &str,
    container_id: &str,
) -> std::result::Result<pb::Allocation, tonic::Status> {
    client
        .allocate_address(pb::AllocateAddressRequest {
            network_id: network.into(),
            owner: Some(pb::Owner {
                container_id: container_id.into(),
                interface: "eth0".into(),
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocation
        .ok_or_else(|| tonic::Status::internal("no allocation in the response"))
}

/// The first page (the agent's default size) of network `id`'s
/// allocations (ListAllocations).
pub async fn list_allocations(
    client: &mut Client,
    id: &str,
) -> Result<pb::ListAllocationsResponse> {
    Ok(client
        .list_allocations(pb::ListAllocationsRequest {
            network_id: id.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Every allocation of network `id`, read page by page (`page_size` a page).
pub async fn all_allocations(
    client: &mut Client,
    id: &str,
    page_size: u32,
) -> Result<Vec<pb::Allocation>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_allocations(pb::ListAllocationsRequest {
                network_id: id.into(),
                page_size,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("list allocations of {id}: {s}"))?
            .into_inner();
        all.extend(page.allocations);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// An UpdateNetwork request for network `id`: the mask lists `paths`, the
/// spec is the default one with `change` applied.
pub fn update_request(
    id: &str,
    paths: &[&str],
    change: impl FnOnce(&mut pb::NetworkSpec),
) -> pb::UpdateNetworkRequest {
    let mut spec = pb::NetworkSpec::default();
    change(&mut spec);
    pb::UpdateNetworkRequest {
        network_id: id.into(),
        spec: Some(spec),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

/// A bed of one host, "h1" at 172.30.0.28 on a /16 underlay, and a client
/// of its agent.
pub async fn one_host() -> Result<(Testbed, Client)> {
    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", Ipv4Addr::new(172, 30, 0, 28))?;
    let client = bed.host("h1").client().await?;
    Ok((bed, client))
}

/// The drifts CheckNetwork finds in network `id`.
pub async fn check_network(client: &mut Client, id: &str) -> Result<Vec<pb::Drift>> {
    Ok(client
        .check_network(pb::CheckNetworkRequest {
            network_id: id.into(),
        })
        .await?
        .into_inner()
        .drifts)
}

/// Hosts "h28" (its agent given `h28_args`) and "h27" with the fan
/// 250.0.0.0/8 over 172.30.0.0/16, and container "far" on h27: a remote
/// address for h28 to reach.
pub async fn one_far_container(h28_args: &[&str]) -> Result<Testbed> {
    let mut bed = Testbed::new(16)?;
    bed.add_host_with("h28", Ipv4Addr::new(172, 30, 0, 28), h28_args, &[])?;
    bed.add_host("h27", Ipv4Addr::new(172, 30, 0, 27))?;
    bed.create_network_everywhere("fan", "250.0.0.0/8", "172.30.0.0/16")
        .await?;
    bed.add_container("h27", "fan", "far").await?;
    Ok(bed)
}

/// Network `id` as the agent behind `client` reports it (GetNetwork).
pub async fn get_network(client: &mut Client, id: &str) -> Result<pb::Network> {
    client
        .get_network(pb::GetNetworkRequest {
            network_id: id.into(),
        })
        .await
        .map_err(|s| anyhow!("get {id}: {s}"))?
        .into_inner()
        .network
        .ok_or_else(|| anyhow!("get {id}: no network in the response"))
}

/// The status of network `id` as the agent behind `client` reports it.
pub async fn network_status(client: &mut Client, id: &str) -> Result<pb::NetworkStatus> {
    get_network(client, id)
        .await?
        .status
        .ok_or_else(|| anyhow!("network {id} without status"))
}

/// The two-host fan the data-path tests share: hosts "h28" (172.30.0.28)
/// and "h27" (172.30.0.27) on a /16 underlay, their agents given
/// `agent_args` and `agent_env`; network "fan" made with `specs[0]` on h28
/// and `specs[1]` on h27; container "a" on h28 and "b" on h27.
pub async fn two_host_fan(
    agent_args: &[&str],
    agent_env: &[(&str, &str)],
    specs: [pb::NetworkSpec; 2],
) -> Result<Testbed> {
    two_host_fan_on(PortKind::Veth, agent_args, agent_env, specs).await
}

/// [`two_host_fan`] with the containers plugged by pairs of `kind`.
pub async fn two_host_fan_on(
    kind: PortKind,
    agent_args: &[&str],
    agent_env: &[(&str, &str)],
    specs: [pb::NetworkSpec; 2],
) -> Result<Testbed> {
    let mut bed = Testbed::new(16)?;
    let hosts = [
        ("h28", Ipv4Addr::new(172, 30, 0, 28)),
        ("h27", Ipv4Addr::new(172, 30, 0, 27)),
    ];
    for (name, address) in hosts {
        bed.add_host_with(name, address, agent_args, agent_env)?;
    }
    for ((name, _), spec) in hosts.into_iter().zip(specs) {
        bed.create_network_with(name, "fan", spec).await?;
    }
    bed.add_container_with("h28", "fan", "a", kind).await?;
    bed.add_container_with("h27", "fan", "b", kind).await?;
    Ok(bed)
}

impl Testbed {
    /// Creates network `id` on every host (same spec everywhere, as a fan needs).
    pub async fn create_network_everywhere(
        &self,
        id: &str,
        overlay: &str,
        underlay: &str,
    ) -> Result<()> {
        for host in &self.hosts {
            create_network(
                &mut host.client().await?,
                &host.name,
                id,
                fan_spec(overlay, underlay),
            )
            .await?;
        }
        Ok(())
    }

    /// Creates network `id` on the host called `host` with `backend`
    /// (hosts of one fan may use different backends: the wire format is
    /// the same); returns the network as the agent reports it.
    pub async fn create_network_on(
        &self,
        host: &str,
        id: &str,
        overlay: &str,
        underlay: &str,
        backend: pb::Backend,
    ) -> Result<pb::Network> {
        let spec = pb::NetworkSpec {
            backend: backend as i32,
            ..fan_spec(overlay, underlay)
        };
        self.create_network_with(host, id, spec).await
    }

    /// Creates network `id` with `spec` on the host called `host`.
    pub async fn create_network_with(
        &self,
        host: &str,
        id: &str,
        spec: pb::NetworkSpec,
    ) -> Result<pb::Network> {
        create_network(&mut self.host(host).client().await?, host, id, spec).await
    }

    /// The status of network `id` on the host called `host`.
    pub async fn network_status(&self, host: &str, id: &str) -> Result<pb::NetworkStatus> {
        network_status(&mut self.host(host).client().await?, id)
            .await
            .with_context(|| format!("on {host}"))
    }

    /// The data-path counters of network `id` on two hosts, in that order.
    pub async fn counters_of(
        &self,
        [first, second]: [&str; 2],
        id: &str,
    ) -> Result<[pb::DataplaneCounters; 2]> {
        Ok([
            self.counters(first, id).await?,
            self.counters(second, id).await?,
        ])
    }

    /// The data-path counters of network `id` on the host called `host`.
    pub async fn counters(&self, host: &str, id: &str) -> Result<pb::DataplaneCounters> {
        self.network_status(host, id)
            .await?
            .counters
            .ok_or_else(|| anyhow!("{host}: no counters on {id}"))
    }

    /// Slot `slot` (`fan_dataplane::ebpf::maps::slot`) of the pinned
    /// data-plane counters of network `network` on `host`: 0 when the map
    /// has no such slot.
    pub fn pinned_counter(&self, host: &str, network: &str, slot: u32) -> Result<u64> {
        let dir = fan_dataplane::ebpf::pin::network_dir(&self.host(host).agent.bpffs_dir, network)?;
        let slots = fan_dataplane::ebpf::pinned_counter_slots(&dir)?;
        Ok(slots.get(slot as usize).copied().unwrap_or(0))
    }

    /// The container called `name` (as given to `add_container`).
    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.owner == format!("{}-{name}", self.id))
            .expect("no such container")
    }
}

/// Sends the hand-made `spoofed` packets from container `from`, then one
/// ping to `to`, while capturing the IPIP packets on the `eth0` of `host`
/// (the underlay side of `from`'s host) until that ping's request and
/// reply; returns what the capture printed.
pub fn spoofed_then_ping(
    host: &Netns,
    from: &Container,
    to: Ipv4Addr,
    spoofed: &[Vec<u8>],
) -> Result<String> {
    let capture = packets::start_capture(host, "eth0", "ip proto 4", 2)?;
    packets::send_raw(&from.netns, spoofed)?;
    from.netns.ping(to, 1)?;
    Ok(packets::finish_capture(capture)?)
}

/// A small tmpfs (for an agent's state directory), unmounted on drop (also
/// on failure): filled up, it makes the store's disk full.
pub struct Tmpfs {
    /// Where it is mounted: `<temp dir>/<name>-tmpfs-<pid>`.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax, e.g. `4m`) called `name`.
    pub fn mount(name: &str, size: &str) -> Result<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("{name}-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let tmpfs = Tmpfs { dir };
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                name,
                tmpfs.dir.to_str().context("utf-8 path")?,
            ],
        )?;
        Ok(tmpfs)
    }

    /// Writes a filler file until the file system is full; returns its path.
    pub fn fill(&self) -> Result<PathBuf> {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0xffu8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A running iperf3 server in a namespace; killed on drop.
#[derive(Debug)]
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Starts `iperf3 -s -1` (one test, then exit) on `port` in `netns`.
    pub fn start(netns: &Netns, port: u16) -> Result<IperfServer> {
        let child = netns
            .command("iperf3")
            .args(["-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn iperf3 -s")?;
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let out = netns.exec("ss", &["-Htln", &format!("sport = :{port}")])?;
            if !out.stdout.is_empty() {
                return Ok(IperfServer { child });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("iperf3 server did not listen on {port}")
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one iperf3 TCP run.
#[derive(Debug, Clone)]
pub struct IperfResult {
    /// Received bits per second over the whole run.
    pub bits_per_second: f64,
    /// Bits per second of each interval (one per second).
    pub intervals: Vec<f64>,
}

/// Runs an iperf3 TCP client in `netns` towards `server` (a server must listen on `port`).
pub fn iperf(
    netns: &Netns,
    server: Ipv4Addr,
    port: u16,
    seconds: u32,
    reverse: bool,
) -> Result<IperfResult> {
    let mut args = vec![
        "-c".to_owned(),
        server.to_string(),
        "-p".to_owned(),
        port.to_string(),
        "-t".to_owned(),
        seconds.to_string(),
        "-J".to_owned(),
    ];
    if reverse {
        args.push("-R".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = netns.exec("iperf3", &args)?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let bits_per_second = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 output without end.sum_received"))?;
    let intervals = json["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    Ok(IperfResult {
        bits_per_second,
        intervals,
    })
}

/// One short TCP run (iperf3, port 5201) each way between `client` and
/// `server` (listening on `server_addr`); each must carry more than
/// `min_bits_per_second`.
pub fn tcp_both_ways(
    client: &Netns,
    server: &Netns,
    server_addr: Ipv4Addr,
    min_bits_per_second: f64,
) -> Result<()> {
    for reverse in [false, true] {
        let _server = IperfServer::start(server, 5201)?;
        let result = iperf(client, server_addr, 5201, 1, reverse).with_context(|| {
            format!("TCP {} {server_addr}", if reverse { "from" } else { "to" })
        })?;
        if result.bits_per_second <= min_bits_per_second {
            bail!("TCP reverse={reverse} to {server_addr}: {result:?}");
        }
    }
    Ok(())
}

/// The agent's overall health (`grpc.health.v1`, service ""): SERVING only
/// while every network's data path is programmed.
pub async fn serving(socket: &Path) -> Result<bool> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    let mut health = HealthClient::new(unix_channel(socket).await?);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| anyhow!("health check: {s}"))?
        .into_inner()
        .status;
    Ok(status == ServingStatus::Serving as i32)
}

/// Polls an async condition until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// User plus system CPU seconds a process has used (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports process times in USER_HZ, 100 on every supported architecture.
    Ok(ticks / 100.0)
}

/// What one plugin run printed and how it exited.
#[derive(Debug)]
pub struct CniReply {
    /// The exit code.
    pub code: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl CniReply {
    /// The JSON on stdout (a result or an error).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success with nothing on stdout (DEL, CHECK, GC, STATUS).
    pub fn quiet_success(&self, what: &str) {
        assert_eq!(self.code, 0, "{what}: {self:?}");
        assert_eq!(self.stdout.trim(), "", "{what}: {self:?}");
    }

    /// Asserts a CNI error with `code` and returns its message.
    pub fn cni_error(&self, code: u64, what: &str) -> String {
        assert_ne!(self.code, 0, "{what} should fail: {self:?}");
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "{what}: {v}");
        assert!(v["cniVersion"].is_string(), "{what}: {v}");
        let msg = v["msg"].as_str().unwrap_or_default().to_string();
        eprintln!("{what} -> {v}");
        msg
    }
}

/// Runs a CNI plugin in `host`'s namespace with `env` and `conf` on stdin.
pub fn run_cni_plugin(
    host: &Netns,
    program: &std::path::Path,
    cni_path: &str,
    env: &[(&str, String)],
    conf: &serde_json::Value,
) -> Result<CniReply> {
    let mut command = host.command(program);
    command
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let mut stdin = child.stdin.take().context("plugin stdin")?;
    std::io::Write::write_all(&mut stdin, conf.to_string().as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok(CniReply {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
