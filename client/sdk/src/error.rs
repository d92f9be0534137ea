//! The SDK's one error type.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// Everything a [`crate::FanClient`] call can fail with.
///
/// `Display` is always one line, `<message> (<REASON>)`, where REASON is
/// the agent's `google.rpc.ErrorInfo` reason (UPPER_SNAKE_CASE) when it
/// sent one, else the gRPC code name (`UNAVAILABLE`), else one of this
/// SDK's own reasons: `INVALID_TARGET`, `AGENT_UNREACHABLE`,
/// `DEADLINE_EXCEEDED`, `BAD_RESPONSE`, `TLS_UNSUPPORTED`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target string is not `unix://PATH`, `unix:PATH`, `http://…` or
    /// `https://…`.
    #[error("invalid agent target {target:?}: {detail} (INVALID_TARGET)")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        detail: String,
    },
    /// TLS was asked for but this build has no TLS support.
    #[error("TLS to {target} needs fan-client built with the `tls` feature (TLS_UNSUPPORTED)")]
    TlsUnsupported {
        /// The target as given.
        target: String,
    },
    /// No connection could be made to the agent.
    #[error("cannot connect to the agent at {target}: {detail} (AGENT_UNREACHABLE)")]
    Connect {
        /// The target as given.
        target: String,
        /// The underlying cause, one line.
        detail: String,
    },
    /// The connection to the agent broke or was refused during a call (the
    /// agent went away, TLS was rejected, …). The call may or may not have
    /// been carried out.
    #[error("connection to the agent at {target} failed: {detail} (AGENT_UNREACHABLE)")]
    Transport {
        /// The target as given.
        target: String,
        /// The underlying cause, one line.
        detail: String,
    },
    /// The call did not finish within the per-call timeout.
    #[error("no answer from the agent within {}s (DEADLINE_EXCEEDED)", .after.as_secs_f64())]
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The agent answered with a gRPC error status.
    #[error("{message} ({})", .reason.as_deref().unwrap_or(code_name(*.code)))]
    Rpc {
        /// The gRPC status code.
        code: Code,
        /// The status message (one line).
        message: String,
        /// The `google.rpc.ErrorInfo` reason, when the agent sent one.
        reason: Option<String>,
        /// The `google.rpc.ErrorInfo` domain, empty when none.
        domain: String,
        /// The `google.rpc.ErrorInfo` metadata: names the resource
        /// ("network_id", "address", "container_id", …).
        metadata: BTreeMap<String, String>,
        /// The other `google.rpc` details the agent sent.
        details: Box<RpcDetails>,
    },
    /// The agent's answer does not make sense (a missing message, an
    /// address that does not parse).
    #[error("malformed answer from the agent: {detail} (BAD_RESPONSE)")]
    BadResponse {
        /// What is wrong.
        detail: String,
    },
}

