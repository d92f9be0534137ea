//! Docker's remote IPAM plugin protocol, answered from the fan agent.
//!
//! Docker (libnetwork) asks an IPAM driver for a pool when a network is
//! created and for one address per endpoint. [`IpamPlugin`] answers those
//! calls from the host's fan agent, so that every address a Docker
//! container gets is an allocation in the agent and no second allocator
//! shares the slice:
//!
//! | call | answer |
//! | --- | --- |
//! | `Plugin.Activate` | `{"Implements": ["IpamDriver"]}` |
//! | `IpamDriver.GetCapabilities` | `RequiresMACAddress: true` (the MAC names the endpoint) |
//! | `IpamDriver.GetDefaultAddressSpaces` | `fan` / `fan-global` |
//! | `IpamDriver.RequestPool` | the host's slice of the fan network (`--ipam-opt fan-network=ID`), pool id `ID/SLICE`, the agent's gateway in `Data` |
//! | `IpamDriver.ReleasePool` | nothing to do |
//! | `IpamDriver.RequestAddress` | gateway request: the agent's gateway, nothing allocated; otherwise `AllocateAddress` (owner `docker-MAC`, label `fan.io/created-by=docker`, the `--ip` address when given) |
//! | `IpamDriver.ReleaseAddress` | `ReleaseAddress` of the Docker-made allocation at that address; the gateway and unknown addresses are no-ops |
//!
//! Errors are HTTP 500 with `{"Err": "..."}`, which Docker shows as
//! `IpamDriver.<Method>: <message>`. The plugin keeps no state: the pool id
//! carries the fan network, the agent keeps every allocation.
//!
//! The pure parts ([`PoolId`], [`bridge_recipe`], [`plugin_recipe`]) are
//! separate from [`IpamPlugin::handle`], the one function that calls the
//! agent.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use fan_client::{
    AllocationRequest, ConnectOptions, Error, FanClient, Ipv4Cidr, Network, Owner, Selector,
};

/// The plugin name Docker knows the driver by (`--ipam-driver fan`): the
/// socket is `/run/docker/plugins/<name>.sock`.
pub const DEFAULT_PLUGIN_NAME: &str = "fan";
/// Where Docker looks for the socket of [`DEFAULT_PLUGIN_NAME`].
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/fan.sock";
/// The label every Docker-made allocation carries (value [`CREATED_BY_DOCKER`]).
pub const LABEL_CREATED_BY: &str = crate::cni::LABEL_CREATED_BY;
/// The value of [`LABEL_CREATED_BY`] on Docker-made allocations.
pub const CREATED_BY_DOCKER: &str = "docker";
/// The label holding the endpoint's MAC address.
pub const LABEL_DOCKER_MAC: &str = "fan.io/docker-mac";
/// The label holding the endpoint name, when Docker passes one.
pub const LABEL_DOCKER_ENDPOINT: &str = "fan.io/docker-endpoint";
/// The `--ipam-opt` naming the fan network on the host.
pub const OPTION_NETWORK: &str = "fan-network";
/// The option key of a gateway request.
pub const OPTION_REQUEST_TYPE: &str = "RequestAddressType";
/// The value of [`OPTION_REQUEST_TYPE`] (and the pool data key) for the gateway.
pub const GATEWAY: &str = "com.docker.network.gateway";
/// The option carrying the endpoint's MAC address.
pub const OPTION_MAC: &str = "com.docker.network.endpoint.macaddress";
/// The option carrying the endpoint name (newer Docker).
pub const OPTION_ENDPOINT_NAME: &str = "com.docker.network.endpoint.name";
/// The content type of plugin replies.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// A refused call; the message names the option or address and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

fn refuse(msg: impl Into<String>) -> PluginError {
    PluginError(msg.into())
}

/// The pool id handed to Docker: `NETWORK/SLICE` (`fan-250/250.0.28.0/24`).
/// Network ids contain no `/`, so the first `/` splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolId {
    /// The fan network id.
    pub network: String,
    /// The host's slice when the pool was handed out.
    pub slice: Ipv4Cidr,
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.slice)
    }
}

impl FromStr for PoolId {
    type Err = PluginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            refuse(format!(
                "unknown pool id {s:?}: expected NETWORK/SLICE, as RequestPool returns"
            ))
        };
        let (network, slice) = s.split_once('/').ok_or_else(bad)?;
        if network.is_empty() {
            return Err(bad());
        }
        Ok(PoolId {
            network: network.to_string(),
            slice: slice.parse().map_err(|_| bad())?,
        })
    }
}

