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
        Reason::WatcherTooSlow => Code::ResourceExhausted,
        Reason::RevisionCompacted => Code::OutOfRange,
        Reason::HostReserveCoversAllocation => Code::FailedPrecondition,
        Reason::OwnerLabelsDiffer => Code::FailedPrecondition,
        Reason::OwnerHasOtherAddress => Code::FailedPrecondition,
        Reason::AddressHeldByOtherOwner => Code::FailedPrecondition,
        Reason::StateUnwritable => Code::Unavailable,
        Reason::StateCorrupt => Code::DataLoss,
        Reason::SliceNotOwned => Code::FailedPrecondition,
        Reason::OverlayOverlapsHost => Code::FailedPrecondition,
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
        AgentError::StateCorrupt(_) => Reason::StateCorrupt,
        AgentError::Unavailable { reason, .. } => *reason,
        AgentError::ShuttingDown => Reason::ShuttingDown,
        AgentError::Watch { reason, .. } => *reason,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fan_proto::v1 as pb;
    use tonic_types::StatusExt;

    use super::*;
    use crate::error::{Metadata, Resource};
    use crate::model::{Owner, Selector};

    /// Every gRPC code's canonical name.
    const CODE_NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    #[test]
    fn the_reasons_the_agent_sends_are_exactly_the_proto_enum() {
        let proto: BTreeSet<String> = (0..1000)
            .filter_map(|n| pb::ErrorReason::try_from(n).ok())
            .filter(|r| *r != pb::ErrorReason::Unspecified)
            .map(|r| {
                r.as_str_name()
                    .strip_prefix("ERROR_REASON_")
                    .expect("every value is prefixed")
                    .to_owned()
            })
            .collect();
        let agent: BTreeSet<String> = Reason::ALL.iter().map(|r| r.as_str().to_owned()).collect();
        assert_eq!(agent, proto);
        assert_eq!(agent.len(), Reason::ALL.len(), "no reason listed twice");
    }

    #[test]
    fn every_reason_has_one_code_and_is_more_specific_than_it() {
        for reason in Reason::ALL {
            let code = code_of(reason);
            assert_ne!(code, Code::Ok, "{reason}");
            assert_ne!(code, Code::Unknown, "{reason}");
            assert!(
                !CODE_NAMES.contains(&reason.as_str()),
                "{reason} copies a status code name"
            );
        }
        // One code per reason, also across everything to_status produces.
        let mut seen: std::collections::BTreeMap<&str, Code> = Default::default();
        for (err, _, _) in table() {
            let status = to_status(&err);
            let reason = status.get_details_error_info().unwrap().reason;
            let code = *seen
                .entry(
                    Reason::ALL
                        .iter()
                        .find(|r| r.as_str() == reason)
                        .unwrap()
                        .as_str(),
                )
                .or_insert(status.code());
            assert_eq!(code, status.code(), "{reason} leaves with two codes");
        }
    }

    fn owner() -> Owner {
        Owner {
            container_id: "c1".into(),
            interface: "eth0".into(),
        }
    }

    /// One error of every variant (and every reason), with its expected code and reason.
    fn table() -> Vec<(AgentError, Code, &'static str)> {
        let pre = |r| AgentError::precondition(r, "m").with("network_id", "fan");
        vec![
            (
                AgentError::invalid("spec.mtu", "too small"),
                Code::InvalidArgument,
                "FIELD_INVALID",
            ),
            (
                AgentError::network_not_found("fan"),
                Code::NotFound,
                "NETWORK_NOT_FOUND",
            ),
            (
                AgentError::allocation_not_found("fan", &Selector::Owner(owner())),
                Code::NotFound,
                "ALLOCATION_NOT_FOUND",
            ),
            (
                AgentError::AlreadyExists {
                    resource: Resource::network("fan"),
                    message: "differs".into(),
                    metadata: Metadata::from([("network_id", "fan".to_owned())]),
                },
                Code::AlreadyExists,
                "NETWORK_EXISTS",
            ),
            (
                pre(Reason::NetworkInUse),
                Code::FailedPrecondition,
                "NETWORK_IN_USE",
            ),
            (
                pre(Reason::BridgeInUse),
                Code::FailedPrecondition,
                "BRIDGE_IN_USE",
            ),
            (
                pre(Reason::OverlayInUse),
                Code::FailedPrecondition,
                "OVERLAY_IN_USE",
            ),
            (
                pre(Reason::AddressTaken),
                Code::FailedPrecondition,
                "ADDRESS_TAKEN",
            ),
            (
                pre(Reason::UnderlayNotFound),
                Code::FailedPrecondition,
                "UNDERLAY_NOT_FOUND",
            ),
            (
                pre(Reason::BackendUnavailable),
                Code::FailedPrecondition,
                "BACKEND_UNAVAILABLE",
            ),
            (
                pre(Reason::NoBackendAvailable),
                Code::FailedPrecondition,
                "NO_BACKEND_AVAILABLE",
            ),
            (
                pre(Reason::TooManyNetworks),
                Code::FailedPrecondition,
                "TOO_MANY_NETWORKS",
            ),
            (
                pre(Reason::NetworkProgrammingFailed),
                Code::FailedPrecondition,
                "NETWORK_PROGRAMMING_FAILED",
            ),
            (
                pre(Reason::OverlayOverlapsHost),
                Code::FailedPrecondition,
                "OVERLAY_OVERLAPS_HOST",
            ),
            (
                pre(Reason::SliceNotOwned),
                Code::FailedPrecondition,
                "SLICE_NOT_OWNED",
            ),
            (
                AgentError::Exhausted {
                    message: "full".into(),
                    metadata: Metadata::from([("network_id", "fan".to_owned())]),
                },
                Code::ResourceExhausted,
                "SLICE_EXHAUSTED",
            ),
            (
                AgentError::Storage("disk".into()),
                Code::Internal,
                "STATE_STORE_FAILED",
            ),
            (
                AgentError::Dataplane("nl".into()),
                Code::Internal,
                "DATAPLANE_FAILED",
            ),
            (AgentError::ShuttingDown, Code::Unavailable, "SHUTTING_DOWN"),
            (
                AgentError::Unavailable {
                    reason: Reason::StateUnwritable,
                    message: "disk full".into(),
                },
                Code::Unavailable,
                "STATE_UNWRITABLE",
            ),
            (
                AgentError::StateCorrupt("checksum".into()),
                Code::DataLoss,
                "STATE_CORRUPT",
            ),
            (
                pre(Reason::AddressHeldByOtherOwner),
                Code::FailedPrecondition,
                "ADDRESS_HELD_BY_OTHER_OWNER",
            ),
            (
                pre(Reason::OwnerHasOtherAddress),
                Code::FailedPrecondition,
                "OWNER_HAS_OTHER_ADDRESS",
            ),
            (
                pre(Reason::OwnerLabelsDiffer),
                Code::FailedPrecondition,
                "OWNER_LABELS_DIFFER",
            ),
            (
                pre(Reason::HostReserveCoversAllocation),
                Code::FailedPrecondition,
                "HOST_RESERVE_COVERS_ALLOCATION",
            ),
            (
                AgentError::Watch {
                    reason: Reason::RevisionCompacted,
                    message: "old".into(),
                },
                Code::OutOfRange,
                "REVISION_COMPACTED",
            ),
            (
                AgentError::Watch {
                    reason: Reason::WatcherTooSlow,
                    message: "slow".into(),
                },
                Code::ResourceExhausted,
                "WATCHER_TOO_SLOW",
            ),
        ]
    }

    #[test]
    fn each_error_maps_to_its_code_reason_and_details() {
        let mut reasons = BTreeSet::new();
        for (err, code, reason) in table() {
            let status = to_status(&err);
            assert_eq!(status.code(), code, "{err:?}");
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason, "{err:?}");
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(code_of(reason_of(&err)), code);
            reasons.insert(reason);
            match code {
                Code::InvalidArgument => {
                    let bad = status.get_details_bad_request().expect("BadRequest");
                    assert_eq!(bad.field_violations[0].field, "spec.mtu");
                }
                Code::NotFound | Code::AlreadyExists => {
                    let info = status.get_details_resource_info().expect("ResourceInfo");
                    assert!(info.resource_name.starts_with("networks/fan"), "{info:?}");
                    assert!(info.resource_type.starts_with("fan.agent.v1."), "{info:?}");
                }
                Code::FailedPrecondition => {
                    let pf = status
                        .get_details_precondition_failure()
                        .expect("PreconditionFailure");
                    assert_eq!(pf.violations[0].r#type, reason);
                    assert_eq!(pf.violations[0].subject, "networks/fan");
                }
                _ => {}
            }
            if !matches!(
                err,
                AgentError::InvalidArgument { .. }
                    | AgentError::Storage(_)
                    | AgentError::Dataplane(_)
                    | AgentError::ShuttingDown
                    | AgentError::Unavailable { .. }
                    | AgentError::StateCorrupt(_)
                    | AgentError::Watch { .. }
            ) {
                assert_eq!(
                    info.metadata.get("network_id").map(String::as_str),
                    Some("fan")
                );
            }
        }
        // The table covers every reason but MALFORMED_REQUEST, tested below.
        reasons.insert(Reason::MalformedRequest.as_str());
        assert_eq!(reasons.len(), Reason::ALL.len());
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let mut checks = crate::validate::Checks::new();
        checks.check(crate::validate::network_id("network_id", "Bad"));
        checks.check(crate::validate::owner("owner", "", "bad/if"));
        checks.check(crate::validate::address("address", "x"));
        let status = to_status(&checks.finish().unwrap_err());
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "network_id",
                "owner.container_id",
                "owner.interface",
                "address"
            ]
        );
    }

    #[test]
    fn allocation_not_found_names_the_owner_or_the_address() {
        let status = to_status(&AgentError::allocation_not_found(
            "fan",
            &Selector::Address("250.0.28.5".parse().unwrap()),
        ));
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["address"], "250.0.28.5");
        assert_eq!(
            status.get_details_resource_info().unwrap().resource_name,
            "networks/fan/allocations/250.0.28.5"
        );
        let status = to_status(&AgentError::allocation_not_found(
            "fan",
            &Selector::Owner(owner()),
        ));
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["container_id"], "c1");
        assert_eq!(info.metadata["interface"], "eth0");
    }

    #[test]
    fn a_malformed_request_is_invalid_argument() {
        let status = malformed_request("invalid string value: data is not UTF-8 encoded");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "MALFORMED_REQUEST"
        );
        assert!(
            status.message().contains("not UTF-8"),
            "{}",
            status.message()
        );
    }
}
