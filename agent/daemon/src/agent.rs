//! The agent core: domain operations over the state store and the data plane.
//!
//! One path from desired state to the kernel: every mutation persists the
//! desired state first, then applies it; `apply` is idempotent, so the
//! reconcile pass (at start, on a timer, on request) heals a crash between the
//! two. No protobuf types here: `api` converts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use fan_core::fan::FanMap;
use fan_core::host_change::{HostPrefix, UnderlayCheck};
use fan_core::underlay::HostInterfaceAddress;
use fan_dataplane::timing;
use fan_dataplane::{
    Availability, BackendKind, Counters, Dataplane, Drift, HostAddress, NetworkPlan,
};
use ipnetwork::Ipv4Network;
use tokio::sync::watch;

use crate::error::{AgentError, Reason, Result};
use crate::events::{Event, EventHub, EventKind};
use crate::model::{
    AllocationRecord, BackendChoice, NetworkRecord, NetworkSpec, Owner, Selector, IPIP_OVERHEAD,
};
use crate::state::{Created, Store};
use crate::validate::{self, SpecInput};

/// How a network's data path on this host compares with its record (the
/// API reports it as `NetworkState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkHealth {
    /// Programmed and matching the desired state.
    Ready,
    /// Stored, but the kernel differs.
    Degraded,
    /// Cannot be programmed on this host.
    Failed,
}

/// What the agent reports about a network besides its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// Lifecycle state.
    pub state: NetworkHealth,
    /// Why it is not ready; empty when ready.
    pub reason: String,
    /// Allocated addresses.
    pub allocated: u32,
    /// Assignable addresses in total.
    pub capacity: u32,
    /// Data-plane counters, if the backend keeps them.
    pub counters: Option<Counters>,
    /// Allocations from a former slice (not counted in `allocated`).
    pub stale_allocations: u32,
}

/// A network with its observed status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkView {
    /// The persisted record.
    pub record: NetworkRecord,
    /// The observed status.
    pub status: NetworkStatus,
}

/// An allocation with what a container needs to configure its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationView {
    /// The network id.
    pub network_id: String,
    /// The persisted allocation.
    pub record: AllocationRecord,
    /// Prefix length of the slice.
    pub prefix_len: u8,
    /// The container's gateway.
    pub gateway: Ipv4Addr,
    /// The container interface MTU.
    pub mtu: u32,
    /// The former slice of a stale allocation (the host's underlay moved);
    /// `None` when the address is in the network's current slice.
    pub stale_slice: Option<Ipv4Network>,
}

impl AllocationView {
    /// The view of `record` in `network`.
    pub fn new(network: &NetworkRecord, record: AllocationRecord) -> Self {
        let stale_slice = fan_core::host_change::stale_slice(
            record.address,
            network.slice,
            &network.former_slices,
        );
        // A stale address keeps the netmask and gateway of its own slice.
        let slice = stale_slice.unwrap_or(network.slice);
        AllocationView {
            network_id: network.id.clone(),
            record,
            prefix_len: slice.prefix(),
            gateway: Ipv4Addr::from(u32::from(slice.network()).saturating_add(1)),
            mtu: network.effective_mtu(),
            stale_slice,
        }
    }
}

/// How an address resolves in one fan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The network id; empty for an ad hoc fan.
    pub network_id: String,
    /// Whether the address is in the overlay.
    pub is_overlay: bool,
    /// The underlay host owning the slice.
    pub underlay_host: Ipv4Addr,
    /// The slice.
    pub slice: Ipv4Network,
}

/// What `GetAgentInfo` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Host IPv4 addresses.
    pub addresses: Vec<HostAddress>,
    /// Backend availability.
    pub backends: Vec<Availability>,
    /// What `auto` picks here.
    pub auto_backend: Option<BackendKind>,
}

/// A page of results and the token of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Empty when this is the last page.
    pub next_page_token: String,
    /// The event revision the page reflects.
    pub revision: u64,
}

/// Which spec fields UpdateNetwork changes, with their new values
/// (`None`: not in the update mask).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkUpdate {
    /// New host reserve.
    pub host_reserve: Option<u32>,
    /// New MTU (0: underlay MTU − 20).
    pub mtu: Option<u32>,
    /// New masquerade setting.
    pub masquerade: Option<bool>,
    /// New anti-spoofing setting.
    pub anti_spoofing: Option<bool>,
    /// New labels (replace all).
    pub labels: Option<BTreeMap<String, String>>,
    /// Serve DHCP on the bridge or not. Turning it off drops the stored
    /// DHCP options unless the update names them too.
    pub dhcp: Option<bool>,
    /// New DHCP DNS servers, as given (validated against the resulting `dhcp`).
    pub dhcp_dns: Option<Vec<String>>,
    /// New DHCP lease seconds (0: the default), only with `dhcp` on.
    pub dhcp_lease_seconds: Option<u32>,
}

/// The DHCP options a network has after `update`: unmasked options keep
/// their stored value while DHCP stays on, and fall back to their defaults
/// when DHCP is turned off or on. Validated by the CreateNetwork rules.
fn updated_dhcp(spec: &NetworkSpec, update: &NetworkUpdate) -> Result<(bool, Vec<Ipv4Addr>, u32)> {
    let dhcp = update.dhcp.unwrap_or(spec.dhcp);
    let toggled = dhcp != spec.dhcp;
    let dns = match &update.dhcp_dns {
        Some(dns) => dns.clone(),
        None if toggled => Vec::new(),
        None => spec.dhcp_dns.iter().map(ToString::to_string).collect(),
    };
    let lease = match update.dhcp_lease_seconds {
        Some(lease) => lease,
        None if toggled => 0,
        None => spec.dhcp_lease_seconds,
    };
    let mut checks = validate::Checks::new();
    let (dns, lease) = validate::dhcp_options(&mut checks, dhcp, &dns, lease);
    checks.finish()?;
    Ok((dhcp, dns, lease))
}