/// One HTTP reply to Docker: status and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// 200, or 500 with `{"Err": …}`, or 404 for an unknown method.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Reply { status: 200, body }
    }

    fn err(e: &PluginError) -> Self {
        Reply {
            status: 500,
            body: json!({ "Err": e.0 }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RequestPool {
    pool: String,
    sub_pool: String,
    options: Option<HashMap<String, String>>,
    #[serde(rename = "V6")]
    v6: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
    options: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
}

fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, PluginError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| refuse(format!("request body is not the expected JSON: {e}")))
}

/// The slice and gateway of a network, or why it has none yet.
fn slice_and_gateway(net: &Network) -> Result<(Ipv4Cidr, Ipv4Addr), PluginError> {
    match (net.status.slice, net.status.gateway) {
        (Some(slice), Some(gw)) => Ok((slice, gw)),
        _ => Err(refuse(format!(
            "fan network {:?} has no slice on this host yet (state {}: {})",
            net.id, net.status.state, net.status.reason
        ))),
    }
}

/// Checks a `--subnet`/`--ip-range` against the host's slice.
pub fn check_pool(
    network: &str,
    slice: Ipv4Cidr,
    pool: &str,
    sub_pool: &str,
) -> Result<(), PluginError> {
    // Docker asks again and again for a pool that overlaps a route of the
    // host (the slice is on the fan bridge) unless the pool was requested
    // explicitly, so --subnet is required.
    if pool.is_empty() {
        return Err(refuse(format!(
            "--subnet is required: pass --subnet {slice} (this host's slice of fan network {network:?})"
        )));
    }
    {
        let asked: Ipv4Cidr = pool
            .parse()
            .map_err(|_| refuse(format!("--subnet {pool:?} is not an IPv4 CIDR")))?;
        if asked != slice {
            return Err(refuse(format!(
                "--subnet {pool} is outside this host's slice of fan network {network:?}: \
                 the pool must be the slice {slice} (pass --subnet {slice})"
            )));
        }
    }
    if !sub_pool.is_empty() && sub_pool.parse::<Ipv4Cidr>().ok() != Some(slice) {
        return Err(refuse(format!(
            "--ip-range {sub_pool} is not supported: the fan agent allocates from the whole slice \
             {slice} (omit --ip-range; use --ip for a specific address)"
        )));
    }
    Ok(())
}

/// The owner of an endpoint's address: `docker-<MAC>` (one per endpoint),
/// else `docker-<ADDRESS>` for an auxiliary address Docker reserves
/// without a MAC.
pub fn endpoint_owner(
    options: &HashMap<String, String>,
    address: Option<Ipv4Addr>,
) -> Result<Owner, PluginError> {
    match (options.get(OPTION_MAC).filter(|m| !m.is_empty()), address) {
        (Some(mac), _) => Ok(Owner::new(format!("docker-{mac}"))),
        (None, Some(a)) => Ok(Owner::new(format!("docker-{a}"))),
        (None, None) => Err(refuse(format!(
            "RequestAddress without {OPTION_MAC}: the fan IPAM driver names each endpoint by its MAC \
             (it declares RequiresMACAddress)"
        ))),
    }
}

/// Serves Docker's IPAM calls from one agent.
pub struct IpamPlugin {
    target: String,
    options: ConnectOptions,
    default_network: Option<String>,
    client: Mutex<Option<FanClient>>,
}

impl IpamPlugin {
    /// A plugin talking to the agent at `target`; `default_network` is used
    /// when a Docker network names no `fan-network` option (else the agent's
    /// only network).
    pub fn new(target: &str, options: ConnectOptions, default_network: Option<String>) -> Self {
        IpamPlugin {
            target: target.to_string(),
            options,
            default_network,
            client: Mutex::new(None),
        }
    }

    /// The agent client, connecting on first use and after a failed call.
    async fn client(&self) -> Result<FanClient, PluginError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = FanClient::connect_with(&self.target, self.options.clone())
            .await
            .map_err(|e| refuse(format!("cannot reach the fan agent: {e}")))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn agent_failed(&self, e: &Error) {
        if e.is_unreachable() {
            *self.client.lock().await = None;
        }
    }

    /// Answers one plugin call: `method` is the URL path without its `/`
    /// (`IpamDriver.RequestPool`), `body` the request JSON.
    pub async fn handle(&self, method: &str, body: &[u8]) -> Reply {
        let result = match method {
            "Plugin.Activate" => Ok(json!({ "Implements": ["IpamDriver"] })),
            "IpamDriver.GetCapabilities" => Ok(json!({
                "RequiresMACAddress": true,
                "RequiresRequestReplay": false
            })),
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "fan",
                "GlobalDefaultAddressSpace": "fan-global"
            })),
            "IpamDriver.RequestPool" => match decode(body) {
                Ok(r) => self.request_pool(r).await,
                Err(e) => Err(e),
            },
            "IpamDriver.ReleasePool" => Ok(json!({})),
            "IpamDriver.RequestAddress" => match decode(body) {
                Ok(r) => self.request_address(r).await,
                Err(e) => Err(e),
            },
            "IpamDriver.ReleaseAddress" => match decode(body) {
                Ok(r) => self.release_address(r).await,
                Err(e) => Err(e),
            },
            other => {
                return Reply {
                    status: 404,
                    body: json!({ "Err": format!("unknown method {other:?}") }),
                }
            }
        };
        match result {
            Ok(body) => Reply::ok(body),
            Err(e) => Reply::err(&e),
        }
    }

    async fn network(&self, id: &str) -> Result<Network, PluginError> {
        let client = self.client().await?;
        match client.get_network(id).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.agent_failed(&e).await;
                Err(if e.is_not_found() {
                    refuse(format!(
                        "fan network {id:?} does not exist on this host (fan-client network list)"
                    ))
                } else {
                    refuse(format!("fan agent: {e}"))
                })
            }
        }
    }

    async fn pick_network(&self, options: &HashMap<String, String>) -> Result<String, PluginError> {
        if let Some(n) = options.get(OPTION_NETWORK).filter(|n| !n.is_empty()) {
            return Ok(n.clone());
        }
        if let Some(n) = &self.default_network {
            return Ok(n.clone());
        }
        let client = self.client().await?;
        let nets = match client.list_networks().await {
            Ok(n) => n,
            Err(e) => {
                self.agent_failed(&e).await;
                return Err(refuse(format!("fan agent: {e}")));
            }
        };
        match nets.as_slice() {
            [one] => Ok(one.id.clone()),
            _ => {
                Err(refuse(format!(
                "name the fan network with --ipam-opt {OPTION_NETWORK}=ID (this host has {}: {})",
                nets.len(),
                nets.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")
            )))
            }
        }
    }

    async fn request_pool(&self, r: RequestPool) -> Result<Value, PluginError> {
        if r.v6 {
            return Err(refuse(
                "fan networks are IPv4 only: create the Docker network without --ipv6",
            ));
        }
        let options = r.options.unwrap_or_default();
        let id = self.pick_network(&options).await?;
        let net = self.network(&id).await?;
        let (slice, gateway) = slice_and_gateway(&net)?;
        check_pool(&id, slice, &r.pool, &r.sub_pool)?;
        let pool = PoolId { network: id, slice };
        Ok(json!({
            "PoolID": pool.to_string(),
            "Pool": slice.to_string(),
            "Data": { GATEWAY: Ipv4Cidr { address: gateway, prefix: slice.prefix }.to_string() }
        }))
    }

    async fn request_address(&self, r: RequestAddress) -> Result<Value, PluginError> {
        let pool: PoolId = r.pool_id.parse()?;
        let options = r.options.unwrap_or_default();
        let requested = match r.address.as_str() {
            "" => None,
            a => Some(a.parse::<Ipv4Addr>().map_err(|_| {
                refuse(format!(
                    "requested address {a:?} is not IPv4 (fan is IPv4 only)"
                ))
            })?),
        };
        let is_gateway = options.get(OPTION_REQUEST_TYPE).map(String::as_str) == Some(GATEWAY);
        if !is_gateway && requested.is_none() {
            // The common case, one agent call: the pool id holds the slice,
            // the allocation the rest.
            return self.allocate(&pool, &options, None).await;
        }
        let net = self.network(&pool.network).await?;
        let (slice, gateway) = slice_and_gateway(&net)?;
        if slice != pool.slice {
            return Err(refuse(format!(
                "fan network {:?} now has the slice {slice}, not the pool {}: re-create the Docker network",
                pool.network, pool.slice
            )));
        }
        let gw_cidr = Ipv4Cidr {
            address: gateway,
            prefix: slice.prefix,
        };
        if is_gateway {
            return match requested {
                Some(a) if a != gateway => Err(refuse(format!(
                    "--gateway {a} is not the fan agent's gateway {gateway} of {:?} (omit --gateway, or pass --gateway {gateway})",
                    pool.network
                ))),
                _ => Ok(json!({ "Address": gw_cidr.to_string(), "Data": {} })),
            };
        }
        if let Some(a) = requested {
            if !slice.contains(a) {
                return Err(refuse(format!(
                    "--ip {a} is outside this host's slice {slice} of fan network {:?}",
                    pool.network
                )));
            }
            if a == gateway {
                return Err(refuse(format!(
                    "--ip {a} is the fan agent's gateway of {:?}",
                    pool.network
                )));
            }
        }
        self.allocate(&pool, &options, requested).await
    }

    async fn allocate(
        &self,
        pool: &PoolId,
        options: &HashMap<String, String>,
        requested: Option<Ipv4Addr>,
    ) -> Result<Value, PluginError> {
        let owner = endpoint_owner(options, requested)?;
        let mut req = AllocationRequest::new(owner).label(LABEL_CREATED_BY, CREATED_BY_DOCKER);
        if let Some(mac) = options.get(OPTION_MAC).filter(|m| !m.is_empty()) {
            req = req.label(LABEL_DOCKER_MAC, mac.clone());
        }
        if let Some(name) = options.get(OPTION_ENDPOINT_NAME).filter(|n| !n.is_empty()) {
            req = req.label(
                LABEL_DOCKER_ENDPOINT,
                name.chars().take(256).collect::<String>(),
            );
        }
        req.address = requested;
        let client = self.client().await?;
        match client.allocate_address(&pool.network, &req).await {
            Ok(a) if requested.is_some_and(|r| r != a.address) => Err(refuse(format!(
                "endpoint {} already holds {} in {:?}, not the requested {}",
                a.owner,
                a.address,
                pool.network,
                requested.unwrap_or(a.address)
            ))),
            Ok(a) if !pool.slice.contains(a.address) || a.prefix_length != pool.slice.prefix => {
                // The host's slice moved (another underlay address): give it back.
                let _ = client
                    .release_address(&pool.network, &Selector::Owner(a.owner), true)
                    .await;
                Err(refuse(format!(
                    "fan network {:?} no longer has the slice {} of this Docker network: re-create it",
                    pool.network, pool.slice
                )))
            }
            Ok(a) => Ok(json!({ "Address": a.cidr().to_string(), "Data": {} })),
            Err(e) => {
                self.agent_failed(&e).await;
                Err(refuse(format!("fan agent: {e}")))
            }
        }
    }

    async fn release_address(&self, r: ReleaseAddress) -> Result<Value, PluginError> {
        let pool: PoolId = r.pool_id.parse()?;
        let address: Ipv4Addr = r
            .address
            .parse()
            .map_err(|_| refuse(format!("address {:?} is not IPv4", r.address)))?;
        let client = self.client().await?;
        let found = match client
            .get_allocation(&pool.network, &Selector::Address(address))
            .await
        {
            Ok(a) => a,
            // The gateway, an address released already, a deleted network: nothing to do.
            Err(e) if e.is_not_found() => return Ok(json!({})),
            Err(e) => {
                self.agent_failed(&e).await;
                return Err(refuse(format!("fan agent: {e}")));
            }
        };
        if found.labels.get(LABEL_CREATED_BY).map(String::as_str) != Some(CREATED_BY_DOCKER) {
            return Err(refuse(format!(
                "{address} in {:?} belongs to {} and was not allocated by Docker: left alone",
                pool.network, found.owner
            )));
        }
        // By owner: if the address changed hands since the lookup, the new
        // holder keeps it.
        match client
            .release_address(&pool.network, &Selector::Owner(found.owner), true)
            .await
        {
            Ok(_) => Ok(json!({})),
            Err(e) if e.is_not_found() => Ok(json!({})),
            Err(e) => {
                self.agent_failed(&e).await;
                Err(refuse(format!("fan agent: {e}")))
            }
        }
    }
}

