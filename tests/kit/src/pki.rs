//! Certificates for TLS tests, made in-process with rcgen (ECDSA P-256): a CA
//! and the server and client certificates it signs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

use crate::{Error, Result};

/// What a certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// No extended key usage extension: any use.
    Any,
    /// `serverAuth`.
    Server,
    /// `clientAuth`.
    Client,
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate (DER).
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` (mode 0600, as an operator keeps
    /// keys) in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        write_pair(dir, name, &self.cert_pem, &self.key_pem)
    }
}

/// A self-signed certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A CA whose subject is `CN=common_name`.
    pub fn new(common_name: &str) -> Result<Ca> {
        let fail = |source| Error::Certificate {
            name: common_name.to_owned(),
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().map_err(fail)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(fail)?;
        Ok(Ca { issuer })
    }

    /// The CA certificate (PEM), what a peer trusts.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes `NAME.pem` (the certificate) and `NAME.key` (mode 0600) in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        write_pair(dir, name, &self.pem(), &self.issuer.key().serialize_pem())
    }

    /// Signs a certificate for `subject` (`"O=fan, CN=agent"`: CN, O and OU
    /// in that order of writing) carrying `names` as subject alternative
    /// names (IP addresses or DNS names).
    pub fn issue(&self, subject: &str, names: &[&str], usage: Usage) -> Result<Leaf> {
        let fail = |source| Error::Certificate {
            name: subject.to_owned(),
            source,
        };
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(fail)?;
        // rcgen starts from a placeholder CN; the subject is exactly the one given.
        params.distinguished_name = DistinguishedName::new();
        for part in subject.split(',') {
            let (kind, value) = part
                .trim()
                .split_once('=')
                .unwrap_or_else(|| panic!("subject part {part:?} is not KEY=VALUE"));
            let kind = match kind {
                "CN" => DnType::CommonName,
                "O" => DnType::OrganizationName,
                "OU" => DnType::OrganizationalUnitName,
                other => panic!("subject attribute {other} is not CN, O or OU"),
            };
            params.distinguished_name.push(kind, value);
        }
        match usage {
            Usage::Any => {}
            Usage::Server => params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth),
            Usage::Client => params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth),
        }
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A server certificate (`serverAuth`) for `CN=common_name` and `names`.
    pub fn server(&self, common_name: &str, names: &[&str]) -> Result<Leaf> {
        self.issue(&format!("CN={common_name}"), names, Usage::Server)
    }

    /// A client certificate (`clientAuth`) for `CN=common_name` and `names`.
    pub fn client(&self, common_name: &str, names: &[&str]) -> Result<Leaf> {
        self.issue(&format!("CN={common_name}"), names, Usage::Client)
    }
}

fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> Result<()> {
    let io = |what: PathBuf| {
        move |source| Error::Io {
            what: format!("write {}", what.display()),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert).map_err(io(cert_path.clone()))?;
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&key_path, key).map_err(io(key_path.clone()))?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(key_path.clone()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("fan-testkit-pki-{}", std::process::id()));
        let ca = Ca::new("kit CA").unwrap();
        ca.write(&dir, "ca").unwrap();
        let leaf = ca
            .issue(
                "O=fan, CN=agent",
                &["127.0.0.1", "agent.fan.test"],
                Usage::Server,
            )
            .unwrap();
        leaf.write(&dir, "agent").unwrap();
        let text = std::fs::read_to_string(dir.join("agent.pem")).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        let key = std::fs::read_to_string(dir.join("agent.key")).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        let mode = std::fs::metadata(dir.join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