/// Reasons the agent sends in `google.rpc.ErrorInfo.reason` (domain
/// `fan.agent.v1`): one constant per value of the proto's `ErrorReason`
/// enum, named as on the wire (the enum value without `ERROR_REASON_`).
/// Each comes with exactly one gRPC code, given first below. Compare with
/// [`Error::reason`]; a newer agent may send reasons not listed here, so
/// fall back to [`Error::code`].
pub mod reason {
    /// INVALID_ARGUMENT: request fields break rules; see [`super::Error::field_violations`].
    pub const FIELD_INVALID: &str = "FIELD_INVALID";
    /// INVALID_ARGUMENT: the request bytes are not a valid protobuf message
    /// (for example a string that is not UTF-8).
    pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";
    /// NOT_FOUND: no network has the id.
    pub const NETWORK_NOT_FOUND: &str = "NETWORK_NOT_FOUND";
    /// NOT_FOUND: the network has no such allocation.
    pub const ALLOCATION_NOT_FOUND: &str = "ALLOCATION_NOT_FOUND";
    /// ALREADY_EXISTS: the network exists with a different spec.
    pub const NETWORK_EXISTS: &str = "NETWORK_EXISTS";
    /// FAILED_PRECONDITION: the network still has allocations.
    pub const NETWORK_IN_USE: &str = "NETWORK_IN_USE";
    /// FAILED_PRECONDITION: another network uses the bridge.
    pub const BRIDGE_IN_USE: &str = "BRIDGE_IN_USE";
    /// FAILED_PRECONDITION: the overlay overlaps another network's.
    pub const OVERLAY_IN_USE: &str = "OVERLAY_IN_USE";
    /// FAILED_PRECONDITION: the address belongs to another owner, or the
    /// owner holds a different one.
    pub const ADDRESS_TAKEN: &str = "ADDRESS_TAKEN";
    /// FAILED_PRECONDITION: the underlay matches nothing on the agent's host.
    pub const UNDERLAY_NOT_FOUND: &str = "UNDERLAY_NOT_FOUND";
    /// FAILED_PRECONDITION: the requested backend cannot run on the host.
    pub const BACKEND_UNAVAILABLE: &str = "BACKEND_UNAVAILABLE";
    /// FAILED_PRECONDITION: auto found no backend that can run on the host.
    pub const NO_BACKEND_AVAILABLE: &str = "NO_BACKEND_AVAILABLE";
    /// FAILED_PRECONDITION: the agent holds the most networks it can number.
    pub const TOO_MANY_NETWORKS: &str = "TOO_MANY_NETWORKS";
    /// FAILED_PRECONDITION: the kernel refused to program a new network; it
    /// was not created.
    pub const NETWORK_PROGRAMMING_FAILED: &str = "NETWORK_PROGRAMMING_FAILED";
    /// RESOURCE_EXHAUSTED: the slice has no free address.
    pub const SLICE_EXHAUSTED: &str = "SLICE_EXHAUSTED";
    /// INTERNAL: the agent's state store failed; nothing was changed.
    pub const STATE_STORE_FAILED: &str = "STATE_STORE_FAILED";
    /// INTERNAL: the data plane of an existing network could not be changed or read.
    pub const DATAPLANE_FAILED: &str = "DATAPLANE_FAILED";
    /// UNAVAILABLE: the agent is shutting down.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// RESOURCE_EXHAUSTED: the watch stream fell too far behind the agent's
    pub const WATCHER_TOO_SLOW: &str = "WATCHER_TOO_SLOW";
    /// OUT_OF_RANGE: WatchEvents was asked to start from a revision older than the
    pub const REVISION_COMPACTED: &str = "REVISION_COMPACTED";
    /// FAILED_PRECONDITION: UpdateNetwork would reserve for the host an
    pub const HOST_RESERVE_COVERS_ALLOCATION: &str = "HOST_RESERVE_COVERS_ALLOCATION";
    /// FAILED_PRECONDITION: the owner already holds an allocation whose labels
    pub const OWNER_LABELS_DIFFER: &str = "OWNER_LABELS_DIFFER";
    /// FAILED_PRECONDITION: the owner already holds a different address than
    pub const OWNER_HAS_OTHER_ADDRESS: &str = "OWNER_HAS_OTHER_ADDRESS";
    /// FAILED_PRECONDITION: the requested address is held by another owner.
    pub const ADDRESS_HELD_BY_OTHER_OWNER: &str = "ADDRESS_HELD_BY_OTHER_OWNER";
    /// DATA_LOSS: the state on disk cannot be trusted (a record fails its
    pub const STATE_CORRUPT: &str = "STATE_CORRUPT";
    /// UNAVAILABLE: the state directory takes no writes (disk full, I/O error);
    pub const STATE_UNWRITABLE: &str = "STATE_UNWRITABLE";
    /// FAILED_PRECONDITION: the host no longer owns the network's slice (its underlay
    pub const SLICE_NOT_OWNED: &str = "SLICE_NOT_OWNED";
    /// FAILED_PRECONDITION: the overlay overlaps this host's own addresses or routes
    pub const OVERLAY_OVERLAPS_HOST: &str = "OVERLAY_OVERLAPS_HOST";

