//! The agent's operations on the fake data plane: no root, no netlink.

use std::collections::BTreeMap;
use std::sync::Arc;

use fan_dataplane::{DataplaneError, Drift, HostAddress};

use super::{AgentOnFake, Call, FakeDataplane, Op};
use crate::agent::NetworkHealth;
use crate::error::{AgentError, Reason};
use crate::events::EventKind;
use crate::model::Owner;
use crate::validate::SpecInput;

fn spec() -> SpecInput {
    SpecInput {
        overlay: "250.0.0.0/8".into(),
        underlay: "172.30.0.0/16".into(),
        ..Default::default()
    }
}

fn owner(container: &str) -> Owner {
    Owner {
        container_id: container.into(),
        interface: "eth0".into(),
    }
}

fn drift(object: &str) -> Drift {
    Drift {
        object: object.into(),
        expected: "present".into(),
        observed: "absent".into(),
    }
}

fn reason(err: &AgentError) -> Reason {
    crate::api::status::reason_of(err)
}

/// The kinds of the events recorded so far for `network`, in order.
async fn events(on: &AgentOnFake, network: &str) -> Vec<EventKind> {
    // Notes are committed by the writer in the background: the revision a
    // read reports counts every change queued before it; wait until the
    // history has it.
    let hub = on.agent.events();
    let mut live = hub.subscribe(None).unwrap().live;
    let revision = on.agent.list_networks(0, "").await.unwrap().revision;
    while hub.revision() < revision {
        live.recv().await.unwrap();
    }
    let subscription = hub.subscribe(Some(0)).unwrap();
    subscription
        .backlog
        .iter()
        .filter(|e| e.network_id == network)
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn a_network_the_kernel_refuses_is_not_created_and_nothing_is_left() {
    let on = AgentOnFake::new().await.unwrap();
    on.dataplane.fail_next(
        Op::Apply,
        "fan",
        DataplaneError::Netlink {
            context: "create bridge fan-250".into(),
            message: "Operation not permitted".into(),
        },
    );
    let err = on.agent.create_network("fan", &spec()).await.unwrap_err();
    assert_eq!(reason(&err), Reason::NetworkProgrammingFailed);
    assert!(err.to_string().contains("create bridge fan-250"), "{err}");
    // Undone: the part the apply made is removed and the record forgotten.
    let ops: Vec<Op> = on.dataplane.calls().iter().map(Call::op).collect();
    assert_eq!(ops, [Op::Apply, Op::Remove]);
    assert!(on.dataplane.programmed_networks().is_empty());
    let missing = on.agent.get_network("fan").await.unwrap_err();
    assert_eq!(reason(&missing), Reason::NetworkNotFound);
    // The failure does not hold readiness down once the start-up pass ran.
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    assert!(*on.agent.readiness().borrow());
    // The next try is a clean create.
    let view = on.agent.create_network("fan", &spec()).await.unwrap();
    assert_eq!(view.status.state, NetworkHealth::Ready);
    assert!(on.dataplane.programmed("fan").unwrap().complete);
}

#[tokio::test]
async fn a_failed_removal_keeps_the_network_for_a_retry() {
    let on = AgentOnFake::new().await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    on.dataplane.fail_next(
        Op::Remove,
        "fan",
        DataplaneError::other("delete bridge fan-250", "EBUSY"),
    );
    let err = on
        .agent
        .delete_network("fan", false, false)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Reason::DataplaneFailed);
    assert!(on.agent.get_network("fan").await.is_ok(), "still known");
    assert!(on.dataplane.programmed("fan").is_some());
    assert_eq!(
        on.agent.delete_network("fan", false, false).await.unwrap(),
        (true, 0)
    );
    assert!(on.dataplane.programmed_networks().is_empty());
}

