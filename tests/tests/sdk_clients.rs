//! The SDK packages of sdk/ against a real agent: the Python package
//! (`fan-agent-sdk`, pip-installed from client/python, its code generated from
//! proto/ while it builds) and the Go module (client/go, generated and built
//! offline by its generate.sh from Debian's packages).
//!
//! Each SDK connects with its defaults over every unix-socket target form
//! (`unix:///abs`, `unix:abs`, `unix:relative`, a bare path) and over mutual
//! TLS to the agent's TCP listener, and each time runs GetAgentInfo,
//! CreateNetwork, AllocateAddress, ListAllocations, one invalid request
//! (its reason and field violations decoded into the SDK's error type), a
//! health check and DeleteNetwork. Each README example is the committed
//! quickstart file, run as-is against the agent.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use fan_e2e::pki::Pki;
use fan_e2e::{succeeded, venv_python as python, workspace, Host, Testbed};
use serde_json::Value;

const HOST: &str = "172.30.0.28";
const LISTEN: &str = "172.30.0.28:7443";

/// Where this test binary keeps what it builds: one directory per SDK, made
/// anew by each run (so runs do not pile up) and kept after it for a look.
fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace().join("target/sdk-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What `build` made, built once per test binary: the first caller builds,
/// later callers get its result (or its failure, as text).
fn built_once(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    build: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    cell.get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Installs client/python with pip, as a user would, into a directory of its own
/// (offline: its dependencies are in the venv), and runs its unit tests;
/// returns that directory.
fn python_sdk() -> Result<PathBuf> {
    static SDK: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&SDK, || {
        let dir = work_dir("python")?;
        succeeded(
            "pip install client/python",
            Command::new(python()?)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args([
                    "--no-build-isolation",
                    "--no-deps",
                    "--no-index",
                    "--target",
                ])
                .arg(&dir)
                .arg(workspace().join("client/python"))
                .output(),
        )?;
        // The package's own tests (target forms, errors without an agent).
        succeeded(
            "python -m unittest (client/python/tests)",
            Command::new(python()?)
                .env("PYTHONPATH", &dir)
                .args(["-m", "unittest", "discover", "-s"])
                .arg(workspace().join("client/python/tests"))
                .args(["-p", "test_*.py"])
                .output(),
        )?;
        Ok(dir)
    })
}

/// The Go toolchain's caches under target/ (CI may have no HOME).
fn go_env(command: &mut Command) -> &mut Command {
    let cache = workspace().join("target/sdk-tests/go-toolchain");
    command
        .env("GOFLAGS", "-mod=vendor")
        .env("GOPROXY", "off")
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
}

/// Generates and builds client/go with its generate.sh, runs its `go test`, then
/// builds the test program and the README example; returns their directory.
fn go_sdk() -> Result<PathBuf> {
    static SDK: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    built_once(&SDK, || {
        let dir = work_dir("go")?;
        let module = workspace().join("client/go");
        succeeded(
            "client/go/generate.sh",
            go_env(&mut Command::new(module.join("generate.sh"))).output(),
        )?;
        // The module's own tests (target forms, errors without an agent).
        succeeded(
            "go test ./...",
            go_env(Command::new("go").current_dir(&module))
                .args(["test", "./..."])
                .output(),
        )?;
        for (name, package) in [
            ("againstagent", "./internal/againstagent"),
            ("quickstart", "./examples/quickstart"),
        ] {
            succeeded(
                &format!("go build {package}"),
                go_env(Command::new("go").current_dir(&module))
                    .args(["build", "-o"])
                    .arg(dir.join(name))
                    .arg(package)
                    .output(),
            )?;
        }
        Ok(dir)
    })
}

/// One host whose agent serves its unix socket and mutual TLS on LISTEN.
fn tls_host() -> Result<(Testbed, Pki)> {
    let mut bed = Testbed::new(16)?;
    let pki = Pki::new(bed.dir.join("pki"), HOST)?;
    let flags = pki.agent_flags(LISTEN);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    bed.add_host_with("h1", HOST.parse()?, &flags, &[])?;
    Ok((bed, pki))
}

/// Every target form of one agent, with the client's extra arguments (the
/// TLS files) and the directory to run in (for the relative `unix:` form).
fn targets(host: &Host, pki: &Pki) -> Vec<(String, Vec<String>, PathBuf)> {
    let socket = &host.agent.socket;
    let dir = socket
        .parent()
        .expect("socket in a directory")
        .to_path_buf();
    let name = socket.file_name().expect("socket file").to_string_lossy();
    let here = std::env::temp_dir();
    vec![
        (format!("unix://{}", socket.display()), vec![], here.clone()),
        (format!("unix:{}", socket.display()), vec![], here.clone()),
        (format!("unix:{name}"), vec![], dir),
        (socket.display().to_string(), vec![], here.clone()),
        (
            format!("https://{LISTEN}"),
            vec![
                pki.file("ca.pem"),
                pki.file("alice.pem"),
                pki.file("alice.key"),
            ],
            here,
        ),
    ]
}

/// Checks one run's JSON report against what the agent must have answered.
fn check_report(client: &str, target: &str, stdout: &[u8]) -> Result<()> {
    let report: Value = serde_json::from_slice(stdout)
        .with_context(|| format!("{client} {target}: {}", String::from_utf8_lossy(stdout)))?;
    eprintln!("{client} {target}: {report}");
    assert_eq!(
        report["version"],
        env!("CARGO_PKG_VERSION"),
        "{client} {target}"
    );
    assert_eq!(report["slice"], "250.0.28.0/24", "{client} {target}");
    assert_eq!(report["address"], "250.0.28.2", "{client} {target}");
    assert_eq!(
        report["listed"],
        serde_json::json!(["250.0.28.2"]),
        "{client} {target}"
    );
    assert_eq!(report["health"], "SERVING", "{client} {target}");
    let invalid = &report["invalid"];
    assert_eq!(
        invalid["code"], "INVALID_ARGUMENT",
        "{client} {target}: {invalid}"
    );
    assert_eq!(
        invalid["reason"], "FIELD_INVALID",
        "{client} {target}: {invalid}"
    );
    assert_eq!(invalid["reason_is_sdk_constant"], true, "{client} {target}");
    assert_eq!(invalid["domain"], "fan.agent.v1", "{client} {target}");
    let fields: Vec<&str> = invalid["field_violations"]
        .as_array()
        .ok_or_else(|| anyhow!("{client} {target}: no field violations: {invalid}"))?
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["network_id", "owner.container_id"],
        "{client} {target}: every invalid field, decoded: {invalid}"
    );
    Ok(())
}

