//! The one place that maps domain errors to gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` whose reason is one of
//! [`Reason`] (the proto's `ErrorReason`), and each reason leaves with exactly
//! one gRPC code ([`code_of`]). ErrorInfo.metadata names the resource.
//! Invalid arguments also carry a `google.rpc.BadRequest` listing every
//! invalid field; NOT_FOUND / ALREADY_EXISTS a `google.rpc.ResourceInfo`;
//! FAILED_PRECONDITION a `google.rpc.PreconditionFailure`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{clip, AgentError, Reason};

/// The `ErrorInfo.domain` of every error this agent returns.
pub const ERROR_DOMAIN: &str = "fan.agent.v1";

/// The one gRPC code each reason leaves with.
pub fn code_of(reason: Reason) -> Code {
    match reason {
        Reason::FieldInvalid | Reason::MalformedRequest => Code::InvalidArgument,
        Reason::NetworkNotFound | Reason::AllocationNotFound => Code::NotFound,
        Reason::NetworkExists => Code::AlreadyExists,
        Reason::NetworkInUse
        | Reason::BridgeInUse
        | Reason::OverlayInUse
        | Reason::AddressTaken
        | Reason::UnderlayNotFound
        | Reason::BackendUnavailable
        | Reason::NoBackendAvailable
        | Reason::TooManyNetworks
        | Reason::NetworkProgrammingFailed => Code::FailedPrecondition,
        Reason::SliceExhausted => Code::ResourceExhausted,
        Reason::StateStoreFailed | Reason::DataplaneFailed => Code::Internal,
        Reason::ShuttingDown => Code::Unavailable,
    }
}

/// The reason a domain error is reported with.
pub fn reason_of(err: &AgentError) -> Reason {
    match err {
        AgentError::InvalidArgument { .. } => Reason::FieldInvalid,
        AgentError::NotFound { reason, .. } => *reason,
        AgentError::AlreadyExists { .. } => Reason::NetworkExists,
        AgentError::FailedPrecondition { reason, .. } => *reason,
        AgentError::Exhausted { .. } => Reason::SliceExhausted,
        AgentError::Storage(_) => Reason::StateStoreFailed,
        AgentError::Dataplane(_) => Reason::DataplaneFailed,
        AgentError::ShuttingDown => Reason::ShuttingDown,
    }
}

/// Maps a domain error to its gRPC status.
pub fn to_status(err: &AgentError) -> Status {
    let reason = reason_of(err);
    let metadata: HashMap<String, String> = err
        .metadata()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), clip(&v).into_owned()))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata);
    match err {
        AgentError::InvalidArgument { violations } => {
            for v in violations {
                details.add_bad_request_violation(clip(&v.field), clip(&v.rule));
            }
        }
        AgentError::NotFound { resource, .. } | AgentError::AlreadyExists { resource, .. } => {
            details.set_resource_info(
                resource.kind,
                clip(&resource.name),
                "",
                clip(&err.to_string()),
            );
        }
        AgentError::FailedPrecondition {
            reason, metadata, ..
        } => {
            let subject = metadata
                .get("network_id")
                .map(|id| format!("networks/{id}"))
                .unwrap_or_default();
            details.add_precondition_failure_violation(
                reason.as_str(),
                clip(&subject),
                clip(&err.to_string()),
            );
        }
        _ => {}
    }
    Status::with_error_details(code_of(reason), clip(&err.to_string()), details)
}

/// The status of a request whose bytes do not decode (tonic's decoder
/// failed): INVALID_ARGUMENT with reason MALFORMED_REQUEST.
pub fn malformed_request(detail: &str) -> Status {
    let reason = Reason::MalformedRequest;
    let details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        code_of(reason),
        clip(&format!(
            "the request is not a valid protobuf message of the method's request type: {detail}"
        )),
        details,
    )
}

impl From<AgentError> for Status {
    fn from(err: AgentError) -> Self {
        to_status(&err)
    }
}
