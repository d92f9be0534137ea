//! Generates the Rust code for `fan.agent.v1` without a `protoc` binary:
//! protox compiles the .proto files in-process, tonic-prost-build emits the code.
//! The .proto files are the buf module in `proto/`, the parent of this crate.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("..");
    let proto = "fan/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={}", root.join(proto).display());

    let descriptors = protox::compile([proto], [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("fan_agent_v1_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