/// ListAllocations filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    /// Only this container id; empty means any.
    pub container_id: String,
    /// Only allocations carrying all these labels.
    pub labels: BTreeMap<String, String>,
}

/// The agent: one per host.
pub struct Agent {
    store: Store,
    dataplane: Arc<dyn Dataplane>,
    backends: Vec<Availability>,
    /// Last apply failure per network; a network is ready when absent here.
    apply_failures: Mutex<HashMap<String, String>>,
    /// Serializes network create/delete/reconcile so they never interleave on the kernel.
    network_ops: tokio::sync::Mutex<()>,
    /// Networks whose underlay address is gone from the host, with the
    /// reason: not programmed, allocations refused (SLICE_NOT_OWNED).
    underlay_lost: Mutex<HashMap<String, String>>,
    /// Host addresses and routes each network's overlay overlaps, as last
    /// seen (by the host check and `check_network`): one netlink dump per
    /// pass instead of one per status read.
    overlaps: Mutex<HashMap<String, Vec<HostPrefix>>>,
    ready: watch::Sender<bool>,
    /// Set once the start-up pass has applied every stored network: until
    /// then the agent is not ready, however many networks already succeeded.
    start_pass_done: std::sync::atomic::AtomicBool,
    /// The state (and reason) last reported per network in an event, so
    /// NETWORK_STATE_CHANGED is sent on transitions only.
    reported_states: Mutex<HashMap<String, (NetworkHealth, String)>>,
    /// The drifts last reported per network, so a drift the pass cannot
    /// repair is reported once, not on every pass.
    reported_drifts: Mutex<HashMap<String, Vec<Drift>>>,
    /// The plan each network was last applied with, successfully, by this
    /// process. A reconcile pass skips the apply of a network whose kernel
    /// state matches this plan; any other (first pass after a start, a
    /// failure, a changed plan) is applied, which also restarts what lives
    /// in the process only (the eBPF backend's endpoint refresher).
    applied: Mutex<HashMap<String, NetworkPlan>>,
}

