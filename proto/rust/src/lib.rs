//! The fan agent's gRPC API, `fan.agent.v1`, generated from `proto/fan/agent/v1/agent.proto`.
//!
//! Other languages generate their SDKs from the same .proto file; see the README.

/// `fan.agent.v1`: messages, the `FanAgentService` client and server.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("fan.agent.v1");
}

/// The encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fan_agent_v1_descriptor.bin"));
