//! Certificates for mutual-TLS tests, made for each run with the openssl command:
//! a CA (`ca`), the agent's certificate (`agent`, for the host's IP and
//! `h1.fan.test`), a client of that CA (`alice`) and a client of another CA
//! (`mallory` of `rogue-ca`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A CA, the agent's certificate, a client of that CA and a client of another CA.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding the PEM files.
    pub dir: PathBuf,
}

impl Pki {
    /// Makes the CAs and certificates in `dir`; the agent's names `host` (an IP).
    pub fn new(dir: PathBuf, host: &str) -> Result<Pki> {
        std::fs::create_dir_all(&dir)?;
        let pki = Pki { dir };
        pki.ca("ca")?;
        pki.ca("rogue-ca")?;
        pki.leaf(
            "ca",
            "agent",
            "fan-agent-h1",
            &format!("subjectAltName=IP:{host},DNS:h1.fan.test\nextendedKeyUsage=serverAuth\n"),
        )?;
        pki.leaf(
            "ca",
            "alice",
            "ops-alice",
            "subjectAltName=DNS:alice.ops.fan.test\nextendedKeyUsage=clientAuth\n",
        )?;
        pki.leaf(
            "rogue-ca",
            "mallory",
            "ops-alice",
            "extendedKeyUsage=clientAuth\n",
        )?;
        // The key files are private, as an operator would keep them.
        for key in ["ca", "rogue-ca", "agent", "alice", "mallory"] {
            std::fs::set_permissions(
                pki.file(&format!("{key}.key")),
                std::fs::Permissions::from_mode(0o600),
            )?;
        }
        Ok(pki)
    }

    /// The path of a file in the directory, e.g. `ca.pem` or `alice.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .context("run openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn ca(&self, name: &str) -> Result<()> {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN=fan test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
    }

    fn leaf(&self, ca: &str, name: &str, cn: &str, ext: &str) -> Result<()> {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext)?;
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/O=fan/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        self.openssl(&[
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
        ])
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
