//! The fan agent's gRPC API, `fan.agent.v1`, generated from `proto/fan/agent/v1/agent.proto`
//! (this crate is `proto/rust/`; its build script reads the .proto files from its parent,
//! the buf module).
//!
//! Both sides depend on it: `fan-agent` serves the API, the `fan-client` SDK calls it,
//! the e2e harness talks to real agents with it. It depends on no other fan crate.
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
