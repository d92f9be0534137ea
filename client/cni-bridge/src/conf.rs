//! The plugin's configuration, the names it gives and the result it prints.
//! Pure.

use std::net::Ipv4Addr;

use fan_cli::cni::{config_json, invalid_config as invalid, CniError};
use fan_core::names::validate_device_name;
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

/// Which pair of devices links the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// netkit where the kernel has it, else veth.
    Auto,
    /// netkit, or fail.
    Netkit,
    /// veth.
    Veth,
}

/// The keys `fan-bridge` reads from the network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// `bridge`: the fan network's bridge.
    pub bridge: String,
    /// `mtu`: for both ends; `None` takes the bridge's.
    pub mtu: Option<u32>,
    /// `link`.
    pub link: LinkKind,
    /// `ipam.type`: the IPAM plugin's executable in `CNI_PATH`.
    pub ipam_type: String,
    /// `prevResult` (CHECK), when it is an object.
    pub prev_result: Option<Value>,
}

/// Reads the configuration on stdin.
pub fn parse(stdin: &[u8]) -> Result<BridgeConf, CniError> {
    let v = config_json(stdin)?;
    let text = |key: &str| v.get(key).and_then(Value::as_str);
    let cni_version = text("cniVersion")
        .ok_or_else(|| invalid("cniVersion: required, a string"))?
        .to_string();
    let bridge =
        text("bridge").ok_or_else(|| invalid("bridge: required, the fan network's bridge"))?;
    validate_device_name(bridge).map_err(|e| invalid(format!("bridge: {e}")))?;
    let bridge = bridge.to_string();
    let mtu = match v.get("mtu") {
        None | Some(Value::Null) => None,
        Some(m) => Some(
            m.as_u64()
                .filter(|m| (68..=65535).contains(m))
                .ok_or_else(|| invalid("mtu: an integer from 68 to 65535"))? as u32,
        ),
    };
    let link = match text("link") {
        None | Some("auto") => LinkKind::Auto,
        Some("netkit") => LinkKind::Netkit,
        Some("veth") => LinkKind::Veth,
        Some(other) => {
            return Err(invalid(format!(
                "link: {other:?}; expected auto, netkit or veth"
            )))
        }
    };
    let ipam_type = v
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| invalid("ipam.type: required, the IPAM plugin's name (no '/')"))?
        .to_string();
    Ok(BridgeConf {
        cni_version,
        bridge,
        mtu,
        link,
        ipam_type,
        prev_result: v.get("prevResult").filter(|p| p.is_object()).cloned(),
    })
}

/// FNV-1a (64 bits) of the attachment (container id, interface).
fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The host's end of the pair for (container id, interface): `fan` and 8
/// hex digits of their hash; the same for every command.
pub fn host_name(container_id: &str, ifname: &str) -> String {
    let hash = attachment_hash(container_id, ifname);
    format!("fan{:08x}", (hash ^ (hash >> 32)) as u32)
}

/// The ifalias that marks the host's end as this attachment's: 32 bits of
/// name can collide between attachments, the alias tells them apart
/// (`fan-bridge:<id>/<ifname>`; the 64-bit hash instead of an id too long
/// for the kernel's 255 bytes).
pub fn host_alias(container_id: &str, ifname: &str) -> String {
    let full = format!("fan-bridge:{container_id}/{ifname}");
    if full.len() <= 255 {
        full
    } else {
        format!(
            "fan-bridge:#{:016x}/{ifname}",
            attachment_hash(container_id, ifname)
        )
    }
}

/// The container's end while it is still in the host's namespace.
pub fn temporary_name(host_name: &str) -> String {
    format!("{host_name}p")
}

/// What the container's side gets from the IPAM result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// The address with its prefix.
    pub address: Ipv4Network,
    /// The gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Routes: destination and optional gateway (default: the gateway).
    pub routes: Vec<(Ipv4Network, Option<Ipv4Addr>)>,
}

/// The first IPv4 address of an IPAM result and its routes.
pub fn addressing(ipam: &Value) -> Result<Addressing, CniError> {
    let bad =
        |what: &str| invalid(format!("the IPAM result has {what}")).with_details(ipam.to_string());
    let ip = ipam["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter().find(|ip| {
                ip["address"]
                    .as_str()
                    .is_some_and(|a| a.parse::<Ipv4Network>().is_ok())
            })
        })
        .ok_or_else(|| bad("no IPv4 address"))?;
    let address = ip["address"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad("a bad address"))?;
    let gateway = match ip["gateway"].as_str() {
        Some(g) => Some(g.parse().map_err(|_| bad("a bad gateway"))?),
        None => None,
    };
    let mut routes = Vec::new();
    for r in ipam["routes"].as_array().into_iter().flatten() {
        let Some(Ok(dst)) = r["dst"].as_str().map(str::parse::<Ipv4Network>) else {
            continue; // IPv6 or malformed: not ours to apply
        };
        let gw = match r["gw"].as_str() {
            Some(g) => Some(g.parse().map_err(|_| bad("a route with a bad gateway"))?),
            None => None,
        };
        routes.push((dst, gw));
    }
    Ok(Addressing {
        address,
        gateway,
        routes,
    })
}

