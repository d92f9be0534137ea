"""Python grpcio with its default options against a live agent.

Usage: grpc_client.py GENERATED_DIR TARGET NETWORK_ID OVERLAY [CA CERT KEY]
TARGET is `unix:/path`, `unix:///path` (insecure) or `host:port` with the
mTLS files CA CERT KEY. Asks GetAgentInfo, creates NETWORK_ID on OVERLAY over
172.30.0.0/16, allocates one address, lists, sends one invalid CreateNetwork
and decodes its google.rpc details, checks health and lists services by
reflection; prints the results as JSON on stdout.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status  # noqa: E402

from fan.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

UNDERLAY = "172.30.0.0/16"


def open_channel(target: str, tls: list) -> grpc.Channel:
    if tls:
        ca, cert, key = (open(path, "rb").read() for path in tls)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.secure_channel(target, credentials)
    # Default options: no grpc.default_authority.
    return grpc.insecure_channel(target)


def main() -> None:
    target, network_id, overlay = sys.argv[2], sys.argv[3], sys.argv[4]
    channel = open_channel(target, sys.argv[5:8])
    stub = agent_pb2_grpc.FanAgentServiceStub(channel)
    info = stub.GetAgentInfo(agent_pb2.GetAgentInfoRequest(), timeout=10)
    created = stub.CreateNetwork(
        agent_pb2.CreateNetworkRequest(
            network_id=network_id,
            spec=agent_pb2.NetworkSpec(overlay=overlay, underlay=UNDERLAY),
        ),
        timeout=10,
    )
    allocation = stub.AllocateAddress(
        agent_pb2.AllocateAddressRequest(
            network_id=network_id, owner=agent_pb2.Owner(container_id="python-grpcio")
        ),
        timeout=10,
    ).allocation
    listed = stub.ListAllocations(
        agent_pb2.ListAllocationsRequest(network_id=network_id), timeout=10
    )

    invalid = {}
    try:
        stub.CreateNetwork(
            agent_pb2.CreateNetworkRequest(
                network_id=network_id + "-bad",
                spec=agent_pb2.NetworkSpec(overlay="not-a-cidr", underlay=UNDERLAY),
            ),
            timeout=10,
        )
    except grpc.RpcError as err:
        invalid["code"] = err.code().name
        status = rpc_status.from_call(err)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info_detail = error_details_pb2.ErrorInfo()
                detail.Unpack(info_detail)
                invalid["reason"] = info_detail.reason
                invalid["domain"] = info_detail.domain
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                invalid["fields"] = [v.field for v in bad.field_violations]

    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    print(
        json.dumps(
            {
                "version": info.version,
                "slice": created.network.status.slice,
                "address": allocation.address,
                "listed": [a.address for a in listed.allocations],
                "invalid": invalid,
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                "services": sorted(services),
            }
        )
    )


if __name__ == "__main__":
    main()
