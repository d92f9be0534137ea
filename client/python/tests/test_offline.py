"""fan_sdk without an agent: target forms it refuses, and a call that never
reaches an agent (python -m unittest, run by tests/tests/sdk_clients.rs)."""
import os
import tempfile
import unittest

import grpc

import fan_sdk
from fan_sdk import reasons
from fan_sdk.v1 import agent_pb2 as pb


class ConnectTest(unittest.TestCase):
    def test_refuses_targets_it_cannot_serve(self):
        for target, want in {
            "http://127.0.0.1:7443": "mutual TLS",
            "dns:///agent:7443": "use unix:///PATH",
            "https://127.0.0.1": "https://HOST:PORT",
            "https://127.0.0.1:7443": "requires a client certificate",
            "unix:": "no socket path",
        }.items():
            with self.assertRaisesRegex(ValueError, want, msg=target):
                fan_sdk.connect(target)
        with self.assertRaisesRegex(ValueError, "only to https://"):
            fan_sdk.connect("unix:///run/fan/agent.sock", ca="ca.pem")

    def test_call_without_agent_is_a_fan_error_without_reason(self):
        socket = os.path.join(tempfile.mkdtemp(), "none.sock")
        for target in (f"unix://{socket}", f"unix:{socket}", socket):
            with fan_sdk.connect(target) as client:
                with self.assertRaises(fan_sdk.FanError) as caught:
                    client.agent.GetAgentInfo(pb.GetAgentInfoRequest(), timeout=5)
            err = caught.exception
            self.assertEqual(err.code(), grpc.StatusCode.UNAVAILABLE, target)
            self.assertEqual(err.reason, "", target)
            self.assertIsInstance(err, grpc.RpcError)

    def test_reasons_come_from_the_proto_enum(self):
        names = {v.name for v in pb.ErrorReason.DESCRIPTOR.values if v.number}
        self.assertEqual(reasons.ALL, {n.removeprefix("ERROR_REASON_") for n in names})
        self.assertEqual(reasons.NETWORK_NOT_FOUND, "NETWORK_NOT_FOUND")
        with self.assertRaises(AttributeError):
            reasons.NOT_A_REASON


if __name__ == "__main__":
    unittest.main()
