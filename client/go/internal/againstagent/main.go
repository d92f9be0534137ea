// Command againstagent runs the Go SDK against a live agent for the e2e
// tests (tests/tests/sdk_clients.rs).
//
// Usage: againstagent TARGET NETWORK_ID [CA CERT KEY]
// Dials with fan.Dial's defaults (TLS files only for https://), runs
// GetAgentInfo, CreateNetwork, AllocateAddress, ListAllocations, one invalid
// request, a health check and DeleteNetwork, and prints what it saw as JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/fan-project/fan/client/go/fan"
	"github.com/fan-project/fan/client/go/fanv1"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type invalid struct {
	Code                string               `json:"code"`
	Reason              string               `json:"reason"`
	ReasonIsSDKConstant bool                 `json:"reason_is_sdk_constant"`
	Domain              string               `json:"domain"`
	Message             string               `json:"message"`
	Metadata            map[string]string    `json:"metadata"`
	FieldViolations     []fan.FieldViolation `json:"field_violations"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "againstagent:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 3 && len(os.Args) != 6 {
		return errors.New("usage: againstagent TARGET NETWORK_ID [CA CERT KEY]")
	}
	target, networkID := os.Args[1], os.Args[2]
	var opts []fan.Option
	if len(os.Args) == 6 {
		opts = append(opts, fan.WithTLSFiles(os.Args[3], os.Args[4], os.Args[5]))
	}
	client, err := fan.Dial(target, opts...)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	info, err := client.Agent.GetAgentInfo(ctx, &fanv1.GetAgentInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetAgentInfo: %w", err)
	}
	created, err := client.Agent.CreateNetwork(ctx, &fanv1.CreateNetworkRequest{
		NetworkId: networkID,
		Spec:      &fanv1.NetworkSpec{Overlay: "250.0.0.0/8", Underlay: "172.30.0.0/16"},
	})
	if err != nil {
		return fmt.Errorf("CreateNetwork: %w", err)
	}
	allocated, err := client.Agent.AllocateAddress(ctx, &fanv1.AllocateAddressRequest{
		NetworkId: networkID,
		Owner:     &fanv1.Owner{ContainerId: networkID + "-c1"},
		Labels:    map[string]string{"client": "fan-go-sdk"},
	})
	if err != nil {
		return fmt.Errorf("AllocateAddress: %w", err)
	}
	listed, err := client.Agent.ListAllocations(ctx, &fanv1.ListAllocationsRequest{NetworkId: networkID})
	if err != nil {
		return fmt.Errorf("ListAllocations: %w", err)
	}
	// Two invalid fields: an id with a space, and no container id.
	var bad *invalid
	_, err = client.Agent.AllocateAddress(ctx, &fanv1.AllocateAddressRequest{NetworkId: "not valid", Owner: &fanv1.Owner{}})
	var fe *fan.Error
	if errors.As(err, &fe) {
		known := false
		for _, r := range fan.Reasons {
			known = known || r == fe.Reason
		}
		bad = &invalid{fan.CodeName(fe.Code), fe.Reason, known, fe.Domain, fe.Message, fe.Metadata, fe.FieldViolations}
	} else if err != nil {
		return fmt.Errorf("the invalid request failed without a *fan.Error: %T %w", err, err)
	}
	health, err := client.Health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	if _, err := client.Agent.DeleteNetwork(ctx, &fanv1.DeleteNetworkRequest{NetworkId: networkID, Force: true}); err != nil {
		return fmt.Errorf("DeleteNetwork: %w", err)
	}
	var addresses []string
	for _, a := range listed.GetAllocations() {
		addresses = append(addresses, a.GetAddress())
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"version": info.GetVersion(),
		"slice":   created.GetNetwork().GetStatus().GetSlice(),
		"address": allocated.GetAllocation().GetAddress(),
		"listed":  addresses,
		"invalid": bad,
		"health":  health.GetStatus().String(),
	})
}
