//! The command line, declared with clap derive.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use fan_client::{Backend, Ipv4Cidr, Owner, DEFAULT_TARGET};
use fan_core::Ipv4Network;

/// The default `/etc/network/fan` path of `up -a` / `down -a`.
pub const DEFAULT_FAN_CONFIG: &str = "/etc/network/fan";

const MAIN_AFTER_HELP: &str = "\
Examples:
  fan-client info
  fan-client network create fan-250 --overlay 250.0.0.0/8 --underlay eth0/16
  fan-client -o json address allocate fan-250 --owner web-1
  fan-client up -o 250 -u 172.30.0.28/16
  FAN_AGENT=https://10.0.0.5:7443 fan-client --tls-ca ca.pem --tls-cert me.pem --tls-key me.key show

Targets: unix:///run/fan/agent.sock (default), unix:PATH, https://HOST:PORT (agents serve TCP
only with mutual TLS: --tls-ca/--tls-cert/--tls-key), http://HOST:PORT (plaintext, e.g. via a proxy).
Options -o/--agent/--timeout/--tls-* go before the command. Exit codes: 0 ok, 1 refused by the agent
or agent unreachable, 2 usage error.";

/// fan-client: talk to the fan agent (deterministic container networking).
#[derive(Debug, Parser)]
#[command(name = "fan-client", version, after_help = MAIN_AFTER_HELP)]
pub struct Cli {
    /// The agent to talk to.
    #[arg(long, env = "FAN_AGENT", value_name = "TARGET", default_value = DEFAULT_TARGET)]
    pub agent: String,

    /// Output format: aligned tables for people, or stable JSON.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Per-call timeout in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// TLS: PEM file of the CA that signs the agent's certificate (https://
    /// targets; default: the system roots).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// mTLS: PEM file of this client's certificate (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// mTLS: PEM file of this client's private key (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// TLS: the name to verify the agent's certificate against, when it is
    /// not the target's host.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether any --tls-* option was given.
    pub fn wants_tls(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some()
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables.
    Table,
    /// JSON (shapes documented in the README).
    Json,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the agent, its host and which backends can run there.
    #[command(after_help = "Example:\n  fan-client info\n  fan-client -o json info")]
    Info,

    /// Create, list, show, delete and check fan networks.
    #[command(subcommand, after_help = "Example:\n  fan-client network list")]
    Network(NetworkCommand),

    /// Allocate, release, list and garbage-collect container addresses.
    #[command(
        subcommand,
        after_help = "Example:\n  fan-client address allocate fan-250 --owner web-1"
    )]
    Address(AddressCommand),

    /// Resolve an overlay address to its underlay host, or an underlay
    /// address to its slices.
    #[command(after_help = "Examples:\n  fan-client resolve 250.0.28.7\n  \
                            fan-client resolve 172.30.0.28 --network fan-250\n  \
                            fan-client resolve 250.0.28.7 --overlay 250 --underlay 172.30.0.0/16")]
    Resolve(ResolveArgs),

    /// fanctl-compatible: bring fans up, from flags or /etc/network/fan.
    #[command(
        after_help = "Examples:\n  fan-client up -o 250 -u 172.30.0.28/16 --host-reserve 4\n  \
                            fan-client up 250.0.0.0/8 eth0/16 dhcp host-reserve 1\n  \
                            fan-client up -a --config /etc/network/fan\n\n\
                            The network is named after the overlay like fanctl's bridge: 250.0.0.0/8 -> fan-250,\n\
                            10.20.0.0/16 -> fan-10-20. Lines flagged `off` are skipped by -a; `auto` is accepted.\n\
                            The positional form takes one /etc/network/fan line: OVERLAY UNDERLAY [FLAGS].\n\
                            --dhcp (the `dhcp` flag) serves DHCP on the bridge from the agent's allocations."
    )]
    Up(UpArgs),

    /// fanctl-compatible: take fans down.
    #[command(
        after_help = "Examples:\n  fan-client down -o 250 -u 172.30.0.28/16\n  \
                            fan-client down -a\n  fan-client down -e\n\n\
                            -o/-u finds the network whose overlay and underlay match; -a takes down every\n\
                            fan of the config file that is up; -e takes down every network of the agent."
    )]
    Down(DownArgs),

    /// fanctl-compatible: list the fans that are up (Bridge Underlay Overlay Flags).
    #[command(after_help = "Example:\n  fan-client show")]
    Show,

    /// Docker on a fan network: the command lines to use, computed from the
    /// agent's view of the network.
    #[command(
        after_help = "Examples:\n  fan-client docker recipe fan-250              # docker network create with the fan IPAM plugin\n  \
                      fan-client docker recipe fan-250 --bridge-mode  # dockerd -b fan-250 --fixed-cidr …"
    )]
    Docker(DockerArgs),

    /// Commands over many agents.
    #[command(
        subcommand,
        after_help = "Example:\n  fan-client --tls-ca ca.pem --tls-cert me.pem --tls-key me.key \\\n    cluster status --agents https://10.0.0.5:7443,https://10.0.0.6:7443"
    )]
    Cluster(ClusterCommand),

    /// Print the agent's events as they happen, one per line (-o json:
    /// one JSON object per line).
    #[command(
        after_help = "Examples:\n  fan-client watch\n  fan-client watch --network fan-250 --from 1042 -o json"
    )]
    Watch(WatchArgs),

    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  fan-client completions bash > /etc/bash_completion.d/fan-client"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `network …`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network (succeeds when it exists with the same spec).
    #[command(
        after_help = "Example:\n  fan-client network create fan-250 --overlay 250.0.0.0/8 --underlay eth0/16 \\\n      \
                            --host-reserve 4 --backend ebpf"
    )]
    Create(NetworkCreateArgs),
    /// List every network with its state.
    #[command(after_help = "Example:\n  fan-client network list")]
    List,
    /// Show one network in detail.
    #[command(after_help = "Example:\n  fan-client network show fan-250")]
    Show {
        /// The network id.
        name: String,
    },
    /// Delete a network (refused while addresses are allocated, unless --force).
    #[command(after_help = "Example:\n  fan-client network delete fan-250 --allow-missing")]
    Delete {
        /// The network id.
        name: String,
        /// Delete even while addresses are allocated (they are released).
        #[arg(long)]
        force: bool,
        /// Succeed when the network does not exist.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Compare the kernel with the network's desired state (repairs nothing).
    #[command(after_help = "Example:\n  fan-client network check fan-250")]
    Check {
        /// The network id.
        name: String,
    },
    /// Change a network live (MTU, host reserve, masquerade, anti-spoofing,
    /// labels), keeping its allocations; only the options given change.
    #[command(
        after_help = "Example:\n  fan-client network update fan-250 --mtu 1400 --masquerade=false --label team=blue\n  fan-client network update fan-250 --dhcp=true --dhcp-dns 10.0.0.53 --dhcp-lease-seconds 600"
    )]
    Update(NetworkUpdateArgs),
}

