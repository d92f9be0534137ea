//! WatchEvents and UpdateNetwork glue: request decoding, the event stream,
//! and the event conversion. Kept apart from `mod.rs` so the unary methods
//! stay as they were.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use fan_proto::v1 as pb;
use futures::Stream;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tonic::Status;

use crate::agent::{
    Agent, AllocationView, NetworkHealth, NetworkStatus, NetworkUpdate, NetworkView,
};
use crate::error::{AgentError, Reason, Result};
use crate::events::{Event, EventFilter, EventKind};
use crate::validate;

use super::convert;

/// The stream WatchEvents answers with.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

/// The domain kind of a proto event kind (`None` for unknown or unspecified).
pub fn event_kind(value: i32) -> Option<EventKind> {
    Some(match pb::EventKind::try_from(value).ok()? {
        pb::EventKind::Unspecified => return None,
        pb::EventKind::NetworkCreated => EventKind::NetworkCreated,
        pb::EventKind::NetworkUpdated => EventKind::NetworkUpdated,
        pb::EventKind::NetworkStateChanged => EventKind::NetworkStateChanged,
        pb::EventKind::NetworkDeleted => EventKind::NetworkDeleted,
        pb::EventKind::AllocationCreated => EventKind::AllocationCreated,
        pb::EventKind::AllocationReleased => EventKind::AllocationReleased,
        pb::EventKind::AllocationCollected => EventKind::AllocationCollected,
        pb::EventKind::DriftDetected => EventKind::DriftDetected,
        pb::EventKind::DriftRepaired => EventKind::DriftRepaired,
    })
}

fn kind_to_pb(kind: EventKind) -> pb::EventKind {
    match kind {
        EventKind::NetworkCreated => pb::EventKind::NetworkCreated,
        EventKind::NetworkUpdated => pb::EventKind::NetworkUpdated,
        EventKind::NetworkStateChanged => pb::EventKind::NetworkStateChanged,
        EventKind::NetworkDeleted => pb::EventKind::NetworkDeleted,
        EventKind::AllocationCreated => pb::EventKind::AllocationCreated,
        EventKind::AllocationReleased => pb::EventKind::AllocationReleased,
        EventKind::AllocationCollected => pb::EventKind::AllocationCollected,
        EventKind::DriftDetected => pb::EventKind::DriftDetected,
        EventKind::DriftRepaired => pb::EventKind::DriftRepaired,
    }
}

fn state_to_pb(state: NetworkHealth) -> pb::NetworkState {
    match state {
        NetworkHealth::Ready => pb::NetworkState::Ready,
        NetworkHealth::Degraded => pb::NetworkState::Degraded,
        NetworkHealth::Failed => pb::NetworkState::Failed,
    }
}

/// An event as the API returns it.
pub fn event(e: &Event) -> pb::Event {
    let network = e.network.as_ref().map(|record| {
        let view = NetworkView {
            record: record.clone(),
            status: NetworkStatus {
                state: NetworkHealth::Ready,
                reason: String::new(),
                allocated: 0,
                capacity: 0,
                counters: None,
                stale_allocations: 0,
            },
        };
        pb::Network {
            status: None,
            ..convert::network(&view)
        }
    });
    let allocation = match (&e.network, &e.allocation) {
        (Some(network), Some(record)) => Some(convert::allocation(&AllocationView::new(
            network,
            record.clone(),
        ))),
        _ => None,
    };
    pb::Event {
        revision: e.revision,
        kind: kind_to_pb(e.kind) as i32,
        network_id: e.network_id.clone(),
        time: Some(convert::timestamp(e.time_ms)),
        network,
        allocation,
        state: e
            .state
            .map(state_to_pb)
            .unwrap_or(pb::NetworkState::Unspecified) as i32,
        reason: e.reason.clone(),
        drifts: e.drifts.iter().map(convert::drift).collect(),
    }
}