#[tokio::test]
async fn an_allocation_racing_a_delete_keeps_the_network_and_its_data_path() {
    let on = AgentOnFake::new().await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    // Hold the delete after its in-use check, in the kernel removal.
    let paused = on.dataplane.pause(Op::Remove).await;
    let deleting = tokio::spawn({
        let agent = on.agent.clone();
        async move { agent.delete_network("fan", false, false).await }
    });
    on.dataplane
        .wait_for_calls(|calls| calls.iter().any(|c| c.op() == Op::Remove))
        .await;
    let (allocation, _) = on
        .agent
        .allocate("fan", owner("c1"), None, BTreeMap::new())
        .await
        .unwrap();
    drop(paused);
    let err = deleting.await.unwrap().unwrap_err();
    assert_eq!(reason(&err), Reason::NetworkInUse);
    // The network, its allocation and its data path are all back.
    let view = on.agent.get_network("fan").await.unwrap();
    assert_eq!(view.status.allocated, 1);
    assert_eq!(
        view.status.state,
        NetworkHealth::Ready,
        "{}",
        view.status.reason
    );
    assert!(on.dataplane.programmed("fan").unwrap().complete);
    assert_eq!(
        on.agent
            .get_allocation("fan", crate::model::Selector::Owner(owner("c1")))
            .await
            .unwrap(),
        allocation
    );
}

#[tokio::test]
async fn two_deletes_of_one_network_remove_it_once() {
    let on = AgentOnFake::new().await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    let paused = on.dataplane.pause(Op::Remove).await;
    let first = tokio::spawn({
        let agent = on.agent.clone();
        async move { agent.delete_network("fan", false, false).await }
    });
    on.dataplane
        .wait_for_calls(|calls| calls.iter().any(|c| c.op() == Op::Remove))
        .await;
    let second = tokio::spawn({
        let agent = on.agent.clone();
        async move { agent.delete_network("fan", false, false).await }
    });
    let third = tokio::spawn({
        let agent = on.agent.clone();
        async move { agent.delete_network("fan", false, true).await }
    });
    drop(paused);
    assert_eq!(first.await.unwrap().unwrap(), (true, 0));
    let second = second.await.unwrap().unwrap_err();
    assert_eq!(reason(&second), Reason::NetworkNotFound);
    assert_eq!(third.await.unwrap().unwrap(), (false, 0));
    assert_eq!(on.dataplane.count(Op::Remove, "fan"), 1);
}

#[tokio::test]
async fn not_ready_until_the_start_up_pass_has_applied_every_network() {
    let on = AgentOnFake::new().await.unwrap();
    let ready = on.agent.readiness();
    assert!(!*ready.borrow(), "not ready before the start-up pass");
    on.agent.create_network("a", &spec()).await.unwrap();
    let other = SpecInput {
        overlay: "251.0.0.0/8".into(),
        ..spec()
    };
    on.agent.create_network("b", &other).await.unwrap();
    assert!(
        !*ready.borrow(),
        "created networks do not make the agent ready"
    );

    // The start-up pass, held in its first apply: still not ready.
    let paused = on.dataplane.pause(Op::Apply).await;
    on.dataplane.clear_calls();
    let pass = tokio::spawn({
        let agent = on.agent.clone();
        async move { agent.reconcile_all().await }
    });
    on.dataplane
        .wait_for_calls(|calls| calls.iter().any(|c| c.op() == Op::Apply))
        .await;
    assert!(!*ready.borrow());
    drop(paused);
    assert_eq!(pass.await.unwrap().unwrap(), 0);
    assert!(*ready.borrow(), "ready once every network is applied");
    assert_eq!(on.dataplane.count(Op::Apply, "a"), 1);
    assert_eq!(on.dataplane.count(Op::Apply, "b"), 1);

    // A network the kernel refuses takes readiness down, its repair back up.
    // (A pass applies only what drifted: "b" loses its data path first.)
    on.dataplane.wipe("b");
    on.dataplane.fail_always(Op::Apply, "b", "ENOSPC");
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 1);
    assert!(!*ready.borrow());
    let b = on.agent.get_network("b").await.unwrap();
    assert_eq!(b.status.state, NetworkHealth::Failed);
    assert!(b.status.reason.contains("ENOSPC"), "{}", b.status.reason);
    on.dataplane.clear_failures("b");
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    assert!(*ready.borrow());
    // The failing pass reports the drift and the failure; the failed
    // apply left "b" programmed part-way: the repairing pass reports that
    // (other) drift, the state back to ready, and the repair.
    assert_eq!(
        events(&on, "b").await,
        [
            EventKind::NetworkCreated,
            EventKind::DriftDetected,
            EventKind::NetworkStateChanged,
            EventKind::DriftDetected,
            EventKind::NetworkStateChanged,
            EventKind::DriftRepaired
        ]
    );
}

