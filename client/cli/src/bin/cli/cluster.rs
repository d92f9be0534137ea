//! `cluster status`: many agents at once.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fan_client::{ConnectOptions, FanClient, Network, NetworkState, RetryPolicy};
use serde::Serialize;
use serde_json::Value;

use super::error::CheckFailed;
use super::output::{to_json, Render};
use super::table::Table;

/// One agent's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentStatus {
    /// The target as given.
    pub target: String,
    /// Whether the agent answered at all.
    pub reachable: bool,
    /// The error, one line with its reason; `null` when all went well.
    pub error: Option<String>,
    /// The agent version.
    pub version: Option<String>,
    /// The host name.
    pub hostname: Option<String>,
    /// How many networks the agent has.
    pub networks: Option<usize>,
    /// How many of them are ready.
    pub networks_ready: Option<usize>,
    /// This host's slices, one per network.
    pub slices: Vec<String>,
    /// Allocated addresses over all networks.
    pub allocations: Option<u64>,
    /// The worst network state: `"ready"`, `"degraded"`, `"failed"`,
    /// `"unknown"`, or `"none"` without networks; `null` when unreachable.
    pub dataplane: Option<String>,
}

impl AgentStatus {
    fn failed(target: &str, err: &fan_client::Error) -> Self {
        Self {
            target: target.to_string(),
            reachable: !err.is_unreachable(),
            error: Some(err.to_string()),
            version: None,
            hostname: None,
            networks: None,
            networks_ready: None,
            slices: Vec::new(),
            allocations: None,
            dataplane: None,
        }
    }

    /// Whether the row counts as healthy for `--strict`.
    pub fn healthy(&self) -> bool {
        self.reachable
            && self.error.is_none()
            && matches!(self.dataplane.as_deref(), Some("ready") | Some("none"))
    }
}

/// The summary of one agent's answers.
pub fn summarize(target: &str, info: fan_client::AgentInfo, nets: &[Network]) -> AgentStatus {
    let rank = |s: NetworkState| match s {
        NetworkState::Ready => 0,
        NetworkState::Unknown => 1,
        NetworkState::Degraded => 2,
        NetworkState::Failed => 3,
        _ => 1,
    };
    let worst = nets.iter().map(|n| n.status.state).max_by_key(|s| rank(*s));
    AgentStatus {
        target: target.to_string(),
        reachable: true,
        error: None,
        version: Some(info.version),
        hostname: Some(info.hostname),
        networks: Some(nets.len()),
        networks_ready: Some(
            nets.iter()
                .filter(|n| n.status.state == NetworkState::Ready)
                .count(),
        ),
        slices: nets
            .iter()
            .filter_map(|n| n.status.slice.map(|s| s.to_string()))
            .collect(),
        allocations: Some(nets.iter().map(|n| u64::from(n.status.allocated)).sum()),
        dataplane: Some(worst.map_or("none", |s| s.as_str()).to_string()),
    }
}

/// Queries one agent within `budget`.
pub async fn query(target: &str, budget: Duration) -> AgentStatus {
    let options = ConnectOptions::default()
        .with_timeout(budget)
        .with_connect_timeout(budget)
        .with_retry(RetryPolicy::none());
    let work = async {
        let client = FanClient::connect_with(target, options).await?;
        // One call after the other: agents run concurrently, calls to one
        // agent need not (and one agent's work is small).
        let info = client.get_agent_info().await?;
        let nets = client.list_networks().await?;
        Ok::<_, fan_client::Error>(summarize(target, info, &nets))
    };
    match tokio::time::timeout(budget, work).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => AgentStatus::failed(target, &err),
        Err(_) => AgentStatus::failed(target, &fan_client::Error::Timeout { after: budget }),
    }
}

