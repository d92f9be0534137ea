//! The `fan-ipam` CNI IPAM plugin: addresses for container runtimes from the
//! fan agent of the host.
//!
//! A container runtime (containerd, CRI-O, podman's CNI backend, `cnitool`)
//! runs a main plugin such as `bridge`, which runs this IPAM plugin with the
//! same environment and network configuration. The plugin turns each CNI
//! command into agent calls; it keeps no state of its own, so every address
//! lives in the agent's store and survives restarts of either side.
//!
//! | `CNI_COMMAND` | agent call | output |
//! | --- | --- | --- |
//! | `ADD` | AllocateAddress (owner = `CNI_CONTAINERID` + `CNI_IFNAME`) | a result with the address, gateway and routes |
//! | `DEL` | ReleaseAddress by owner, allow_missing | nothing; succeeds when the allocation or the network is gone |
//! | `CHECK` | GetAllocation by owner | nothing; fails when `prevResult` does not hold the allocation |
//! | `GC` (1.1) | GarbageCollectAllocations (dry run), ReleaseAddress | nothing; releases this CNI network's allocations whose owner is not in `cni.dev/valid-attachments` |
//! | `STATUS` (1.1) | GetNetwork | nothing; error 50 unless the agent answers and the network is ready |
//! | `VERSION` | — | the supported spec versions |
//!
//! The configuration (`ipam` of the main plugin's configuration):
//!
//! ```json
//! {"type": "fan-ipam", "network": "fan", "agent": "unix:///run/fan/agent.sock",
//!  "routes": [{"dst": "0.0.0.0/0"}]}
//! ```
//!
//! `network` is the fan network id on the host (required); `agent` the agent
//! target (default [`fan_client::DEFAULT_TARGET`]); `routes` replaces the default
//! route through the gateway (an empty list gives no route, for a second
//! interface that must not take the default route). Other keys in `ipam` are
//! refused (error 2), so that a misspelt key is not silently ignored.
//!
//! The IPAM result has no MTU: the main plugin sets the container MTU from
//! its own `mtu` key, which must not exceed the fan network's MTU (the
//! underlay MTU minus 20). When the configuration has a top-level `mtu`
//! larger than the network's, `ADD` fails (error 7) instead of leaving
//! containers that silently drop large packets, and `CHECK` reports it.
//!
//! [`conflist`] builds the configuration list a runtime needs (bridge +
//! fan-ipam + portmap) from the bridge name and MTU the agent reports;
//! `fan-ipam conflist NETWORK` prints it.
//!
//! Every function here except [`run`] is pure; [`run`] is the one that
//! talks to the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Map, Value};

use fan_client::{
    AllocationRequest, ConnectOptions, Error, FanClient, Ipv4Cidr, NetworkState, Owner, Selector,
    Target, DEFAULT_TARGET,
};

/// The CNI spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported spec version, used where no configuration names one.
pub const LATEST_VERSION: &str = "1.1.0";

/// The label holding the CNI network name on every allocation `ADD` makes;
/// `GC` only ever releases allocations carrying its own network's name.
pub const LABEL_CNI_NETWORK: &str = "fan-ipam/cni-network";
/// The label naming what made an allocation (`cni` here, `docker` for
/// fan-docker-ipam); `fan-client address gc --created-by` selects by it.
pub const LABEL_CREATED_BY: &str = "fan.io/created-by";
/// The value of [`LABEL_CREATED_BY`] on allocations `ADD` makes.
pub const CREATED_BY_CNI: &str = "cni";
/// The label holding the Kubernetes pod namespace (from `CNI_ARGS`).
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The label holding the Kubernetes pod name (from `CNI_ARGS`).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";

/// CNI error codes: the spec's well-known ones (below 100) and this
/// plugin's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration; the message names the key.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid or missing environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME`).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure (reading the configuration).
    pub const IO_FAILURE: u32 = 5;
    /// The configuration is not JSON.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is unreachable, or the fan network does not exist (yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// `STATUS`: the plugin cannot service `ADD` requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused the request; `details` carries its message and reason.
    pub const AGENT_ERROR: u32 = 100;
    /// The host's slice has no free address.
    pub const NO_FREE_ADDRESS: u32 = 101;
    /// `CHECK`: the allocation is missing or differs from `prevResult`.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: code, short message, optional details. Printed on stdout as
/// the spec's error JSON by [`CniError::to_json`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {code}){}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    /// The CNI error code (see [`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More detail, e.g. the agent's error line; may be empty.
    pub details: String,
}

impl CniError {
    /// An error without details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error structure for spec version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}

fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

// ---- commands and environment ---------------------------------------------

/// A CNI command (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Allocate an address.
    Add,
    /// Release the address.
    Del,
    /// Verify the address against `prevResult`.
    Check,
    /// Release addresses of attachments that are no longer valid (spec 1.1).
    Gc,
    /// Report whether `ADD` can be served (spec 1.1).
    Status,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// The oldest spec version whose configurations allow this command.
    pub fn min_version(&self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
            _ => "0.3.0",
        }
    }

    /// Whether the command acts on one attachment (needs a container id and
    /// an interface name).
    pub fn needs_attachment(&self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND {other:?}"),
                )
                .with_details("expected ADD, DEL, CHECK, GC, STATUS or VERSION"))
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        })
    }
}

