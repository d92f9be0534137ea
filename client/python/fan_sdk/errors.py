"""FanError: a failed call with its google.rpc.Status details decoded."""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

#: The ``ErrorInfo.domain`` of every error the agent returns.
ERROR_DOMAIN = "fan.agent.v1"


class FieldViolation(NamedTuple):
    """One invalid request field (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


class PreconditionViolation(NamedTuple):
    """One unmet precondition (``google.rpc.PreconditionFailure.Violation``)."""

    type: str
    subject: str
    description: str


class ResourceInfo(NamedTuple):
    """The resource a call was about (``google.rpc.ResourceInfo``)."""

    resource_type: str
    resource_name: str
    owner: str
    description: str


class FanError(grpc.RpcError):
    """A call the agent (or the transport) failed.

    ``reason`` is the ``ErrorInfo.reason`` (one of :mod:`fan_sdk.reasons`,
    or "" when the failure never reached the agent, e.g. a refused
    connection); ``metadata`` its ``ErrorInfo.metadata``; ``field_violations``
    every invalid field of an INVALID_ARGUMENT; ``precondition_violations``
    and ``resource_info`` the other details when sent; ``details`` every
    decoded detail message. ``code()`` and ``details()`` behave as on
    ``grpc.RpcError`` calls, so existing handlers keep working.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str = "",
        message: str = "",
        metadata: Optional[Dict[str, str]] = None,
        field_violations: Optional[List[FieldViolation]] = None,
        precondition_violations: Optional[List[PreconditionViolation]] = None,
        resource_info: Optional[ResourceInfo] = None,
        domain: str = "",
        details: Optional[List[Any]] = None,
    ) -> None:
        super().__init__(f"{code.name}: {reason + ': ' if reason else ''}{message}")
        self._code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])
        self.precondition_violations = list(precondition_violations or [])
        self.resource_info = resource_info
        self.domain = domain
        self.all_details = list(details or [])

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The status message (grpc.RpcError's name for it)."""
        return self.message

    def __repr__(self) -> str:
        return (
            f"FanError(code={self._code.name}, reason={self.reason!r}, message={self.message!r}, "
            f"metadata={self.metadata!r}, field_violations={self.field_violations!r}, "
            f"precondition_violations={self.precondition_violations!r})"
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "FanError":
        """Decodes the ``grpc-status-details-bin`` trailer of a failed call."""
        if isinstance(err, FanError):
            return err
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        try:
            status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        except ValueError:
            # Trailer and status disagree: keep what the transport said.
            status = None
        fields = dict(reason="", metadata={}, field_violations=[], precondition_violations=[])
        resource = None
        domain = ""
        decoded: List[Any] = []
        for any_detail in status.details if status is not None else []:
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.BadRequest,
                error_details_pb2.PreconditionFailure,
                error_details_pb2.ResourceInfo,
                error_details_pb2.RetryInfo,
                error_details_pb2.DebugInfo,
                error_details_pb2.QuotaFailure,
                error_details_pb2.RequestInfo,
                error_details_pb2.Help,
                error_details_pb2.LocalizedMessage,
            ):
                if any_detail.Is(kind.DESCRIPTOR):
                    msg = kind()
                    any_detail.Unpack(msg)
                    decoded.append(msg)
                    break
            else:
                decoded.append(any_detail)
                continue
            if isinstance(msg, error_details_pb2.ErrorInfo):
                fields["reason"] = msg.reason
                fields["metadata"] = dict(msg.metadata)
                domain = msg.domain
            elif isinstance(msg, error_details_pb2.BadRequest):
                fields["field_violations"] += [
                    FieldViolation(v.field, v.description) for v in msg.field_violations
                ]
            elif isinstance(msg, error_details_pb2.PreconditionFailure):
                fields["precondition_violations"] += [
                    PreconditionViolation(v.type, v.subject, v.description) for v in msg.violations
                ]
            elif isinstance(msg, error_details_pb2.ResourceInfo):
                resource = ResourceInfo(
                    msg.resource_type, msg.resource_name, msg.owner, msg.description
                )
        return cls(
            code,
            message=message or "",
            resource_info=resource,
            domain=domain,
            details=decoded,
            **fields,
        )
