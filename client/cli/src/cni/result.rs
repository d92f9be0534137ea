//! The plugin's output: the `ADD` result per spec version, the `VERSION`
//! answer, the `CHECK` comparison with `prevResult`, the labels an
//! allocation gets and the mapping of agent errors to CNI codes. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use fan_client::{Error, Ipv4Cidr};

use super::*;

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
pub(super) fn truncate(v: &str) -> String {
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
