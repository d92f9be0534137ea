"""Python SDK for the fan agent API (``fan.agent.v1``).

>>> import fan_sdk
>>> from fan_sdk.v1 import agent_pb2 as pb
>>> with fan_sdk.connect("unix:///run/fan/agent.sock") as client:  # doctest: +SKIP
...     client.agent.GetAgentInfo(pb.GetAgentInfoRequest(), timeout=10)

``connect`` opens the channel for a target, ``FanError`` is what every failed
call raises, and ``fan_sdk.reasons`` lists every ``ErrorInfo.reason``.
"""
from fan_sdk import reasons
from fan_sdk._client import DEFAULT_TARGET, Client, connect
from fan_sdk.errors import (
    ERROR_DOMAIN,
    FanError,
    FieldViolation,
    PreconditionViolation,
    ResourceInfo,
)

__all__ = [
    "DEFAULT_TARGET",
    "ERROR_DOMAIN",
    "Client",
    "FanError",
    "FieldViolation",
    "PreconditionViolation",
    "ResourceInfo",
    "connect",
    "reasons",
]
