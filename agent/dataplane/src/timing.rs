//! Phase timings of one operation (a network's create), for the bench.
//!
//! The agent runs the operation inside [`collect`]; code anywhere below it
//! (agent or data plane, sync or async, same task) marks its phases with
//! [`phase`]. Outside a [`collect`] scope (every reconcile pass) a phase costs
//! one task-local lookup and records nothing.
//!
//! The agent logs the result as one line at info level (target
//! [`LOG_TARGET`]): `phases network=<id> total_ms=… <phase>_ms=…`, which
//! `fan-bench control` parses from the agent's log. Phase names are
//! `part.step` (e.g. `ebpf.load`); a name recorded twice adds up.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

/// The tracing target of the agent's phase line.
pub const LOG_TARGET: &str = "fan_timing";

tokio::task_local! {
    static PHASES: RefCell<Vec<(&'static str, Duration)>>;
}

/// Runs `future`, collecting the phases recorded inside it, in the order
/// they first ended.
pub async fn collect<F: Future>(future: F) -> (F::Output, Vec<(&'static str, Duration)>) {
    PHASES
        .scope(RefCell::new(Vec::new()), async move {
            let output = future.await;
            let phases = PHASES.with(|p| p.take());
            (output, phases)
        })
        .await
}

/// Adds `elapsed` to phase `name` when a [`collect`] scope is active.
pub fn record(name: &'static str, elapsed: Duration) {
    let _ = PHASES.try_with(|p| {
        let mut phases = p.borrow_mut();
        match phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += elapsed,
            None => phases.push((name, elapsed)),
        }
    });
}

/// Times phase `name` until the guard drops.
pub fn phase(name: &'static str) -> Phase {
    Phase {
        name,
        started: Instant::now(),
    }
}

/// Guard of [`phase`].
#[derive(Debug)]
pub struct Phase {
    name: &'static str,
    started: Instant,
}

impl Drop for Phase {
    fn drop(&mut self) {
        record(self.name, self.started.elapsed());
    }
}

/// Renders phases as `name_ms=1.234` pairs ('.' in names becomes '_').
pub fn render(phases: &[(&'static str, Duration)]) -> String {
    phases
        .iter()
        .map(|(name, d)| format!("{}_ms={:.3}", name.replace('.', "_"), d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_add_up_inside_a_scope_only() {
        record("outside", Duration::from_millis(1));
        let ((), phases) = collect(async {
            record("a.x", Duration::from_millis(2));
            tokio::task::yield_now().await;
            record("b", Duration::from_millis(1));
            record("a.x", Duration::from_millis(3));
        })
        .await;
        assert_eq!(
            phases,
            vec![
                ("a.x", Duration::from_millis(5)),
                ("b", Duration::from_millis(1))
            ]
        );
        assert_eq!(render(&phases), "a_x_ms=5.000 b_ms=1.000");
    }
}
