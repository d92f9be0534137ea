//! The plugin's input: the environment the runtime sets (`CNI_*`) and the
//! network configuration on stdin (the `ipam` section, `prevResult`,
//! `runtimeConfig`, `args`). Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use fan_client::{Ipv4Cidr, Owner, Target, DEFAULT_TARGET};
use fan_core::names;

use super::*;

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
        // The agent's own rules (fan-core), so what passes here is what the
        // agent accepts.
        names::validate_container_id(container_id).map_err(|e| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_CONTAINERID: {e}"),
            )
        })?;
        names::validate_device_name(ifname).map_err(|e| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("invalid CNI_IFNAME: {e}"),
            )
        })?;
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

// ---- configuration -------------------------------------------------------------

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

/// The network configuration on stdin as JSON (error 6 when it is not).
pub fn config_json(stdin: &[u8]) -> Result<Value, CniError> {
    serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not valid JSON",
        )
        .with_details(e.to_string())
    })
}

/// Parses the network configuration from stdin for `command`.
pub fn parse_config(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let root = config_json(stdin)?;
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