/// `network update`
#[derive(Debug, Args)]
pub struct NetworkUpdateArgs {
    /// The network id.
    pub name: String,
    /// The MTU (0: underlay MTU - 20).
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// Addresses .1 .. .N of the slice kept for the host; refused when it
    /// would cover an allocated address.
    #[arg(long, value_name = "N")]
    pub host_reserve: Option<u32>,
    /// Masquerade traffic leaving the overlay.
    #[arg(long, value_name = "BOOL", num_args = 1, require_equals = false)]
    pub masquerade: Option<bool>,
    /// Anti-spoofing.
    #[arg(long, value_name = "BOOL", num_args = 1, require_equals = false)]
    pub anti_spoofing: Option<bool>,
    /// The network's labels, replacing all of them (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Remove every label.
    #[arg(long, conflicts_with = "labels")]
    pub clear_labels: bool,
    /// Serve DHCPv4 on the bridge; false also clears the DHCP options not
    /// given here.
    #[arg(long, value_name = "BOOL", num_args = 1, require_equals = false)]
    pub dhcp: Option<bool>,
    /// DNS servers for DHCP clients, replacing all of them (repeatable, at
    /// most 8; only with DHCP on).
    #[arg(long = "dhcp-dns", value_name = "IP")]
    pub dhcp_dns: Vec<String>,
    /// Hand DHCP clients no DNS server.
    #[arg(long, conflicts_with = "dhcp_dns")]
    pub clear_dhcp_dns: bool,
    /// DHCP lease seconds, 10 ..= 604800 (0: 3600; only with DHCP on).
    #[arg(long, value_name = "N")]
    pub dhcp_lease_seconds: Option<u32>,
}

/// `watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this network's events.
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// Start after this revision (a list's revision or the last one seen);
    /// default: from now on.
    #[arg(long, value_name = "REV")]
    pub from: Option<u64>,
    /// Only these kinds (repeatable): network-created, network-updated,
    /// network-state-changed, network-deleted, allocation-created,
    /// allocation-released, allocation-collected, drift-detected, drift-repaired.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<fan_client::EventKind>,
}

/// The backend names of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Pick the best available.
    Auto,
    /// Ubuntu's kernel fan map.
    KernelFan,
    /// tc eBPF.
    Ebpf,
    /// ipip.ko with onlink routes.
    Ipip,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::KernelFan => Backend::KernelFan,
            BackendArg::Ebpf => Backend::Ebpf,
            BackendArg::Ipip => Backend::Ipip,
        }
    }
}

