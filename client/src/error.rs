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
        /// The `google.rpc.ErrorInfo` metadata.
        metadata: BTreeMap<String, String>,
    },
    /// The agent's answer does not make sense (a missing message, an
    /// address that does not parse).
    #[error("malformed answer from the agent: {detail} (BAD_RESPONSE)")]
    BadResponse {
        /// What is wrong.
        detail: String,
    },
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
        Error::Rpc {
            code: status.code(),
            message: one_line(&message),
            reason,
            domain,
            metadata,
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