/// What the runtime passed in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`; required for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// `CNI_IFNAME`; required for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_NETNS` (unused by IPAM, kept for messages).
    pub netns: Option<String>,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `lookup` (e.g.
    /// `|k| std::env::var(k).ok()`). Empty values count as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set"))?
            .parse::<Command>()?;
        let args = parse_cni_args(get("CNI_ARGS").as_deref().unwrap_or(""))?;
        let invocation = Invocation {
            command,
            container_id: get("CNI_CONTAINERID"),
            ifname: get("CNI_IFNAME"),
            netns: get("CNI_NETNS"),
            args,
        };
        if command.needs_attachment() {
            invocation.owner()?;
        }
        Ok(invocation)
    }

    /// The owner of this attachment: container id and interface name.
    pub fn owner(&self) -> Result<Owner, CniError> {
        let container_id = self.container_id.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_CONTAINERID is required for {}", self.command),
            )
        })?;
        let ifname = self.ifname.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_IFNAME is required for {}", self.command),
            )
        })?;
        if container_id.len() > 256 || !container_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "invalid CNI_CONTAINERID: expected 1 to 256 printable ASCII characters",
            ));
        }
        if ifname.len() > 15
            || ifname.contains(['/', ':'])
            || !ifname.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_IFNAME {ifname:?}: expected a Linux interface name (at most 15 characters)"),
            ));
        }
        Ok(Owner::with_interface(container_id, ifname))
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`). Empty parts are skipped; a part
/// without `=` is an error (code 4).
pub fn parse_cni_args(args: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for part in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_ARGS part {part:?}: expected KEY=VALUE"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

// ---- configuration ------------------------------------------------------------

/// One route of the result: destination and optional gateway (the slice
/// gateway when absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteConf {
    /// The destination network.
    pub dst: Ipv4Cidr,
    /// The next hop; `None` means the allocation's gateway.
    pub gw: Option<Ipv4Addr>,
}

/// The `ipam` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConf {
    /// The fan network id on this host.
    pub network: String,
    /// The agent target.
    pub agent: String,
    /// Routes replacing the default one; `None` means `0.0.0.0/0` via the gateway.
    pub routes: Option<Vec<RouteConf>>,
}

/// The parts of the network configuration this plugin reads.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`, the CNI network name.
    pub name: String,
    /// The `ipam` section.
    pub ipam: IpamConf,
    /// The main plugin's top-level `mtu`, when given.
    pub mtu: Option<u32>,
    /// `prevResult` (CHECK; optional for DEL).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC), also read from its early misspelling
    /// `cni.dev/attachments`.
    pub valid_attachments: Option<Vec<Owner>>,
    /// A specific address asked for through `runtimeConfig.ips` (capability
    /// `ips`) or `args.cni.ips`.
    pub requested: Option<Ipv4Addr>,
}

/// Parses a spec version `MAJOR.MINOR.PATCH`.
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(out)
}

/// Whether spec version `v` is at least `min` (false when `v` is not a version).
pub fn version_at_least(v: &str, min: &str) -> bool {
    match (parse_version(v), parse_version(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// The `cniVersion` of a configuration, for error output, when it names a
/// version this plugin speaks; else [`LATEST_VERSION`].
pub fn reply_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string())
}

const IPAM_KEYS: &[&str] = &["type", "network", "agent", "routes"];

/// Parses the network configuration from stdin for `command`.
pub fn parse_config(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let root: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not valid JSON",
        )
        .with_details(e.to_string())
    })?;
    let root = root.as_object().ok_or_else(|| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not a JSON object",
        )
    })?;

    let cni_version = match root.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err(invalid_config("cniVersion must be a string")),
        None => {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "the configuration has no cniVersion",
            ))
        }
    };
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {cni_version:?}"),
        )
        .with_details(format!(
            "fan-ipam supports {}",
            SUPPORTED_VERSIONS.join(", ")
        )));
    }
    if !version_at_least(&cni_version, command.min_version()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "configuration version {cni_version} does not allow {command} (needs {} or newer)",
                command.min_version()
            ),
        ));
    }
    let name = match root.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(invalid_config(
                "the configuration has no network name (\"name\")",
            ))
        }
    };
    let ipam = parse_ipam(root.get("ipam"))?;
    let mtu = match root.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|m| u32::try_from(m).ok()) {
            Some(0) => None,
            Some(m) => Some(m),
            None => return Err(invalid_config("mtu must be a positive integer")),
        },
    };
    let prev_result = match root.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid_config("prevResult must be an object")),
    };
    let valid_attachments = match root
        .get("cni.dev/valid-attachments")
        .or_else(|| root.get("cni.dev/attachments"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_attachments(v)?),
    };
    let requested = requested_address(root)?;
    Ok(NetConf {
        cni_version,
        name,
        ipam,
        mtu,
        prev_result,
        valid_attachments,
        requested,
    })
}

fn parse_ipam(ipam: Option<&Value>) -> Result<IpamConf, CniError> {
    let ipam = ipam
        .and_then(Value::as_object)
        .ok_or_else(|| invalid_config("the configuration has no \"ipam\" object"))?;
    if let Some(key) = ipam.keys().find(|k| !IPAM_KEYS.contains(&k.as_str())) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field \"ipam.{key}\""),
        )
        .with_details(format!("fan-ipam knows {}", IPAM_KEYS.join(", "))));
    }
    let network = match ipam.get("network") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        _ => {
            return Err(invalid_config(
                "ipam.network is required: the id of the fan network on this host",
            ))
        }
    };
    let agent = match ipam.get("agent") {
        None | Some(Value::Null) => DEFAULT_TARGET.to_string(),
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        Some(_) => {
            return Err(invalid_config(
                "ipam.agent must be a target string (unix:///run/fan/agent.sock)",
            ))
        }
    };
    Target::parse(&agent).map_err(|e| invalid_config(format!("ipam.agent: {e}")))?;
    let routes = match ipam.get("routes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, r)| parse_route(i, r))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(invalid_config("ipam.routes must be a list")),
    };
    Ok(IpamConf {
        network,
        agent,
        routes,
    })
}

fn parse_route(i: usize, r: &Value) -> Result<RouteConf, CniError> {
    let bad = |what: &str| invalid_config(format!("ipam.routes[{i}]: {what}"));
    let obj = r
        .as_object()
        .ok_or_else(|| bad("expected {\"dst\": CIDR, \"gw\": address}"))?;
    let dst = obj
        .get("dst")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("dst is required"))?;
    let dst: Ipv4Cidr = dst.parse().map_err(|_| {
        bad(&format!(
            "dst {dst:?} is not an IPv4 CIDR (fan is IPv4 only)"
        ))
    })?;
    let gw = match obj.get("gw") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) => Some(
            g.parse::<Ipv4Addr>()
                .map_err(|_| bad(&format!("gw {g:?} is not an IPv4 address")))?,
        ),
        Some(_) => return Err(bad("gw must be a string")),
    };
    Ok(RouteConf { dst, gw })
}