/// `network create`
#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// The network id: lower-case letters, digits and hyphens.
    pub name: String,
    /// The overlay, CIDR ("250.0.0.0/8") or a bare first octet ("250").
    #[arg(long, value_name = "CIDR")]
    pub overlay: String,
    /// The underlay: A.B.C.D/N, A.B.C.D (/16), IFACE/N or default/N.
    #[arg(long, value_name = "SPEC")]
    pub underlay: String,
    /// Addresses .1 .. .N of the slice kept for the host (default 1).
    #[arg(long, value_name = "N")]
    pub host_reserve: Option<u32>,
    /// The bridge device name (default derived from the overlay).
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// The MTU (default: underlay MTU - 20).
    #[arg(long, value_name = "N")]
    pub mtu: Option<u32>,
    /// The data-plane backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Do not masquerade traffic leaving the overlay.
    #[arg(long)]
    pub no_masquerade: bool,
    /// Do not drop decapsulated packets with a spoofed inner source.
    #[arg(long)]
    pub no_anti_spoofing: bool,
    /// Accept an overlay that overlaps this host's own addresses or routes
    /// (e.g. 10.0.0.0/8 next to a LAN on 10.0.50.0/24); refused otherwise.
    #[arg(long)]
    pub allow_overlap: bool,
    /// Serve DHCPv4 on the bridge; leases are allocations of this network.
    #[arg(long)]
    pub dhcp: bool,
    /// DNS server handed to DHCP clients (repeat or comma-separate; with --dhcp).
    #[arg(long, value_name = "IP", value_delimiter = ',', requires = "dhcp")]
    pub dhcp_dns: Vec<String>,
    /// DHCP lease time in seconds (default 3600; with --dhcp).
    #[arg(long, value_name = "SECONDS", requires = "dhcp")]
    pub dhcp_lease_seconds: Option<u32>,
}

/// `address …`
#[derive(Debug, Subcommand)]
pub enum AddressCommand {
    /// Allocate an address for one container interface (same owner, same address).
    #[command(
        after_help = "Example:\n  fan-client address allocate fan-250 --owner web-1 --interface eth0 --label app=web"
    )]
    Allocate(AllocateArgs),
    /// Release an address, by owner or by address.
    #[command(
        after_help = "Examples:\n  fan-client address release fan-250 --owner web-1\n  \
                            fan-client address release fan-250 --address 250.0.28.7 --allow-missing"
    )]
    Release(ReleaseArgs),
    /// List a network's allocations in address order.
    #[command(after_help = "Example:\n  fan-client address list fan-250")]
    List {
        /// The network id.
        network: String,
    },
    /// Show one allocation, by owner or by address.
    #[command(
        after_help = "Examples:\n  fan-client address show fan-250 --owner web-1\n  \
                            fan-client address show fan-250 --address 250.0.28.7"
    )]
    Show(ShowAddressArgs),
    /// Release the allocations of one scope (CNI-made, Docker-made, by label,
    /// or --all) whose owner is not listed; lists them first, releases with --yes.
    #[command(
        after_help = "Examples:\n  fan-client address gc fan-250 --created-by cni --valid-owner web-1 --valid-owner db-1/net1\n  \
                            fan-client address gc fan-250 --created-by cni --valid-owner web-1 --yes\n  \
                            fan-client address gc fan-250 --selector app=web --yes\n  \
                            fan-client address gc fan-250 --all --valid-owner web-1 --yes   # hand-made ones too"
    )]
    Gc(GcArgs),
}

/// `address allocate`
#[derive(Debug, Args)]
pub struct AllocateArgs {
    /// The network id.
    pub network: String,
    /// The container id.
    #[arg(long, value_name = "ID")]
    pub owner: String,
    /// The interface inside the container (default eth0).
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// A specific address instead of the next free one.
    #[arg(long, value_name = "A")]
    pub address: Option<Ipv4Addr>,
    /// A label to store with the allocation (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

impl AllocateArgs {
    /// The labels as a map (a repeated key keeps the last value).
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

/// The `--owner [--interface] | --address` selector.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["owner", "address"])))]
pub struct SelectorArgs {
    /// The container id of the allocation.
    #[arg(long, value_name = "ID", conflicts_with = "address")]
    pub owner: Option<String>,
    /// The interface inside the container (default eth0).
    #[arg(
        long,
        value_name = "IF",
        requires = "owner",
        conflicts_with = "address"
    )]
    pub interface: Option<String>,
    /// The allocated address.
    #[arg(long, value_name = "A")]
    pub address: Option<Ipv4Addr>,
}

impl SelectorArgs {
    /// The selector; clap guarantees exactly one of owner and address.
    pub fn selector(&self) -> fan_client::Selector {
        match (&self.owner, self.address) {
            (Some(owner), _) => fan_client::Selector::Owner(owner_of(owner, &self.interface)),
            (None, Some(a)) => fan_client::Selector::Address(a),
            (None, None) => unreachable!("clap requires --owner or --address"),
        }
    }
}

/// An owner from `--owner` and `--interface`.
pub fn owner_of(id: &str, interface: &Option<String>) -> Owner {
    match interface {
        Some(i) => Owner::with_interface(id, i.as_str()),
        None => Owner::new(id),
    }
}