    /// Every reason above, in proto order.
    pub const ALL: [&str; 28] = [
        FIELD_INVALID,
        MALFORMED_REQUEST,
        NETWORK_NOT_FOUND,
        ALLOCATION_NOT_FOUND,
        NETWORK_EXISTS,
        NETWORK_IN_USE,
        BRIDGE_IN_USE,
        OVERLAY_IN_USE,
        ADDRESS_TAKEN,
        UNDERLAY_NOT_FOUND,
        BACKEND_UNAVAILABLE,
        NO_BACKEND_AVAILABLE,
        TOO_MANY_NETWORKS,
        NETWORK_PROGRAMMING_FAILED,
        SLICE_EXHAUSTED,
        STATE_STORE_FAILED,
        DATAPLANE_FAILED,
        SHUTTING_DOWN,
        OVERLAY_OVERLAPS_HOST,
        SLICE_NOT_OWNED,
        STATE_UNWRITABLE,
        STATE_CORRUPT,
        ADDRESS_HELD_BY_OTHER_OWNER,
        OWNER_HAS_OTHER_ADDRESS,
        OWNER_LABELS_DIFFER,
        HOST_RESERVE_COVERS_ALLOCATION,
        REVISION_COMPACTED,
        WATCHER_TOO_SLOW,
    ];
}

/// The `google.rpc` details of an agent error besides ErrorInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcDetails {
    /// `google.rpc.BadRequest`: every invalid request field.
    pub field_violations: Vec<FieldViolation>,
    /// `google.rpc.ResourceInfo`: the resource that is missing or exists.
    pub resource: Option<ResourceInfo>,
    /// `google.rpc.PreconditionFailure`: what state stood in the way.
    pub precondition_violations: Vec<PreconditionViolation>,
}

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. "spec.overlay" or "owner.container_id".
    pub field: String,
    /// The rule it breaks, with the offending value.
    pub description: String,
}

/// The resource a NOT_FOUND or ALREADY_EXISTS error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The proto type, e.g. "fan.agent.v1.Network".
    pub resource_type: String,
    /// The resource name, e.g. "networks/fan".
    pub resource_name: String,
    /// In words.
    pub description: String,
}

/// One failed precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    /// The reason, e.g. "NETWORK_IN_USE".
    pub kind: String,
    /// The resource, e.g. "networks/fan".
    pub subject: String,
    /// What is wrong and what to do.
    pub description: String,
}

