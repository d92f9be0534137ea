//! The `fan-ipam` CNI IPAM plugin: addresses for container runtimes from the
//! fan agent of the host.
//!
//! A container runtime (containerd, CRI-O, podman's CNI backend, `cnitool`)
//! runs a main plugin such as `bridge`, which runs this IPAM plugin with the
//! same environment and network configuration. The plugin turns each CNI
//! command into agent calls; it keeps no state of its own, so every address
//! lives in the agent's store and survives restarts of either side.
//!
//! | `CNI_COMMAND` | agent call | output |
//! | --- | --- | --- |
//! | `ADD` | AllocateAddress (owner = `CNI_CONTAINERID` + `CNI_IFNAME`) | a result with the address, gateway and routes |
//! | `DEL` | ReleaseAddress by owner, allow_missing | nothing; succeeds when the allocation or the network is gone |
//! | `CHECK` | GetAllocation by owner | nothing; fails when `prevResult` does not hold the allocation |
//! | `GC` (1.1) | GarbageCollectAllocations (dry run), ReleaseAddress | nothing; releases this CNI network's allocations whose owner is not in `cni.dev/valid-attachments` |
//! | `STATUS` (1.1) | GetNetwork | nothing; error 50 unless the agent answers and the network is ready |
//! | `VERSION` | — | the supported spec versions |
//!
//! The configuration (`ipam` of the main plugin's configuration):
//!
//! ```json
//! {"type": "fan-ipam", "network": "fan", "agent": "unix:///run/fan/agent.sock",
//!  "routes": [{"dst": "0.0.0.0/0"}]}
//! ```
//!
//! `network` is the fan network id on the host (required); `agent` the agent
//! target (default [`fan_client::DEFAULT_TARGET`]); `routes` replaces the default
//! route through the gateway (an empty list gives no route, for a second
//! interface that must not take the default route). Other keys in `ipam` are
//! refused (error 2), so that a misspelt key is not silently ignored.
//!
//! The IPAM result has no MTU: the main plugin sets the container MTU from
//! its own `mtu` key, which must not exceed the fan network's MTU (the
//! underlay MTU minus 20). When the configuration has a top-level `mtu`
//! larger than the network's, `ADD` fails (error 7) instead of leaving
//! containers that silently drop large packets, and `CHECK` reports it.
//!
//! [`conflist()`](fn@conflist) builds the configuration list a runtime needs (bridge +
//! fan-ipam + portmap) from the bridge name and MTU the agent reports;
//! `fan-ipam conflist NETWORK` prints it.
//!
//! The module is split by what each part reads or writes: [`config`] (the
//! environment and the configuration on stdin), [`result`] (what is printed),
//! [`mod@conflist`] (the configuration list) and [`mod@run`] (the one part
//! that talks to the agent); everything is re-exported here. Every function
//! except [`run()`](fn@run) is pure.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

pub mod config;
pub mod conflist;
pub mod result;
pub mod run;
#[cfg(test)]
mod tests;

pub use config::*;
pub use conflist::*;
pub use result::*;
pub use run::*;

/// The CNI spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported spec version, used where no configuration names one.
pub const LATEST_VERSION: &str = "1.1.0";

/// The label holding the CNI network name on every allocation `ADD` makes;
/// `GC` only ever releases allocations carrying its own network's name.
pub const LABEL_CNI_NETWORK: &str = "fan-ipam/cni-network";
/// The label naming what made an allocation (`cni` here, `docker` for
/// fan-docker-ipam); `fan-client address gc --created-by` selects by it.
pub const LABEL_CREATED_BY: &str = "fan.io/created-by";
/// The value of [`LABEL_CREATED_BY`] on allocations `ADD` makes.
pub const CREATED_BY_CNI: &str = "cni";
/// The label holding the Kubernetes pod namespace (from `CNI_ARGS`).
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// The label holding the Kubernetes pod name (from `CNI_ARGS`).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";

/// CNI error codes: the spec's well-known ones (below 100) and this
/// plugin's own (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration; the message names the key.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Invalid or missing environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME`).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure (reading the configuration).
    pub const IO_FAILURE: u32 = 5;
    /// The configuration is not JSON.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is unreachable, or the fan network does not exist (yet).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// `STATUS`: the plugin cannot service `ADD` requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused the request; `details` carries its message and reason.
    pub const AGENT_ERROR: u32 = 100;
    /// The host's slice has no free address.
    pub const NO_FREE_ADDRESS: u32 = 101;
    /// `CHECK`: the allocation is missing or differs from `prevResult`.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: code, short message, optional details. Printed on stdout as
/// the spec's error JSON by [`CniError::to_json`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {code}){}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    /// The CNI error code (see [`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// More detail, e.g. the agent's error line; may be empty.
    pub details: String,
}

impl CniError {
    /// An error without details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The spec's error structure for spec version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}

/// Error 7, invalid network configuration: `msg` names the key and the rule.
pub fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

// ---- commands ------------------------------------------------------------------

/// A CNI command (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Allocate an address.
    Add,
    /// Release the address.
    Del,
    /// Verify the address against `prevResult`.
    Check,
    /// Release addresses of attachments that are no longer valid (spec 1.1).
    Gc,
    /// Report whether `ADD` can be served (spec 1.1).
    Status,
    /// Report the supported spec versions.
    Version,
}

impl Command {
    /// The oldest spec version whose configurations allow this command.
    pub fn min_version(&self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
            _ => "0.3.0",
        }
    }

    /// Whether the command acts on one attachment (needs a container id and
    /// an interface name).
    pub fn needs_attachment(&self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("unknown CNI_COMMAND {other:?}"),
                )
                .with_details("expected ADD, DEL, CHECK, GC, STATUS or VERSION"))
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        })
    }
}
