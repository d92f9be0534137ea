//! Generates the agent's own copy of the `FanAgentService` server glue from
//! the workspace's `proto/` (two levels up): the same service as
//! `fan_proto::v1` (its messages are reused via extern_path), but decoding requests with `api::codec::RequestCodec`, which
//! answers a malformed request with INVALID_ARGUMENT instead of tonic's INTERNAL.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = "fan/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={}", root.join(proto).display());
    let descriptors = protox::compile([proto], [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".fan.agent.v1", "::fan_proto::v1")
        .codec_path("crate::api::codec::RequestCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
