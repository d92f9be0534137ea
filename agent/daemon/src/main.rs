//! `fan-agent`: flags → `server::run`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fan_agent::server::{self, tls::TcpFlags, ServerConfig};
use fan_agent::state::OpenOptions;

/// The fan agent: deterministic container networking, one agent per host.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  fan-agent --socket /run/fan/agent.sock --state-dir /var/lib/fan\n  \
                  fan-agent --listen 172.30.0.28:7443 --tls-cert agent.pem --tls-key agent.key \\\n    \
                  --tls-client-ca clients-ca.pem\n\n\
                  TCP is served with mutual TLS only: there is no plaintext TCP mode, not even on \
                  loopback.\n\n\
                  State: every record carries a checksum. An agent that finds an unreadable \
                  record, or an empty database in an initialized state directory, refuses to \
                  start and names it; stop the service, then run once\n  \
                  fan-agent --recover --state-dir /var/lib/fan\n\
                  to quarantine what cannot be read (its addresses stay reserved) and serve. \
                  See \"State and recovery\" in the README."
)]
struct Flags {
    /// Unix socket to serve the gRPC API on (mode 0660).
    #[arg(long, default_value = "/run/fan/agent.sock", env = "FAN_AGENT_SOCKET")]
    socket: PathBuf,
    /// Group that owns the socket, so its members may call the agent.
    #[arg(long)]
    socket_group: Option<String>,
    /// Also serve the API on this TCP address, with mutual TLS only: needs
    /// --tls-cert, --tls-key and --tls-client-ca (no plaintext TCP mode).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// PEM certificate (chain) the agent presents on --listen.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates on --listen must chain
    /// to; clients without such a certificate are refused.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Directory of the durable state (networks and allocations).
    #[arg(long, default_value = "/var/lib/fan", env = "FAN_AGENT_STATE_DIR")]
    state_dir: PathBuf,
    /// bpffs directory under which the eBPF backend pins its maps.
    #[arg(long, default_value = "/sys/fs/bpf/fan", env = "FAN_AGENT_BPFFS_DIR")]
    bpffs_dir: PathBuf,
    /// Turn off the eBPF fast paths: container packets for other hosts'
    /// slices then go through the host's routing, FORWARD chain and the
    /// tunnel device (the slow path) instead of being encapsulated on the
    /// fan bridge, and decapsulated packets go through the host's stack and
    /// the bridge instead of straight into the container
    /// (`bpf_redirect_peer`). Same wire format either way.
    #[arg(long, env = "FAN_AGENT_NO_FAST_PATH", value_parser = clap::builder::BoolishValueParser::new())]
    no_fast_path: bool,
    /// Leave the IPv4 GSO/GRO limits of containers' veths as their runtime
    /// made them. By default (eBPF backend) they follow the underlay
    /// device's: when the host raised its NIC's `gso_ipv4_max_size` (BIG
    /// TCP, Linux 6.3+), containers send packets as large, which the fan
    /// then handles at a fraction of the per-packet cost.
    #[arg(long, env = "FAN_AGENT_NO_BIG_TCP", value_parser = clap::builder::BoolishValueParser::new())]
    no_big_tcp: bool,
    /// Seconds between drift checks that repair the kernel state; 0 disables.
    #[arg(long, default_value_t = 30)]
    reconcile_interval: u64,
    /// Most connections open at once per listener; at the cap the connection
    /// quiet the longest is closed for the newcomer. Lowered to fit the
    /// process's descriptor limit.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Repair state the agent refuses to start with, report what was done,
    /// then serve as usual. Records that fail their checksum or do not decode
    /// move to the database's quarantine table (raw bytes kept); the address of
    /// such an allocation stays reserved for owner
    /// `fan-quarantine-<address>/quarantine` until released by hand once no
    /// container uses it; a damaged network record takes the network and its
    /// allocations to quarantine (created again, it starts with their
    /// addresses reserved). An empty or missing database in an
    /// initialized state directory is accepted as EMPTY state. Without
    /// --recover-move-aside, a database redb cannot open is left untouched.
    #[arg(long)]
    recover: bool,
    /// With --recover: move a database redb cannot open aside to
    /// state.redb.corrupt-<unix seconds> and start with EMPTY state. Every
    /// network and allocation in it is forgotten, and addresses held by
    /// running containers may be handed out again: recreate the networks and
    /// re-plug the containers.
    #[arg(long, requires = "recover")]
    recover_move_aside: bool,
    /// Serve Prometheus metrics as plain HTTP on this address (`GET /metrics`
    /// only, read-only); off by default. Bind it to a loopback or management
    /// address: it has no authentication. See "Metrics" in the README.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    keep_heap_small();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?
        .block_on(run())
}

/// Loading eBPF objects (aya parses the kernel's BTF each time) makes
/// short-lived multi-MiB allocations. glibc's dynamic mmap threshold would
/// move them into a thread arena that never shrinks, doubling the agent's
/// RSS after one network is created; a fixed threshold keeps such blocks in
/// their own mappings, returned on free.
fn keep_heap_small() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

async fn run() -> anyhow::Result<()> {
    let flags = Flags::parse();
    init_logging(&flags.log_format);
    // Checked first: a TCP listener that cannot be secured stops the start-up.
    let tcp = TcpFlags {
        listen: flags.listen,
        tls_cert: flags.tls_cert,
        tls_key: flags.tls_key,
        tls_client_ca: flags.tls_client_ca,
    }
    .load()?;
    // In the order `auto` prefers them (BackendKind::ALL).
    let backends: Vec<Box<dyn fan_dataplane::Encapsulation>> = vec![
        Box::new(fan_dataplane::kernel_fan::KernelFanBackend::new()),
        Box::new(
            fan_dataplane::ebpf::EbpfBackend::new(flags.bpffs_dir.clone())
                .with_egress_fast_path(!flags.no_fast_path)
                .with_peer_fast_path(!flags.no_fast_path)
                .with_big_tcp(!flags.no_big_tcp),
        ),
        Box::new(fan_dataplane::ipip::IpipBackend::new()),
    ];
    let dataplane =
        fan_dataplane::KernelDataplane::new(backends).context("opening the kernel data plane")?;
    let config = ServerConfig {
        socket: flags.socket,
        socket_group: flags.socket_group,
        state_dir: flags.state_dir,
        reconcile_interval: Duration::from_secs(flags.reconcile_interval),
        tcp,
        max_connections: flags.max_connections,
        state_open: OpenOptions {
            recover: flags.recover,
            move_aside_unopenable: flags.recover_move_aside,
        },
        metrics_listen: flags.metrics_listen,
    };
    server::run(config, Arc::new(dataplane), shutdown_signal())
        .await
        .context("fan-agent")?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
