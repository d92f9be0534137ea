//! Certificates for mutual-TLS tests, made for each run by the test kit's
//! rcgen PKI: a CA (`ca`), the agent's certificate (`agent`, for the host's
//! IP and `h1.fan.test`), a client of that CA (`alice`) and a client of
//! another CA (`mallory` of `rogue-ca`).

use std::path::PathBuf;

use anyhow::Result;
use fan_testkit::pki::{Ca, Usage};

/// A CA, the agent's certificate, a client of that CA and a client of another CA.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding the PEM files (keys are mode 0600, as an
    /// operator would keep them).
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CAs and certificates in `dir`; the agent's names `host` (an IP).
    pub fn new(dir: PathBuf, host: &str) -> Result<Pki> {
        let ca = Ca::new("fan test ca")?;
        let rogue = Ca::new("fan test rogue-ca")?;
        ca.write(&dir, "ca")?;
        rogue.write(&dir, "rogue-ca")?;
        ca.issue(
            "O=fan, CN=fan-agent-h1",
            &[host, "h1.fan.test"],
            Usage::Server,
        )?
        .write(&dir, "agent")?;
        ca.issue(
            "O=fan, CN=ops-alice",
            &["alice.ops.fan.test"],
            Usage::Client,
        )?
        .write(&dir, "alice")?;
        // Same subject as alice, another CA: must be refused.
        rogue
            .issue("O=fan, CN=ops-alice", &[], Usage::Client)?
            .write(&dir, "mallory")?;
        Ok(Pki { dir })
    }

    /// The path of a file in the directory, e.g. `ca.pem` or `alice.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The agent's flags for an mTLS listener on `listen`.
    pub fn agent_flags(&self, listen: &str) -> Vec<String> {
        vec![
            "--listen".into(),
            listen.into(),
            "--tls-cert".into(),
            self.file("agent.pem"),
            "--tls-key".into(),
            self.file("agent.key"),
            "--tls-client-ca".into(),
            self.file("ca.pem"),
        ]
    }
}
