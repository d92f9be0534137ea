//! Exit codes and the one-line error of the CLI.
//!
//! - 0: success;
//! - 1: the agent refused the request, or could not be reached (any
//!   [`fan_client::Error`]), or a `--strict` check failed;
//! - 2: usage: clap's own errors, refused (not yet supported) flags, an
//!   unreadable or invalid config file ([`UsageError`]).
//!
//! An error prints exactly one line on stderr:
//! `fan-client: <message> (<REASON>)`.

use std::fmt;

/// Exit status: refused by the agent, unreachable, or a failed check.
pub const EXIT_REFUSED: i32 = 1;
/// Exit status: usage error.
pub const EXIT_USAGE: i32 = 2;

/// A usage error found by the CLI itself (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// UPPER_SNAKE_CASE reason.
    pub reason: &'static str,
}

impl UsageError {
    /// A usage error with a reason.
    pub fn new(message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            message: message.into(),
            reason,
        }
    }

    /// A flag or config setting the CLI knows but does not support yet.
    #[allow(dead_code)] // for flags refused by name; none is, now that --dhcp works
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(message, "UNSUPPORTED")
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for UsageError {}

/// A check that failed (`cluster status --strict`): exit 1, after the
/// output was printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailed {
    /// What failed.
    pub message: String,
    /// UPPER_SNAKE_CASE reason.
    pub reason: &'static str,
}

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for CheckFailed {}

/// The exit status and the single stderr line for an error.
pub fn report(err: &anyhow::Error) -> (i32, String) {
    let (code, text) = if let Some(u) = err.downcast_ref::<UsageError>() {
        (EXIT_USAGE, u.to_string())
    } else if let Some(e) = err.downcast_ref::<fan_client::Error>() {
        (EXIT_REFUSED, e.to_string())
    } else if let Some(c) = err.downcast_ref::<CheckFailed>() {
        (EXIT_REFUSED, c.to_string())
    } else {
        // Anything else (writing the output failed, …): the chain on one line.
        (EXIT_REFUSED, format!("{err:#} (INTERNAL)"))
    };
    let one_line = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    (code, format!("fan-client: {one_line}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_client::Code;
    use std::collections::BTreeMap;

    #[test]
    fn agent_errors_exit_1_with_reason() {
        let err = anyhow::Error::new(fan_client::Error::Rpc {
            code: Code::FailedPrecondition,
            message: "network \"fan-250\" has 2 allocations".into(),
            reason: Some("NETWORK_IN_USE".into()),
            domain: "fan.agent.v1".into(),
            metadata: BTreeMap::new(),
            details: Default::default(),
        });
        assert_eq!(
            report(&err),
            (
                1,
                "fan-client: network \"fan-250\" has 2 allocations (NETWORK_IN_USE)".into()
            )
        );
        let err = anyhow::Error::new(fan_client::Error::Connect {
            target: "unix:///run/fan/agent.sock".into(),
            detail: "No such file or directory (os error 2)".into(),
        });
        assert_eq!(
            report(&err),
            (
                1,
                "fan-client: cannot connect to the agent at unix:///run/fan/agent.sock: No such file or directory (os error 2) (AGENT_UNREACHABLE)".into()
            )
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = anyhow::Error::new(UsageError::unsupported("--dhcp is not supported yet"));
        assert_eq!(
            report(&err),
            (
                2,
                "fan-client: --dhcp is not supported yet (UNSUPPORTED)".into()
            )
        );
    }

    #[test]
    fn other_errors_are_one_line() {
        let err = anyhow::anyhow!("line one\nline two").context("writing output");
        let (code, line) = report(&err);
        assert_eq!(code, 1);
        assert_eq!(
            line,
            "fan-client: writing output: line one; line two (INTERNAL)"
        );
        let err = anyhow::Error::new(CheckFailed {
            message: "1 of 2 agents unreachable".into(),
            reason: "CLUSTER_NOT_HEALTHY",
        });
        assert_eq!(
            report(&err),
            (
                1,
                "fan-client: 1 of 2 agents unreachable (CLUSTER_NOT_HEALTHY)".into()
            )
        );
    }
}
