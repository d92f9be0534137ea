//! The one place that maps domain errors to gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` whose reason (UPPER_SNAKE_CASE)
//! clients and the CLI print unchanged; invalid arguments also carry a
//! `google.rpc.BadRequest` field violation naming the field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{clip, AgentError};

/// The `ErrorInfo.domain` of every error this agent returns.
pub const ERROR_DOMAIN: &str = "fan.agent.v1";

/// Maps a domain error to its gRPC status.
pub fn to_status(err: &AgentError) -> Status {
    let (code, reason) = match err {
        AgentError::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_ARGUMENT"),
        AgentError::NotFound { .. } => (Code::NotFound, "NOT_FOUND"),
        AgentError::AlreadyExists { .. } => (Code::AlreadyExists, "ALREADY_EXISTS"),
        AgentError::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, *reason),
        AgentError::Exhausted { .. } => (Code::ResourceExhausted, "SLICE_EXHAUSTED"),
        AgentError::Storage(_) => (Code::Internal, "STATE_STORE_FAILED"),
        AgentError::Dataplane(_) => (Code::Internal, "DATAPLANE_FAILED"),
        AgentError::StateCorrupt(_) => (Code::DataLoss, "STATE_CORRUPT"),
        AgentError::Unavailable { reason, .. } => (Code::Unavailable, *reason),
        AgentError::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
    };
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if let AgentError::InvalidArgument { field, rule } = err {
        details.add_bad_request_violation(field.clone(), clip(rule));
    }
    Status::with_error_details(code, clip(&err.to_string()), details)
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Self {
        to_status(&err)
    }
}