/// One interface of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC, `aa:bb:..`.
    pub mac: String,
    /// The namespace path for the container's side.
    pub sandbox: Option<String>,
}

/// The ADD result: the IPAM result with the two interfaces, its IPv4
/// addresses on the container's (index 1).
pub fn add_result(
    cni_version: &str,
    ipam: &Value,
    host: &Interface,
    container: &Interface,
) -> Value {
    let interface = |i: &Interface| {
        let mut v = json!({"name": i.name, "mac": i.mac});
        if let Some(s) = &i.sandbox {
            v["sandbox"] = json!(s);
        }
        v
    };
    let ips: Vec<Value> = ipam["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ip| {
            let mut ip = ip.clone();
            ip["interface"] = json!(1);
            ip
        })
        .collect();
    let mut out = json!({
        "cniVersion": cni_version,
        "interfaces": [interface(host), interface(container)],
        "ips": ips,
    });
    for key in ["routes", "dns"] {
        if let Some(v) = ipam.get(key) {
            out[key] = v.clone();
        }
    }
    out
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: Option<[u8; 6]>) -> String {
    mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_cli::cni::code;

    fn conf(extra: Value) -> Vec<u8> {
        let mut v = json!({"cniVersion": "1.0.0", "name": "fan", "type": "fan-bridge",
            "bridge": "fan-250", "ipam": {"type": "fan-ipam", "network": "fan"}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn a_plain_configuration_is_auto_with_the_bridges_mtu() {
        let c = parse(&conf(json!({}))).unwrap();
        assert_eq!(c.bridge, "fan-250");
        assert_eq!(c.link, LinkKind::Auto);
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam_type, "fan-ipam");
        let c = parse(&conf(json!({"link": "veth", "mtu": 1480}))).unwrap();
        assert_eq!((c.link, c.mtu), (LinkKind::Veth, Some(1480)));
    }

    #[test]
    fn bad_keys_name_the_key_and_the_rule() {
        for (extra, key) in [
            (json!({"bridge": ""}), "bridge:"),
            (json!({"bridge": "a-name-longer-than-15"}), "bridge:"),
            (json!({"mtu": 20}), "mtu:"),
            (json!({"mtu": "1480"}), "mtu:"),
            (json!({"link": "macvlan"}), "link:"),
            (json!({"ipam": {"type": "../x"}}), "ipam.type:"),
            (json!({"ipam": {}}), "ipam.type:"),
        ] {
            let e = parse(&conf(extra.clone())).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{extra}");
            assert!(e.msg.starts_with(key), "{extra}: {}", e.msg);
        }
        assert_eq!(parse(b"{").unwrap_err().code, code::DECODE_FAILURE);
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_name("c1", "eth0");
        assert_eq!(a, host_name("c1", "eth0"));
        assert_eq!(a.len(), 11);
        assert!(temporary_name(&a).len() <= 15);
        assert_ne!(a, host_name("c1", "eth1"));
        assert_ne!(a, host_name("c2", "eth0"));
        // The separator: ("ab", "c") is not ("a", "bc").
        assert_ne!(host_name("ab", "c"), host_name("a", "bc"));
        assert_eq!(host_alias("c1", "eth0"), "fan-bridge:c1/eth0");
        let long = "x".repeat(256);
        let alias = host_alias(&long, "eth0");
        assert!(
            alias.len() <= 255 && alias.starts_with("fan-bridge:#"),
            "{alias}"
        );
        assert_ne!(alias, host_alias(&"y".repeat(256), "eth0"));
    }

    #[test]
    fn the_ipam_result_gives_the_address_gateway_and_routes() {
        let ipam = json!({"cniVersion": "1.0.0",
            "ips": [{"address": "fd00::2/64"}, {"address": "250.0.28.5/24", "gateway": "250.0.28.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "10.0.0.0/8", "gw": "250.0.28.9"}]});
        let a = addressing(&ipam).unwrap();
        assert_eq!(a.address, "250.0.28.5/24".parse().unwrap());
        assert_eq!(a.gateway, Some("250.0.28.1".parse().unwrap()));
        assert_eq!(
            a.routes,
            vec![
                ("0.0.0.0/0".parse().unwrap(), None),
                (
                    "10.0.0.0/8".parse().unwrap(),
                    Some("250.0.28.9".parse().unwrap())
                )
            ]
        );
        assert!(addressing(&json!({"ips": []})).is_err());
        let host = Interface {
            name: "fan0123abcd".into(),
            mac: "02:00:00:00:00:01".into(),
            sandbox: None,
        };
        let container = Interface {
            name: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            sandbox: Some("/run/netns/x".into()),
        };
        let out = add_result("1.0.0", &ipam, &host, &container);
        assert_eq!(out["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(out["ips"][1]["interface"], 1);
        assert_eq!(out["routes"], ipam["routes"]);
        assert_eq!(mac_text(Some([2, 0, 0, 0, 0, 0xab])), "02:00:00:00:00:ab");
    }
}
