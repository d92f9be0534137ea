//! An in-process fake fan agent on a unix socket, for testing the SDK and
//! the CLI without the real agent (which needs root and a kernel).
//!
//! It keeps networks and allocations in memory, computes slices with
//! fan-core, pages lists with a small page size (so that the page-following
//! helpers are exercised), answers errors with `google.rpc.ErrorInfo` like
//! the real agent, and lets a test inject failures and count calls.

#![allow(dead_code)]

pub mod pki;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_server::{FanAgentService, FanAgentServiceServer};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The page size the fake uses when the request says 0.
pub const FAKE_PAGE_SIZE: usize = 2;

/// A status like the real agent's: code, message, ErrorInfo reason.
pub fn status(code: Code, message: &str, reason: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, "fan.agent.v1", HashMap::new()),
    )
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, pb::Network>,
    /// network id -> address -> allocation
    allocations: BTreeMap<String, BTreeMap<Ipv4Addr, pb::Allocation>>,
    /// method name -> statuses to answer before working normally
    failures: HashMap<&'static str, VecDeque<Status>>,
    /// method name -> calls received
    calls: HashMap<&'static str, usize>,
    /// method name -> delay before answering
    delays: HashMap<&'static str, Duration>,
}

/// The fake agent's shared state handle.
#[derive(Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    /// Answers the next call(s) of `method` with these statuses.
    pub fn fail(&self, method: &'static str, statuses: Vec<Status>) {
        self.state
            .lock()
            .unwrap()
            .failures
            .entry(method)
            .or_default()
            .extend(statuses);
    }

    /// Delays every answer of `method`.
    pub fn delay(&self, method: &'static str, d: Duration) {
        self.state.lock().unwrap().delays.insert(method, d);
    }

    /// How many calls `method` received.
    pub fn calls(&self, method: &'static str) -> usize {
        *self.state.lock().unwrap().calls.get(method).unwrap_or(&0)
    }

    async fn enter(&self, method: &'static str) -> Result<(), Status> {
        let (fail, delay) = {
            let mut s = self.state.lock().unwrap();
            *s.calls.entry(method).or_default() += 1;
            let fail = s.failures.get_mut(method).and_then(|q| q.pop_front());
            (fail, s.delays.get(method).copied())
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match fail {
            Some(st) => Err(st),
            None => Ok(()),
        }
    }

    /// Adds a network directly (as if created earlier), with a given state.
    pub fn insert_network(&self, id: &str, overlay: &str, underlay: &str, state: pb::NetworkState) {
        let mut n = build_network(
            id,
            normalize(pb::NetworkSpec {
                overlay: overlay.into(),
                underlay: underlay.into(),
                ..Default::default()
            }),
        )
        .unwrap();
        n.status.as_mut().unwrap().state = state as i32;
        if state != pb::NetworkState::Ready {
            n.status.as_mut().unwrap().reason = "bridge fan missing".into();
        }
        self.state.lock().unwrap().networks.insert(id.into(), n);
    }
}

fn normalize(mut spec: pb::NetworkSpec) -> pb::NetworkSpec {
    if let Ok(o) = fan_core::parse_overlay(&spec.overlay) {
        spec.overlay = o.to_string();
    }
    if let Ok(u) = fan_core::UnderlaySpec::parse(&spec.underlay) {
        spec.underlay = u.to_string();
    }
    spec.host_reserve.get_or_insert(1);
    if spec.bridge.is_empty() {
        if let Ok(o) = fan_core::parse_overlay(&spec.overlay) {
            spec.bridge = fan_core::names::default_bridge_name(o);
        }
    }
    if spec.mtu == 0 {
        spec.mtu = 1480;
    }
    if spec.backend == 0 {
        spec.backend = pb::Backend::Auto as i32;
    }
    spec.masquerade.get_or_insert(true);
    spec.anti_spoofing.get_or_insert(true);
    spec
}