/// The largest CIDR block at the start of the slice that lies inside the
/// host reserve (`.0`..=`.host_reserve`), which the agent never allocates.
pub fn reserved_block(slice: Ipv4Cidr, host_reserve: u32) -> Option<Ipv4Cidr> {
    let size_bits = 32 - u32::from(slice.prefix);
    // .0 ..= .host_reserve is host_reserve + 1 addresses.
    let span = u64::from(host_reserve) + 1;
    let mut bits = 0u32;
    while bits < size_bits && (1u64 << (bits + 1)) <= span {
        bits += 1;
    }
    // Docker needs room beyond .0, the gateway and the broadcast of the block.
    if bits < 2 || bits >= size_bits {
        return None;
    }
    Ipv4Cidr::new(slice.network(), (32 - bits) as u8)
}

/// The seed's recipe: Docker's default bridge on the fan bridge, with a
/// `--fixed-cidr` inside the agent's host reserve so the two allocators
/// never meet. Fails (with what to change) when the reserve is too small.
pub fn bridge_recipe(net: &Network) -> Result<String, PluginError> {
    let (slice, gateway) = slice_and_gateway(net)?;
    let reserve = net.spec.host_reserve.unwrap_or(1);
    let suggested = (1u32 << ((32 - u32::from(slice.prefix)) - 1)) - 1;
    let block = reserved_block(slice, reserve).ok_or_else(|| {
        refuse(format!(
            "fan network {:?} reserves only .1-.{reserve} of {slice} for the host: too small for Docker's \
             --fixed-cidr; re-create it with --host-reserve {suggested} (or use the fan IPAM plugin: \
             fan-client docker recipe --plugin)",
            net.id
        ))
    })?;
    let first_agent = Ipv4Addr::from(u32::from(slice.network()) + reserve + 1);
    Ok(format!(
        "# fan network {id}: slice {slice}, gateway {gateway} on {bridge}, MTU {mtu}; the agent allocates \
         from {first_agent} up (host-reserve {reserve}), Docker inside {block}\n\
         dockerd -b {bridge} --fixed-cidr {block} --mtu {mtu} --iptables=false\n",
        id = net.id,
        bridge = net.status.bridge,
        mtu = net.status.mtu,
    ))
}

