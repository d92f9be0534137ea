"""fan.agent.v1, generated from proto/fan/agent/v1/agent.proto when the package is built.

``agent_pb2`` holds the messages and enums, ``agent_pb2_grpc`` the
``FanAgentServiceStub``.
"""
