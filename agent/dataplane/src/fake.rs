//! An in-memory [`Dataplane`] for tests that must run without root or netlink.
//!
//! [`FakeDataplane`] keeps a pretend kernel: the plans it has applied, one per
//! network. It records every call, and lets a test inject what a real host
//! does to an agent: failed applies and removes, drift (the kernel changed
//! behind the agent's back), failed observations, counters, and underlay
//! addresses that come and go. A test can also pause applies or removes to
//! hold the agent in the middle of an operation and race another call
//! against it.
//!
//! Built only with the crate's `fake` feature, so production builds do not
//! carry it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use fan_core::host_change::HostPrefix;
use tokio::sync::{mpsc, watch, OwnedRwLockWriteGuard, RwLock};

use crate::{
    Availability, BackendKind, Counters, Dataplane, DataplaneError, Drift, HostAddress,
    NetworkPlan, Observation, Result,
};

/// The underlay interface a new [`FakeDataplane`] reports.
pub const DEFAULT_INTERFACE: &str = "eth0";
/// The underlay address (with prefix) a new [`FakeDataplane`] reports on
/// [`DEFAULT_INTERFACE`]: a network over `172.30.0.0/16` gets the slice of
/// host `172.30.0.28`.
pub const DEFAULT_ADDRESS: &str = "172.30.0.28/16";
/// The MTU of [`DEFAULT_INTERFACE`].
pub const DEFAULT_MTU: u32 = 1500;

/// One call the agent made, in the order it made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Dataplane::apply`] with this plan.
    Apply(NetworkPlan),
    /// [`Dataplane::observe`] with this plan.
    Observe(NetworkPlan),
    /// [`Dataplane::remove`] with this plan.
    Remove(NetworkPlan),
}

impl Call {
    /// The network the call was about.
    pub fn network_id(&self) -> &str {
        match self {
            Call::Apply(plan) | Call::Observe(plan) | Call::Remove(plan) => &plan.network_id,
        }
    }

    /// The operation of the call.
    pub fn op(&self) -> Op {
        match self {
            Call::Apply(_) => Op::Apply,
            Call::Observe(_) => Op::Observe,
            Call::Remove(_) => Op::Remove,
        }
    }
}

/// The per-network operations a test can fail or pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Dataplane::apply`].
    Apply,
    /// [`Dataplane::observe`].
    Observe,
    /// [`Dataplane::remove`].
    Remove,
}

/// What the pretend kernel holds for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    /// The plan last applied.
    pub plan: NetworkPlan,
    /// False when the apply failed part-way (an injected failure): the
    /// objects made before the failure are left, as a real kernel leaves
    /// them, until `remove` or a successful `apply`.
    pub complete: bool,
}

/// How an injected failure is spent.
#[derive(Debug)]
enum Fault {
    /// Fails one call, with this error.
    Once(DataplaneError),
    /// Fails every call until cleared, with this message.
    Always(String),
}

#[derive(Debug)]
struct State {
    availability: Vec<Availability>,
    addresses: Vec<HostAddress>,
    default_interface: Option<String>,
    host_prefixes: Vec<HostPrefix>,
    kernel: BTreeMap<String, Programmed>,
    calls: Vec<Call>,
    faults: HashMap<(Op, String), VecDeque<Fault>>,
    /// Drift that the next successful apply repairs.
    drifts: HashMap<String, Vec<Drift>>,
    /// Drift no apply repairs (a kernel that keeps changing it back).
    pinned_drifts: HashMap<String, Vec<Drift>>,
    counters: HashMap<String, Counters>,
    address_watchers: Vec<mpsc::Sender<()>>,
}

/// An in-memory data plane: see the [module documentation](self).
///
/// Cheap to share: the agent holds it as `Arc<dyn Dataplane>` while the test
/// keeps an `Arc<FakeDataplane>` to inject faults and read what happened.
#[derive(Debug)]
pub struct FakeDataplane {
    state: Mutex<State>,
    /// Number of calls recorded so far, to wait for a call without sleeping.
    calls_seen: watch::Sender<usize>,
    /// One gate per pausable operation: calls take it shared, [`pause`]
    /// takes it exclusively.
    ///
    /// [`pause`]: FakeDataplane::pause
    gates: HashMap<Op, Arc<RwLock<()>>>,
}

