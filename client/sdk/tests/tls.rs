//! TLS and mutual TLS to an agent (cargo feature `tls`), served by the
//! support's proxy in front of the real agent:
//! `cargo test -p fan-client --features tls --test tls`. Certificates are
//! made by the test kit (rcgen) for each run (`support/pki.rs`); the CLI
//! over mutual TLS is tested in `client/cli/tests/tls.rs`.
#![cfg(feature = "tls")]

mod support;

use fan_client::{ConnectOptions, FanClient, TlsConfig};
use support::pki::pki;
use support::FaultProxy;

fn tls(ca: &[u8], client: Option<(&[u8], &[u8])>) -> TlsConfig {
    let mut t = TlsConfig::default();
    t.ca_certificate_pem = Some(ca.to_vec());
    if let Some((cert, key)) = client {
        t.client_certificate_pem = Some(cert.to_vec());
        t.client_key_pem = Some(key.to_vec());
    }
    t
}

/// Connects and makes one call; the agent's underlay address, or the
/// error of whichever step failed.
async fn info(target: &str, tls: TlsConfig) -> Result<String, fan_client::Error> {
    let c = FanClient::connect_with(target, ConnectOptions::default().with_tls(tls)).await?;
    Ok(c.get_agent_info().await?.addresses[0].address.to_string())
}

/// The address the test agent's fake host has.
const HOST: &str = "172.30.0.28/16";

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();

    // server-authenticated TLS
    let agent = FaultProxy::start_tls(&pki.server_cert, &pki.server_key, None).await;
    assert_eq!(info(&agent.target, tls(&pki.ca, None)).await.unwrap(), HOST);
    let mut by_name = tls(&pki.ca, None);
    by_name.domain_name = Some("agent.fan.test".into());
    assert_eq!(info(&agent.target, by_name).await.unwrap(), HOST);
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
    let agent = FaultProxy::start_tls(&pki.server_cert, &pki.server_key, Some(&pki.ca)).await;
    let with_cert = tls(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    assert_eq!(info(&agent.target, with_cert).await.unwrap(), HOST);
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
