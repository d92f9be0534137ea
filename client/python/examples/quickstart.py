import os

import fan_sdk
from fan_sdk import reasons
from fan_sdk.v1 import agent_pb2 as pb

# FAN_AGENT, else unix:///run/fan/agent.sock; https://HOST:PORT takes
# ca=, cert= and key= (PEM files) for the agent's mutual-TLS listener.
with fan_sdk.connect() as client:
    info = client.agent.GetAgentInfo(pb.GetAgentInfoRequest(), timeout=10)
    print("agent", info.version)

    spec = pb.NetworkSpec(
        overlay="250.0.0.0/8",
        # The device of the default route, with a /16 underlay.
        underlay=os.environ.get("FAN_UNDERLAY", "default/16"),
    )
    net = client.agent.CreateNetwork(
        pb.CreateNetworkRequest(network_id="quickstart", spec=spec), timeout=10
    ).network
    allocation = client.agent.AllocateAddress(
        pb.AllocateAddressRequest(
            network_id="quickstart", owner=pb.Owner(container_id="quickstart-1")
        ),
        timeout=10,
    ).allocation
    print("allocated", allocation.address, "in", net.status.slice)

    try:
        client.agent.GetNetwork(pb.GetNetworkRequest(network_id="missing"), timeout=10)
    except fan_sdk.FanError as err:
        assert err.reason == reasons.NETWORK_NOT_FOUND
        print("no such network:", err.reason, f"network_id={err.metadata['network_id']}")

    client.agent.DeleteNetwork(
        pb.DeleteNetworkRequest(network_id="quickstart", force=True), timeout=10
    )