fn parse_attachments(v: &Value) -> Result<Vec<Owner>, CniError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid_config("cni.dev/valid-attachments must be a list"))?;
    items
        .iter()
        .map(|item| {
            let id = item.get("containerID").and_then(Value::as_str);
            let ifname = item.get("ifname").and_then(Value::as_str);
            match (id, ifname) {
                (Some(id), Some(ifname)) if !id.is_empty() && !ifname.is_empty() => {
                    Ok(Owner::with_interface(id, ifname))
                }
                _ => Err(invalid_config(
                    "every valid attachment needs a containerID and an ifname",
                )),
            }
        })
        .collect()
}

/// The one IPv4 address asked for by `runtimeConfig.ips` or `args.cni.ips`
/// (either may carry a prefix, which is ignored: the slice sets it).
fn requested_address(root: &Map<String, Value>) -> Result<Option<Ipv4Addr>, CniError> {
    let lists = [
        root.get("runtimeConfig").and_then(|r| r.get("ips")),
        root.get("args")
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips")),
    ];
    let mut found: Vec<Ipv4Addr> = Vec::new();
    for list in lists.into_iter().flatten() {
        let items = list
            .as_array()
            .ok_or_else(|| invalid_config("ips must be a list of addresses"))?;
        for item in items {
            let text = item
                .as_str()
                .ok_or_else(|| invalid_config("ips must be a list of addresses"))?;
            let addr = text.split('/').next().unwrap_or(text);
            let addr: Ipv4Addr = addr.parse().map_err(|_| {
                invalid_config(format!(
                    "requested address {text:?} is not IPv4 (fan is IPv4 only)"
                ))
            })?;
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(invalid_config(
            "more than one address requested; fan-ipam gives one IPv4 address per interface",
        )),
    }
}

/// The address asked for by `CNI_ARGS` `IP=` (podman's `--ip`, the
/// `static` plugin's convention; a prefix and further comma-separated
/// IPv6 addresses are ignored), merged with the one from the
/// configuration (`runtimeConfig.ips`, `args.cni.ips`): both may be given
/// but must agree.
pub fn requested_with_args(
    from_config: Option<Ipv4Addr>,
    args: &BTreeMap<String, String>,
) -> Result<Option<Ipv4Addr>, CniError> {
    let Some(text) = args.get("IP").filter(|v| !v.is_empty()) else {
        return Ok(from_config);
    };
    let mut v4 = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let addr = item.split('/').next().unwrap_or(item);
        match addr.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) if !v4.contains(&a) => v4.push(a),
            Ok(_) => {}
            Err(_) => {
                return Err(invalid_config(format!(
                    "CNI_ARGS IP={text:?}: {item:?} is not an IP address"
                )))
            }
        }
    }
    match (v4.as_slice(), from_config) {
        ([], c) => Ok(c),
        ([a], None) => Ok(Some(*a)),
        ([a], Some(c)) if *a == c => Ok(Some(c)),
        ([a], Some(c)) => Err(invalid_config(format!(
            "CNI_ARGS IP={a} and the configuration's ips ({c}) ask for different addresses"
        ))),
        _ => Err(invalid_config(format!(
            "CNI_ARGS IP={text:?} asks for more than one IPv4 address; fan-ipam gives one per interface"
        ))),
    }
}

/// [`parse_config`], with the agent from `FAN_AGENT` (through `lookup`)
/// when `ipam.agent` is not configured, as `fan-client` does.
pub fn parse_config_env(
    stdin: &[u8],
    command: Command,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<NetConf, CniError> {
    let mut conf = parse_config(stdin, command)?;
    let configured = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("ipam").and_then(|i| i.get("agent")).cloned())
        .is_some_and(|a| !a.is_null());
    if !configured {
        if let Some(agent) = lookup("FAN_AGENT").filter(|a| !a.is_empty()) {
            Target::parse(&agent).map_err(|e| invalid_config(format!("FAN_AGENT: {e}")))?;
            conf.ipam.agent = agent;
        }
    }
    Ok(conf)
}

// ---- results -------------------------------------------------------------------

/// What `ADD` reports for one allocation: address with prefix, gateway and
/// routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamAnswer {
    /// The address with the slice prefix.
    pub address: Ipv4Cidr,
    /// The slice gateway (the agent's bridge address).
    pub gateway: Ipv4Addr,
    /// The routes for the container.
    pub routes: Vec<RouteConf>,
}

impl IpamAnswer {
    /// The answer for an allocated `address`/`gateway` with the configured
    /// routes (`None`: the default route through the gateway).
    pub fn new(address: Ipv4Cidr, gateway: Ipv4Addr, routes: Option<&[RouteConf]>) -> Self {
        let routes = match routes {
            Some(r) => r.to_vec(),
            None => vec![RouteConf {
                dst: Ipv4Cidr {
                    address: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                },
                gw: Some(gateway),
            }],
        };
        Self {
            address,
            gateway,
            routes,
        }
    }

    /// The IPAM result for spec version `cni_version`: 1.x without, 0.3/0.4
    /// with the `"version": "4"` of each IP. IPAM results have no
    /// interfaces; the main plugin adds them.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut ip = json!({
            "address": self.address.to_string(),
            "gateway": self.gateway.to_string(),
        });
        if !version_at_least(cni_version, "1.0.0") {
            ip["version"] = Value::String("4".into());
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                json!({
                    "dst": format!("{}/{}", r.dst.network(), r.dst.prefix),
                    "gw": r.gw.unwrap_or(self.gateway).to_string(),
                })
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "ips": [ip],
            "routes": routes,
        })
    }
}