impl Agent {
    /// Builds the agent and probes which backends this host can run.
    pub async fn new(store: Store, dataplane: Arc<dyn Dataplane>) -> Agent {
        let mut backends = dataplane.availability().await;
        // Report every backend, also those this build does not register.
        for kind in BackendKind::ALL {
            if !backends.iter().any(|a| a.backend == kind) {
                backends.push(Availability {
                    backend: kind,
                    available: false,
                    reason: "not built into this agent".to_owned(),
                });
            }
        }
        backends.sort_by_key(|a| a.backend);
        for availability in &backends {
            tracing::info!(backend = %availability.backend, available = availability.available, reason = %availability.reason, "backend probe");
        }
        let (ready, _) = watch::channel(false);
        Agent {
            store,
            dataplane,
            backends,
            apply_failures: Mutex::new(HashMap::new()),
            network_ops: tokio::sync::Mutex::new(()),
            underlay_lost: Mutex::new(HashMap::new()),
            overlaps: Mutex::new(HashMap::new()),
            ready,
            start_pass_done: std::sync::atomic::AtomicBool::new(false),
            reported_states: Mutex::new(HashMap::new()),
            reported_drifts: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// The event history and fan-out (WatchEvents).
    pub fn events(&self) -> Arc<EventHub> {
        self.store.events()
    }

    /// Records a NETWORK_STATE_CHANGED event when `record`'s state differs
    /// from the one last reported.
    fn report_state(&self, record: &NetworkRecord, state: NetworkHealth, reason: &str) {
        let mut reported = self
            .reported_states
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let previous = reported.get(&record.id).map(|(s, _)| *s);
        // A network starts ready: no event for the first ready.
        if previous == Some(state) || (previous.is_none() && state == NetworkHealth::Ready) {
            return;
        }
        reported.insert(record.id.clone(), (state, reason.to_owned()));
        drop(reported);
        let mut event = Event::new(EventKind::NetworkStateChanged, record);
        event.state = Some(state);
        event.reason = reason.to_owned();
        self.store.note(event);
    }

    /// Becomes true once every persisted network's data path is programmed,
    /// false again while one is degraded.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A poisoned lock only means a panic elsewhere; the map is still usable.
        self.apply_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn record_apply(&self, id: &str, result: &Result<()>) {
        let mut failures = self.failures();
        match result {
            Ok(()) => {
                failures.remove(id);
            }
            Err(err) => {
                failures.insert(id.to_owned(), err.to_string());
            }
        }
        let ready = failures.is_empty();
        drop(failures);
        self.publish_readiness(ready);
    }

    /// Ready means every stored network is programmed: never before the
    /// start-up pass has been through all of them.
    fn publish_readiness(&self, no_failures: bool) {
        let started = self
            .start_pass_done
            .load(std::sync::atomic::Ordering::SeqCst);
        self.ready.send_replace(started && no_failures);
    }

    fn lost_reason(&self, id: &str) -> Option<String> {
        self.underlay_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    async fn apply(&self, record: &NetworkRecord) -> Result<()> {
        // A slice the host no longer owns is not programmed: its traffic
        // would carry an outer source address the host does not have.
        let result = match self.lost_reason(&record.id) {
            Some(reason) => Err(AgentError::precondition(Reason::SliceNotOwned, reason)
                .with("network_id", &record.id)),
            None => self
                .dataplane
                .apply(&record.plan())
                .await
                .map_err(AgentError::from),
        };
        if let Err(err) = &result {
            tracing::warn!(network = %record.id, error = %err, "apply failed");
        }
        {
            let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(()) => applied.insert(record.id.clone(), record.plan()),
                Err(_) => applied.remove(&record.id),
            };
        }
        self.record_apply(&record.id, &result);
        match &result {
            Ok(()) => self.report_state(record, NetworkHealth::Ready, ""),
            Err(err) => self.report_state(record, NetworkHealth::Failed, &err.to_string()),
        }
        result
    }

    /// Applies every persisted network (at start and on a timer): the one
    /// path from stored desired state to the kernel. Returns how many failed.
    pub async fn reconcile_all(&self) -> Result<usize> {
        let mut failed = 0;
        // Every network observed at once (the data plane reads the host
        // once for all), under the lock so no create or delete is half-way.
        let (records, mut observations) = {
            let _guard = self.network_ops.lock().await;
            let records = self.store.networks().await?;
            let plans: Vec<NetworkPlan> = records.iter().map(NetworkRecord::plan).collect();
            let observations = self.dataplane.observe_all(&plans).await;
            (records, observations)
        };
        let started = self
            .start_pass_done
            .load(std::sync::atomic::Ordering::SeqCst);
        observations.resize_with(records.len(), || {
            Err(fan_dataplane::DataplaneError::other(
                "observe",
                "no observation",
            ))
        });
        for (seen, observed) in records.iter().zip(observations) {
            let id = &seen.id;
            // One network at a time under the lock, so a create or delete
            // waits for one apply, not for the whole pass; the record is read
            // again under the lock because it may have changed or gone since.
            let _guard = self.network_ops.lock().await;
            let record = match self.store.network(id).await {
                Ok(record) => record,
                Err(AgentError::NotFound { .. }) => continue,
                Err(err) => return Err(err),
            };
            let plan = record.plan();
            // Changed since the pass observed it (updated, moved): observed again.
            let observed = if plan == seen.plan() {
                observed
            } else {
                self.dataplane.observe(&plan).await
            };
            let lost = self.lost_reason(id).is_some();
            // What the pass repairs is reported: drift detected, then repaired.
            let drifts = match (&observed, lost) {
                (Ok(observation), false) => observation.drifts.clone(),
                _ => Vec::new(),
            };
            let detected = !drifts.is_empty();
            let found = drifts.len();
            crate::metrics::get().reconcile_drifts_found(found);
            // A pass that could not look (a failed observation, a lost
            // underlay) leaves what was reported as it is: unseen is not
            // repaired.
            let looked = observed.is_ok() && !lost;
            let (known, was_reported) = {
                let mut reported = self
                    .reported_drifts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let known = reported.get(id) == Some(&drifts);
                let was_reported = if detected {
                    reported.insert(id.clone(), drifts.clone()).is_some()
                } else if looked {
                    reported.remove(id).is_some()
                } else {
                    false
                };
                (known, was_reported)
            };
            // A drift reported earlier and now observed gone (repaired by
            // someone else, or by an apply of an earlier pass that could not
            // confirm it) is closed for watchers too.
            if !detected && was_reported {
                self.store
                    .note(Event::new(EventKind::DriftRepaired, &record));
            }
            if detected && !known {
                let mut event = Event::new(EventKind::DriftDetected, &record);
                event.reason = describe_drifts(&drifts);
                event.drifts = drifts;
                self.store.note(event);
            }
            // Nothing to repair: the kernel matches the plan this process
            // last applied. The start-up pass, a lost underlay, a failed
            // observation or a plan not applied yet is applied (apply
            // records the outcome).
            let clean = started
                && !lost
                && observed.is_ok()
                && !detected
                && self
                    .applied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(id)
                    == Some(&plan);
            if clean {
                continue;
            }
            let repaired = self.apply(&record).await;
            match &repaired {
                Ok(()) => crate::metrics::get().drifts_repaired(found),
                Err(_) => failed += 1,
            }
            // Observed again after the apply: repaired only if nothing is left.
            if detected && repaired.is_ok() && self.matches_kernel(&record).await {
                self.reported_drifts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                self.store
                    .note(Event::new(EventKind::DriftRepaired, &record));
            }
        }
        crate::metrics::get().reconcile_run(failed);
        self.start_pass_done
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let no_failures = self.failures().is_empty();
        self.publish_readiness(no_failures);
        Ok(failed)
    }

    /// Compares every network's recorded underlay address with the host's
    /// addresses (on every address change the kernel reports, at start and
    /// on the reconcile timer) and applies the slice-move rule of
    /// [`fan_core::host_change`]: a lost address fails the network, a new
    /// one moves it to its new slice (durably) and re-programs the data path.
    pub async fn check_host(&self) -> Result<()> {
        let _guard = self.network_ops.lock().await;
        let records = self.store.networks().await?;
        if records.is_empty() {
            return Ok(());
        }
        let (interfaces, default_interface, host) = self.host_view().await?;
        for record in records {
            let Ok(spec) = fan_core::underlay::UnderlaySpec::parse(&record.spec.underlay) else {
                continue;
            };
            let check = fan_core::host_change::check_underlay(
                &spec,
                record.spec.overlay,
                record.underlay_address,
                &record.underlay_interface,
                &interfaces,
                default_interface.as_deref(),
            );
            let was_lost = self.lost_reason(&record.id).is_some();
            match check {
                UnderlayCheck::Owned => {
                    if was_lost {
                        self.set_lost(&record.id, None);
                        tracing::info!(network = %record.id, address = %record.underlay_address, "underlay address is back");
                        let _ = self.apply(&record).await;
                    }
                }
                UnderlayCheck::Lost { reason } => {
                    if !was_lost {
                        tracing::warn!(network = %record.id, "{reason}");
                        self.set_lost(&record.id, Some(reason));
                        // Records the failure (readiness, status) without programming.
                        let _ = self.apply(&record).await;
                    }
                }
                UnderlayCheck::Moved { underlay, slice } => {
                    let moved = NetworkRecord {
                        former_slices: fan_core::host_change::former_slices_after_move(
                            &record.former_slices,
                            record.slice,
                            slice,
                        ),
                        underlay_network: underlay.network,
                        underlay_address: underlay.address,
                        underlay_interface: underlay.interface,
                        underlay_mtu: underlay.mtu,
                        slice,
                        ..record.clone()
                    };
                    // The old slice's gateway and routes go with the old plan
                    // where they differ; apply then programs the new one.
                    let moved = self.store.move_network(moved).await?;
                    // The lost address's failure is over: status must not show
                    // it beside the new slice while apply re-programs (until
                    // then it observes drift, and readiness keeps its value).
                    self.failures().remove(&record.id);
                    tracing::warn!(network = %record.id, from = %record.slice, to = %moved.slice, address = %moved.underlay_address, "underlay address changed: network moved to a new slice; allocations of the old slice are stale");
                    self.set_lost(&record.id, None);
                    // Same bridge and devices: apply replaces the old slice's
                    // gateway, routes and parameters in place, so containers
                    // stay plugged while they are re-addressed.
                    let _ = self.apply(&moved).await;
                }
            }
        }
        // Overlaps with the host's addresses or routes, for the status (the
        // moves above change only the agent's own devices, not these).
        self.record_overlaps(&self.store.networks().await?, &host);
        Ok(())
    }

    /// Whether the kernel matches `record`'s plan.
    async fn matches_kernel(&self, record: &NetworkRecord) -> bool {
        self.dataplane
            .observe(&record.plan())
            .await
            .is_ok_and(|o| o.drifts.is_empty())
    }

    fn set_lost(&self, id: &str, reason: Option<String>) {
        let mut lost = self.underlay_lost.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(reason) => lost.insert(id.to_owned(), reason),
            None => lost.remove(id),
        };
    }

    /// Describes the agent and its host.
    pub async fn info(&self) -> Result<AgentInfo> {
        Ok(AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel_release: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            addresses: self.dataplane.host_addresses().await?,
            backends: self.backends.clone(),
            auto_backend: self.auto_backend(),
        })
    }