/// Holds calls of one operation waiting (see [`FakeDataplane::pause`]);
/// they go on when this is dropped.
#[derive(Debug)]
pub struct Paused {
    _guard: OwnedRwLockWriteGuard<()>,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        FakeDataplane::new()
    }
}

impl FakeDataplane {
    /// A host with every backend available and one underlay address,
    /// [`DEFAULT_ADDRESS`] on [`DEFAULT_INTERFACE`] (also the default route's
    /// device), and an empty kernel.
    pub fn new() -> FakeDataplane {
        let address = HostAddress {
            interface: DEFAULT_INTERFACE.to_owned(),
            address: DEFAULT_ADDRESS
                .parse()
                .unwrap_or_else(|_| unreachable!("DEFAULT_ADDRESS is a valid network")),
            mtu: DEFAULT_MTU,
        };
        let availability = BackendKind::ALL
            .into_iter()
            .map(|backend| Availability {
                backend,
                available: true,
                reason: "fake data plane".to_owned(),
            })
            .collect();
        FakeDataplane {
            state: Mutex::new(State {
                availability,
                addresses: vec![address],
                default_interface: Some(DEFAULT_INTERFACE.to_owned()),
                host_prefixes: Vec::new(),
                kernel: BTreeMap::new(),
                calls: Vec::new(),
                faults: HashMap::new(),
                drifts: HashMap::new(),
                pinned_drifts: HashMap::new(),
                counters: HashMap::new(),
                address_watchers: Vec::new(),
            }),
            calls_seen: watch::Sender::new(0),
            gates: [Op::Apply, Op::Observe, Op::Remove]
                .into_iter()
                .map(|op| (op, Arc::new(RwLock::new(()))))
                .collect(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already;
        // the state is still readable for the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- the host -------------------------------------------------------

    /// Sets whether `backend` can run here, and why (not). Read by the
    /// agent once, when it starts.
    pub fn set_availability(&self, backend: BackendKind, available: bool, reason: &str) {
        let mut state = self.state();
        for a in state
            .availability
            .iter_mut()
            .filter(|a| a.backend == backend)
        {
            a.available = available;
            a.reason = reason.to_owned();
        }
    }

    /// Replaces the host's IPv4 addresses and wakes every address watcher,
    /// as the kernel does when an address is added or removed.
    pub fn set_addresses(&self, addresses: Vec<HostAddress>) {
        let mut state = self.state();
        state.addresses = addresses;
        // A full channel already holds a wake-up; a closed one has no reader.
        state.address_watchers.retain(|tx| match tx.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => true,
            Err(mpsc::error::TrySendError::Closed(())) => false,
        });
    }

    /// The host's IPv4 addresses as reported now.
    pub fn addresses(&self) -> Vec<HostAddress> {
        self.state().addresses.clone()
    }

    /// Sets the device of the default route (`None`: no default route).
    pub fn set_default_interface(&self, interface: Option<&str>) {
        self.state().default_interface = interface.map(str::to_owned);
    }

    /// Sets the host addresses and routes the agent did not make
    /// (what an overlay must not overlap).
    pub fn set_host_prefixes(&self, prefixes: Vec<HostPrefix>) {
        self.state().host_prefixes = prefixes;
    }

    /// Drops every address watcher's sender, so the agent's watch ends (as
    /// when its netlink socket closes); later [`set_addresses`] wake no one.
    ///
    /// [`set_addresses`]: FakeDataplane::set_addresses
    pub fn close_address_watches(&self) {
        self.state().address_watchers.clear();
    }

    // ---- the pretend kernel ---------------------------------------------

    /// What the kernel holds for `network_id`, if anything.
    pub fn programmed(&self, network_id: &str) -> Option<Programmed> {
        self.state().kernel.get(network_id).cloned()
    }

    /// The networks the kernel holds anything for (complete or not), in id order.
    pub fn programmed_networks(&self) -> Vec<String> {
        self.state().kernel.keys().cloned().collect()
    }

    /// Removes a network from the kernel behind the agent's back (as `ip
    /// link del` of its bridge would): `observe` then reports it absent.
    pub fn wipe(&self, network_id: &str) {
        self.state().kernel.remove(network_id);
    }

    /// Adds a difference `observe` reports for `network_id` until the next
    /// successful apply of that network repairs it.
    pub fn inject_drift(&self, network_id: &str, drift: Drift) {
        self.state()
            .drifts
            .entry(network_id.to_owned())
            .or_default()
            .push(drift);
    }

    /// Adds a difference `observe` reports for `network_id` that no apply
    /// repairs, until [`clear_pinned_drifts`] (a kernel that keeps changing
    /// it back).
    ///
    /// [`clear_pinned_drifts`]: FakeDataplane::clear_pinned_drifts
    pub fn pin_drift(&self, network_id: &str, drift: Drift) {
        self.state()
            .pinned_drifts
            .entry(network_id.to_owned())
            .or_default()
            .push(drift);
    }

    /// Forgets the drifts [`pin_drift`] added for `network_id`.
    ///
    /// [`pin_drift`]: FakeDataplane::pin_drift
    pub fn clear_pinned_drifts(&self, network_id: &str) {
        self.state().pinned_drifts.remove(network_id);
    }

    /// Sets the packet counters `observe` reports for `network_id`
    /// (`None`: a backend that keeps none, the default).
    pub fn set_counters(&self, network_id: &str, counters: Option<Counters>) {
        let mut state = self.state();
        match counters {
            Some(c) => state.counters.insert(network_id.to_owned(), c),
            None => state.counters.remove(network_id),
        };
    }

    // ---- failures -------------------------------------------------------

    /// Fails the next `op` call for `network_id` with `error` (after the
    /// failures queued before it). A failed apply leaves the network
    /// programmed part-way ([`Programmed::complete`] false).
    pub fn fail_next(&self, op: Op, network_id: &str, error: DataplaneError) {
        self.push_fault(op, network_id, Fault::Once(error));
    }

    /// Fails every `op` call for `network_id` with a netlink error carrying
    /// `message`, until [`clear_failures`].
    ///
    /// [`clear_failures`]: FakeDataplane::clear_failures
    pub fn fail_always(&self, op: Op, network_id: &str, message: &str) {
        self.push_fault(op, network_id, Fault::Always(message.to_owned()));
    }

    /// Forgets every failure injected for `network_id`, spent or not.
    pub fn clear_failures(&self, network_id: &str) {
        self.state().faults.retain(|(_, id), _| id != network_id);
    }

    fn push_fault(&self, op: Op, network_id: &str, fault: Fault) {
        self.state()
            .faults
            .entry((op, network_id.to_owned()))
            .or_default()
            .push_back(fault);
    }

    /// Takes the failure due for this call, if any.
    fn take_fault(state: &mut State, op: Op, plan: &NetworkPlan) -> Option<DataplaneError> {
        let queue = state.faults.get_mut(&(op, plan.network_id.clone()))?;
        match queue.front()? {
            Fault::Always(message) => Some(DataplaneError::Netlink {
                context: format!("fake {op:?} of network {}", plan.network_id),
                message: message.clone(),
            }),
            Fault::Once(_) => match queue.pop_front() {
                Some(Fault::Once(error)) => Some(error),
                _ => None,
            },
        }
    }

    // ---- pausing and watching calls --------------------------------------

    /// Holds every later `op` call (of any network) waiting, after it is
    /// recorded and before it changes anything, until the returned guard is
    /// dropped. Calls already past the gate are not held.
    pub async fn pause(&self, op: Op) -> Paused {
        let gate = self.gates[&op].clone();
        Paused {
            _guard: gate.write_owned().await,
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// How many `op` calls were made for `network_id`.
    pub fn count(&self, op: Op, network_id: &str) -> usize {
        self.state()
            .calls
            .iter()
            .filter(|c| c.op() == op && c.network_id() == network_id)
            .count()
    }

    /// Forgets the recorded calls (faults, drifts and the kernel stay).
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Waits until the calls recorded so far satisfy `done` (checked at
    /// once and after every new call); returns them.
    pub async fn wait_for_calls(&self, mut done: impl FnMut(&[Call]) -> bool) -> Vec<Call> {
        let mut seen = self.calls_seen.subscribe();
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            // The sender lives as long as `self`: changed() cannot fail here.
            let _ = seen.changed().await;
        }
    }

    fn record(&self, call: Call) {
        self.state().calls.push(call);
        self.calls_seen.send_modify(|n| *n += 1);
    }

    /// Records the call, then waits at the operation's gate.
    async fn enter(&self, call: Call) {
        let op = call.op();
        self.record(call);
        let _pass = self.gates[&op].read().await;
    }
}

#[async_trait]
impl Dataplane for FakeDataplane {
    async fn availability(&self) -> Vec<Availability> {
        self.state().availability.clone()
    }

    async fn host_addresses(&self) -> Result<Vec<HostAddress>> {
        Ok(self.state().addresses.clone())
    }

    async fn default_route_interface(&self) -> Result<Option<String>> {
        Ok(self.state().default_interface.clone())
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        self.enter(Call::Apply(plan.clone())).await;
        let mut state = self.state();
        let fault = FakeDataplane::take_fault(&mut state, Op::Apply, plan);
        let complete = fault.is_none();
        state.kernel.insert(
            plan.network_id.clone(),
            Programmed {
                plan: plan.clone(),
                complete,
            },
        );
        match fault {
            Some(error) => Err(error),
            None => {
                state.drifts.remove(&plan.network_id);
                Ok(())
            }
        }
    }

    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        self.enter(Call::Observe(plan.clone())).await;
        let mut state = self.state();
        if let Some(error) = FakeDataplane::take_fault(&mut state, Op::Observe, plan) {
            return Err(error);
        }
        let object = format!("network {}", plan.network_id);
        let mut drifts = match state.kernel.get(&plan.network_id) {
            None => vec![Drift {
                object,
                expected: "programmed".to_owned(),
                observed: "absent".to_owned(),
            }],
            Some(programmed) if !programmed.complete => vec![Drift {
                object,
                expected: "programmed".to_owned(),
                observed: "programmed part-way".to_owned(),
            }],
            Some(programmed) if programmed.plan != *plan => vec![Drift {
                object,
                expected: format!("{plan:?}"),
                observed: format!("{:?}", programmed.plan),
            }],
            Some(_) => Vec::new(),
        };
        for extra in [&state.drifts, &state.pinned_drifts] {
            drifts.extend(extra.get(&plan.network_id).into_iter().flatten().cloned());
        }
        Ok(Observation {
            drifts,
            counters: state.counters.get(&plan.network_id).copied(),
        })
    }

    async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        self.enter(Call::Remove(plan.clone())).await;
        let mut state = self.state();
        if let Some(error) = FakeDataplane::take_fault(&mut state, Op::Remove, plan) {
            return Err(error);
        }
        state.kernel.remove(&plan.network_id);
        state.drifts.remove(&plan.network_id);
        Ok(())
    }

    async fn watch_addresses(&self) -> Result<Option<mpsc::Receiver<()>>> {
        let (tx, rx) = mpsc::channel(1);
        self.state().address_watchers.push(tx);
        Ok(Some(rx))
    }

    async fn host_prefixes(&self) -> Result<Vec<HostPrefix>> {
        Ok(self.state().host_prefixes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str) -> NetworkPlan {
        NetworkPlan {
            network_id: id.to_owned(),
            index: 1,
            overlay: "250.0.0.0/8".parse().unwrap(),
            underlay: "172.30.0.0/16".parse().unwrap(),
            local_underlay: "172.30.0.28".parse().unwrap(),
            underlay_interface: "eth0".to_owned(),
            underlay_mtu: 1500,
            slice: "250.0.28.0/24".parse().unwrap(),
            gateway: "250.0.28.1".parse().unwrap(),
            bridge: "fan-250".to_owned(),
            mtu: 1480,
            masquerade: true,
            anti_spoofing: true,
            backend: BackendKind::Ebpf,
        }
    }

    fn drift(what: &str) -> Drift {
        Drift {
            object: what.to_owned(),
            expected: "present".to_owned(),
            observed: "absent".to_owned(),
        }
    }

    #[tokio::test]
    async fn apply_observe_remove_follow_the_pretend_kernel() {
        let fake = FakeDataplane::new();
        let p = plan("fan");
        assert_eq!(fake.observe(&p).await.unwrap().drifts.len(), 1, "absent");
        fake.apply(&p).await.unwrap();
        assert_eq!(fake.observe(&p).await.unwrap(), Observation::default());
        let mut changed = p.clone();
        changed.mtu = 1400;
        assert_eq!(fake.observe(&changed).await.unwrap().drifts.len(), 1);
        fake.remove(&p).await.unwrap();
        assert!(fake.programmed_networks().is_empty());
        assert_eq!(
            fake.calls(),
            [
                Call::Observe(p.clone()),
                Call::Apply(p.clone()),
                Call::Observe(p.clone()),
                Call::Observe(changed),
                Call::Remove(p.clone()),
            ]
        );
        assert_eq!(fake.count(Op::Observe, "fan"), 3);
    }

    #[tokio::test]
    async fn a_failed_apply_is_spent_once_and_leaves_a_partial_network() {
        let fake = FakeDataplane::new();
        let p = plan("fan");
        fake.fail_next(
            Op::Apply,
            "fan",
            DataplaneError::other("create bridge", "EPERM"),
        );
        let err = fake.apply(&p).await.unwrap_err();
        assert_eq!(err.to_string(), "create bridge: EPERM");
        assert!(!fake.programmed("fan").unwrap().complete);
        assert_eq!(
            fake.observe(&p).await.unwrap().drifts[0].observed,
            "programmed part-way"
        );
        fake.apply(&p).await.unwrap();
        assert!(fake.programmed("fan").unwrap().complete);
        // Other networks were never affected.
        fake.apply(&plan("other")).await.unwrap();
    }

    #[tokio::test]
    async fn persistent_failures_last_until_cleared() {
        let fake = FakeDataplane::new();
        let p = plan("fan");
        fake.apply(&p).await.unwrap();
        fake.fail_always(Op::Remove, "fan", "EBUSY");
        fake.fail_always(Op::Observe, "fan", "EIO");
        for _ in 0..2 {
            assert!(fake
                .remove(&p)
                .await
                .unwrap_err()
                .to_string()
                .contains("EBUSY"));
            assert!(fake
                .observe(&p)
                .await
                .unwrap_err()
                .to_string()
                .contains("EIO"));
        }
        assert!(
            fake.programmed("fan").is_some(),
            "a failed remove removes nothing"
        );
        fake.clear_failures("fan");
        fake.remove(&p).await.unwrap();
        assert!(fake.programmed("fan").is_none());
    }

    #[tokio::test]
    async fn apply_repairs_injected_drift_but_not_pinned_drift() {
        let fake = FakeDataplane::new();
        let p = plan("fan");
        fake.apply(&p).await.unwrap();
        fake.inject_drift("fan", drift("route"));
        fake.pin_drift("fan", drift("nft table"));
        fake.set_counters(
            "fan",
            Some(Counters {
                encapsulated: 3,
                ..Default::default()
            }),
        );
        let seen = fake.observe(&p).await.unwrap();
        assert_eq!(seen.drifts, [drift("route"), drift("nft table")]);
        assert_eq!(seen.counters.unwrap().encapsulated, 3);
        fake.apply(&p).await.unwrap();
        assert_eq!(fake.observe(&p).await.unwrap().drifts, [drift("nft table")]);
        fake.clear_pinned_drifts("fan");
        assert!(fake.observe(&p).await.unwrap().drifts.is_empty());
        fake.wipe("fan");
        assert_eq!(fake.observe(&p).await.unwrap().drifts[0].observed, "absent");
    }

    #[tokio::test]
    async fn address_changes_wake_the_watchers() {
        let fake = FakeDataplane::new();
        let mut rx = fake.watch_addresses().await.unwrap().unwrap();
        assert_eq!(fake.host_addresses().await.unwrap().len(), 1);
        fake.set_addresses(Vec::new());
        rx.recv().await.unwrap();
        assert!(fake.host_addresses().await.unwrap().is_empty());
        fake.close_address_watches();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_paused_operation_waits_for_the_guard() {
        let fake = Arc::new(FakeDataplane::new());
        let paused = fake.pause(Op::Apply).await;
        let applying = tokio::spawn({
            let fake = fake.clone();
            async move { fake.apply(&plan("fan")).await }
        });
        fake.wait_for_calls(|calls| calls.len() == 1).await;
        assert!(
            fake.programmed("fan").is_none(),
            "held before the kernel changes"
        );
        // Other operations are not held.
        fake.observe(&plan("fan")).await.unwrap();
        drop(paused);
        applying.await.unwrap().unwrap();
        assert!(fake.programmed("fan").unwrap().complete);
    }
}