/// The `VERSION` answer.
pub fn version_json() -> Value {
    json!({
        "cniVersion": LATEST_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// What goes into a CNI network configuration list for a fan network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflistOptions {
    /// The CNI network name (`name` of the list).
    pub name: String,
    /// The `cniVersion` of the list. `1.0.0` works with every plugin
    /// release since 1.0; `1.1.0` (GC, STATUS) needs main plugins that
    /// speak spec 1.1.0 (`CNI_COMMAND=VERSION bridge` lists it).
    pub cni_version: String,
    /// The fan network id.
    pub network: String,
    /// The agent target fan-ipam connects to.
    pub agent: String,
    /// The fan bridge, as the agent reports it (`fan-250`).
    pub bridge: String,
    /// The fan network's MTU, as the agent reports it.
    pub mtu: u32,
    /// Append the `portmap` plugin (host ports, `hostPort` of pods).
    pub portmap: bool,
}

/// The configuration list: the `bridge` plugin on the agent's bridge with
/// fan-ipam, optionally followed by `portmap`. The bridge plugin must not
/// be the gateway (the agent owns the bridge address) nor masquerade (the
/// agent does, and never between overlay addresses); its `mtu` is the fan
/// network's.
pub fn conflist(o: &ConflistOptions) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": o.bridge,
        "isGateway": false,
        "isDefaultGateway": false,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": o.mtu,
        // podman --ip, Kubernetes static IPs: runtimeConfig.ips reaches fan-ipam.
        "capabilities": {"ips": true},
        "ipam": {"type": "fan-ipam", "network": o.network, "agent": o.agent},
    })];
    if o.portmap {
        plugins.push(json!({
            "type": "portmap",
            "capabilities": {"portMappings": true},
        }));
    }
    json!({
        "cniVersion": o.cni_version,
        "name": o.name,
        "plugins": plugins,
    })
}

/// `CHECK`: whether `prev_result` holds the allocation `address` with its
/// `gateway`. A gateway in `prevResult` must match; a missing one is fine.
pub fn check_prev_result(
    prev_result: &Value,
    address: Ipv4Cidr,
    gateway: Ipv4Addr,
) -> Result<(), CniError> {
    let ips = prev_result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            CniError::new(code::CHECK_FAILED, "prevResult has no ips")
                .with_details(format!("the agent has {address} for this attachment"))
        })?;
    let wanted = address.to_string();
    let entry = ips
        .iter()
        .find(|ip| ip.get("address").and_then(Value::as_str) == Some(wanted.as_str()))
        .ok_or_else(|| {
            let listed: Vec<&str> = ips
                .iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .collect();
            CniError::new(
                code::CHECK_FAILED,
                format!("the agent's allocation {wanted} is not in prevResult"),
            )
            .with_details(format!("prevResult has [{}]", listed.join(", ")))
        })?;
    match entry.get("gateway").and_then(Value::as_str) {
        Some(gw) if gw != gateway.to_string() => Err(CniError::new(
            code::CHECK_FAILED,
            format!("prevResult gives {wanted} the gateway {gw}, the agent {gateway}"),
        )),
        _ => Ok(()),
    }
}

/// The labels `ADD` stores with an allocation: the CNI network name, and the
/// pod's namespace and name when the runtime passed them in `CNI_ARGS`.
pub fn allocation_labels(
    conf: &NetConf,
    args: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_CNI_NETWORK.to_string(), truncate(&conf.name));
    labels.insert(LABEL_CREATED_BY.to_string(), CREATED_BY_CNI.to_string());
    for (arg, label) in [
        ("K8S_POD_NAMESPACE", LABEL_POD_NAMESPACE),
        ("K8S_POD_NAME", LABEL_POD_NAME),
    ] {
        if let Some(v) = args.get(arg).filter(|v| !v.is_empty()) {
            labels.insert(label.to_string(), truncate(v));
        }
    }
    labels
}

/// Label values are at most 256 characters, without control characters.
fn truncate(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// Maps an agent error to a CNI error. Unreachable agents (no socket, a
/// broken connection, a timeout, an agent shutting down) are "try again
/// later"; a full slice is [`code::NO_FREE_ADDRESS`]; a refused argument
/// is an invalid configuration; anything else is [`code::AGENT_ERROR`].
/// `doing` says what was attempted ("allocate an address in \"fan\"").
pub fn agent_error(err: &Error, doing: &str) -> CniError {
    use fan_client::Code;
    let details = err.to_string();
    let (code, msg) = match err {
        Error::InvalidTarget { .. } | Error::TlsUnsupported { .. } => (
            code::INVALID_CONFIG,
            format!("invalid ipam.agent, cannot {doing}"),
        ),
        _ if err.is_unreachable()
            || matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded) =>
        {
            (
                code::TRY_AGAIN_LATER,
                format!("the fan agent is unreachable, cannot {doing}"),
            )
        }
        _ => match err.code() {
            Code::ResourceExhausted => (
                code::NO_FREE_ADDRESS,
                format!("no free address, cannot {doing}"),
            ),
            Code::InvalidArgument => (
                code::INVALID_CONFIG,
                format!("the agent refused to {doing}"),
            ),
            _ => (code::AGENT_ERROR, format!("the agent failed to {doing}")),
        },
    };
    CniError::new(code, msg).with_details(details)
}

// ---- running a command ---------------------------------------------------------

/// What the plugin process prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// For stdout (a result, the version answer or an error); may be empty.
    pub stdout: String,
    /// Lines for stderr (warnings, a summary of GC).
    pub stderr: Vec<String>,
    /// 0 on success, 1 with an error on stdout.
    pub exit_code: u8,
}

impl Outcome {
    fn ok(stdout: Option<Value>, stderr: Vec<String>) -> Self {
        Self {
            stdout: stdout.map(|v| v.to_string()).unwrap_or_default(),
            stderr,
            exit_code: 0,
        }
    }

    /// The outcome of a failure: the error JSON on stdout, exit 1.
    pub fn error(err: &CniError, cni_version: &str) -> Self {
        Self {
            stdout: err.to_json(cni_version).to_string(),
            stderr: Vec::new(),
            exit_code: 1,
        }
    }
}

