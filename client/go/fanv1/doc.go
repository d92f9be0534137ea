// Package fanv1 is fan.agent.v1 (proto/fan/agent/v1/agent.proto), generated
// at build time by generate.sh with protoc, protoc-gen-go and
// protoc-gen-go-grpc: the messages, the enums and FanAgentServiceClient.
package fanv1
