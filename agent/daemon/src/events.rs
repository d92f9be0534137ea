//! The agent's event history: every state change gets a revision, kept in a
//! bounded ring for `WatchEvents` and fanned out to watchers without ever
//! blocking the writer.
//!
//! Revisions are assigned by the state store's writer thread in commit order
//! and persisted with each batch (the `revision` key of the meta table), so
//! they keep growing across restarts. The ring only holds events published
//! since this agent process started: a watch from a revision older than the
//! ring's start (including any revision from before the last restart, other
//! than the persisted revision itself) is refused with REVISION_COMPACTED and
//! the client lists again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use fan_dataplane::Drift;
use tokio::sync::broadcast;

use crate::error::{AgentError, Reason, Result};
use crate::model::{AllocationRecord, NetworkRecord};

/// How many events the history keeps (older ones are compacted).
pub const HISTORY: usize = 4096;
/// How many events one watcher may fall behind before its stream is ended
/// with WATCHER_TOO_SLOW.
pub const WATCHER_BUFFER: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A network was created.
    NetworkCreated,
    /// A network's spec changed (UpdateNetwork) or it moved to a new slice.
    NetworkUpdated,
    /// A network's observed state changed (ready, degraded, failed).
    NetworkStateChanged,
    /// A network was deleted.
    NetworkDeleted,
    /// An address was allocated.
    AllocationCreated,
    /// An allocation was released (ReleaseAddress, or a forced delete).
    AllocationReleased,
    /// An allocation was released by garbage collection.
    AllocationCollected,
    /// The reconcile pass found the kernel differing from the desired state.
    DriftDetected,
    /// The reconcile pass made the kernel match again.
    DriftRepaired,
}

/// One state change, with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Assigned by the store when the change commits; 0 before.
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// The network concerned.
    pub network_id: String,
    /// When it happened (ms since the epoch).
    pub time_ms: u64,
    /// The network record (after the change; before it for a deletion).
    pub network: Option<NetworkRecord>,
    /// The allocation concerned, for allocation events.
    pub allocation: Option<AllocationRecord>,
    /// The new state, for state changes.
    pub state: Option<crate::agent::NetworkHealth>,
    /// Why: the state's reason, or what drifted.
    pub reason: String,
    /// The differences, for drift events.
    pub drifts: Vec<Drift>,
}

impl Event {
    /// A new event about `network` (revision assigned on commit).
    pub fn new(kind: EventKind, network: &NetworkRecord) -> Event {
        Event {
            revision: 0,
            kind,
            network_id: network.id.clone(),
            time_ms: crate::model::now_ms(),
            network: Some(network.clone()),
            allocation: None,
            state: None,
            reason: String::new(),
            drifts: Vec::new(),
        }
    }

    /// A new allocation event.
    pub fn allocation(
        kind: EventKind,
        network: &NetworkRecord,
        record: &AllocationRecord,
    ) -> Event {
        Event {
            allocation: Some(record.clone()),
            ..Event::new(kind, network)
        }
    }
}

/// Which events a watcher wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this network's events; empty means every network.
    pub network_id: String,
    /// Only these kinds; empty means every kind.
    pub kinds: Vec<EventKind>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        (self.network_id.is_empty() || self.network_id == event.network_id)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

struct Inner {
    /// The last revision published.
    revision: u64,
    /// The history is complete for every revision after this one.
    compacted: u64,
    history: VecDeque<Arc<Event>>,
    /// None once the agent is shutting down.
    sender: Option<broadcast::Sender<Arc<Event>>>,
}

/// The event history and fan-out.
pub struct EventHub {
    inner: Mutex<Inner>,
}

/// A watcher's start: the history it missed, then live events.
pub struct Subscription {
    /// Events after the start revision, already in history.
    pub backlog: Vec<Arc<Event>>,
    /// Live events (may repeat the end of the backlog; skip revisions already sent).
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The revision the watch starts after.
    pub start: u64,
}

impl EventHub {
    /// A hub whose history starts at `revision` (the persisted one).
    pub fn new(revision: u64) -> EventHub {
        let (sender, _) = broadcast::channel(WATCHER_BUFFER);
        EventHub {
            inner: Mutex::new(Inner {
                revision,
                compacted: revision,
                history: VecDeque::with_capacity(HISTORY),
                sender: Some(sender),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last revision published.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Publishes committed events, in revision order. Never blocks: a
    /// watcher that falls behind loses its place (and its stream).
    pub fn publish(&self, events: Vec<Event>) {
        let mut inner = self.lock();
        for event in events {
            let event = Arc::new(event);
            inner.revision = event.revision;
            if inner.history.len() == HISTORY {
                if let Some(old) = inner.history.pop_front() {
                    inner.compacted = old.revision;
                }
            }
            inner.history.push_back(event.clone());
            if let Some(sender) = &inner.sender {
                // No receivers is fine.
                let _ = sender.send(event);
            }
        }
    }

    /// Starts a watch after `from` (None: after the current revision).
    pub fn subscribe(&self, from: Option<u64>) -> Result<Subscription> {
        let inner = self.lock();
        let Some(sender) = &inner.sender else {
            return Err(AgentError::ShuttingDown);
        };
        let start = from.unwrap_or(inner.revision);
        if start < inner.compacted {
            return Err(AgentError::Watch {
                reason: Reason::RevisionCompacted,
                message: format!(
                    "start_revision: {start} is older than the agent's event history, which starts after revision {} (events before it were compacted or precede the agent's last start); list again and watch from the List response's revision",
                    inner.compacted
                ),
            });
        }
        if start > inner.revision {
            return Err(AgentError::invalid(
                "start_revision",
                format!(
                    "must be at most the agent's current revision {}, got {start}",
                    inner.revision
                ),
            ));
        }
        // Subscribed under the lock: nothing published between backlog and live.
        let live = sender.subscribe();
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.revision > start)
            .cloned()
            .collect();
        Ok(Subscription {
            backlog,
            live,
            start,
        })
    }

    /// Ends every watch (the agent is stopping) and refuses new ones.
    pub fn close(&self) {
        self.lock().sender = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64) -> Event {
        Event {
            revision,
            kind: EventKind::DriftRepaired,
            network_id: "fan".into(),
            time_ms: 0,
            network: None,
            allocation: None,
            state: None,
            reason: String::new(),
            drifts: Vec::new(),
        }
    }

    #[test]
    fn a_watch_gets_the_backlog_then_live_events_and_old_starts_are_compacted() {
        let hub = EventHub::new(10);
        assert!(hub.subscribe(Some(9)).is_err());
        let mut early = hub.subscribe(Some(10)).unwrap();
        hub.publish((11..=13).map(event).collect());
        let late = hub.subscribe(Some(11)).unwrap();
        let revisions: Vec<u64> = late.backlog.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, [12, 13]);
        assert_eq!(early.live.try_recv().unwrap().revision, 11);
        hub.publish(((14..=(14 + HISTORY as u64)).map(event)).collect());
        match hub.subscribe(Some(11)) {
            Err(AgentError::Watch { reason, .. }) => assert_eq!(reason, Reason::RevisionCompacted),
            _ => panic!("a compacted start must be refused"),
        }
        assert!(matches!(
            hub.subscribe(Some(u64::MAX)),
            Err(AgentError::InvalidArgument { .. })
        ));
        hub.close();
        assert!(matches!(hub.subscribe(None), Err(AgentError::ShuttingDown)));
    }
}
