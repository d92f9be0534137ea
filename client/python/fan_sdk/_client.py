"""Opening a channel to an agent, and the stubs that raise FanError."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2_grpc

from fan_sdk.errors import FanError
from fan_sdk.v1 import agent_pb2_grpc

#: The agent's default socket; ``FAN_AGENT`` overrides it, as for ``fan-client``.
DEFAULT_TARGET = "unix:///run/fan/agent.sock"


class _RaisingStub:
    """A generated stub whose unary calls raise FanError instead of grpc.RpcError."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            try:
                return method(request, **kwargs)
            except grpc.RpcError as err:
                raise FanError.from_rpc_error(err) from None

        call.__name__ = name
        call.__doc__ = getattr(method, "__doc__", None)
        return call


class Client:
    """A channel to one agent with its stubs.

    ``agent`` is the ``FanAgentService`` stub and ``health`` the standard
    ``grpc.health.v1.Health`` stub; both raise :class:`FanError`. ``channel``
    is the underlying ``grpc.Channel`` for anything else (reflection, your own
    interceptors). Close the client, or use it as a context manager.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.agent = _RaisingStub(agent_pb2_grpc.FanAgentServiceStub(channel))
        self.health = _RaisingStub(health_pb2_grpc.HealthStub(channel))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path}: {err.strerror}") from err


def connect(
    target: Optional[str] = None,
    *,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    options: Optional[list] = None,
) -> Client:
    """Opens a channel to an agent; no I/O happens until the first call.

    ``target`` (default ``$FAN_AGENT``, else ``unix:///run/fan/agent.sock``):

    - ``unix:///abs/path``, ``unix:path`` (relative or absolute) or a bare
      path: the agent's unix socket, plaintext, with grpcio's default options;
    - ``https://HOST:PORT``: the agent's TCP listener, which serves only mutual
      TLS: ``cert`` and ``key`` are the client certificate and its key (PEM
      files), ``ca`` the CA that signed the agent's certificate (default: the
      system roots).

    ``options`` are extra grpcio channel options. Raises ValueError for a
    target or file it cannot use.
    """
    if target is None:
        target = os.environ.get("FAN_AGENT") or DEFAULT_TARGET
    options = list(options or [])
    if target.startswith("https://"):
        url = urlsplit(target)
        if not url.hostname or url.port is None or url.path not in ("", "/"):
            raise ValueError(f"target {target!r}: an https target is https://HOST:PORT")
        if cert is None or key is None:
            raise ValueError(
                f"target {target!r}: the agent's TCP listener requires a client "
                "certificate: pass cert= and key= (PEM files)"
            )
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca, "ca"),
            private_key=_read(key, "key"),
            certificate_chain=_read(cert, "cert"),
        )
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        return Client(grpc.secure_channel(f"{host}:{url.port}", creds, options=options))
    if ca is not None or cert is not None or key is not None:
        raise ValueError(f"target {target!r}: ca, cert and key apply only to https:// targets")
    if target.startswith("unix:"):
        if target in ("unix:", "unix://"):
            raise ValueError(f"target {target!r}: no socket path")
        return Client(grpc.insecure_channel(target, options=options))
    if "://" in target or target.startswith("http:"):
        raise ValueError(
            f"target {target!r}: use unix:///PATH, unix:PATH, a socket path, or "
            "https://HOST:PORT (agents serve TCP only with mutual TLS)"
        )
    if not target:
        raise ValueError("target is empty")
    # A bare path: grpcio's own unix: form, so its default options apply.
    return Client(grpc.insecure_channel(f"unix:{target}", options=options))