/// A network as the fake agent reports it. Underlays written
/// `A.B.C.D/N` resolve to that address; `IFACE/N` to 172.30.0.28.
fn build_network(id: &str, spec: pb::NetworkSpec) -> Result<pb::Network, Status> {
    let invalid = |m: String| status(Code::InvalidArgument, &m, "FIELD_INVALID");
    let overlay = fan_core::parse_overlay(&spec.overlay)
        .map_err(|e| invalid(format!("spec.overlay: {e}")))?;
    let underlay = fan_core::UnderlaySpec::parse(&spec.underlay)
        .map_err(|e| invalid(format!("spec.underlay: {e}")))?;
    let host = match &underlay {
        // a network address means "my address in that network": .28 here
        fan_core::UnderlaySpec::Cidr { address, prefix }
            if fan_core::Ipv4Network::new(*address, *prefix)
                .unwrap()
                .network()
                == *address =>
        {
            Ipv4Addr::from(u32::from(*address) + 28)
        }
        fan_core::UnderlaySpec::Cidr { address, .. } => *address,
        _ => Ipv4Addr::new(172, 30, 0, 28),
    };
    let unet = fan_core::Ipv4Network::new(host, underlay.prefix()).unwrap();
    let unet = fan_core::Ipv4Network::new(unet.network(), unet.prefix()).unwrap();
    let map = fan_core::FanMap::new(overlay, unet).map_err(|e| invalid(e.to_string()))?;
    let slice = map.slice_of(host).map_err(|e| invalid(e.to_string()))?;
    let gateway = Ipv4Addr::from(u32::from(slice.network()) + 1);
    let capacity = (1u32 << (32 - slice.prefix())) - 2 - spec.host_reserve.unwrap_or(1);
    Ok(pb::Network {
        name: format!("networks/{id}"),
        network_id: id.into(),
        status: Some(pb::NetworkStatus {
            underlay_address: host.to_string(),
            underlay_interface: "eth0".into(),
            slice: slice.to_string(),
            gateway: gateway.to_string(),
            bridge: spec.bridge.clone(),
            mtu: spec.mtu,
            backend: pb::Backend::Ebpf as i32,
            state: pb::NetworkState::Ready as i32,
            reason: String::new(),
            allocated: 0,
            capacity,
            counters: None,
            ..Default::default()
        }),
        spec: Some(spec),
        create_time: Some(prost_types::Timestamp {
            seconds: 1_735_689_600,
            nanos: 0,
        }),
    })
}

/// NOT_FOUND as the agent sends it: a network or an allocation.
fn not_found(what: &str) -> Status {
    let reason = if what.starts_with("network") {
        "NETWORK_NOT_FOUND"
    } else {
        "ALLOCATION_NOT_FOUND"
    };
    status(Code::NotFound, &format!("{what} not found"), reason)
}

fn page<T: Clone>(items: Vec<T>, size: u32, token: &str) -> Result<(Vec<T>, String), Status> {
    let size = if size == 0 {
        FAKE_PAGE_SIZE
    } else {
        size as usize
    };
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| status(Code::InvalidArgument, "bad page token", "FIELD_INVALID"))?
    };
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((items[start.min(end)..end].to_vec(), next))
}

fn find_allocation<'a>(
    allocs: &'a BTreeMap<Ipv4Addr, pb::Allocation>,
    sel: &Option<pb::AllocationSelector>,
) -> Result<Option<(&'a Ipv4Addr, &'a pb::Allocation)>, Status> {
    use pb::allocation_selector::Selector as S;
    match sel.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(S::Owner(o)) => {
            let iface = if o.interface.is_empty() {
                "eth0"
            } else {
                &o.interface
            };
            Ok(allocs.iter().find(|(_, a)| {
                let ao = a.owner.as_ref().unwrap();
                ao.container_id == o.container_id && ao.interface == iface
            }))
        }
        Some(S::Address(a)) => {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| status(Code::InvalidArgument, "bad address", "FIELD_INVALID"))?;
            Ok(allocs.get_key_value(&a))
        }
        None => Err(status(
            Code::InvalidArgument,
            "selector: required",
            "FIELD_INVALID",
        )),
    }
}

