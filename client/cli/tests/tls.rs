//! The `fan-client` binary over mutual TLS to the real agent (the support's
//! proxy serves TLS in front of it; cargo feature `tls`, on by default); the
//! SDK's own TLS tests are in `client/sdk/tests/tls.rs`.
#![cfg(feature = "tls")]

#[path = "../../sdk/tests/support/mod.rs"]
mod support;

use support::pki::pki;
use support::FaultProxy;

#[tokio::test(flavor = "multi_thread")]
async fn cli_over_mutual_tls() {
    let pki = pki();
    let agent = FaultProxy::start_tls(&pki.server_cert, &pki.server_key, Some(&pki.ca)).await;
    let file = |f: &str| pki.dir.path().join(f).display().to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fan-client"))
        .env_remove("FAN_AGENT")
        .args(["--agent", &agent.target, "--tls-ca", &file("ca.pem")])
        .args([
            "--tls-cert",
            &file("client.pem"),
            "--tls-key",
            &file("client.key"),
        ])
        .args(["-o", "json", "info"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["addresses"][0]["address"],
        serde_json::json!("172.30.0.28/16")
    );
    // without the client certificate: refused, one line, exit 1
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fan-client"))
        .env_remove("FAN_AGENT")
        .args([
            "--agent",
            &agent.target,
            "--tls-ca",
            &file("ca.pem"),
            "info",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("without a client certificate: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("fan-client: "), "{stderr}");
}