#[tokio::test]
async fn reconcile_reports_drift_and_repairs_it_through_the_data_plane() {
    let on = AgentOnFake::new().await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    assert_eq!(events(&on, "fan").await, [EventKind::NetworkCreated]);

    // Two differences: the agent sees both, reports them, repairs them.
    on.dataplane.wipe("fan");
    on.dataplane.inject_drift("fan", drift("route 250.0.0.0/8"));
    let checked = on.agent.check_network("fan").await.unwrap();
    assert_eq!(checked.len(), 2, "{checked:?}");
    let view = on.agent.get_network("fan").await.unwrap();
    assert_eq!(view.status.state, NetworkHealth::Degraded);
    assert!(
        view.status.reason.contains("route 250.0.0.0/8"),
        "{}",
        view.status.reason
    );
    on.dataplane.clear_calls();
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    // Observed, applied, observed again to confirm the repair.
    let ops: Vec<Op> = on.dataplane.calls().iter().map(Call::op).collect();
    assert_eq!(ops, [Op::Observe, Op::Apply, Op::Observe]);
    assert!(on.agent.check_network("fan").await.unwrap().is_empty());
    events(&on, "fan").await;
    let subscription = on.agent.events().subscribe(Some(0)).unwrap();
    let detected: Vec<_> = subscription
        .backlog
        .iter()
        .filter(|e| e.kind == EventKind::DriftDetected)
        .collect();
    assert_eq!(detected.len(), 1);
    assert_eq!(detected[0].drifts.len(), 2, "both drifts counted");
    assert_eq!(
        events(&on, "fan").await,
        [
            EventKind::NetworkCreated,
            EventKind::DriftDetected,
            EventKind::DriftRepaired
        ]
    );

    // A drift the apply cannot repair is reported once, not on every pass,
    // and never as repaired.
    on.dataplane.pin_drift("fan", drift("nft table ip fan_fan"));
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    let kinds = events(&on, "fan").await;
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[3], EventKind::DriftDetected);
    // A pass that cannot look (the observation fails) closes nothing.
    on.dataplane.fail_next(
        Op::Observe,
        "fan",
        DataplaneError::other("dump links", "ENOBUFS"),
    );
    on.agent.reconcile_all().await.unwrap();
    assert_eq!(events(&on, "fan").await, kinds);
    // Gone by itself (not by a pass's apply): the next pass closes it for
    // watchers with one DriftRepaired, and later passes report nothing.
    on.dataplane.clear_pinned_drifts("fan");
    on.agent.reconcile_all().await.unwrap();
    on.agent.reconcile_all().await.unwrap();
    assert!(on.agent.check_network("fan").await.unwrap().is_empty());
    let mut closed = kinds.clone();
    closed.push(EventKind::DriftRepaired);
    assert_eq!(events(&on, "fan").await, closed);
}

#[tokio::test]
async fn a_failed_observation_degrades_the_network_without_failing_reads() {
    let on = AgentOnFake::new().await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    on.dataplane.fail_next(
        Op::Observe,
        "fan",
        DataplaneError::other("dump links", "ENOBUFS"),
    );
    let view = on.agent.get_network("fan").await.unwrap();
    assert_eq!(view.status.state, NetworkHealth::Degraded);
    assert!(
        view.status.reason.contains("ENOBUFS"),
        "{}",
        view.status.reason
    );
    // CheckNetwork has no status to degrade: it reports the failure.
    on.dataplane.fail_next(
        Op::Observe,
        "fan",
        DataplaneError::other("dump links", "ENOBUFS"),
    );
    let err = on.agent.check_network("fan").await.unwrap_err();
    assert_eq!(reason(&err), Reason::DataplaneFailed);
    assert_eq!(
        on.agent.get_network("fan").await.unwrap().status.state,
        NetworkHealth::Ready
    );
}