#[tonic::async_trait]
impl FanAgentService for Fake {
    // The orchestrator calls are tested against real agents (tests/tests/events.rs).
    async fn update_network(
        &self,
        _: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::UpdateNetworkResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type WatchEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>,
    >;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_agent_info(
        &self,
        _: Request<pb::GetAgentInfoRequest>,
    ) -> Result<Response<pb::GetAgentInfoResponse>, Status> {
        self.enter("GetAgentInfo").await?;
        Ok(Response::new(pb::GetAgentInfoResponse {
            version: "0.1.0-fake".into(),
            hostname: "fake-host".into(),
            kernel_release: "6.8.0-fake".into(),
            addresses: vec![pb::HostAddress {
                interface: "eth0".into(),
                address: "172.30.0.28/16".into(),
                mtu: 1500,
            }],
            backends: vec![
                pb::BackendAvailability {
                    backend: pb::Backend::KernelFan as i32,
                    available: false,
                    reason: "no fan patch in this kernel".into(),
                },
                pb::BackendAvailability {
                    backend: pb::Backend::Ebpf as i32,
                    available: true,
                    reason: String::new(),
                },
            ],
            auto_backend: pb::Backend::Ebpf as i32,
        }))
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        self.enter("CreateNetwork").await?;
        let req = req.into_inner();
        let spec = normalize(req.spec.unwrap_or_default());
        let mut s = self.state.lock().unwrap();
        if let Some(existing) = s.networks.get(&req.network_id) {
            if existing.spec.as_ref() == Some(&spec) {
                return Ok(Response::new(pb::CreateNetworkResponse {
                    network: Some(existing.clone()),
                }));
            }
            return Err(status(
                Code::AlreadyExists,
                &format!("network {:?} exists with another spec", req.network_id),
                "NETWORK_EXISTS",
            ));
        }
        let n = build_network(&req.network_id, spec)?;
        s.networks.insert(req.network_id.clone(), n.clone());
        Ok(Response::new(pb::CreateNetworkResponse {
            network: Some(n),
        }))
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        self.enter("GetNetwork").await?;
        let id = req.into_inner().network_id;
        let s = self.state.lock().unwrap();
        let n = s
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(&format!("network {id:?}")))?;
        Ok(Response::new(pb::GetNetworkResponse { network: Some(n) }))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        self.enter("ListNetworks").await?;
        let req = req.into_inner();
        let all: Vec<pb::Network> = self
            .state
            .lock()
            .unwrap()
            .networks
            .values()
            .cloned()
            .collect();
        let (networks, next_page_token) = page(all, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListNetworksResponse {
            networks,
            next_page_token,
            revision: 0,
        }))
    }

    async fn delete_network(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkResponse>, Status> {
        self.enter("DeleteNetwork").await?;
        let req = req.into_inner();
        let mut s = self.state.lock().unwrap();
        if !s.networks.contains_key(&req.network_id) {
            if req.allow_missing {
                return Ok(Response::new(pb::DeleteNetworkResponse::default()));
            }
            return Err(not_found(&format!("network {:?}", req.network_id)));
        }
        let n = s.allocations.get(&req.network_id).map_or(0, |a| a.len());
        if n > 0 && !req.force {
            return Err(status(
                Code::FailedPrecondition,
                &format!("network {:?} still has {n} allocations", req.network_id),
                "NETWORK_IN_USE",
            ));
        }
        s.networks.remove(&req.network_id);
        s.allocations.remove(&req.network_id);
        Ok(Response::new(pb::DeleteNetworkResponse {
            deleted: true,
            released_allocations: n as u32,
        }))
    }

    async fn check_network(
        &self,
        req: Request<pb::CheckNetworkRequest>,
    ) -> Result<Response<pb::CheckNetworkResponse>, Status> {
        self.enter("CheckNetwork").await?;
        let id = req.into_inner().network_id;
        let s = self.state.lock().unwrap();
        let n = s
            .networks
            .get(&id)
            .ok_or_else(|| not_found(&format!("network {id:?}")))?;
        let drifts = if n.status.as_ref().unwrap().state == pb::NetworkState::Ready as i32 {
            vec![]
        } else {
            vec![pb::Drift {
                object: format!("bridge {}", n.status.as_ref().unwrap().bridge),
                expected: "present".into(),
                observed: "missing".into(),
            }]
        };
        Ok(Response::new(pb::CheckNetworkResponse { drifts }))
    }

    async fn allocate_address(
        &self,
        req: Request<pb::AllocateAddressRequest>,
    ) -> Result<Response<pb::AllocateAddressResponse>, Status> {
        self.enter("AllocateAddress").await?;
        let req = req.into_inner();
        let mut owner = req.owner.unwrap_or_default();
        if owner.interface.is_empty() {
            owner.interface = "eth0".into();
        }
        let mut s = self.state.lock().unwrap();
        let n = s
            .networks
            .get(&req.network_id)
            .cloned()
            .ok_or_else(|| not_found(&format!("network {:?}", req.network_id)))?;
        let st = n.status.as_ref().unwrap();
        let slice: fan_core::Ipv4Network = st.slice.parse().unwrap();
        let reserve = n.spec.as_ref().unwrap().host_reserve.unwrap_or(1);
        let allocs = s.allocations.entry(req.network_id.clone()).or_default();
        let sel = Some(pb::AllocationSelector {
            selector: Some(pb::allocation_selector::Selector::Owner(owner.clone())),
        });
        if let Some((_, a)) = find_allocation(allocs, &sel)? {
            return Ok(Response::new(pb::AllocateAddressResponse {
                allocation: Some(a.clone()),
                created: false,
            }));
        }
        let base = u32::from(slice.network());
        let last = base + (1u32 << (32 - slice.prefix())) - 2;
        let address = if req.address.is_empty() {
            (base + reserve + 1..=last)
                .map(Ipv4Addr::from)
                .find(|a| !allocs.contains_key(a))
                .ok_or_else(|| status(Code::ResourceExhausted, "slice full", "SLICE_EXHAUSTED"))?
        } else {
            let a: Ipv4Addr = req
                .address
                .parse()
                .map_err(|_| status(Code::InvalidArgument, "address: not IPv4", "FIELD_INVALID"))?;
            if allocs.contains_key(&a) {
                return Err(status(
                    Code::AlreadyExists,
                    &format!("address {a} is taken"),
                    "ADDRESS_IN_USE",
                ));
            }
            a
        };
        let a = pb::Allocation {
            name: format!("networks/{}/allocations/{address}", req.network_id),
            network_id: req.network_id.clone(),
            owner: Some(owner),
            address: address.to_string(),
            prefix_length: u32::from(slice.prefix()),
            gateway: st.gateway.clone(),
            mtu: st.mtu,
            labels: req.labels,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_735_689_700,
                nanos: 0,
            }),
            ..Default::default()
        };
        allocs.insert(address, a.clone());
        let count = allocs.len() as u32;
        s.networks
            .get_mut(&req.network_id)
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .allocated = count;
        Ok(Response::new(pb::AllocateAddressResponse {
            allocation: Some(a),
            created: true,
        }))
    }

    async fn get_allocation(
        &self,
        req: Request<pb::GetAllocationRequest>,
    ) -> Result<Response<pb::GetAllocationResponse>, Status> {
        self.enter("GetAllocation").await?;
        let req = req.into_inner();
        let s = self.state.lock().unwrap();
        if !s.networks.contains_key(&req.network_id) {
            return Err(not_found(&format!("network {:?}", req.network_id)));
        }
        let empty = BTreeMap::new();
        let allocs = s.allocations.get(&req.network_id).unwrap_or(&empty);
        let (_, a) =
            find_allocation(allocs, &req.selector)?.ok_or_else(|| not_found("allocation"))?;
        Ok(Response::new(pb::GetAllocationResponse {
            allocation: Some(a.clone()),
        }))
    }

    async fn release_address(
        &self,
        req: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::ReleaseAddressResponse>, Status> {
        self.enter("ReleaseAddress").await?;
        let req = req.into_inner();
        let mut s = self.state.lock().unwrap();
        if !s.networks.contains_key(&req.network_id) {
            return Err(not_found(&format!("network {:?}", req.network_id)));
        }
        let allocs = s.allocations.entry(req.network_id.clone()).or_default();
        let found = find_allocation(allocs, &req.selector)?.map(|(k, _)| *k);
        let released = match found {
            Some(k) => allocs.remove(&k),
            None if req.allow_missing => None,
            None => return Err(not_found("allocation")),
        };
        let count = allocs.len() as u32;
        s.networks
            .get_mut(&req.network_id)
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .allocated = count;
        Ok(Response::new(pb::ReleaseAddressResponse {
            allocation: released,
        }))
    }

    async fn list_allocations(
        &self,
        req: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        self.enter("ListAllocations").await?;
        let req = req.into_inner();
        let s = self.state.lock().unwrap();
        if !s.networks.contains_key(&req.network_id) {
            return Err(not_found(&format!("network {:?}", req.network_id)));
        }
        let all: Vec<pb::Allocation> = s
            .allocations
            .get(&req.network_id)
            .map(|a| a.values().cloned().collect())
            .unwrap_or_default();
        let (allocations, next_page_token) = page(all, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations,
            next_page_token,
            revision: 0,
        }))
    }

    async fn garbage_collect_allocations(
        &self,
        req: Request<pb::GarbageCollectAllocationsRequest>,
    ) -> Result<Response<pb::GarbageCollectAllocationsResponse>, Status> {
        self.enter("GarbageCollectAllocations").await?;
        let req = req.into_inner();
        let mut s = self.state.lock().unwrap();
        if !s.networks.contains_key(&req.network_id) {
            return Err(not_found(&format!("network {:?}", req.network_id)));
        }
        let valid: Vec<(String, String)> = req
            .valid_owners
            .iter()
            .map(|o| {
                let i = if o.interface.is_empty() {
                    "eth0"
                } else {
                    &o.interface
                };
                (o.container_id.clone(), i.to_string())
            })
            .collect();
        let allocs = s.allocations.entry(req.network_id.clone()).or_default();
        let stale: Vec<Ipv4Addr> = allocs
            .iter()
            .filter(|(_, a)| {
                let o = a.owner.as_ref().unwrap();
                !valid.contains(&(o.container_id.clone(), o.interface.clone()))
            })
            .map(|(k, _)| *k)
            .collect();
        let mut released = Vec::new();
        for k in stale {
            if req.dry_run {
                released.push(allocs[&k].clone());
            } else {
                released.push(allocs.remove(&k).unwrap());
            }
        }
        Ok(Response::new(pb::GarbageCollectAllocationsResponse {
            released,
        }))
    }

    async fn resolve_address(
        &self,
        req: Request<pb::ResolveAddressRequest>,
    ) -> Result<Response<pb::ResolveAddressResponse>, Status> {
        self.enter("ResolveAddress").await?;
        let req = req.into_inner();
        let addr: Ipv4Addr = req
            .address
            .parse()
            .map_err(|_| status(Code::InvalidArgument, "address: not IPv4", "FIELD_INVALID"))?;
        let mut maps = Vec::new();
        if !req.overlay.is_empty() {
            let o = fan_core::parse_overlay(&req.overlay)
                .map_err(|e| status(Code::InvalidArgument, &e.to_string(), "FIELD_INVALID"))?;
            let u = fan_core::parse_network(&req.underlay)
                .map_err(|e| status(Code::InvalidArgument, &e.to_string(), "FIELD_INVALID"))?;
            maps.push((
                String::new(),
                fan_core::FanMap::new(o, u)
                    .map_err(|e| status(Code::InvalidArgument, &e.to_string(), "FIELD_INVALID"))?,
            ));
        } else {
            let s = self.state.lock().unwrap();
            for n in s.networks.values() {
                if !req.network_id.is_empty() && n.network_id != req.network_id {
                    continue;
                }
                let spec = n.spec.as_ref().unwrap();
                let st = n.status.as_ref().unwrap();
                let o = fan_core::parse_overlay(&spec.overlay).unwrap();
                let p = fan_core::UnderlaySpec::parse(&spec.underlay)
                    .unwrap()
                    .prefix();
                let host: Ipv4Addr = st.underlay_address.parse().unwrap();
                let u = fan_core::Ipv4Network::new(host, p).unwrap();
                let u = fan_core::Ipv4Network::new(u.network(), p).unwrap();
                maps.push((n.network_id.clone(), fan_core::FanMap::new(o, u).unwrap()));
            }
        }
        let mut resolutions = Vec::new();
        for (id, m) in maps {
            if m.contains_overlay(addr) {
                let host = m.owner_of(addr).unwrap();
                resolutions.push(pb::Resolution {
                    network_id: id,
                    is_overlay: true,
                    underlay_host: host.to_string(),
                    slice: m.slice_of(host).map(|s| s.to_string()).unwrap_or_default(),
                });
            } else if m.contains_underlay(addr) {
                if let Ok(slice) = m.slice_of(addr) {
                    resolutions.push(pb::Resolution {
                        network_id: id,
                        is_overlay: false,
                        underlay_host: addr.to_string(),
                        slice: slice.to_string(),
                    });
                }
            }
        }
        Ok(Response::new(pb::ResolveAddressResponse { resolutions }))
    }
}