#[test]
fn python_sdk_package_over_every_unix_target_and_mutual_tls() -> Result<()> {
    let sdk = python_sdk()?;
    let python = python()?;
    let (bed, pki) = tls_host()?;
    let host = bed.host("h1");
    for (i, (target, tls, cwd)) in targets(host, &pki).into_iter().enumerate() {
        // In the host's namespace: the TCP listener is on its underlay address.
        let out = succeeded(
            &format!("python SDK against {target}"),
            host.netns
                .command(&python)
                .current_dir(&cwd)
                .env("PYTHONPATH", &sdk)
                .arg(workspace().join("client/python/tests/against_agent.py"))
                .arg(&target)
                .arg(format!("sdk-py-{i}"))
                .args(&tls)
                .output(),
        )?;
        check_report("python", &target, &out.stdout)?;
    }
    readme_example(
        "client/python/README.md",
        "```python\n",
        "client/python/examples/quickstart.py",
    )?;
    let out = succeeded(
        "python quickstart",
        Command::new(&python)
            .env("PYTHONPATH", &sdk)
            .env(
                "FAN_AGENT",
                format!("unix://{}", host.agent.socket.display()),
            )
            .env("FAN_UNDERLAY", "172.30.0.0/16")
            .arg(workspace().join("client/python/examples/quickstart.py"))
            .output(),
    )?;
    quickstart_output("python", &out)
}

#[test]
fn go_sdk_module_over_every_unix_target_and_mutual_tls() -> Result<()> {
    let bin = go_sdk()?;
    let (bed, pki) = tls_host()?;
    let host = bed.host("h1");
    for (i, (target, tls, cwd)) in targets(host, &pki).into_iter().enumerate() {
        let out = succeeded(
            &format!("Go SDK against {target}"),
            host.netns
                .command(bin.join("againstagent"))
                .current_dir(&cwd)
                .arg(&target)
                .arg(format!("sdk-go-{i}"))
                .args(&tls)
                .output(),
        )?;
        check_report("go", &target, &out.stdout)?;
    }
    readme_example(
        "client/go/README.md",
        "```go\n",
        "client/go/examples/quickstart/main.go",
    )?;
    let out = succeeded(
        "go quickstart",
        Command::new(bin.join("quickstart"))
            .env(
                "FAN_AGENT",
                format!("unix://{}", host.agent.socket.display()),
            )
            .env("FAN_UNDERLAY", "172.30.0.0/16")
            .output(),
    )?;
    quickstart_output("go", &out)
}

/// The README's first `fence` block is the quickstart file, byte for byte, so
/// the example a user copies is the one this test runs.
fn readme_example(readme: &str, fence: &str, file: &str) -> Result<()> {
    let text = std::fs::read_to_string(workspace().join(readme))?;
    let start = text
        .find(fence)
        .ok_or_else(|| anyhow!("{readme}: no {fence:?} block"))?
        + fence.len();
    let end = start
        + text[start..]
            .find("```\n")
            .ok_or_else(|| anyhow!("{readme}: unterminated block"))?;
    let example = std::fs::read_to_string(workspace().join(file))?;
    assert_eq!(
        &text[start..end],
        example,
        "{readme}'s example is not {file}"
    );
    Ok(())
}

/// Both quickstarts print the agent's version, the allocated address and the
/// decoded reason of a request for a network that does not exist.
fn quickstart_output(client: &str, out: &Output) -> Result<()> {
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{client} quickstart:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("agent {}", env!("CARGO_PKG_VERSION")).as_str(),
            "allocated 250.0.28.2 in 250.0.28.0/24",
            "no such network: NETWORK_NOT_FOUND network_id=missing",
        ],
        "{client} quickstart"
    );
    Ok(())
}
