//! A certificate authority, a server and a client certificate (and a second,
//! unrelated CA), made by the test kit (rcgen) for each run; shared by the
//! SDK's and the CLI's TLS tests.

use fan_testkit::pki::Ca;

/// The PEM files of one run; `dir` holds the CA's and the client's as files
/// too (`ca.pem`, `client.pem`, `client.key`), for the CLI.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Vec<u8>,
    pub server_cert: Vec<u8>,
    pub server_key: Vec<u8>,
    pub client_cert: Vec<u8>,
    pub client_key: Vec<u8>,
    pub other_ca: Vec<u8>,
}

/// Makes a fresh PKI in a temporary directory.
pub fn pki() -> Pki {
    let ca = Ca::new("ca").unwrap();
    let other = Ca::new("other").unwrap();
    let server = ca
        .server("server", &["agent.fan.test", "127.0.0.1"])
        .unwrap();
    let client = ca.client("client", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path(), "ca").unwrap();
    client.write(dir.path(), "client").unwrap();
    Pki {
        ca: ca.pem().into_bytes(),
        server_cert: server.cert_pem.into_bytes(),
        server_key: server.key_pem.into_bytes(),
        client_cert: client.cert_pem.into_bytes(),
        client_key: client.key_pem.into_bytes(),
        other_ca: other.pem().into_bytes(),
        dir,
    }
}
