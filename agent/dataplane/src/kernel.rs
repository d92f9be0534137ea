//! [`KernelDataplane`]: the real [`Dataplane`], composing the host setup with
//! the registered encapsulation backends.

use std::collections::HashMap;

use async_trait::async_trait;
use fan_core::host_change::{HostPrefix, PrefixKind};
use tracing::debug;

use crate::host::{Errors, HostSetup};
use crate::netlink::{Link, Netlink, TABLE_MAIN};
use crate::{
    Availability, BackendKind, Dataplane, DataplaneError, Encapsulation, HostAddress, HostView,
    NetworkPlan, Observation, Result,
};

/// The data plane that programs this host's kernel.
pub struct KernelDataplane {
    netlink: Netlink,
    host: HostSetup,
    backends: Vec<Box<dyn Encapsulation>>,
    /// Serializes every operation: the kernel allows one netlink dump at a time
    /// per socket (a second gets EBUSY), and apply/observe of one network must
    /// not interleave with another's anyway.
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KernelDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelDataplane")
            .field(
                "backends",
                &self.backends.iter().map(|b| b.kind()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl KernelDataplane {
    /// Opens the rtnetlink connection (must run inside a tokio runtime) and
    /// registers `backends`.
    pub fn new(backends: Vec<Box<dyn Encapsulation>>) -> Result<Self> {
        Ok(Self::with_netlink(Netlink::new()?, backends))
    }

    /// Uses an existing netlink connection (shared with the backends).
    pub fn with_netlink(netlink: Netlink, backends: Vec<Box<dyn Encapsulation>>) -> Self {
        let host = HostSetup::new(netlink.clone());
        Self::with_parts(netlink, host, backends)
    }

    /// Full control: a custom [`HostSetup`] (e.g. another nft binary).
    pub fn with_parts(
        netlink: Netlink,
        host: HostSetup,
        backends: Vec<Box<dyn Encapsulation>>,
    ) -> Self {
        for backend in &backends {
            backend.use_netlink(&netlink);
        }
        KernelDataplane {
            netlink,
            host,
            backends,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The netlink connection.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The host part.
    pub fn host(&self) -> &HostSetup {
        &self.host
    }

    /// See [`Dataplane::host_addresses`]; the caller holds the lock.
    async fn read_host_addresses(&self) -> Result<Vec<HostAddress>> {
        Ok(self
            .netlink
            .all_ipv4_addresses()
            .await?
            .into_iter()
            .filter(|a| !a.loopback && !a.address.ip().is_loopback())
            .map(|a| HostAddress {
                interface: a.interface,
                address: a.address,
                mtu: a.mtu,
            })
            .collect())
    }

    /// See [`Dataplane::host_prefixes`]; the caller holds the lock.
    async fn read_host_prefixes(&self) -> Result<Vec<HostPrefix>> {
        let links: HashMap<u32, Link> = self
            .netlink
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l))
            .collect();
        // The agent's own devices (bridges, tunnels) carry the fan mark.
        let ours = |index: u32| {
            links.get(&index).is_some_and(|l| {
                l.loopback || l.alias.as_deref().is_some_and(|a| a.starts_with("fan:"))
            })
        };
        let mut prefixes = Vec::new();
        for address in self.netlink.all_ipv4_addresses().await? {
            if address.loopback || ours(address.index) {
                continue;
            }
            prefixes.push(HostPrefix {
                kind: PrefixKind::Address,
                prefix: address.address,
                interface: address.interface,
            });
        }
        for route in self.netlink.ipv4_routes(Some(TABLE_MAIN)).await? {
            if route.protocol == crate::ROUTE_PROTOCOL || route.oif.is_some_and(ours) {
                continue;
            }
            prefixes.push(HostPrefix {
                kind: PrefixKind::Route,
                prefix: route.destination,
                interface: route
                    .oif
                    .and_then(|i| links.get(&i))
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
            });
        }
        Ok(prefixes)
    }

    fn backend(&self, kind: BackendKind) -> Result<&dyn Encapsulation> {
        self.backends
            .iter()
            .find(|b| b.kind() == kind)
            .map(|b| b.as_ref())
            .ok_or_else(|| DataplaneError::Unavailable {
                backend: kind,
                reason: "backend not registered in this agent".to_string(),
            })
    }
}

#[async_trait]
impl Dataplane for KernelDataplane {
    async fn availability(&self) -> Vec<Availability> {
        let mut all = Vec::with_capacity(self.backends.len());
        for backend in &self.backends {
            all.push(backend.availability().await);
        }
        all
    }

    async fn host_addresses(&self) -> Result<Vec<HostAddress>> {
        let _serial = self.serial.lock().await;
        self.read_host_addresses().await
    }

    async fn default_route_interface(&self) -> Result<Option<String>> {
        let _serial = self.serial.lock().await;
        self.netlink.default_route_interface().await
    }

    async fn host_prefixes(&self) -> Result<Vec<HostPrefix>> {
        let _serial = self.serial.lock().await;
        self.read_host_prefixes().await
    }

    async fn host_view(&self) -> Result<HostView> {
        let _serial = self.serial.lock().await;
        // Read-only and under the lock: one dump of each kind serves all.
        let _snapshot = self.netlink.snapshot();
        Ok(HostView {
            addresses: self.read_host_addresses().await?,
            default_interface: self.netlink.default_route_interface().await?,
            prefixes: self.read_host_prefixes().await?,
        })
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        let _serial = self.serial.lock().await;
        // Check the backend first: no point building a bridge we cannot feed.
        let backend = self.backend(plan.backend)?;
        debug!(network = %plan.network_id, backend = %plan.backend, "apply");
        {
            let _phase = crate::timing::phase("host");
            self.host.apply_devices(plan).await?;
        }
        // The nft table needs nothing the backend makes (and the reverse):
        // both are applied side by side.
        let backend_apply = async {
            let _phase = crate::timing::phase("backend");
            backend.apply(plan).await
        };
        let (nft, encap) = tokio::join!(self.host.apply_nft(plan), backend_apply);
        nft.and(encap)
    }

    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        let _serial = self.serial.lock().await;
        let backend = self.backend(plan.backend)?;
        let mut observation = self.host.observe(plan).await?;
        observation.merge(backend.observe(plan).await?);
        Ok(observation)
    }

    async fn observe_all(&self, plans: &[NetworkPlan]) -> Vec<Result<Observation>> {
        let _serial = self.serial.lock().await;
        // Observing changes nothing, and the lock keeps every other
        // operation out: one dump of each kind serves the whole pass. The
        // links are dumped afresh too, once per pass (see `reread_links`).
        self.netlink.reread_links();
        let _snapshot = self.netlink.snapshot();
        let mut observations = Vec::with_capacity(plans.len());
        for plan in plans {
            let observation = async {
                let backend = self.backend(plan.backend)?;
                let mut observation = self.host.observe(plan).await?;
                observation.merge(backend.observe(plan).await?);
                Ok(observation)
            };
            observations.push(observation.await);
        }
        observations
    }

    async fn watch_addresses(&self) -> Result<Option<tokio::sync::mpsc::Receiver<()>>> {
        crate::netlink::watch_ipv4_addresses().map(Some)
    }

    async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        let _serial = self.serial.lock().await;
        debug!(network = %plan.network_id, backend = %plan.backend, "remove");
        let mut errors = Errors::new();
        // An unregistered backend is reported, but the host part still goes.
        if let Some(backend) = errors.record(self.backend(plan.backend)) {
            errors.record(backend.remove(plan).await);
        }
        errors.record(self.host.remove(plan).await);
        errors.into_result()
    }
}