/// Timeouts of the agent calls: short enough that a runtime's own deadline
/// (minutes) is never what ends a call.
fn connect_options() -> ConnectOptions {
    ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10))
}

/// Runs one plugin invocation: the environment through `lookup`, the
/// network configuration in `stdin`.
pub async fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version = reply_version(stdin);
    let invocation = match Invocation::from_env(&lookup) {
        Ok(i) => i,
        Err(e) => return Outcome::error(&e, &version),
    };
    if invocation.command == Command::Version {
        return Outcome::ok(Some(version_json()), Vec::new());
    }
    let conf = match parse_config_env(stdin, invocation.command, &lookup) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, &version),
    };
    let mut stderr = Vec::new();
    match execute(&invocation, &conf, &mut stderr).await {
        Ok(stdout) => Outcome::ok(stdout, stderr),
        Err(e) => {
            let mut out = Outcome::error(&e, &conf.cni_version);
            out.stderr = stderr;
            out
        }
    }
}

async fn connect(conf: &NetConf, doing: &str) -> Result<FanClient, CniError> {
    FanClient::connect_with(&conf.ipam.agent, connect_options())
        .await
        .map_err(|e| agent_error(&e, doing))
}

async fn execute(
    inv: &Invocation,
    conf: &NetConf,
    stderr: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let network = conf.ipam.network.as_str();
    match inv.command {
        Command::Version => Ok(Some(version_json())),
        Command::Add => add(inv, conf, stderr).await.map(Some),
        Command::Del => {
            let owner = inv.owner()?;
            let doing = format!("release the address of {owner} in {network:?}");
            let client = connect(conf, &doing).await?;
            match client
                .release_address(network, &Selector::Owner(owner), true)
                .await
            {
                Ok(_) => Ok(None),
                // The network is gone (deleted with --force, or never
                // created): nothing is allocated, which is what DEL wants.
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(agent_error(&e, &doing)),
            }
        }
        Command::Check => {
            let owner = inv.owner()?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| invalid_config("CHECK needs prevResult in the configuration"))?;
            let doing = format!("read the allocation of {owner} in {network:?}");
            let client = connect(conf, &doing).await?;
            let allocation = client
                .get_allocation(network, &Selector::Owner(owner.clone()))
                .await
                .map_err(|e| {
                    if e.is_not_found() {
                        CniError::new(
                            code::CHECK_FAILED,
                            format!("{owner} has no address in fan network {network:?}"),
                        )
                        .with_details(e.to_string())
                    } else {
                        agent_error(&e, &doing)
                    }
                })?;
            check_prev_result(prev, allocation.cidr(), allocation.gateway)?;
            if let Some(mtu) = conf.mtu.filter(|m| *m > allocation.mtu) {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    format!(
                        "the configured mtu {mtu} exceeds the fan network's MTU {}",
                        allocation.mtu
                    ),
                ));
            }
            Ok(None)
        }
        Command::Gc => gc(conf, stderr).await.map(|()| None),
        Command::Status => {
            let not_available = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
            let client = FanClient::connect_with(&conf.ipam.agent, connect_options())
                .await
                .map_err(|e| {
                    not_available(format!(
                        "the fan agent at {} is unreachable",
                        conf.ipam.agent
                    ))
                    .with_details(e.to_string())
                })?;
            let net = client.get_network(network).await.map_err(|e| {
                let msg = if e.is_not_found() {
                    format!("fan network {network:?} does not exist on this host")
                } else {
                    format!("cannot read fan network {network:?}")
                };
                not_available(msg).with_details(e.to_string())
            })?;
            if net.status.state != NetworkState::Ready {
                return Err(not_available(format!(
                    "fan network {network:?} is {}",
                    net.status.state
                ))
                .with_details(net.status.reason));
            }
            Ok(None)
        }
    }
}

async fn add(
    inv: &Invocation,
    conf: &NetConf,
    stderr: &mut Vec<String>,
) -> Result<Value, CniError> {
    let owner = inv.owner()?;
    let network = conf.ipam.network.as_str();
    let doing = format!("allocate an address for {owner} in {network:?}");
    let client = connect(conf, &doing).await?;
    let missing_network = |e: &Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("fan network {network:?} does not exist on this host (yet)"),
        )
        .with_details(format!(
            "{e}; create it with `fan-client network create {network} …`, or fix ipam.network"
        ))
    };
    match conf.mtu {
        Some(mtu) => {
            let net = client.get_network(network).await.map_err(|e| {
                if e.is_not_found() {
                    missing_network(&e)
                } else {
                    agent_error(&e, &doing)
                }
            })?;
            if mtu > net.status.mtu && net.status.mtu > 0 {
                return Err(invalid_config(format!(
                    "mtu {mtu} is larger than the MTU {} of fan network {network:?}",
                    net.status.mtu
                ))
                .with_details(format!(
                    "set \"mtu\": {} in the main plugin's configuration; larger packets would be dropped on the underlay",
                    net.status.mtu
                )));
            }
        }
        None => stderr.push(format!(
            "fan-ipam: warning: the configuration sets no \"mtu\"; the container interface should use the fan network's MTU (see `fan-client network show {network}`)"
        )),
    }
    let mut request = AllocationRequest::new(owner);
    request.address = requested_with_args(conf.requested, &inv.args)?;
    request.labels = allocation_labels(conf, &inv.args);
    let allocation = client
        .allocate_address(network, &request)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                missing_network(&e)
            } else {
                agent_error(&e, &doing)
            }
        })?;
    Ok(IpamAnswer::new(
        allocation.cidr(),
        allocation.gateway,
        conf.ipam.routes.as_deref(),
    )
    .to_json(&conf.cni_version))
}