/// A running fake agent; stops when dropped.
pub struct FakeAgent {
    /// The state handle.
    pub fake: Fake,
    /// The socket path.
    pub socket: PathBuf,
    /// `unix:<socket>`.
    pub target: String,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Starts a fake agent on a fresh socket (needs a tokio runtime).
    pub async fn start() -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        Self::start_at(dir, socket).await
    }

    async fn start_at(dir: tempfile::TempDir, socket: PathBuf) -> FakeAgent {
        let fake = Fake::default();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let svc = FanAgentServiceServer::new(fake.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        FakeAgent {
            fake,
            target: format!("unix:{}", socket.display()),
            socket,
            _dir: dir,
            task,
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running fake agent on TCP 127.0.0.1 with TLS; stops when dropped.
#[cfg(feature = "tls")]
pub struct TlsFakeAgent {
    /// The state handle.
    pub fake: Fake,
    /// `https://127.0.0.1:PORT`.
    pub target: String,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "tls")]
impl TlsFakeAgent {
    /// Starts a fake agent that presents `cert`/`key` and, with `client_ca`,
    /// requires client certificates signed by it (mutual TLS).
    pub async fn start(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> TlsFakeAgent {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let fake = Fake::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        let svc = FanAgentServiceServer::new(fake.clone());
        let mut server = tonic::transport::Server::builder().tls_config(tls).unwrap();
        let task = tokio::spawn(async move {
            let _ = server.add_service(svc).serve_with_incoming(incoming).await;
        });
        TlsFakeAgent {
            fake,
            target: format!("https://127.0.0.1:{port}"),
            task,
        }
    }
}

#[cfg(feature = "tls")]
impl Drop for TlsFakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
