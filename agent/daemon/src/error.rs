//! Domain errors of the agent. They say which field broke which rule, or which
//! resource is missing; `api::status` turns them into gRPC statuses in one place.

use std::collections::BTreeMap;

pub use crate::reason::Reason;

/// `google.rpc.ErrorInfo.metadata`: names the resource an error is about
/// ("network_id", "address", "container_id", …; see the proto's ErrorReason).
pub type Metadata = BTreeMap<&'static str, String>;

/// One invalid request field and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The request field, e.g. "spec.overlay".
    pub field: String,
    /// The rule that was broken, with the offending value.
    pub rule: String,
}

/// A resource a NOT_FOUND or ALREADY_EXISTS error is about (`google.rpc.ResourceInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The proto message type, e.g. "fan.agent.v1.Network".
    pub kind: &'static str,
    /// The resource name, e.g. "networks/fan".
    pub name: String,
    /// In words, e.g. `network "fan"`.
    pub description: String,
}

/// Everything an agent operation can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// Request fields are malformed or break rules; every one is listed.
    /// Nothing was changed.
    #[error("{}", describe_violations(violations))]
    InvalidArgument {
        /// At least one violation.
        violations: Vec<Violation>,
    },
    /// The named resource does not exist.
    #[error("{} not found", resource.description)]
    NotFound {
        /// NETWORK_NOT_FOUND or ALLOCATION_NOT_FOUND.
        reason: Reason,
        /// What is missing.
        resource: Resource,
        /// Names the resource.
        metadata: Metadata,
    },
    /// The resource exists with different content.
    #[error("{message}")]
    AlreadyExists {
        /// What exists.
        resource: Resource,
        /// What exists and how it differs.
        message: String,
        /// Names the resource.
        metadata: Metadata,
    },
    /// The request is valid but the system is not in a state to carry it out.
    #[error("{message}")]
    FailedPrecondition {
        /// The specific reason.
        reason: Reason,
        /// What is wrong and what to do.
        message: String,
        /// Names the resources involved.
        metadata: Metadata,
    },
    /// The slice has no free address left.
    #[error("{message}")]
    Exhausted {
        /// Which slice, and its capacity.
        message: String,
        /// Names the network.
        metadata: Metadata,
    },
    /// Persisting state failed; the change was not made.
    #[error("state store: {0}")]
    Storage(String),
    /// The kernel data plane could not be programmed.
    #[error("data plane: {0}")]
    Dataplane(String),
    /// The state on disk cannot be trusted (empty although initialized,
    /// unopenable, or a record that fails its checksum); the message names
    /// what and the recovery command.
    #[error("{0}")]
    StateCorrupt(String),
    /// A dependency (the state directory) is temporarily unusable; the
    /// request changed nothing and may be retried.
    #[error("{message}")]
    Unavailable {
        /// The reason, e.g. [`Reason::StateUnwritable`].
        reason: Reason,
        /// What is unusable, why (the OS error) and what still works.
        message: String,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// A watch cannot start or continue (REVISION_COMPACTED, WATCHER_TOO_SLOW).
    #[error("{message}")]
    Watch {
        /// Why; its code comes from `api::status::code_of`.
        reason: Reason,
        /// What to do: list again, or resume from the last revision.
        message: String,
    },
}

impl AgentError {
    /// One invalid field (the shorthand of [`AgentError::InvalidArgument`]).
    pub fn invalid(field: impl Into<String>, rule: impl std::fmt::Display) -> Self {
        AgentError::InvalidArgument {
            violations: vec![Violation {
                field: field.into(),
                rule: rule.to_string(),
            }],
        }
    }

    /// [`AgentError::NotFound`] of a network.
    pub fn network_not_found(id: &str) -> Self {
        AgentError::NotFound {
            reason: Reason::NetworkNotFound,
            resource: Resource::network(id),
            metadata: Metadata::from([("network_id", id.to_owned())]),
        }
    }

    /// [`AgentError::FailedPrecondition`]; add metadata with [`AgentError::with`].
    pub fn precondition(reason: Reason, message: impl Into<String>) -> Self {
        AgentError::FailedPrecondition {
            reason,
            message: message.into(),
            metadata: Metadata::new(),
        }
    }

    /// Adds one metadata entry (errors without metadata are returned unchanged).
    pub fn with(mut self, key: &'static str, value: impl std::fmt::Display) -> Self {
        if let Some(metadata) = self.metadata_mut() {
            metadata.insert(key, value.to_string());
        }
        self
    }

    fn metadata_mut(&mut self) -> Option<&mut Metadata> {
        match self {
            AgentError::NotFound { metadata, .. }
            | AgentError::AlreadyExists { metadata, .. }
            | AgentError::FailedPrecondition { metadata, .. }
            | AgentError::Exhausted { metadata, .. } => Some(metadata),
            _ => None,
        }
    }

    /// The ErrorInfo metadata of this error (empty when it names no resource).
    pub fn metadata(&self) -> Metadata {
        match self {
            AgentError::NotFound { metadata, .. }
            | AgentError::AlreadyExists { metadata, .. }
            | AgentError::FailedPrecondition { metadata, .. }
            | AgentError::Exhausted { metadata, .. } => metadata.clone(),
            _ => Metadata::new(),
        }
    }
}

impl AgentError {
    /// [`AgentError::NotFound`] of an allocation, by owner or address.
    pub fn allocation_not_found(network_id: &str, selector: &crate::model::Selector) -> Self {
        use crate::model::Selector;
        let mut metadata = Metadata::from([("network_id", network_id.to_owned())]);
        let name = match selector {
            Selector::Address(address) => {
                metadata.insert("address", address.to_string());
                format!("networks/{network_id}/allocations/{address}")
            }
            Selector::Owner(owner) => {
                metadata.insert("container_id", owner.container_id.clone());
                metadata.insert("interface", owner.interface.clone());
                format!("networks/{network_id}/allocations")
            }
        };
        AgentError::NotFound {
            reason: Reason::AllocationNotFound,
            resource: Resource {
                kind: "fan.agent.v1.Allocation",
                name,
                description: format!("allocation with {selector} in network {network_id:?}"),
            },
            metadata,
        }
    }
}

impl Resource {
    /// The network `id`.
    pub fn network(id: &str) -> Self {
        Resource {
            kind: "fan.agent.v1.Network",
            name: format!("networks/{id}"),
            description: format!("network {id:?}"),
        }
    }
}

fn describe_violations(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.rule))
        .collect();
    parts.join("; ")
}

impl From<redb::Error> for AgentError {
    fn from(err: redb::Error) -> Self {
        AgentError::Storage(err.to_string())
    }
}

impl From<fan_dataplane::DataplaneError> for AgentError {
    fn from(err: fan_dataplane::DataplaneError) -> Self {
        AgentError::Dataplane(err.to_string())
    }
}

/// Longest error text or audit field the agent repeats back: errors quote the
/// offending value, and a request can carry megabytes of it.
pub const MAX_ECHO_BYTES: usize = 512;

/// `text` cut to [`MAX_ECHO_BYTES`] on a character boundary, saying how much was cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ECHO_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}… ({} more bytes)",
        &text[..end],
        text.len() - end
    ))
}

/// The result type of agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_ECHO_BYTES);
        let clipped = clip(&long);
        assert!(clipped.len() < MAX_ECHO_BYTES + 40, "{}", clipped.len());
        assert!(clipped.ends_with(&format!("({} more bytes)", long.len() - MAX_ECHO_BYTES)));
    }
}