async fn gc(conf: &NetConf, stderr: &mut Vec<String>) -> Result<(), CniError> {
    let network = conf.ipam.network.as_str();
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| invalid_config("GC needs cni.dev/valid-attachments in the configuration"))?;
    let doing = format!("collect stale allocations in {network:?}");
    let client = connect(conf, &doing).await?;
    // A dry run lists every allocation of the fan network whose owner is not
    // valid; only those this CNI network made are released (the fan network
    // may also hold addresses of other CNI networks or of fan-client users,
    // which this runtime knows nothing about).
    let stale = match client
        .garbage_collect_allocations(network, valid, true)
        .await
    {
        Ok(stale) => stale,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(agent_error(&e, &doing)),
    };
    let mine: BTreeSet<Owner> = stale
        .into_iter()
        .filter(|a| a.labels.get(LABEL_CNI_NETWORK) == Some(&truncate(&conf.name)))
        .map(|a| a.owner)
        .collect();
    let mut first_error = None;
    let mut released = 0;
    for owner in mine {
        match client
            .release_address(network, &Selector::Owner(owner.clone()), true)
            .await
        {
            Ok(Some(a)) => {
                released += 1;
                stderr.push(format!("fan-ipam: GC released {} of {owner}", a.address));
            }
            Ok(None) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                stderr.push(format!("fan-ipam: GC could not release {owner}: {e}"));
                first_error.get_or_insert_with(|| agent_error(&e, &doing));
            }
        }
    }
    stderr.push(format!(
        "fan-ipam: GC of {network:?} for CNI network {:?}: {released} released",
        conf.name
    ));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn conf(extra: Value) -> Vec<u8> {
        let mut base = json!({
            "cniVersion": "1.0.0",
            "name": "fan",
            "type": "bridge",
            "bridge": "fan-250",
            "mtu": 1480,
            "ipam": {"type": "fan-ipam", "network": "fan"},
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&base).unwrap()
    }

    fn err_code(r: Result<NetConf, CniError>) -> u32 {
        r.expect_err("should fail").code
    }

    #[test]
    fn commands_parse_and_gate_by_version() {
        for (s, c) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
            ("VERSION", Command::Version),
        ] {
            assert_eq!(s.parse::<Command>().unwrap(), c);
            assert_eq!(c.to_string(), s);
        }
        assert_eq!("add".parse::<Command>().unwrap_err().code, 4);
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(!version_at_least("1.0", "0.3.0"));
        let old = conf(json!({"cniVersion": "0.3.1"}));
        assert_eq!(err_code(parse_config(&old, Command::Check)), 1);
        assert!(parse_config(&old, Command::Add).is_ok());
        let v100 = conf(json!({}));
        assert_eq!(err_code(parse_config(&v100, Command::Gc)), 1);
        assert_eq!(err_code(parse_config(&v100, Command::Status)), 1);
    }

    #[test]
    fn environment() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            ),
        ]))
        .unwrap();
        assert_eq!(
            inv.owner().unwrap(),
            Owner::with_interface("abc123", "eth0")
        );
        assert_eq!(inv.args["K8S_POD_NAME"], "web-0");

        let missing = |pairs: &[(&str, &str)]| Invocation::from_env(env(pairs)).unwrap_err();
        assert_eq!(missing(&[]).code, 4);
        assert_eq!(
            missing(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).code,
            4
        );
        assert_eq!(
            missing(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")]).code,
            4
        );
        assert_eq!(
            missing(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "a-very-long-interface-name")
            ])
            .code,
            4
        );
        assert_eq!(
            missing(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "has space"),
                ("CNI_IFNAME", "eth0")
            ])
            .code,
            4
        );
        assert_eq!(
            missing(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "novalue")]).code,
            4
        );
        // GC, STATUS and VERSION need no attachment.
        for c in ["GC", "STATUS", "VERSION"] {
            assert!(Invocation::from_env(env(&[("CNI_COMMAND", c)])).is_ok());
        }
    }

    #[test]
    fn config_defaults_and_fields() {
        let c = parse_config(&conf(json!({})), Command::Add).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "fan");
        assert_eq!(c.ipam.network, "fan");
        assert_eq!(c.ipam.agent, DEFAULT_TARGET);
        assert_eq!(c.ipam.routes, None);
        assert_eq!(c.mtu, Some(1480));
        assert_eq!(c.requested, None);
        assert_eq!(c.valid_attachments, None);

        let c = parse_config(
            &conf(json!({
                "cniVersion": "1.1.0",
                "mtu": 0,
                "ipam": {"type": "fan-ipam", "network": "fan-250", "agent": "unix:///tmp/a.sock",
                         "routes": [{"dst": "250.0.0.0/8"}, {"dst": "10.0.0.0/8", "gw": "250.0.28.254"}]},
                "runtimeConfig": {"ips": ["250.0.28.9/24"]},
                "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
                "prevResult": {"ips": []},
            })),
            Command::Gc,
        )
        .unwrap();
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam.agent, "unix:///tmp/a.sock");
        let routes = c.ipam.routes.unwrap();
        assert_eq!(routes[0].dst.to_string(), "250.0.0.0/8");
        assert_eq!(routes[1].gw, Some(Ipv4Addr::new(250, 0, 28, 254)));
        assert_eq!(c.requested, Some(Ipv4Addr::new(250, 0, 28, 9)));
        assert_eq!(c.valid_attachments.unwrap(), vec![Owner::new("c1")]);
        assert!(c.prev_result.is_some());

        // The early misspelling libcni also sends.
        let c = parse_config(
            &conf(json!({"cniVersion": "1.1.0", "cni.dev/attachments": [{"containerID": "c", "ifname": "net1"}]})),
            Command::Gc,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![Owner::with_interface("c", "net1")]
        );
        let c = parse_config(
            &conf(json!({"args": {"cni": {"ips": ["250.0.28.7"]}}})),
            Command::Add,
        )
        .unwrap();
        assert_eq!(c.requested, Some(Ipv4Addr::new(250, 0, 28, 7)));
    }

    #[test]
    fn config_errors_have_spec_codes() {
        let parse = |v: Value| parse_config(&conf(v), Command::Add);
        assert_eq!(err_code(parse_config(b"{not json", Command::Add)), 6);
        assert_eq!(err_code(parse_config(b"[1]", Command::Add)), 6);
        assert_eq!(err_code(parse(json!({"cniVersion": "9.9.9"}))), 1);
        assert_eq!(err_code(parse(json!({"cniVersion": "0.2.0"}))), 1);
        assert_eq!(err_code(parse(json!({"cniVersion": null}))), 7);
        assert_eq!(err_code(parse(json!({"name": ""}))), 7);
        assert_eq!(err_code(parse(json!({"ipam": null}))), 7);
        assert_eq!(err_code(parse(json!({"ipam": {"type": "fan-ipam"}}))), 7);
        let e = parse(json!({"ipam": {"type": "fan-ipam", "network": "fan", "netwrok": "x"}}))
            .unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains("ipam.netwrok"), "{e}");
        assert_eq!(
            err_code(parse(
                json!({"ipam": {"type": "fan-ipam", "network": "fan", "agent": "ftp://x"}})
            )),
            7
        );
        assert_eq!(
            err_code(parse(
                json!({"ipam": {"type": "fan-ipam", "network": "fan", "routes": [{"dst": "fd00::/8"}]}})
            )),
            7
        );
        assert_eq!(err_code(parse(json!({"mtu": "big"}))), 7);
        assert_eq!(
            err_code(parse(json!({"runtimeConfig": {"ips": ["fd00::5/64"]}}))),
            7
        );
        assert_eq!(
            err_code(parse(
                json!({"runtimeConfig": {"ips": ["250.0.28.5", "250.0.28.6"]}})
            )),
            7
        );
        assert_eq!(
            err_code(parse_config(
                &conf(
                    json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "c"}]})
                ),
                Command::Gc
            )),
            7
        );
        // The version of the error reply: the configuration's when supported.
        assert_eq!(
            reply_version(&conf(json!({"cniVersion": "0.4.0"}))),
            "0.4.0"
        );
        assert_eq!(
            reply_version(&conf(json!({"cniVersion": "7.0.0"}))),
            LATEST_VERSION
        );
        assert_eq!(reply_version(b""), LATEST_VERSION);
    }

    #[test]
    fn add_result_per_version() {
        let address: Ipv4Cidr = "250.0.28.2/24".parse().unwrap();
        let gw = Ipv4Addr::new(250, 0, 28, 1);
        let answer = IpamAnswer::new(address, gw, None);
        assert_eq!(
            answer.to_json("1.0.0"),
            json!({
                "cniVersion": "1.0.0",
                "ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "250.0.28.1"}],
            })
        );
        assert_eq!(
            answer.to_json("0.4.0")["ips"][0],
            json!({"version": "4", "address": "250.0.28.2/24", "gateway": "250.0.28.1"})
        );
        let routes = [
            RouteConf {
                dst: "250.0.0.0/8".parse().unwrap(),
                gw: None,
            },
            RouteConf {
                dst: "10.1.2.3/8".parse().unwrap(),
                gw: Some(Ipv4Addr::new(250, 0, 28, 254)),
            },
        ];
        let answer = IpamAnswer::new(address, gw, Some(&routes));
        assert_eq!(
            answer.to_json("1.1.0")["routes"],
            json!([
                {"dst": "250.0.0.0/8", "gw": "250.0.28.1"},
                {"dst": "10.0.0.0/8", "gw": "250.0.28.254"},
            ])
        );
        assert_eq!(
            IpamAnswer::new(address, gw, Some(&[])).to_json("1.0.0")["routes"],
            json!([])
        );
    }

    #[test]
    fn version_and_error_json() {
        let v = version_json();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let e = CniError::new(11, "the fan agent is unreachable");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "the fan agent is unreachable"})
        );
        let e = e.with_details("no socket");
        assert_eq!(e.to_json("1.0.0")["details"], "no socket");
        assert_eq!(
            e.to_string(),
            "the fan agent is unreachable (CNI error 11): no socket"
        );
    }

    #[test]
    fn conflist_uses_the_agents_bridge_and_mtu() {
        let mut o = ConflistOptions {
            name: "fan".into(),
            cni_version: "1.0.0".into(),
            network: "fan".into(),
            agent: DEFAULT_TARGET.into(),
            bridge: "fan-250".into(),
            mtu: 1430,
            portmap: true,
        };
        let v = conflist(&o);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "fan");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "fan-250");
        assert_eq!(bridge["mtu"], 1430);
        assert_eq!(bridge["isGateway"], false);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(
            bridge["ipam"],
            json!({"type": "fan-ipam", "network": "fan", "agent": "unix:///run/fan/agent.sock"})
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
        o.portmap = false;
        assert_eq!(conflist(&o)["plugins"].as_array().unwrap().len(), 1);
        // What the bridge plugin is given parses as fan-ipam's configuration.
        let mut plugin = bridge.clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        let c = parse_config(plugin.to_string().as_bytes(), Command::Add).unwrap();
        assert_eq!((c.mtu, c.ipam.network.as_str()), (Some(1430), "fan"));
    }

    #[test]
    fn check_compares_address_and_gateway() {
        let address: Ipv4Cidr = "250.0.28.2/24".parse().unwrap();
        let gw = Ipv4Addr::new(250, 0, 28, 1);
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/c"}],
            "ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.1", "interface": 0}],
        });
        assert!(check_prev_result(&prev, address, gw).is_ok());
        let no_gw = json!({"ips": [{"address": "250.0.28.2/24"}]});
        assert!(check_prev_result(&no_gw, address, gw).is_ok());
        let other = json!({"ips": [{"address": "250.0.28.3/24", "gateway": "250.0.28.1"}]});
        let e = check_prev_result(&other, address, gw).unwrap_err();
        assert_eq!(e.code, code::CHECK_FAILED);
        assert!(e.details.contains("250.0.28.3/24"), "{e}");
        let prefix = json!({"ips": [{"address": "250.0.28.2/16"}]});
        assert!(check_prev_result(&prefix, address, gw).is_err());
        let bad_gw = json!({"ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.254"}]});
        assert!(check_prev_result(&bad_gw, address, gw).is_err());
        assert!(check_prev_result(&json!({}), address, gw).is_err());
    }

    #[test]
    fn requested_address_from_cni_args() {
        let args = |v: &str| BTreeMap::from([("IP".to_string(), v.to_string())]);
        let a = Ipv4Addr::new(250, 0, 28, 200);
        assert_eq!(requested_with_args(None, &BTreeMap::new()).unwrap(), None);
        assert_eq!(
            requested_with_args(Some(a), &BTreeMap::new()).unwrap(),
            Some(a)
        );
        assert_eq!(
            requested_with_args(None, &args("250.0.28.200")).unwrap(),
            Some(a)
        );
        assert_eq!(
            requested_with_args(None, &args("250.0.28.200/24,fd00::5")).unwrap(),
            Some(a)
        );
        assert_eq!(
            requested_with_args(Some(a), &args("250.0.28.200")).unwrap(),
            Some(a)
        );
        let e = requested_with_args(Some(Ipv4Addr::new(250, 0, 28, 9)), &args("250.0.28.200"))
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("different addresses"), "{}", e.msg);
        let e = requested_with_args(None, &args("nope")).unwrap_err();
        assert!(e.msg.contains("\"nope\" is not an IP address"), "{}", e.msg);
        let e = requested_with_args(None, &args("250.0.28.2,250.0.28.3")).unwrap_err();
        assert!(e.msg.contains("more than one"), "{}", e.msg);
    }

    #[test]
    fn agent_from_fan_agent_unless_configured() {
        let lookup = |k: &str| (k == "FAN_AGENT").then(|| "unix:///tmp/other.sock".to_string());
        let c = parse_config_env(&conf(json!({})), Command::Add, lookup).unwrap();
        assert_eq!(c.ipam.agent, "unix:///tmp/other.sock");
        let mut v: Value = serde_json::from_slice(&conf(json!({}))).unwrap();
        v["ipam"]["agent"] = json!("unix:///run/x.sock");
        let c = parse_config_env(v.to_string().as_bytes(), Command::Add, lookup).unwrap();
        assert_eq!(c.ipam.agent, "unix:///run/x.sock");
        let bad = |k: &str| (k == "FAN_AGENT").then(|| "ftp://x".to_string());
        let e = parse_config_env(&conf(json!({})), Command::Add, bad).unwrap_err();
        assert!(e.msg.starts_with("FAN_AGENT:"), "{}", e.msg);
    }

    #[test]
    fn labels_from_name_and_pod_args() {
        let c = parse_config(&conf(json!({"name": "k8s-pod-network"})), Command::Add).unwrap();
        let args =
            parse_cni_args("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;IgnoreUnknown=1")
                .unwrap();
        let labels = allocation_labels(&c, &args);
        assert_eq!(labels.len(), 4);
        assert_eq!(labels[LABEL_CNI_NETWORK], "k8s-pod-network");
        assert_eq!(labels[LABEL_CREATED_BY], CREATED_BY_CNI);
        assert_eq!(labels[LABEL_POD_NAMESPACE], "kube-system");
        assert_eq!(labels[LABEL_POD_NAME], "dns-1");
        assert_eq!(allocation_labels(&c, &BTreeMap::new()).len(), 2);
    }

    #[test]
    fn agent_errors_map_to_cni_codes() {
        use tonic::Code;
        let rpc = |code: Code, reason: &str| Error::Rpc {
            code,
            message: "m".into(),
            reason: Some(reason.into()),
            domain: String::new(),
            metadata: BTreeMap::new(),
            details: Default::default(),
        };
        let unreachable = Error::Connect {
            target: "unix:///run/fan/agent.sock".into(),
            detail: "No such file or directory (os error 2)".into(),
        };
        let e = agent_error(&unreachable, "allocate");
        assert_eq!(e.code, 11);
        assert!(e.details.contains("AGENT_UNREACHABLE"), "{e}");
        assert_eq!(
            agent_error(
                &Error::Timeout {
                    after: Duration::from_secs(1)
                },
                "x"
            )
            .code,
            11
        );
        assert_eq!(
            agent_error(&rpc(Code::Unavailable, "SHUTTING_DOWN"), "x").code,
            11
        );
        assert_eq!(
            agent_error(&rpc(Code::ResourceExhausted, "SLICE_EXHAUSTED"), "x").code,
            101
        );
        assert_eq!(
            agent_error(&rpc(Code::InvalidArgument, "FIELD_INVALID"), "x").code,
            7
        );
        let e = agent_error(&rpc(Code::Internal, "STATE_STORE_FAILED"), "x");
        assert_eq!(e.code, 100);
        assert_eq!(e.details, "m (STATE_STORE_FAILED)");
    }

    #[tokio::test]
    async fn run_version_and_early_errors_need_no_agent() {
        let out = run(
            env(&[("CNI_COMMAND", "VERSION")]),
            b"{\"cniVersion\":\"1.0.0\"}",
        )
        .await;
        assert_eq!(out.exit_code, 0);
        assert_eq!(
            serde_json::from_str::<Value>(&out.stdout).unwrap(),
            version_json()
        );

        let out = run(env(&[]), b"").await;
        assert_eq!(out.exit_code, 1);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], LATEST_VERSION);

        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let out = run(
            env(&add),
            &conf(json!({"cniVersion": "0.4.0", "ipam": {"type": "fan-ipam"}})),
        )
        .await;
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            (out.exit_code, v["code"].as_u64(), v["cniVersion"].as_str()),
            (1, Some(7), Some("0.4.0"))
        );

        // An agent that is not there: ADD says "try again later", STATUS "not available".
        let dir = tempfile::tempdir().unwrap();
        let target = format!("unix://{}/none.sock", dir.path().display());
        let cfg = conf(
            json!({"cniVersion": "1.1.0", "ipam": {"type": "fan-ipam", "network": "fan", "agent": target}}),
        );
        let out = run(env(&add), &cfg).await;
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!((out.exit_code, v["code"].as_u64()), (1, Some(11)), "{v}");
        let out = run(env(&[("CNI_COMMAND", "STATUS")]), &cfg).await;
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!((out.exit_code, v["code"].as_u64()), (1, Some(50)), "{v}");
    }
}