/// The `docker network create` command for the fan IPAM plugin `plugin`.
pub fn plugin_recipe(net: &Network, plugin: &str, name: &str) -> Result<String, PluginError> {
    let (slice, _) = slice_and_gateway(net)?;
    Ok(format!(
        "# every address from the fan agent (fan-docker-ipam serving /run/docker/plugins/{plugin}.sock)\n\
         docker network create --driver bridge --ipam-driver {plugin} --ipam-opt {OPTION_NETWORK}={id} \
         --subnet {slice} \
         -o com.docker.network.bridge.name={bridge} -o com.docker.network.driver.mtu={mtu} \
         -o com.docker.network.bridge.enable_ip_masquerade=false {name}\n",
        id = net.id,
        bridge = net.status.bridge,
        mtu = net.status.mtu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_client::{Backend, NetworkSpec, NetworkState, NetworkStatus};

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn net(reserve: u32) -> Network {
        Network {
            id: "fan-250".into(),
            name: "networks/fan-250".into(),
            spec: NetworkSpec {
                host_reserve: Some(reserve),
                ..NetworkSpec::new("250.0.0.0/8", "172.30.0.0/16")
            },
            status: NetworkStatus {
                underlay_address: Some(Ipv4Addr::new(172, 30, 0, 28)),
                underlay_interface: "eth0".into(),
                slice: Some(cidr("250.0.28.0/24")),
                gateway: Some(Ipv4Addr::new(250, 0, 28, 1)),
                bridge: "fan-250".into(),
                mtu: 1480,
                backend: Some(Backend::Ebpf),
                state: NetworkState::Ready,
                reason: String::new(),
                allocated: 0,
                capacity: 253,
                counters: None,
            },
            create_time: None,
        }
    }

    #[test]
    fn pool_id_round_trip_and_errors() {
        let p: PoolId = "fan-250/250.0.28.0/24".parse().unwrap();
        assert_eq!(p.network, "fan-250");
        assert_eq!(p.slice, cidr("250.0.28.0/24"));
        assert_eq!(p.to_string(), "fan-250/250.0.28.0/24");
        for bad in ["", "fan-250", "/250.0.28.0/24", "fan-250/x"] {
            let e = bad.parse::<PoolId>().unwrap_err();
            assert!(e.0.contains("unknown pool id"), "{bad}: {e}");
        }
    }

    #[test]
    fn pools_outside_the_slice_are_refused_by_name() {
        let s = cidr("250.0.28.0/24");
        let e = check_pool("fan-250", s, "", "").unwrap_err();
        assert!(
            e.0.contains("--subnet is required: pass --subnet 250.0.28.0/24"),
            "{e}"
        );
        assert!(check_pool("fan-250", s, "250.0.28.0/24", "").is_ok());
        let e = check_pool("fan-250", s, "250.0.27.0/24", "").unwrap_err();
        assert!(e.0.contains("--subnet 250.0.27.0/24 is outside"), "{e}");
        assert!(e.0.contains("250.0.28.0/24"), "{e}");
        let e = check_pool("fan-250", s, "nope", "").unwrap_err();
        assert!(e.0.contains("not an IPv4 CIDR"), "{e}");
        let e = check_pool("fan-250", s, "250.0.28.0/24", "250.0.28.0/25").unwrap_err();
        assert!(
            e.0.contains("--ip-range 250.0.28.0/25 is not supported"),
            "{e}"
        );
    }

    #[test]
    fn owners_come_from_the_mac() {
        let mut o = HashMap::new();
        assert!(endpoint_owner(&o, None).is_err());
        assert_eq!(
            endpoint_owner(&o, Some(Ipv4Addr::new(250, 0, 28, 9))).unwrap(),
            Owner::new("docker-250.0.28.9")
        );
        o.insert(OPTION_MAC.to_string(), "02:42:fa:00:1c:09".to_string());
        assert_eq!(
            endpoint_owner(&o, None).unwrap(),
            Owner::new("docker-02:42:fa:00:1c:09")
        );
    }

    #[test]
    fn fixed_cidr_lies_inside_the_host_reserve() {
        let s = cidr("250.0.28.0/24");
        assert_eq!(reserved_block(s, 127), Some(cidr("250.0.28.0/25")));
        assert_eq!(reserved_block(s, 130), Some(cidr("250.0.28.0/25")));
        assert_eq!(reserved_block(s, 63), Some(cidr("250.0.28.0/26")));
        assert_eq!(reserved_block(s, 3), Some(cidr("250.0.28.0/30")));
        assert_eq!(reserved_block(s, 1), None);
        assert_eq!(reserved_block(s, 2), None);
        let r = bridge_recipe(&net(127)).unwrap();
        assert!(
            r.contains("dockerd -b fan-250 --fixed-cidr 250.0.28.0/25 --mtu 1480 --iptables=false"),
            "{r}"
        );
        assert!(r.contains("from 250.0.28.128 up"), "{r}");
        let e = bridge_recipe(&net(1)).unwrap_err();
        assert!(e.0.contains("--host-reserve 127"), "{e}");
        let p = plugin_recipe(&net(1), "fan", "fan").unwrap();
        assert!(
            p.contains("--ipam-driver fan --ipam-opt fan-network=fan-250 --subnet 250.0.28.0/24"),
            "{p}"
        );
        assert!(p.contains("com.docker.network.bridge.name=fan-250"), "{p}");
    }

    #[tokio::test]
    async fn protocol_calls_without_an_agent() {
        let p = IpamPlugin::new(
            "unix:///nonexistent/agent.sock",
            ConnectOptions::default(),
            None,
        );
        let r = p.handle("Plugin.Activate", b"").await;
        assert_eq!(r, Reply::ok(json!({"Implements": ["IpamDriver"]})));
        let r = p.handle("IpamDriver.GetCapabilities", b"null").await;
        assert_eq!(r.body["RequiresMACAddress"], json!(true));
        let r = p.handle("IpamDriver.GetDefaultAddressSpaces", b"").await;
        assert_eq!(r.body["LocalDefaultAddressSpace"], json!("fan"));
        assert_eq!(
            p.handle("IpamDriver.ReleasePool", b"{\"PoolID\":\"x\"}")
                .await
                .status,
            200
        );
        let r = p.handle("IpamDriver.RequestPool", b"{\"V6\":true}").await;
        assert_eq!(r.status, 500);
        assert!(r.body["Err"].as_str().unwrap().contains("IPv4 only"));
        let r = p
            .handle("IpamDriver.RequestAddress", b"{\"PoolID\":\"bad\"}")
            .await;
        assert!(r.body["Err"].as_str().unwrap().contains("unknown pool id"));
        let r = p.handle("IpamDriver.RequestPool", b"{").await;
        assert!(r.body["Err"]
            .as_str()
            .unwrap()
            .contains("not the expected JSON"));
        let r = p.handle("IpamDriver.RequestPool", b"{}").await;
        assert!(r.body["Err"]
            .as_str()
            .unwrap()
            .contains("cannot reach the fan agent"));
        assert_eq!(
            p.handle("NetworkDriver.CreateNetwork", b"{}").await.status,
            404
        );
    }
}
