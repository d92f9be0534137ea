//! Other languages generate their SDK from `proto/`: a Python client generated
//! with grpcio-tools (PyPI) creates, allocates and lists against a real agent.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;
use fan_e2e::{python_stubs, venv_python, workspace, Testbed};

#[test]
fn python_client_generated_from_the_proto_creates_allocates_and_lists() -> Result<()> {
    let python = venv_python()?;
    let generated = tempfile_dir("fan-pygen")?;
    python_stubs(&python, &generated)?;

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