/// Decodes an UpdateNetwork request into the masked changes.
pub fn network_update(req: &pb::UpdateNetworkRequest) -> Result<NetworkUpdate> {
    let mut checks = validate::Checks::new();
    checks.check(validate::network_id("network_id", &req.network_id));
    let spec = req.spec.clone().unwrap_or_default();
    let paths = req
        .update_mask
        .as_ref()
        .map(|m| m.paths.clone())
        .unwrap_or_default();
    if paths.is_empty() {
        checks.check::<()>(Err(AgentError::invalid(
            "update_mask",
            "must name at least one of host_reserve, mtu, masquerade, anti_spoofing, labels, dhcp, dhcp_dns, dhcp_lease_seconds",
        )));
    }
    let mut update = NetworkUpdate::default();
    for (i, path) in paths.iter().enumerate() {
        // "spec.mtu" is accepted as well as "mtu".
        match path.strip_prefix("spec.").unwrap_or(path) {
            "host_reserve" => update.host_reserve = Some(spec.host_reserve.unwrap_or(1)),
            "mtu" => update.mtu = Some(spec.mtu),
            "masquerade" => update.masquerade = Some(spec.masquerade.unwrap_or(true)),
            "anti_spoofing" => update.anti_spoofing = Some(spec.anti_spoofing.unwrap_or(true)),
            "labels" => update.labels = Some(spec.labels.clone().into_iter().collect()),
            "dhcp" => update.dhcp = Some(spec.dhcp),
            "dhcp_dns" => update.dhcp_dns = Some(spec.dhcp_dns.clone()),
            "dhcp_lease_seconds" => update.dhcp_lease_seconds = Some(spec.dhcp_lease_seconds),
            other => {
                checks.check::<()>(Err(AgentError::invalid(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{other:?} cannot be updated; updatable: host_reserve, mtu, masquerade, anti_spoofing, labels, dhcp, dhcp_dns, dhcp_lease_seconds"
                    ),
                )));
            }
        }
    }
    checks.finish_with(Some(update))
}

struct Watcher {
    backlog: VecDeque<Arc<Event>>,
    live: Receiver<Arc<Event>>,
    last: u64,
    filter: EventFilter,
    done: bool,
}

/// Starts a watch: validates the request, subscribes, and streams matching
/// events until the client goes, falls too far behind, or the agent stops.
pub fn watch(agent: &Agent, req: pb::WatchEventsRequest) -> Result<EventStream> {
    let mut checks = validate::Checks::new();
    if !req.network_id.is_empty() {
        checks.check(validate::network_id("network_id", &req.network_id));
    }
    let kinds: Vec<EventKind> = req
        .kinds
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            checks.check(event_kind(*k).ok_or_else(|| {
                AgentError::invalid(
                    format!("kinds[{i}]"),
                    format!("unknown or unspecified event kind {k}"),
                )
            }))
        })
        .collect();
    checks.finish()?;
    let subscription = agent.events().subscribe(req.start_revision)?;
    let watcher = Watcher {
        backlog: subscription.backlog.into(),
        live: subscription.live,
        last: subscription.start,
        filter: EventFilter {
            network_id: req.network_id,
            kinds,
        },
        done: false,
    };
    let stream = futures::stream::unfold(watcher, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let next = match w.backlog.pop_front() {
                Some(event) => event,
                None => match w.live.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        w.done = true;
                        let err = AgentError::Watch {
                            reason: Reason::WatcherTooSlow,
                            message: format!(
                                "the watch fell {missed} events behind and was ended so it cannot slow the agent down; watch again from revision {} (the last one received) or list again",
                                w.last
                            ),
                        };
                        return Some((Err(Status::from(err)), w));
                    }
                    Err(RecvError::Closed) => {
                        w.done = true;
                        return Some((Err(Status::from(AgentError::ShuttingDown)), w));
                    }
                },
            };
            // Every revision once, in order.
            if next.revision <= w.last {
                continue;
            }
            w.last = next.revision;
            if w.filter.matches(&next) {
                let response = pb::WatchEventsResponse {
                    event: Some(event(&next)),
                };
                return Some((Ok(response), w));
            }
        }
    });
    Ok(Box::pin(stream))
}