/// `address release`
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The network id.
    pub network: String,
    /// Which allocation.
    #[command(flatten)]
    pub selector: SelectorArgs,
    /// Succeed when nothing is allocated.
    #[arg(long)]
    pub allow_missing: bool,
}

/// `address show`
#[derive(Debug, Args)]
pub struct ShowAddressArgs {
    /// The network id.
    pub network: String,
    /// Which allocation.
    #[command(flatten)]
    pub selector: SelectorArgs,
}

/// `docker recipe`
#[derive(Debug, Args)]
pub struct DockerArgs {
    /// Only `recipe` so far.
    #[arg(value_parser = ["recipe"])]
    pub what: String,
    /// The fan network id.
    pub network: String,
    /// The seed's way instead: Docker's default bridge on the fan bridge
    /// (`dockerd -b`), with a `--fixed-cidr` inside the agent's host reserve.
    #[arg(long)]
    pub bridge_mode: bool,
    /// The IPAM plugin's name (its socket is /run/docker/plugins/NAME.sock).
    #[arg(long, default_value = fan_cli::docker::DEFAULT_PLUGIN_NAME)]
    pub plugin: String,
    /// The Docker network name (default: the fan network id).
    #[arg(long)]
    pub name: Option<String>,
}

/// `address gc`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("scope").required(true).multiple(true).args(["created_by", "selector", "all"])))]
pub struct GcArgs {
    /// The network id.
    pub network: String,
    /// An owner still in use, CONTAINER or CONTAINER/IF (repeatable); none
    /// means every allocation of the scope is stale.
    #[arg(long = "valid-owner", value_name = "ID[/IF]", value_parser = parse_owner)]
    pub valid_owners: Vec<Owner>,
    /// Only allocations made by `cni` (fan-ipam) or `docker`
    /// (fan-docker-ipam): the label fan.io/created-by.
    #[arg(long, value_name = "MAKER")]
    pub created_by: Option<String>,
    /// Only allocations carrying this label (repeatable: all must match).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Every allocation of the network, also those allocated by hand.
    #[arg(long, conflicts_with_all = ["created_by", "selector"])]
    pub all: bool,
    /// Release them; without it only what would be released is listed.
    #[arg(long, conflicts_with = "dry_run")]
    pub yes: bool,
    /// Only list what would be released (the default).
    #[arg(long)]
    pub dry_run: bool,
}

impl GcArgs {
    /// Whether `a` is in the scope the flags select.
    pub fn in_scope(&self, a: &fan_client::Allocation) -> bool {
        if self.all {
            return true;
        }
        let created_by = a.labels.get(fan_cli::cni::LABEL_CREATED_BY);
        let maker_ok = match self.created_by.as_deref() {
            None => true,
            // Allocations fan-ipam made before it wrote fan.io/created-by.
            Some("cni") => {
                created_by.map(String::as_str) == Some("cni")
                    || (created_by.is_none()
                        && a.labels.contains_key(fan_cli::cni::LABEL_CNI_NETWORK))
            }
            Some(m) => created_by.map(String::as_str) == Some(m),
        };
        maker_ok
            && self
                .selector
                .iter()
                .all(|(k, v)| a.labels.get(k) == Some(v))
    }
}

/// `resolve`
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// An IPv4 address, overlay or underlay.
    pub address: Ipv4Addr,
    /// Only this network of the agent.
    #[arg(long, value_name = "NAME", conflicts_with = "overlay")]
    pub network: Option<String>,
    /// An ad hoc fan's overlay (with --underlay), CIDR or bare octet.
    #[arg(long, value_name = "CIDR", requires = "underlay", value_parser = parse_overlay_arg)]
    pub overlay: Option<Ipv4Network>,
    /// An ad hoc fan's underlay network (with --overlay), CIDR.
    #[arg(long, value_name = "CIDR", requires = "overlay", value_parser = parse_underlay_network)]
    pub underlay: Option<Ipv4Network>,
}

/// `up`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["overlay", "all", "fan"])))]
pub struct UpArgs {
    /// fanctl's positional form, one /etc/network/fan line:
    /// OVERLAY UNDERLAY [dhcp] [host-reserve N] [bridge NAME] [auto].
    #[arg(value_name = "OVERLAY UNDERLAY [FLAGS]", num_args = 0.., conflicts_with_all = ["overlay", "all"])]
    pub fan: Vec<String>,
    /// The overlay, CIDR or a bare first octet ("250").
    #[arg(short = 'o', long, value_name = "OVERLAY", requires = "underlay", value_parser = parse_overlay_arg)]
    pub overlay: Option<Ipv4Network>,
    /// The underlay: A.B.C.D/N, A.B.C.D (/16), IFACE/N or default/N.
    #[arg(short = 'u', long, value_name = "UNDERLAY", requires = "overlay", value_parser = parse_underlay_spec)]
    pub underlay: Option<fan_core::UnderlaySpec>,
    /// Addresses .1 .. .N of the slice kept for the host.
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub host_reserve: Option<u32>,
    /// The bridge device name.
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub bridge: Option<String>,
    /// Serve DHCPv4 on the bridge from the agent's allocations.
    #[arg(long, conflicts_with = "all")]
    pub dhcp: bool,
    /// Bring up every fan of the config file not flagged `off`.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// The config file of -a.
    #[arg(
        long,
        value_name = "FILE",
        requires = "all",
        conflicts_with = "overlay"
    )]
    pub config: Option<PathBuf>,
}

