//! Other languages generate their SDK from `proto/`: a Python client generated
//! with grpcio-tools (PyPI) creates, allocates and lists against a real agent.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use fan_e2e::Testbed;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The venv `scripts/install-deps.sh` makes (or FAN_PYTHON).
fn python() -> Result<PathBuf> {
    let python = std::env::var_os("FAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python"));
    if !python.exists() {
        bail!(
            "{} not found: run scripts/install-deps.sh (make test does)",
            python.display()
        );
    }
    Ok(python)
}

#[test]
fn python_client_generated_from_the_proto_creates_allocates_and_lists() -> Result<()> {
    let python = python()?;
    let generated = tempfile_dir("fan-pygen")?;
    let status = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(workspace().join("proto"))
        .arg(format!("--python_out={}", generated.display()))
        .arg(format!("--grpc_python_out={}", generated.display()))
        .arg("fan/agent/v1/agent.proto")
        .status()
        .context("run grpc_tools.protoc")?;
    assert!(status.success(), "code generation failed");

    let mut bed = Testbed::new(16)?;
    bed.add_host("h1", "172.30.0.28".parse()?)?;
    let output = Command::new(&python)
        .arg(workspace().join("tests/python/sdk_smoke.py"))
        .arg(&generated)
        .arg(&bed.hosts[0].agent.socket)
        .arg("py")
        .output()?;
    let _ = std::fs::remove_dir_all(&generated);
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(result["slice"], "250.0.28.0/24");
    assert_eq!(result["gateway"], "250.0.28.1");
    assert_eq!(
        result["allocated"],
        serde_json::json!(["250.0.28.2", "250.0.28.3"])
    );
    assert_eq!(result["listed"], result["allocated"]);
    assert_eq!(result["labels"][0]["client"], "python");
    assert_eq!(result["missing"], "NOT_FOUND");
    Ok(())
}

fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