    fn auto_backend(&self) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|kind| {
            self.backends
                .iter()
                .any(|a| a.backend == *kind && a.available)
        })
    }

    fn choose_backend(&self, choice: BackendChoice) -> Result<BackendKind> {
        let Some(kind) = choice.concrete() else {
            return self.auto_backend().ok_or_else(|| {
                let why: Vec<String> = self
                    .backends
                    .iter()
                    .map(|a| format!("{}: {}", a.backend, a.reason))
                    .collect();
                AgentError::precondition(
                    Reason::NoBackendAvailable,
                    format!(
                        "spec.backend: auto found no usable data-plane backend ({})",
                        why.join("; ")
                    ),
                )
            });
        };
        match self.backends.iter().find(|a| a.backend == kind) {
            Some(a) if a.available => Ok(kind),
            Some(a) => Err(AgentError::precondition(
                Reason::BackendUnavailable,
                format!(
                    "spec.backend: {kind} is not available on this host: {}",
                    a.reason
                ),
            )
            .with("backend", kind)),
            None => Err(AgentError::precondition(
                Reason::BackendUnavailable,
                format!("spec.backend: {kind} is not built into this agent"),
            )
            .with("backend", kind)),
        }
    }

    /// The host's interface addresses, default-route device and prefixes
    /// (what an overlay must not overlap), read together.
    async fn host_view(
        &self,
    ) -> Result<(Vec<HostInterfaceAddress>, Option<String>, Vec<HostPrefix>)> {
        let view = self.dataplane.host_view().await?;
        let interfaces = view
            .addresses
            .into_iter()
            .map(|a| HostInterfaceAddress {
                interface: a.interface,
                address: a.address.ip(),
                prefix_len: a.address.prefix(),
                mtu: a.mtu,
            })
            .collect();
        Ok((interfaces, view.default_interface, view.prefixes))
    }

    /// Creates a network (idempotent for the same spec) and programs it.
    pub async fn create_network(&self, id: &str, input: &SpecInput) -> Result<NetworkView> {
        // The phases go to one log line that `fan-bench control` reads
        // (see fan_dataplane::timing).
        let started = std::time::Instant::now();
        let (result, phases) = timing::collect(self.create_network_timed(id, input)).await;
        // An invalid id may be huge or hold anything: logged cut and tame.
        let shown: String = id
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        tracing::info!(
            target: timing::LOG_TARGET,
            "phases network={shown} ok={} total_ms={:.3} {}",
            result.is_ok(),
            started.elapsed().as_secs_f64() * 1e3,
            timing::render(&phases)
        );
        result
    }

    async fn create_network_timed(&self, id: &str, input: &SpecInput) -> Result<NetworkView> {
        let validate_phase = timing::phase("validate");
        // Every invalid field at once: the id and the spec together.
        let mut checks = validate::Checks::new();
        checks.check(validate::network_id("network_id", id));
        let parsed = checks.check(validate::spec(input));
        let (spec, underlay) = checks.finish_with(parsed)?;
        if let Some(warning) = fan_core::fan::routed_overlap_warning(spec.overlay) {
            tracing::warn!(network = %id, overlay = %spec.overlay, "{warning}");
        }
        let (interfaces, default_interface, host) = self.host_view().await?;
        let resolved = underlay
            .resolve(&interfaces, default_interface.as_deref())
            .map_err(|e| {
                AgentError::precondition(Reason::UnderlayNotFound, format!("spec.underlay: {e}"))
                    .with("network_id", id)
                    .with("underlay", &input.underlay)
            })?;
        let fan = FanMap::new(spec.overlay, resolved.network).map_err(|e| {
            AgentError::invalid(
                "spec.overlay",
                format!("{e} (underlay {})", resolved.network),
            )
        })?;
        let slice = fan
            .slice_of(resolved.address)
            .map_err(|e| AgentError::invalid("spec.underlay", e))?;
        let mut checks = validate::Checks::new();
        let max_mtu = resolved.mtu.saturating_sub(IPIP_OVERHEAD);
        if spec.mtu > max_mtu {
            checks.check::<()>(Err(AgentError::invalid(
                "spec.mtu",
                format!(
                    "must be at most the underlay MTU minus {IPIP_OVERHEAD} ({max_mtu} on {}), got {}",
                    resolved.interface, spec.mtu
                ),
            )));
        }
        checks.check(
            fan_core::ipam::SlicePool::new(slice, spec.host_reserve)
                .map_err(|e| AgentError::invalid("spec.host_reserve", e)),
        );
        checks.finish()?;
        let backend = self
            .choose_backend(spec.backend)
            .map_err(|e| e.with("network_id", id))?;
        drop(validate_phase);
        let overlap_phase = timing::phase("overlap_check");
        // Re-creating an existing network repairs it; only a new one is checked.
        if !spec.allow_overlap && self.store.network(id).await.is_err() {
            let conflicts = fan_core::host_change::overlay_conflicts(spec.overlay, &host);
            if !conflicts.is_empty() {
                let named: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
                return Err(AgentError::precondition(
                    Reason::OverlayOverlapsHost,
                    format!(
                        "spec.overlay: {} overlaps this host's {} (set spec.allow_overlap / --allow-overlap to accept it)",
                        spec.overlay,
                        named.join(", ")
                    ),
                )
                .with("network_id", id)
                .with("overlay", spec.overlay.to_string()));
            }
        }
        let record = NetworkRecord {
            id: id.to_owned(),
            index: 0,
            spec,
            underlay_network: resolved.network,
            underlay_address: resolved.address,
            underlay_interface: resolved.interface,
            underlay_mtu: resolved.mtu,
            slice,
            backend,
            create_time_ms: crate::model::now_ms(),
            former_slices: Vec::new(),
        };

        drop(overlap_phase);
        let _guard = self.network_ops.lock().await;
        let commit_phase = timing::phase("commit");
        let created = self.store.create_network(record).await?;
        drop(commit_phase);
        match created {
            Created::New(record) => {
                tracing::info!(network = %record.id, slice = %record.slice, backend = %record.backend, "network created");
                let apply_phase = timing::phase("apply");
                let applied = self.apply(&record).await;
                drop(apply_phase);
                if let Err(err) = applied {
                    // A network that cannot be programmed is not created: undo
                    // whatever part was made and forget it.
                    let _ = self.dataplane.remove(&record.plan()).await;
                    let _ = self.store.delete_network(&record.id, true).await;
                    self.record_apply(&record.id, &Ok(()));
                    return Err(AgentError::precondition(
                        Reason::NetworkProgrammingFailed,
                        format!("programming network {:?} failed: {err}", record.id),
                    )
                    .with("network_id", &record.id));
                }
                let _view_phase = timing::phase("view");
                self.view(record).await
            }
            Created::Existing(record) => {
                // Re-creating repairs: apply is idempotent.
                let _ = self.apply(&record).await;
                self.view(record).await
            }
        }
    }

    /// What the host part of the data plane cannot see: a lost underlay
    /// address, and host addresses or routes the overlay overlaps.
    fn host_drifts(&self, record: &NetworkRecord) -> Vec<Drift> {
        let mut drifts = Vec::new();
        if self.lost_reason(&record.id).is_some() {
            drifts.push(Drift {
                object: format!(
                    "underlay address {} on {}",
                    record.underlay_address, record.underlay_interface
                ),
                expected: "present".to_owned(),
                observed: "absent".to_owned(),
            });
        }
        let overlaps = self.overlaps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conflicts) = overlaps.get(&record.id) {
            for conflict in conflicts {
                drifts.push(Drift {
                    object: conflict.to_string(),
                    expected: format!(
                        "outside overlay {} (or spec.allow_overlap)",
                        record.spec.overlay
                    ),
                    observed: "overlaps it".to_owned(),
                });
            }
        }
        drifts
    }

    /// Re-reads the host's addresses and routes and records which of
    /// `records` overlap them (networks with `allow_overlap` never do).
    async fn refresh_overlaps(&self, records: &[NetworkRecord]) -> Result<()> {
        let host = self.dataplane.host_prefixes().await?;
        self.record_overlaps(records, &host);
        Ok(())
    }

    /// Records which of `records` overlap the host prefixes `host`.
    fn record_overlaps(&self, records: &[NetworkRecord], host: &[HostPrefix]) {
        let mut overlaps = self.overlaps.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            let found = if record.spec.allow_overlap {
                Vec::new()
            } else {
                fan_core::host_change::overlay_conflicts(record.spec.overlay, host)
            };
            if found.is_empty() {
                overlaps.remove(&record.id);
                continue;
            }
            if overlaps.get(&record.id) != Some(&found) {
                let named: Vec<String> = found.iter().map(ToString::to_string).collect();
                tracing::warn!(network = %record.id, overlay = %record.spec.overlay, conflicts = %named.join(", "), "overlay overlaps the host's addresses or routes");
            }
            overlaps.insert(record.id.clone(), found);
        }
    }

    async fn view(&self, record: NetworkRecord) -> Result<NetworkView> {
        let (allocated, capacity) = self.store.usage(&record.id).await?;
        let stale_allocations = self.store.stale_count(&record.id).await?;
        let observed = match self.dataplane.observe(&record.plan()).await {
            Ok(mut observation) => {
                observation.drifts.extend(self.host_drifts(&record));
                Ok(observation)
            }
            Err(err) => Err(err),
        };
        let (state, reason, counters) = match observed {
            Ok(observation) if observation.drifts.is_empty() && stale_allocations > 0 => (
                NetworkHealth::Degraded,
                format!(
                    "{stale_allocations} allocation(s) are stale: they belong to former slice(s) {} of this host, which now owns {}; re-address their containers and release them",
                    record
                        .former_slices
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    record.slice
                ),
                observation.counters,
            ),
            Ok(observation) if observation.drifts.is_empty() => {
                (NetworkHealth::Ready, String::new(), observation.counters)
            }
            Ok(observation) => (
                NetworkHealth::Degraded,
                format!(
                    "kernel differs from the desired state: {}",
                    describe_drifts(&observation.drifts)
                ),
                observation.counters,
            ),
            Err(err) => (
                NetworkHealth::Degraded,
                format!("observing the data plane failed: {err}"),
                None,
            ),
        };
        let (state, reason) = match self.failures().get(&record.id) {
            Some(failure) => (NetworkHealth::Failed, failure.clone()),
            None => (state, reason),
        };
        Ok(NetworkView {
            record,
            status: NetworkStatus {
                state,
                reason,
                allocated,
                capacity,
                counters,
                stale_allocations,
            },
        })
    }

    /// One network with its observed status.
    pub async fn get_network(&self, id: &str) -> Result<NetworkView> {
        validate::network_id("network_id", id)?;
        let record = self.store.network(id).await?;
        self.view(record).await
    }

    /// Networks in id order, paginated with an opaque token, and the
    /// revision they reflect.
    pub async fn list_networks(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<NetworkView>> {
        const BINDING: &str = "networks";
        let mut checks = validate::Checks::new();
        let limit = checks.check(validate::page_size("page_size", page_size));
        let after = if page_token.is_empty() {
            Some(String::new())
        } else {
            checks.check(crate::page_token::decode("page_token", BINDING, page_token))
        };
        let (limit, after) = checks.finish_with(limit.zip(after))?;
        let (records, revision) = self.store.networks_at().await?;
        let mut rest = records
            .into_iter()
            .filter(|r| after.is_empty() || r.id > after);
        let mut items = Vec::new();
        for record in rest.by_ref().take(limit) {
            items.push(self.view(record).await?);
        }
        let next_page_token = match (rest.next(), items.last()) {
            (Some(_), Some(last)) => crate::page_token::encode(BINDING, &last.record.id),
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_page_token,
            revision,
        })
    }

    /// Changes the masked fields of a network's spec, stores the new spec,
    /// then re-programs the data path; allocations are kept. Returns the
    /// network and whether anything changed.
    pub async fn update_network(
        &self,
        id: &str,
        update: NetworkUpdate,
    ) -> Result<(NetworkView, bool)> {
        let mut checks = validate::Checks::new();
        checks.check(validate::network_id("network_id", id));
        if let Some(mtu) = update.mtu {
            if mtu != 0 && !(validate::MIN_MTU..=65535).contains(&mtu) {
                checks.check::<()>(Err(AgentError::invalid(
                    "spec.mtu",
                    format!(
                        "must be 0 (underlay MTU − 20) or between {} and 65535, got {mtu}",
                        validate::MIN_MTU
                    ),
                )));
            }
        }
        if let Some(labels) = &update.labels {
            checks.check(validate::labels("spec.labels", labels));
        }
        if update == NetworkUpdate::default() {
            checks.check::<()>(Err(AgentError::invalid(
                "update_mask",
                "must name at least one of host_reserve, mtu, masquerade, anti_spoofing, labels, dhcp, dhcp_dns, dhcp_lease_seconds",
            )));
        }
        checks.finish()?;
        let _guard = self.network_ops.lock().await;
        let change = move |old: &NetworkRecord| -> Result<NetworkRecord> {
            let mut new = old.clone();
            if let Some(mtu) = update.mtu {
                let max_mtu = old.underlay_mtu.saturating_sub(IPIP_OVERHEAD);
                if mtu > max_mtu {
                    return Err(AgentError::invalid(
                        "spec.mtu",
                        format!(
                            "must be at most the underlay MTU minus {IPIP_OVERHEAD} ({max_mtu} on {}), got {mtu}",
                            old.underlay_interface
                        ),
                    ));
                }
                new.spec.mtu = mtu;
            }
            if let Some(reserve) = update.host_reserve {
                fan_core::ipam::SlicePool::new(old.slice, reserve)
                    .map_err(|e| AgentError::invalid("spec.host_reserve", e))?;
                new.spec.host_reserve = reserve;
            }
            if let Some(masquerade) = update.masquerade {
                new.spec.masquerade = masquerade;
            }
            if let Some(anti_spoofing) = update.anti_spoofing {
                new.spec.anti_spoofing = anti_spoofing;
            }
            let (dhcp, dhcp_dns, dhcp_lease_seconds) = updated_dhcp(&old.spec, &update)?;
            new.spec.dhcp = dhcp;
            new.spec.dhcp_dns = dhcp_dns;
            new.spec.dhcp_lease_seconds = dhcp_lease_seconds;
            if let Some(labels) = update.labels {
                new.spec.labels = labels;
            }
            Ok(new)
        };
        let (record, changed) = self.store.update_network(id, change).await?;
        if changed {
            tracing::info!(network = %id, mtu = record.effective_mtu(), masquerade = record.spec.masquerade, anti_spoofing = record.spec.anti_spoofing, host_reserve = record.spec.host_reserve, dhcp = record.spec.dhcp, "network updated");
            // Stored first: a failed apply is reported in the status and
            // retried by the reconcile pass.
            let _ = self.apply(&record).await;
        }
        Ok((self.view(record).await?, changed))
    }

    /// Deletes a network and everything the agent made for it.
    /// Returns (deleted, released allocations).
    pub async fn delete_network(
        &self,
        id: &str,
        force: bool,
        allow_missing: bool,
    ) -> Result<(bool, u32)> {
        validate::network_id("network_id", id)?;
        let _guard = self.network_ops.lock().await;
        let record = match self.store.network(id).await {
            Ok(record) => record,
            Err(AgentError::NotFound { .. }) if allow_missing => return Ok((false, 0)),
            Err(err) => return Err(err),
        };
        let (allocated, _) = self.store.usage(id).await?;
        if allocated > 0 && !force {
            return Err(AgentError::precondition(
                Reason::NetworkInUse,
                format!("network {id:?} still has {allocated} allocation(s); release them first or delete with force"),
            )
            .with("network_id", id));
        }
        // Kernel first: if removal fails the network stays known and can be retried.
        self.dataplane.remove(&record.plan()).await?;
        match self.store.delete_network(id, force).await {
            Ok((_, released)) => {
                self.set_lost(id, None);
                self.overlaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                self.record_apply(id, &Ok(()));
                tracing::info!(network = %id, released, "network deleted");
                Ok((true, released))
            }
            Err(err) => {
                // An allocation raced in: put the data path back.
                let _ = self.apply(&record).await;
                Err(err)
            }
        }
    }

    /// Differences between the kernel and the desired state, without repairing.
    pub async fn check_network(&self, id: &str) -> Result<Vec<Drift>> {
        validate::network_id("network_id", id)?;
        let record = self.store.network(id).await?;
        let mut drifts = self.dataplane.observe(&record.plan()).await?.drifts;
        self.refresh_overlaps(std::slice::from_ref(&record)).await?;
        drifts.extend(self.host_drifts(&record));
        crate::metrics::get().drifts_checked(drifts.len());
        Ok(drifts)
    }

    /// Allocates an address for one container interface.
    pub async fn allocate(
        &self,
        network_id: &str,
        owner: Owner,
        requested: Option<Ipv4Addr>,
        labels: BTreeMap<String, String>,
    ) -> Result<(AllocationView, bool)> {
        validate::network_id("network_id", network_id)?;
        validate::labels("labels", &labels)?;
        if let Some(reason) = self.lost_reason(network_id) {
            return Err(AgentError::precondition(
                Reason::SliceNotOwned,
                format!("network {network_id:?}: this host no longer owns its slice: {reason}"),
            )
            .with("network_id", network_id));
        }
        let allocated = self
            .store
            .allocate(network_id, owner, requested, labels)
            .await?;
        Ok((
            AllocationView::new(&allocated.network, allocated.record),
            allocated.newly_allocated,
        ))
    }

    /// One allocation.
    pub async fn get_allocation(
        &self,
        network_id: &str,
        selector: Selector,
    ) -> Result<AllocationView> {
        validate::network_id("network_id", network_id)?;
        let record = self.store.allocation(network_id, selector).await?;
        let network = self.store.network(network_id).await?;
        Ok(AllocationView::new(&network, record))
    }

    /// Releases an allocation; `Ok(None)` when there was none and `allow_missing`.
    pub async fn release(
        &self,
        network_id: &str,
        selector: Selector,
        allow_missing: bool,
    ) -> Result<Option<AllocationView>> {
        validate::network_id("network_id", network_id)?;
        let network = self.store.network(network_id).await?;
        match self.store.release(network_id, selector.clone()).await? {
            Some(record) => Ok(Some(AllocationView::new(&network, record))),
            None if allow_missing => Ok(None),
            None => Err(AgentError::allocation_not_found(network_id, &selector)),
        }
    }

    /// Allocations in (network id, address) order, of one network or of
    /// all (empty `network_id`), filtered, paginated with an opaque token
    /// bound to the request; and the revision they reflect.
    pub async fn list_allocations(
        &self,
        network_id: &str,
        filter: AllocationFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<AllocationView>> {
        let mut checks = validate::Checks::new();
        if !network_id.is_empty() {
            checks.check(validate::network_id("network_id", network_id));
        }
        let limit = checks.check(validate::page_size("page_size", page_size));
        let labels: Vec<String> = filter
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let binding = format!(
            "allocations\0{network_id}\0{}\0{}",
            filter.container_id,
            labels.join(",")
        );
        let after = if page_token.is_empty() {
            Some(None)
        } else {
            checks
                .check(
                    crate::page_token::decode("page_token", &binding, page_token).and_then(
                        |position| {
                            position
                                .rsplit_once('/')
                                .and_then(|(id, a)| Some((id.to_owned(), a.parse().ok()?)))
                                .ok_or_else(|| AgentError::invalid("page_token", "is damaged"))
                        },
                    ),
                )
                .map(Some)
        };
        let (limit, after) = checks.finish_with(limit.zip(after))?;
        let network = (!network_id.is_empty()).then(|| network_id.to_owned());
        let keep = move |a: &AllocationRecord| {
            (filter.container_id.is_empty() || a.owner.container_id == filter.container_id)
                && filter
                    .labels
                    .iter()
                    .all(|(k, v)| a.labels.get(k) == Some(v))
        };
        let (records, more, revision) = self
            .store
            .list_allocations(network, after, keep, limit)
            .await?;
        let items: Vec<AllocationView> = records
            .into_iter()
            .map(|(n, r)| AllocationView::new(&n, r))
            .collect();
        let next_page_token = match (more, items.last()) {
            (true, Some(last)) => crate::page_token::encode(
                &binding,
                &format!("{}/{}", last.network_id, last.record.address),
            ),
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_page_token,
            revision,
        })
    }

    /// Releases (or lists, with `dry_run`) allocations whose owner is not valid.
    pub async fn garbage_collect(
        &self,
        network_id: &str,
        valid: BTreeSet<Owner>,
        dry_run: bool,
    ) -> Result<Vec<AllocationView>> {
        validate::network_id("network_id", network_id)?;
        let network = self.store.network(network_id).await?;
        let released = self
            .store
            .garbage_collect(network_id, valid, dry_run)
            .await?;
        Ok(released
            .into_iter()
            .map(|r| AllocationView::new(&network, r))
            .collect())
    }

    /// Resolves an address in the agent's networks, or in an ad hoc fan.
    pub async fn resolve(
        &self,
        address: Ipv4Addr,
        network_id: &str,
        adhoc: Option<(Ipv4Network, Ipv4Network)>,
    ) -> Result<Vec<Resolution>> {
        let fans: Vec<(String, FanMap)> = match adhoc {
            Some((overlay, underlay)) => {
                let fan = FanMap::new(overlay, underlay)
                    .map_err(|e| AgentError::invalid("overlay", e))?;
                vec![(String::new(), fan)]
            }
            None => {
                let records = if network_id.is_empty() {
                    self.store.networks().await?
                } else {
                    validate::network_id("network_id", network_id)?;
                    vec![self.store.network(network_id).await?]
                };
                records
                    .into_iter()
                    .filter_map(|r| {
                        FanMap::new(r.spec.overlay, r.underlay_network)
                            .ok()
                            .map(|f| (r.id, f))
                    })
                    .collect()
            }
        };
        Ok(fans
            .into_iter()
            .filter_map(|(id, fan)| resolve_in(&id, &fan, address))
            .collect())
    }
}