/// `down`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["overlay", "all", "every", "fan"])))]
pub struct DownArgs {
    /// fanctl's positional form: OVERLAY UNDERLAY (flags after them are ignored).
    #[arg(value_name = "OVERLAY UNDERLAY", num_args = 0.., conflicts_with_all = ["overlay", "all", "every"])]
    pub fan: Vec<String>,
    /// The overlay of the fan, CIDR or a bare first octet.
    #[arg(short = 'o', long, value_name = "OVERLAY", requires = "underlay", value_parser = parse_overlay_arg)]
    pub overlay: Option<Ipv4Network>,
    /// The underlay of the fan.
    #[arg(short = 'u', long, value_name = "UNDERLAY", requires = "overlay", value_parser = parse_underlay_spec)]
    pub underlay: Option<fan_core::UnderlaySpec>,
    /// Take down every fan of the config file (not flagged `off`) that is up.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Take down every network the agent has.
    #[arg(short = 'e', long)]
    pub every: bool,
    /// The config file of -a.
    #[arg(long, value_name = "FILE", requires = "all", conflicts_with_all = ["overlay", "every"])]
    pub config: Option<PathBuf>,
}

/// `cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Query many agents at once, one row per agent.
    #[command(
        after_help = "Example:\n  fan-client --tls-ca ca.pem --tls-cert me.pem --tls-key me.key \\\n    cluster status --agents https://10.0.0.5:7443,https://10.0.0.6:7443 --strict\n\n\
                            Exit status is 0 even when agents are unreachable or not ready, unless --strict."
    )]
    Status(ClusterStatusArgs),
}

/// `cluster status`
#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    /// The agents, comma-separated (or the option repeated).
    #[arg(long, value_name = "T1,T2,…", value_delimiter = ',', required = true, num_args = 1..)]
    pub agents: Vec<String>,
    /// Exit 1 when an agent is unreachable or a network is not ready.
    #[arg(long)]
    pub strict: bool,
    /// The time budget of each agent, in seconds.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub agent_timeout: Duration,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s:?}: expected seconds between 0 and 86400"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn parse_owner(s: &str) -> Result<Owner, String> {
    s.parse::<Owner>().map_err(|e| e.to_string())
}

fn parse_overlay_arg(s: &str) -> Result<Ipv4Network, String> {
    fan_core::parse_overlay(s).map_err(|e| e.to_string())
}

fn parse_underlay_network(s: &str) -> Result<Ipv4Network, String> {
    fan_core::parse_network(s).map_err(|e| e.to_string())
}

fn parse_underlay_spec(s: &str) -> Result<fan_core::UnderlaySpec, String> {
    fan_core::UnderlaySpec::parse(s).map_err(|e| e.to_string())
}

