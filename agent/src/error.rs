//! Domain errors of the agent. They say which field broke which rule, or which
//! resource is missing; `api::status` turns them into gRPC statuses in one place.

/// Everything an agent operation can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// A request field is malformed or breaks a rule. Nothing was changed.
    #[error("{field}: {rule}")]
    InvalidArgument {
        /// The request field, e.g. "spec.overlay".
        field: String,
        /// The rule that was broken, with the offending value.
        rule: String,
    },
    /// The named resource does not exist.
    #[error("{resource} not found")]
    NotFound {
        /// e.g. "network \"fan\"" or "allocation 250.0.28.5 in network \"fan\"".
        resource: String,
    },
    /// The resource exists with different content.
    #[error("{message}")]
    AlreadyExists {
        /// What exists and how it differs.
        message: String,
    },
    /// The request is valid but the system is not in a state to carry it out.
    #[error("{message}")]
    FailedPrecondition {
        /// UPPER_SNAKE_CASE reason for `google.rpc.ErrorInfo`.
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The slice has no free address left.
    #[error("{message}")]
    Exhausted {
        /// Which slice, and its capacity.
        message: String,
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
        /// UPPER_SNAKE_CASE reason for `google.rpc.ErrorInfo`, e.g. STATE_UNWRITABLE.
        reason: &'static str,
        /// What is unusable, why (the OS error) and what still works.
        message: String,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl AgentError {
    /// Shorthand for [`AgentError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, rule: impl std::fmt::Display) -> Self {
        AgentError::InvalidArgument {
            field: field.into(),
            rule: rule.to_string(),
        }
    }

    /// Shorthand for [`AgentError::NotFound`] of a network.
    pub fn network_not_found(id: &str) -> Self {
        AgentError::NotFound {
            resource: format!("network {id:?}"),
        }
    }

    /// Shorthand for [`AgentError::FailedPrecondition`].
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        AgentError::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }
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