/// Pure: how `address` resolves in one fan, if it belongs to it.
fn resolve_in(network_id: &str, fan: &FanMap, address: Ipv4Addr) -> Option<Resolution> {
    let (is_overlay, host) = if fan.contains_overlay(address) {
        (true, fan.owner_of(address).ok()?)
    } else if fan.contains_underlay(address) {
        (false, address)
    } else {
        return None;
    };
    let slice = fan.slice_of(host).ok()?;
    Some(Resolution {
        network_id: network_id.to_owned(),
        is_overlay,
        underlay_host: host,
        slice,
    })
}

/// One line listing drifts, for a status reason.
pub fn describe_drifts(drifts: &[Drift]) -> String {
    drifts
        .iter()
        .map(|d| {
            format!(
                "{}: expected {}, found {}",
                d.object, d.expected, d.observed
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dhcp: bool) -> NetworkSpec {
        NetworkSpec {
            overlay: "250.0.0.0/8".parse().unwrap(),
            underlay: "172.30.0.0/16".into(),
            host_reserve: 1,
            bridge: "fan-250".into(),
            mtu: 0,
            backend: BackendChoice::Auto,
            masquerade: true,
            anti_spoofing: true,
            allow_overlap: false,
            dhcp,
            dhcp_dns: if dhcp {
                vec![Ipv4Addr::new(250, 0, 28, 1)]
            } else {
                Vec::new()
            },
            dhcp_lease_seconds: if dhcp { 600 } else { 0 },
            labels: BTreeMap::new(),
        }
    }

    fn fields(err: AgentError) -> Vec<String> {
        match err {
            AgentError::InvalidArgument { violations } => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("not a violation: {other}"),
        }
    }

    #[test]
    fn dhcp_update_keeps_or_resets_the_options() {
        let on = NetworkUpdate {
            dhcp: Some(true),
            ..Default::default()
        };
        assert_eq!(
            updated_dhcp(&spec(false), &on).unwrap(),
            (true, Vec::new(), validate::DEFAULT_DHCP_LEASE_SECONDS)
        );
        // Unmasked options stay while DHCP stays on.
        let dns = NetworkUpdate {
            dhcp_dns: Some(vec!["10.0.0.53".into()]),
            ..Default::default()
        };
        assert_eq!(
            updated_dhcp(&spec(true), &dns).unwrap(),
            (true, vec![Ipv4Addr::new(10, 0, 0, 53)], 600)
        );
        // Off drops them.
        let off = NetworkUpdate {
            dhcp: Some(false),
            ..Default::default()
        };
        assert_eq!(
            updated_dhcp(&spec(true), &off).unwrap(),
            (false, Vec::new(), 0)
        );
    }

    #[test]
    fn dhcp_update_follows_the_create_rules() {
        let options_without_dhcp = NetworkUpdate {
            dhcp_dns: Some(vec!["10.0.0.53".into()]),
            dhcp_lease_seconds: Some(600),
            ..Default::default()
        };
        assert_eq!(
            fields(updated_dhcp(&spec(false), &options_without_dhcp).unwrap_err()),
            ["spec.dhcp_dns", "spec.dhcp_lease_seconds"]
        );
        let off_with_dns = NetworkUpdate {
            dhcp: Some(false),
            dhcp_dns: Some(vec!["10.0.0.53".into()]),
            ..Default::default()
        };
        assert_eq!(
            fields(updated_dhcp(&spec(true), &off_with_dns).unwrap_err()),
            ["spec.dhcp_dns"]
        );
        let bad = NetworkUpdate {
            dhcp_dns: Some(vec!["nine".into()]),
            dhcp_lease_seconds: Some(5),
            ..Default::default()
        };
        assert_eq!(
            fields(updated_dhcp(&spec(true), &bad).unwrap_err()),
            ["spec.dhcp_dns[0]", "spec.dhcp_lease_seconds"]
        );
    }
}
