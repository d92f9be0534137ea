package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/fan-project/fan/client/go/fan"
	"github.com/fan-project/fan/client/go/fanv1"
)

func main() {
	// $FAN_AGENT, else unix:///run/fan/agent.sock; https://HOST:PORT takes
	// fan.WithTLSFiles(ca, cert, key) for the agent's mutual-TLS listener.
	client, err := fan.Dial("")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	info, err := client.Agent.GetAgentInfo(ctx, &fanv1.GetAgentInfoRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("agent", info.GetVersion())

	underlay := os.Getenv("FAN_UNDERLAY")
	if underlay == "" {
		underlay = "default/16" // the device of the default route, a /16 underlay
	}
	created, err := client.Agent.CreateNetwork(ctx, &fanv1.CreateNetworkRequest{
		NetworkId: "quickstart",
		Spec:      &fanv1.NetworkSpec{Overlay: "250.0.0.0/8", Underlay: underlay},
	})
	if err != nil {
		log.Fatal(err)
	}
	allocated, err := client.Agent.AllocateAddress(ctx, &fanv1.AllocateAddressRequest{
		NetworkId: "quickstart",
		Owner:     &fanv1.Owner{ContainerId: "quickstart-1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("allocated", allocated.GetAllocation().GetAddress(), "in", created.GetNetwork().GetStatus().GetSlice())

	_, err = client.Agent.GetNetwork(ctx, &fanv1.GetNetworkRequest{NetworkId: "missing"})
	var fe *fan.Error
	if errors.As(err, &fe) && fe.Reason == fan.ReasonNetworkNotFound {
		fmt.Printf("no such network: %s network_id=%s\n", fe.Reason, fe.Metadata["network_id"])
	}

	_, err = client.Agent.DeleteNetwork(ctx, &fanv1.DeleteNetworkRequest{NetworkId: "quickstart", Force: true})
	if err != nil {
		log.Fatal(err)
	}
}