/// Queries every agent concurrently; shows progress on stderr when it is a
/// terminal.
pub async fn query_all(targets: &[String], budget: Duration) -> Vec<AgentStatus> {
    let tty = std::io::stderr().is_terminal();
    let total = targets.len();
    let done = AtomicUsize::new(0);
    if tty {
        eprint!("querying {total} agents: 0/{total}");
    }
    let futures = targets.iter().map(|t| {
        let done = &done;
        async move {
            let s = query(t, budget).await;
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if tty {
                eprint!("\rquerying {total} agents: {n}/{total}");
            }
            s
        }
    });
    let rows = futures::future::join_all(futures).await;
    if tty {
        eprint!("\r\x1b[2K");
    }
    rows
}

/// `cluster status` result.
pub struct ClusterStatus(pub Vec<AgentStatus>);

impl ClusterStatus {
    /// The `--strict` verdict.
    pub fn check(&self) -> Result<(), CheckFailed> {
        let unreachable = self.0.iter().filter(|r| !r.reachable).count();
        let unhealthy = self.0.iter().filter(|r| !r.healthy()).count();
        if unhealthy == 0 {
            return Ok(());
        }
        Err(CheckFailed {
            message: format!(
                "{unhealthy} of {} agents not healthy ({unreachable} unreachable)",
                self.0.len()
            ),
            reason: "CLUSTER_NOT_HEALTHY",
        })
    }
}

impl Render for ClusterStatus {
    fn table(&self) -> String {
        let mut t = Table::new([
            "TARGET",
            "REACHABLE",
            "VERSION",
            "NETWORKS",
            "SLICES",
            "ALLOCATIONS",
            "DATAPLANE",
            "ERROR",
        ]);
        for r in &self.0 {
            let dataplane = match (&r.dataplane, r.networks, r.networks_ready) {
                (Some(d), Some(n), Some(ok)) if d != "ready" && d != "none" => {
                    format!("{d} ({ok}/{n} ready)")
                }
                (d, _, _) => d.clone().unwrap_or_default(),
            };
            t.row([
                r.target.clone(),
                if r.reachable { "yes" } else { "no" }.to_string(),
                r.version.clone().unwrap_or_default(),
                r.networks.map(|n| n.to_string()).unwrap_or_default(),
                r.slices.join(","),
                r.allocations.map(|n| n.to_string()).unwrap_or_default(),
                dataplane,
                r.error.clone().unwrap_or_default(),
            ]);
        }
        t.render()
    }

    fn json(&self) -> Value {
        to_json(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_client::AgentInfo;

    fn info() -> AgentInfo {
        AgentInfo {
            version: "0.1.0".into(),
            hostname: "h1".into(),
            kernel_release: "6.8".into(),
            addresses: vec![],
            backends: vec![],
            auto_backend: None,
        }
    }

    #[test]
    fn unreachable_rows_and_strict() {
        let down = AgentStatus::failed(
            "unix:/nope",
            &fan_client::Error::Connect {
                target: "unix:/nope".into(),
                detail: "No such file or directory (os error 2)".into(),
            },
        );
        assert!(!down.reachable);
        let up = summarize("unix:/a", info(), &[]);
        assert_eq!(up.dataplane.as_deref(), Some("none"));
        assert!(up.healthy());
        let status = ClusterStatus(vec![up.clone(), down]);
        let table = status.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TARGET      REACHABLE  VERSION  NETWORKS"));
        assert!(lines[1].starts_with("unix:/a     yes        0.1.0    0"));
        assert!(lines[2].starts_with("unix:/nope  no         -        -"));
        assert!(lines[2].ends_with("(AGENT_UNREACHABLE)"));
        let err = status.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "1 of 2 agents not healthy (1 unreachable) (CLUSTER_NOT_HEALTHY)"
        );
        assert!(ClusterStatus(vec![up]).check().is_ok());
        let v = status.json();
        assert_eq!(v[1]["reachable"], serde_json::json!(false));
        assert_eq!(v[1]["dataplane"], serde_json::Value::Null);
        assert_eq!(
            v[0],
            serde_json::json!({"target": "unix:/a", "reachable": true, "error": null,
                "version": "0.1.0", "hostname": "h1", "networks": 0, "networks_ready": 0,
                "slices": [], "allocations": 0, "dataplane": "none"})
        );
    }
}