impl Error {
    /// The gRPC code this error corresponds to. Client-side errors map to
    /// the nearest code: a bad target is `InvalidArgument`, no connection is
    /// `Unavailable`, a timeout `DeadlineExceeded`, a malformed answer
    /// `Internal`, missing TLS support `Unimplemented`.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidTarget { .. } => Code::InvalidArgument,
            Error::TlsUnsupported { .. } => Code::Unimplemented,
            Error::Connect { .. } | Error::Transport { .. } => Code::Unavailable,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Rpc { code, .. } => *code,
            Error::BadResponse { .. } => Code::Internal,
        }
    }

    /// The reason printed in parentheses: the agent's ErrorInfo reason, the
    /// code name, or this SDK's own reason (see [`Error`]).
    pub fn reason(&self) -> &str {
        match self {
            Error::InvalidTarget { .. } => "INVALID_TARGET",
            Error::TlsUnsupported { .. } => "TLS_UNSUPPORTED",
            Error::Connect { .. } | Error::Transport { .. } => "AGENT_UNREACHABLE",
            Error::Timeout { .. } => "DEADLINE_EXCEEDED",
            Error::Rpc { code, reason, .. } => reason.as_deref().unwrap_or(code_name(*code)),
            Error::BadResponse { .. } => "BAD_RESPONSE",
        }
    }

    /// The human part of the message, without the reason.
    pub fn message(&self) -> String {
        let full = self.to_string();
        let suffix = format!(" ({})", self.reason());
        match full.strip_suffix(&suffix) {
            Some(m) => m.to_string(),
            None => full,
        }
    }

    /// Whether the agent could not be reached at all (as opposed to
    /// refusing the request).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Transport { .. }
                | Error::Timeout { .. }
                | Error::TlsUnsupported { .. }
        ) || matches!(
            self,
            Error::Rpc {
                code: Code::Unavailable,
                reason: None,
                ..
            }
        )
    }

    /// Whether the agent answered NOT_FOUND.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Rpc {
                code: Code::NotFound,
                ..
            }
        )
    }

    /// Whether an idempotent call may be tried again after this error:
    /// only `UNAVAILABLE` (the agent is restarting, or the connection
    /// broke before the request was processed).
    pub fn is_retryable(&self) -> bool {
        self.code() == Code::Unavailable && !matches!(self, Error::TlsUnsupported { .. })
    }

    /// The agent's `google.rpc.ErrorInfo.metadata` (empty for client-side errors).
    pub fn metadata(&self) -> BTreeMap<String, String> {
        match self {
            Error::Rpc { metadata, .. } => metadata.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Every invalid request field the agent listed (INVALID_ARGUMENT).
    pub fn field_violations(&self) -> &[FieldViolation] {
        match self {
            Error::Rpc { details, .. } => &details.field_violations,
            _ => &[],
        }
    }

    /// The missing or existing resource (NOT_FOUND, ALREADY_EXISTS).
    pub fn resource_info(&self) -> Option<&ResourceInfo> {
        match self {
            Error::Rpc { details, .. } => details.resource.as_ref(),
            _ => None,
        }
    }

    /// The failed preconditions (FAILED_PRECONDITION).
    pub fn precondition_violations(&self) -> &[PreconditionViolation] {
        match self {
            Error::Rpc { details, .. } => &details.precondition_violations,
            _ => &[],
        }
    }

    pub(crate) fn bad_response(detail: impl Into<String>) -> Self {
        Error::BadResponse {
            detail: detail.into(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let details = status.get_error_details();
        let (reason, domain, metadata) = match details.error_info() {
            Some(info) if !info.reason.is_empty() => (
                Some(info.reason.clone()),
                info.domain.clone(),
                info.metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => (None, String::new(), BTreeMap::new()),
        };
        let mut message = status.message().to_string();
        // Transport failures carry the useful part in the source chain
        // ("transport error" alone says nothing).
        let mut source = std::error::Error::source(&status);
        while let Some(err) = source {
            let s = err.to_string();
            if !s.is_empty() && !message.contains(&s) {
                if message.is_empty() {
                    message = s;
                } else {
                    message = format!("{message}: {s}");
                }
            }
            source = err.source();
        }
        if message.is_empty() {
            message = format!("the agent answered {}", code_name(status.code()));
        }
        let rpc_details = RpcDetails {
            field_violations: details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| FieldViolation {
                            field: v.field.clone(),
                            description: v.description.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            resource: details.resource_info().map(|r| ResourceInfo {
                resource_type: r.resource_type.clone(),
                resource_name: r.resource_name.clone(),
                description: r.description.clone(),
            }),
            precondition_violations: details
                .precondition_failure()
                .map(|p| {
                    p.violations
                        .iter()
                        .map(|v| PreconditionViolation {
                            kind: v.r#type.clone(),
                            subject: v.subject.clone(),
                            description: v.description.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        Error::Rpc {
            code: status.code(),
            message: one_line(&message),
            reason,
            domain,
            metadata,
            details: Box::new(rpc_details),
        }
    }
}

/// Collapses line breaks so that an error always prints on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The canonical UPPER_SNAKE_CASE name of a gRPC code (`UNAVAILABLE`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn status_with_error_info_keeps_code_message_reason() {
        let status = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "network \"fan-250\" still has 2 allocations",
            ErrorDetails::with_error_info(
                "NETWORK_IN_USE",
                "fan.agent.v1",
                [("allocations".to_string(), "2".to_string())],
            ),
        );
        let err = Error::from(status);
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(err.reason(), "NETWORK_IN_USE");
        assert_eq!(
            err.to_string(),
            "network \"fan-250\" still has 2 allocations (NETWORK_IN_USE)"
        );
        assert_eq!(err.message(), "network \"fan-250\" still has 2 allocations");
        match err {
            Error::Rpc {
                domain, metadata, ..
            } => {
                assert_eq!(domain, "fan.agent.v1");
                assert_eq!(metadata.get("allocations").map(String::as_str), Some("2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_reason_constants_are_the_proto_enum() {
        use fan_proto::v1::ErrorReason;
        let proto: Vec<String> = (1..1000)
            .filter_map(|n| ErrorReason::try_from(n).ok())
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("ERROR_REASON_")
                    .to_owned()
            })
            .collect();
        assert_eq!(proto, reason::ALL);
    }

    #[test]
    fn bad_request_resource_info_and_precondition_failure_are_decoded() {
        let mut details = ErrorDetails::with_error_info(
            reason::FIELD_INVALID,
            "fan.agent.v1",
            [("network_id".to_string(), "Bad".to_string())],
        );
        details
            .add_bad_request_violation("network_id", "must start with a letter")
            .add_bad_request_violation("address", "must be an IPv4 address");
        let err = Error::from(tonic::Status::with_error_details(
            Code::InvalidArgument,
            "m",
            details,
        ));
        assert_eq!(err.reason(), reason::FIELD_INVALID);
        let fields: Vec<&str> = err
            .field_violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["network_id", "address"]);
        assert_eq!(err.metadata()["network_id"], "Bad");

        let mut details =
            ErrorDetails::with_error_info(reason::NETWORK_NOT_FOUND, "fan.agent.v1", []);
        details.set_resource_info(
            "fan.agent.v1.Network",
            "networks/x",
            "",
            "network \"x\" not found",
        );
        let err = Error::from(tonic::Status::with_error_details(
            Code::NotFound,
            "m",
            details,
        ));
        let info = err.resource_info().expect("ResourceInfo");
        assert_eq!(info.resource_name, "networks/x");
        assert_eq!(info.resource_type, "fan.agent.v1.Network");

        let mut details = ErrorDetails::with_error_info(reason::NETWORK_IN_USE, "fan.agent.v1", []);
        details.add_precondition_failure_violation(reason::NETWORK_IN_USE, "networks/x", "has 2");
        let err = Error::from(tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "m",
            details,
        ));
        assert_eq!(
            err.precondition_violations(),
            [PreconditionViolation {
                kind: reason::NETWORK_IN_USE.into(),
                subject: "networks/x".into(),
                description: "has 2".into(),
            }]
        );
        assert!(err.field_violations().is_empty());
    }

    #[test]
    fn status_without_details_uses_code_name() {
        let err = Error::from(tonic::Status::not_found("no network \"x\""));
        assert_eq!(err.to_string(), "no network \"x\" (NOT_FOUND)");
        assert!(err.is_not_found());
        assert!(!err.is_retryable());
        let err = Error::from(tonic::Status::unavailable("agent restarting\nplease wait"));
        assert_eq!(
            err.to_string(),
            "agent restarting; please wait (UNAVAILABLE)"
        );
        assert!(err.is_retryable());
        assert!(err.is_unreachable());
        let err = Error::from(tonic::Status::new(Code::Internal, ""));
        assert_eq!(err.to_string(), "the agent answered INTERNAL (INTERNAL)");
    }

    #[test]
    fn client_side_errors_are_one_line_with_reason() {
        let cases = [
            (
                Error::InvalidTarget {
                    target: "ftp://x".into(),
                    detail: "unsupported scheme \"ftp\"".into(),
                },
                "invalid agent target \"ftp://x\": unsupported scheme \"ftp\" (INVALID_TARGET)",
            ),
            (
                Error::Connect {
                    target: "unix:///run/fan/agent.sock".into(),
                    detail: "No such file or directory (os error 2)".into(),
                },
                "cannot connect to the agent at unix:///run/fan/agent.sock: No such file or directory (os error 2) (AGENT_UNREACHABLE)",
            ),
            (
                Error::Transport {
                    target: "https://10.0.0.5:7946".into(),
                    detail: "connection error: received fatal alert: CertificateRequired".into(),
                },
                "connection to the agent at https://10.0.0.5:7946 failed: connection error: received fatal alert: CertificateRequired (AGENT_UNREACHABLE)",
            ),
            (
                Error::Timeout {
                    after: Duration::from_millis(2500),
                },
                "no answer from the agent within 2.5s (DEADLINE_EXCEEDED)",
            ),
            (
                Error::bad_response("network without spec"),
                "malformed answer from the agent: network without spec (BAD_RESPONSE)",
            ),
        ];
        for (err, line) in cases {
            assert_eq!(err.to_string(), line);
            assert!(!err.to_string().contains('\n'));
            assert!(line.ends_with(&format!("({})", err.reason())));
        }
    }
}