#[tokio::test]
async fn allocations_are_refused_while_the_underlay_address_is_gone() {
    let fake = Arc::new(FakeDataplane::new());
    let on = AgentOnFake::on(fake.clone()).await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    on.agent
        .allocate("fan", owner("c1"), None, BTreeMap::new())
        .await
        .unwrap();
    let address = fake.addresses();
    fake.set_addresses(Vec::new());
    on.agent.check_host().await.unwrap();
    let applies = fake.count(Op::Apply, "fan");

    let err = on
        .agent
        .allocate("fan", owner("c2"), None, BTreeMap::new())
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Reason::SliceNotOwned);
    let view = on.agent.get_network("fan").await.unwrap();
    assert_eq!(view.status.state, NetworkHealth::Failed);
    // Not programmed while the host cannot send from the slice's address.
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 1);
    assert_eq!(fake.count(Op::Apply, "fan"), applies);
    assert!(!*on.agent.readiness().borrow());

    // The address is back: programmed again, allocations accepted.
    fake.set_addresses(address);
    on.agent.check_host().await.unwrap();
    assert_eq!(fake.count(Op::Apply, "fan"), applies + 1);
    on.agent
        .allocate("fan", owner("c2"), None, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(on.agent.reconcile_all().await.unwrap(), 0);
    assert!(*on.agent.readiness().borrow());
}

#[tokio::test]
async fn a_moved_underlay_address_moves_the_network_to_its_new_slice() {
    let fake = Arc::new(FakeDataplane::new());
    let on = AgentOnFake::on(fake.clone()).await.unwrap();
    on.agent.create_network("fan", &spec()).await.unwrap();
    on.agent
        .allocate("fan", owner("c1"), None, BTreeMap::new())
        .await
        .unwrap();
    fake.set_addresses(vec![HostAddress {
        interface: "eth0".into(),
        address: "172.30.0.27/16".parse().unwrap(),
        mtu: 1500,
    }]);
    on.agent.check_host().await.unwrap();
    let programmed = fake.programmed("fan").unwrap();
    assert_eq!(programmed.plan.slice.to_string(), "250.0.27.0/24");
    assert_eq!(programmed.plan.local_underlay.to_string(), "172.30.0.27");
    let view = on.agent.get_network("fan").await.unwrap();
    assert_eq!(view.status.stale_allocations, 1);
    let (fresh, _) = on
        .agent
        .allocate("fan", owner("c2"), None, BTreeMap::new())
        .await
        .unwrap();
    assert!(programmed.plan.slice.contains(fresh.record.address));
}

#[tokio::test]
async fn an_unavailable_backend_is_refused_by_name_and_auto_skips_it() {
    let fake = Arc::new(FakeDataplane::new());
    fake.set_availability(
        fan_dataplane::BackendKind::KernelFan,
        false,
        "no fan map in this kernel",
    );
    let on = AgentOnFake::on(fake.clone()).await.unwrap();
    let kernel_fan = SpecInput {
        backend: Some(crate::model::BackendChoice::KernelFan),
        ..spec()
    };
    let err = on
        .agent
        .create_network("fan", &kernel_fan)
        .await
        .unwrap_err();
    assert_eq!(reason(&err), Reason::BackendUnavailable);
    assert!(err.to_string().contains("no fan map"), "{err}");
    assert!(fake.calls().is_empty(), "nothing programmed");
    let view = on.agent.create_network("fan", &spec()).await.unwrap();
    assert_eq!(view.record.backend, fan_dataplane::BackendKind::Ebpf);
}
