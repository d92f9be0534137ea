"""Every ``ErrorInfo.reason`` the agent sends, as string constants.

Generated from the ``fan.agent.v1.ErrorReason`` enum of the proto this package
was built from: the wire string is the value's name without ``ERROR_REASON_``
(``ERROR_REASON_NETWORK_IN_USE`` is sent as ``"NETWORK_IN_USE"``), so
``fan_sdk.reasons.NETWORK_IN_USE == "NETWORK_IN_USE"``. ``ALL`` holds them all.
A reason not in ``ALL`` comes from a newer agent: handle it by its gRPC code.
"""
from typing import FrozenSet

from fan_sdk.v1 import agent_pb2

_PREFIX = "ERROR_REASON_"

#: Every reason of this API version.
ALL: FrozenSet[str] = frozenset(
    value.name[len(_PREFIX):]
    for value in agent_pb2.ErrorReason.DESCRIPTOR.values
    if value.number != 0
)

globals().update({reason: reason for reason in ALL})
__all__ = sorted(ALL) + ["ALL"]


def __getattr__(name: str) -> str:
    raise AttributeError(f"fan_sdk.reasons has no reason {name!r} (known: {', '.join(sorted(ALL))})")
