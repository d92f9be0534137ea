//! TLS and mutual TLS to an agent (cargo feature `tls`):
//! `cargo test -p fan-client --features tls --test tls`. Certificates are
//! made with the openssl command for each run.
#![cfg(feature = "tls")]

mod support;

use std::path::Path;
use std::process::Command;

use fan_client::{ConnectOptions, FanClient, TlsConfig};
use support::TlsFakeAgent;

struct Pki {
    dir: tempfile::TempDir,
    ca: Vec<u8>,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    other_ca: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d, "ca");
    ca(d, "other");
    leaf(
        d,
        "ca",
        "server",
        "subjectAltName=DNS:agent.fan.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    leaf(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
    let read = |f: &str| std::fs::read(d.join(f)).unwrap();
    Pki {
        ca: read("ca.pem"),
        server_cert: read("server.pem"),
        server_key: read("server.key"),
        client_cert: read("client.pem"),
        client_key: read("client.key"),
        other_ca: read("other.pem"),
        dir,
    }
}

fn tls(ca: &[u8], client: Option<(&[u8], &[u8])>) -> TlsConfig {
    let mut t = TlsConfig::default();
    t.ca_certificate_pem = Some(ca.to_vec());
    if let Some((cert, key)) = client {
        t.client_certificate_pem = Some(cert.to_vec());
        t.client_key_pem = Some(key.to_vec());
    }
    t
}

/// Connects and makes one call; the error of whichever step failed.
async fn info(target: &str, tls: TlsConfig) -> Result<String, fan_client::Error> {
    let c = FanClient::connect_with(target, ConnectOptions::default().with_tls(tls)).await?;
    Ok(c.get_agent_info().await?.hostname)
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();

    // server-authenticated TLS
    let agent = TlsFakeAgent::start(&pki.server_cert, &pki.server_key, None).await;
    assert_eq!(
        info(&agent.target, tls(&pki.ca, None)).await.unwrap(),
        "fake-host"
    );
    let mut by_name = tls(&pki.ca, None);
    by_name.domain_name = Some("agent.fan.test".into());
    assert_eq!(info(&agent.target, by_name).await.unwrap(), "fake-host");
    // an agent certificate from another CA is refused
    let err = info(&agent.target, tls(&pki.other_ca, None))
        .await
        .unwrap_err();
    assert!(
        err.is_unreachable() || err.code() == fan_client::Code::Unavailable,
        "{err:?}"
    );
    // a name the certificate does not carry is refused
    let mut wrong = tls(&pki.ca, None);
    wrong.domain_name = Some("elsewhere.test".into());
    assert!(info(&agent.target, wrong).await.is_err());
    drop(agent);

    // mutual TLS: a client certificate is required
    let agent = TlsFakeAgent::start(&pki.server_cert, &pki.server_key, Some(&pki.ca)).await;
    let with_cert = tls(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    assert_eq!(info(&agent.target, with_cert).await.unwrap(), "fake-host");
    let err = info(&agent.target, tls(&pki.ca, None)).await.unwrap_err();
    assert!(!err.to_string().contains('\n'), "{err}");

    // a certificate without its key is a usage mistake
    let mut half = tls(&pki.ca, None);
    half.client_certificate_pem = Some(pki.client_cert.clone());
    let err = info(&agent.target, half).await.unwrap_err();
    assert_eq!(err.reason(), "INVALID_TARGET");
}

#[tokio::test]
async fn tls_options_only_for_https_targets() {
    for target in ["http://127.0.0.1:1", "unix:/run/fan/agent.sock"] {
        let err = FanClient::connect_with(
            target,
            ConnectOptions::default().with_tls(TlsConfig::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "INVALID_TARGET", "{target}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_over_mutual_tls() {
    let pki = pki();
    let agent = TlsFakeAgent::start(&pki.server_cert, &pki.server_key, Some(&pki.ca)).await;
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
    assert_eq!(v["hostname"], serde_json::json!("fake-host"));
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