/// An `ipnetwork` network as the SDK's plain CIDR value.
pub fn to_cidr(n: Ipv4Network) -> Ipv4Cidr {
    Ipv4Cidr {
        address: n.network(),
        prefix: n.prefix(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fan-client").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Cli {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// A usage error: clap's exit code is 2.
    fn usage(args: &[&str]) -> clap::Error {
        match parse(args) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
                e
            }
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example_in_after_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("fan-client "),
                    "{p}: no example in after_help"
                );
                walk(sub, &p);
            }
        }
        let cmd = Cli::command();
        assert!(cmd.get_after_help().is_some());
        walk(&cmd, "fan-client");
    }

    #[test]
    fn global_options_and_defaults() {
        let cli = ok(&["info"]);
        assert_eq!(cli.output, OutputFormat::Table);
        assert_eq!(cli.timeout, Duration::from_secs(10));
        assert!(matches!(cli.command, Command::Info));
        // FAN_AGENT is not set in the test environment unless by the user
        if std::env::var_os("FAN_AGENT").is_none() {
            assert_eq!(cli.agent, DEFAULT_TARGET);
        }
        let cli = ok(&[
            "--agent",
            "http://10.0.0.5:7946",
            "-o",
            "json",
            "--timeout",
            "2.5",
            "show",
        ]);
        assert_eq!(cli.agent, "http://10.0.0.5:7946");
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.timeout, Duration::from_millis(2500));
        assert!(matches!(cli.command, Command::Show));
        usage(&["-o", "yaml", "info"]);
        usage(&["--timeout", "0", "info"]);
        usage(&["--timeout", "soon", "info"]);
        usage(&[]);
        usage(&["frobnicate"]);
        let e = usage(&["info", "extra"]);
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn tls_options() {
        let cli = ok(&[
            "--agent",
            "https://10.0.0.5:7946",
            "--tls-ca",
            "ca.pem",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "c.key",
            "--tls-server-name",
            "agent.fan",
            "info",
        ]);
        assert!(cli.wants_tls());
        assert_eq!(cli.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.tls_server_name.as_deref(), Some("agent.fan"));
        assert!(!ok(&["info"]).wants_tls());
        usage(&["--tls-cert", "c.pem", "info"]);
        usage(&["--tls-key", "c.key", "info"]);
    }

    #[test]
    fn network_commands() {
        let cli = ok(&[
            "network",
            "create",
            "fan-250",
            "--overlay",
            "250",
            "--underlay",
            "eth0/16",
            "--host-reserve",
            "4",
            "--bridge",
            "fanbr",
            "--mtu",
            "1400",
            "--backend",
            "kernel-fan",
            "--no-masquerade",
            "--no-anti-spoofing",
        ]);
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.name, "fan-250");
        assert_eq!(a.overlay, "250");
        assert_eq!(a.underlay, "eth0/16");
        assert_eq!(a.host_reserve, Some(4));
        assert_eq!(a.bridge.as_deref(), Some("fanbr"));
        assert_eq!(a.mtu, Some(1400));
        assert_eq!(Backend::from(a.backend), Backend::KernelFan);
        assert!(a.no_masquerade && a.no_anti_spoofing);

        let cli = ok(&[
            "network",
            "create",
            "n",
            "--overlay",
            "250.0.0.0/8",
            "--underlay",
            "10.0.0.0/16",
        ]);
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.backend, BackendArg::Auto);
        assert!(!a.no_masquerade);
        usage(&["network", "create", "n", "--overlay", "250"]);
        usage(&[
            "network",
            "create",
            "n",
            "--overlay",
            "250",
            "--underlay",
            "e/16",
            "--backend",
            "vxlan",
        ]);
        usage(&[
            "network",
            "create",
            "n",
            "--overlay",
            "250",
            "--underlay",
            "e/16",
            "--mtu",
            "big",
        ]);

        assert!(matches!(
            ok(&["network", "list"]).command,
            Command::Network(NetworkCommand::List)
        ));
        let Command::Network(NetworkCommand::Show { name }) = ok(&["network", "show", "x"]).command
        else {
            panic!()
        };
        assert_eq!(name, "x");
        let Command::Network(NetworkCommand::Delete {
            name,
            force,
            allow_missing,
        }) = ok(&["network", "delete", "x", "--force", "--allow-missing"]).command
        else {
            panic!()
        };
        assert_eq!((name.as_str(), force, allow_missing), ("x", true, true));
        let Command::Network(NetworkCommand::Delete {
            force,
            allow_missing,
            ..
        }) = ok(&["network", "delete", "x"]).command
        else {
            panic!()
        };
        assert!(!force && !allow_missing);
        assert!(matches!(
            ok(&["network", "check", "x"]).command,
            Command::Network(NetworkCommand::Check { .. })
        ));
        usage(&["network", "show"]);
        usage(&["network"]);
    }

    #[test]
    fn address_commands() {
        let cli = ok(&[
            "address",
            "allocate",
            "fan-250",
            "--owner",
            "web-1",
            "--interface",
            "net1",
            "--address",
            "250.0.28.7",
            "--label",
            "app=web",
            "--label",
            "tier=a=b",
        ]);
        let Command::Address(AddressCommand::Allocate(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.network, "fan-250");
        assert_eq!(
            owner_of(&a.owner, &a.interface),
            Owner::with_interface("web-1", "net1")
        );
        assert_eq!(a.address, Some(Ipv4Addr::new(250, 0, 28, 7)));
        let labels = a.label_map();
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("a=b"));
        usage(&["address", "allocate", "fan-250"]);
        usage(&[
            "address", "allocate", "fan-250", "--owner", "c", "--label", "novalue",
        ]);
        usage(&[
            "address",
            "allocate",
            "fan-250",
            "--owner",
            "c",
            "--address",
            "250.0.28",
        ]);

        let cli = ok(&[
            "address",
            "release",
            "fan-250",
            "--owner",
            "c1",
            "--allow-missing",
        ]);
        let Command::Address(AddressCommand::Release(a)) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.selector.selector(),
            fan_client::Selector::Owner(Owner::new("c1"))
        );
        assert!(a.allow_missing);
        let cli = ok(&["address", "release", "fan-250", "--address", "250.0.28.7"]);
        let Command::Address(AddressCommand::Release(a)) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.selector.selector(),
            fan_client::Selector::Address(Ipv4Addr::new(250, 0, 28, 7))
        );
        usage(&["address", "release", "fan-250"]);
        usage(&[
            "address",
            "release",
            "fan-250",
            "--owner",
            "c",
            "--address",
            "250.0.28.7",
        ]);
        usage(&[
            "address",
            "release",
            "fan-250",
            "--interface",
            "eth1",
            "--address",
            "250.0.28.7",
        ]);

        let cli = ok(&[
            "address",
            "show",
            "fan-250",
            "--owner",
            "c1",
            "--interface",
            "eth1",
        ]);
        let Command::Address(AddressCommand::Show(a)) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.selector.selector(),
            fan_client::Selector::Owner(Owner::with_interface("c1", "eth1"))
        );
        usage(&["address", "show", "fan-250"]);

        assert!(matches!(
            ok(&["address", "list", "fan-250"]).command,
            Command::Address(AddressCommand::List { .. })
        ));

        let cli = ok(&[
            "address",
            "gc",
            "fan-250",
            "--valid-owner",
            "c1",
            "--valid-owner",
            "c2/net1",
            "--created-by",
            "cni",
            "--dry-run",
        ]);
        let Command::Address(AddressCommand::Gc(a)) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.valid_owners,
            vec![Owner::new("c1"), Owner::with_interface("c2", "net1")]
        );
        assert!(a.dry_run && !a.yes);
        let alloc = |labels: &[(&str, &str)]| fan_client::Allocation {
            name: String::new(),
            network_id: "fan-250".into(),
            owner: Owner::new("x"),
            address: Ipv4Addr::new(250, 0, 28, 2),
            prefix_length: 24,
            gateway: Ipv4Addr::new(250, 0, 28, 1),
            mtu: 1480,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            create_time: None,
        };
        assert!(a.in_scope(&alloc(&[("fan.io/created-by", "cni")])));
        assert!(a.in_scope(&alloc(&[("fan-ipam/cni-network", "fan")])));
        assert!(!a.in_scope(&alloc(&[("fan.io/created-by", "docker")])));
        assert!(!a.in_scope(&alloc(&[])));
        let Command::Address(AddressCommand::Gc(a)) =
            ok(&["address", "gc", "fan-250", "--selector", "app=web", "--yes"]).command
        else {
            panic!()
        };
        assert!(a.yes && a.valid_owners.is_empty());
        assert!(a.in_scope(&alloc(&[("app", "web")])));
        assert!(!a.in_scope(&alloc(&[("app", "db")])));
        let Command::Address(AddressCommand::Gc(a)) =
            ok(&["address", "gc", "fan-250", "--all"]).command
        else {
            panic!()
        };
        assert!(a.in_scope(&alloc(&[])));
        // A scope is required: hand-made allocations only go with --all.
        usage(&["address", "gc", "fan-250"]);
        usage(&["address", "gc", "fan-250", "--valid-owner", "c1"]);
        usage(&["address", "gc", "fan-250", "--all", "--created-by", "cni"]);
        usage(&["address", "gc", "fan-250", "--all", "--yes", "--dry-run"]);
        usage(&["address", "gc", "fan-250", "--all", "--valid-owner", "c1/"]);
    }

    #[test]
    fn resolve_command() {
        let Command::Resolve(a) = ok(&["resolve", "250.0.28.7"]).command else {
            panic!()
        };
        assert_eq!(a.address, Ipv4Addr::new(250, 0, 28, 7));
        assert!(a.network.is_none() && a.overlay.is_none());
        let Command::Resolve(a) = ok(&["resolve", "172.30.0.28", "--network", "fan-250"]).command
        else {
            panic!()
        };
        assert_eq!(a.network.as_deref(), Some("fan-250"));
        let Command::Resolve(a) = ok(&[
            "resolve",
            "250.0.28.7",
            "--overlay",
            "250",
            "--underlay",
            "172.30.0.0/16",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(to_cidr(a.overlay.unwrap()).to_string(), "250.0.0.0/8");
        assert_eq!(to_cidr(a.underlay.unwrap()).to_string(), "172.30.0.0/16");
        usage(&["resolve", "250.0.28.7", "--overlay", "250"]);
        usage(&["resolve", "250.0.28.7", "--underlay", "172.30.0.0/16"]);
        usage(&[
            "resolve",
            "250.0.28.7",
            "--network",
            "n",
            "--overlay",
            "250",
            "--underlay",
            "172.30.0.0/16",
        ]);
        usage(&[
            "resolve",
            "250.0.28.7",
            "--overlay",
            "127",
            "--underlay",
            "172.30.0.0/16",
        ]);
        usage(&[
            "resolve",
            "250.0.28.7",
            "--overlay",
            "250",
            "--underlay",
            "172.30.0.28/16",
        ]);
        usage(&["resolve", "not-an-ip"]);
    }

    #[test]
    fn fanctl_up_forms() {
        let Command::Up(a) = ok(&["up", "-o", "250", "-u", "172.30.0.28/16"]).command else {
            panic!()
        };
        assert_eq!(a.overlay.unwrap().to_string(), "250.0.0.0/8");
        assert_eq!(a.underlay.as_ref().unwrap().to_string(), "172.30.0.28/16");
        assert!(!a.all && !a.dhcp);
        let Command::Up(a) = ok(&[
            "up",
            "--overlay",
            "250.0.0.0/8",
            "--underlay",
            "eth0/16",
            "--host-reserve",
            "3",
            "--bridge",
            "br-fan",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.host_reserve, Some(3));
        assert_eq!(a.bridge.as_deref(), Some("br-fan"));
        // the global -o (output) goes before the command, the fanctl -o after
        let cli = ok(&["-o", "json", "up", "-o", "250", "-u", "172.30.0.28"]);
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::Up(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.underlay.unwrap().to_string(), "172.30.0.28/16");
        let Command::Up(a) = ok(&["up", "-o", "250", "-u", "eth0/16", "--dhcp"]).command else {
            panic!()
        };
        assert!(a.dhcp);
        // fanctl's positional form
        let Command::Up(a) =
            ok(&["up", "250.0.0.0/8", "eth0/16", "dhcp", "host-reserve", "1"]).command
        else {
            panic!()
        };
        assert_eq!(
            a.fan,
            ["250.0.0.0/8", "eth0/16", "dhcp", "host-reserve", "1"]
        );
        let Command::Down(d) = ok(&["down", "250.0.0.0/8", "eth0/16"]).command else {
            panic!()
        };
        assert_eq!(d.fan, ["250.0.0.0/8", "eth0/16"]);
        usage(&["up", "250", "eth0/16", "-o", "250"]);

        let Command::Up(a) = ok(&["up", "-a"]).command else {
            panic!()
        };
        assert!(a.all && a.config.is_none());
        let Command::Up(a) = ok(&["up", "-a", "--config", "/tmp/fan"]).command else {
            panic!()
        };
        assert_eq!(a.config, Some(PathBuf::from("/tmp/fan")));

        usage(&["up"]);
        usage(&["up", "-o", "250"]);
        usage(&["up", "-u", "eth0/16"]);
        usage(&["up", "-a", "-o", "250", "-u", "eth0/16"]);
        usage(&["up", "-a", "--dhcp"]);
        usage(&["up", "-a", "--host-reserve", "2"]);
        usage(&["up", "-o", "250", "-u", "eth0/16", "--config", "/tmp/fan"]);
        usage(&["up", "-o", "250.0.0.1/8", "-u", "eth0/16"]);
        usage(&["up", "-o", "250", "-u", "eth0"]);
    }

    #[test]
    fn fanctl_down_and_show_forms() {
        let Command::Down(a) = ok(&["down", "-o", "250", "-u", "172.30.0.28/16"]).command else {
            panic!()
        };
        assert_eq!(a.overlay.unwrap().to_string(), "250.0.0.0/8");
        assert!(!a.all && !a.every);
        let Command::Down(a) = ok(&["down", "-a", "--config", "/tmp/fan"]).command else {
            panic!()
        };
        assert!(a.all);
        assert_eq!(a.config, Some(PathBuf::from("/tmp/fan")));
        let Command::Down(a) = ok(&["down", "-e"]).command else {
            panic!()
        };
        assert!(a.every);
        usage(&["down"]);
        usage(&["down", "-o", "250"]);
        usage(&["down", "-a", "-e"]);
        usage(&["down", "-e", "-o", "250", "-u", "eth0/16"]);
        usage(&["down", "-e", "--config", "/tmp/fan"]);
        assert!(matches!(ok(&["show"]).command, Command::Show));
        usage(&["show", "extra"]);
    }

    #[test]
    fn cluster_and_completions() {
        let Command::Cluster(ClusterCommand::Status(a)) = ok(&[
            "cluster",
            "status",
            "--agents",
            "unix:/a.sock,http://h:1",
            "--strict",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.agents, ["unix:/a.sock", "http://h:1"]);
        assert!(a.strict);
        assert_eq!(a.agent_timeout, Duration::from_secs(5));
        let Command::Cluster(ClusterCommand::Status(a)) = ok(&[
            "cluster",
            "status",
            "--agents",
            "unix:/a",
            "--agents",
            "unix:/b",
            "--agent-timeout",
            "1",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.agents, ["unix:/a", "unix:/b"]);
        assert!(!a.strict);
        usage(&["cluster", "status"]);

        for shell in ["bash", "zsh", "fish"] {
            assert!(matches!(
                ok(&["completions", shell]).command,
                Command::Completions { .. }
            ));
        }
        usage(&["completions", "tcsh"]);
    }

    #[test]
    fn help_and_version_exit_0() {
        for args in [
            &["--help"][..],
            &["--version"],
            &["up", "--help"],
            &["network", "create", "--help"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 0, "{args:?}");
        }
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes: 0 ok, 1 refused"));
    }
}
