//! The CNI configuration list for a fan network (bridge + fan-ipam +
//! portmap), from the bridge and MTU the agent reports. Pure.

use serde_json::{json, Value};

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
    /// Plug containers with `fan-bridge` (netkit pairs where the kernel
    /// has them, so the agent's fast path runs in the container's own
    /// transmit) instead of the reference `bridge` plugin (veth pairs).
    pub fan_bridge: bool,
}

/// The configuration list: the `bridge` plugin (or `fan-bridge`) on the
/// agent's bridge with fan-ipam, optionally followed by `portmap`. The bridge plugin must not
/// be the gateway (the agent owns the bridge address) nor masquerade (the
/// agent does, and never between overlay addresses); its `mtu` is the fan
/// network's.
pub fn conflist(o: &ConflistOptions) -> Value {
    let ipam = json!({"type": "fan-ipam", "network": o.network, "agent": o.agent});
    let main = if o.fan_bridge {
        json!({
            "type": "fan-bridge",
            "bridge": o.bridge,
            "mtu": o.mtu,
            "link": "auto",
            "capabilities": {"ips": true},
            "ipam": ipam,
        })
    } else {
        json!({
        "type": "bridge",
        "bridge": o.bridge,
        "isGateway": false,
        "isDefaultGateway": false,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": o.mtu,
        // podman --ip, Kubernetes static IPs: runtimeConfig.ips reaches fan-ipam.
        "capabilities": {"ips": true},
        "ipam": ipam,
        })
    };
    let mut plugins = vec![main];
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
