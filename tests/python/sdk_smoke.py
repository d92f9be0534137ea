"""A Python client generated from proto/ with grpcio-tools, against a live agent.

Usage: sdk_smoke.py GENERATED_DIR SOCKET_PATH NETWORK_ID
Creates the network (250.0.0.0/8 over 172.30.0.0/16), allocates two addresses,
lists them, and prints the result as JSON on stdout.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from fan.agent.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402


def main() -> None:
    socket_path, network_id = sys.argv[2], sys.argv[3]
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    stub = agent_pb2_grpc.FanAgentServiceStub(channel)
    created = stub.CreateNetwork(
        agent_pb2.CreateNetworkRequest(
            network_id=network_id,
            spec=agent_pb2.NetworkSpec(overlay="250.0.0.0/8", underlay="172.30.0.0/16"),
        ),
        timeout=10,
    )
    addresses = []
    for container in ("py-a", "py-b"):
        allocation = stub.AllocateAddress(
            agent_pb2.AllocateAddressRequest(
                network_id=network_id,
                owner=agent_pb2.Owner(container_id=container),
                labels={"client": "python"},
            ),
            timeout=10,
        ).allocation
        addresses.append(allocation.address)
    listed = stub.ListAllocations(agent_pb2.ListAllocationsRequest(network_id=network_id), timeout=10)
    try:
        stub.GetNetwork(agent_pb2.GetNetworkRequest(network_id="missing"), timeout=10)
        missing = "OK"
    except grpc.RpcError as err:
        missing = err.code().name
    print(
        json.dumps(
            {
                "slice": created.network.status.slice,
                "gateway": created.network.status.gateway,
                "allocated": addresses,
                "listed": [a.address for a in listed.allocations],
                "labels": [dict(a.labels) for a in listed.allocations],
                "missing": missing,
            }
        )
    )


if __name__ == "__main__":
    main()
