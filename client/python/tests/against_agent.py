"""The installed fan-agent-sdk package against a live agent.

Usage: against_agent.py TARGET NETWORK_ID [CA CERT KEY]
Connects with fan_sdk.connect's defaults (mTLS files only for https://), runs
GetAgentInfo, CreateNetwork, AllocateAddress, ListAllocations, one invalid
request, a health check and DeleteNetwork, and prints what it saw as JSON.
"""
import json
import sys

import fan_sdk
from fan_sdk import reasons
from fan_sdk.v1 import agent_pb2 as pb
from grpc_health.v1 import health_pb2


def main() -> None:
    target, network_id = sys.argv[1], sys.argv[2]
    tls = dict(zip(("ca", "cert", "key"), sys.argv[3:6]))
    with fan_sdk.connect(target, **tls) as client:
        agent = client.agent
        info = agent.GetAgentInfo(pb.GetAgentInfoRequest(), timeout=10)
        created = agent.CreateNetwork(
            pb.CreateNetworkRequest(
                network_id=network_id,
                spec=pb.NetworkSpec(overlay="250.0.0.0/8", underlay="172.30.0.0/16"),
            ),
            timeout=10,
        )
        allocation = agent.AllocateAddress(
            pb.AllocateAddressRequest(
                network_id=network_id,
                owner=pb.Owner(container_id=f"{network_id}-c1"),
                labels={"client": "fan-agent-sdk"},
            ),
            timeout=10,
        ).allocation
        listed = agent.ListAllocations(pb.ListAllocationsRequest(network_id=network_id), timeout=10)
        try:
            # Two invalid fields: an id with a space, and no container id.
            agent.AllocateAddress(
                pb.AllocateAddressRequest(network_id="not valid", owner=pb.Owner()), timeout=10
            )
            invalid = None
        except fan_sdk.FanError as err:
            invalid = {
                "code": err.code().name,
                "reason": err.reason,
                "reason_is_sdk_constant": err.reason in reasons.ALL
                and getattr(reasons, err.reason) == err.reason,
                "domain": err.domain,
                "message": err.message,
                "metadata": err.metadata,
                "field_violations": [v._asdict() for v in err.field_violations],
            }
        health = client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        agent.DeleteNetwork(pb.DeleteNetworkRequest(network_id=network_id, force=True), timeout=10)
    print(
        json.dumps(
            {
                "version": info.version,
                "slice": created.network.status.slice,
                "address": allocation.address,
                "listed": [a.address for a in listed.allocations],
                "invalid": invalid,
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            }
        )
    )


if __name__ == "__main__":
    main()
