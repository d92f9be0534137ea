//! A certificate authority, a server and a client certificate (and a second,
//! unrelated CA), made with the openssl command for each run; shared by the
//! SDK's and the CLI's TLS tests.

use std::path::Path;
use std::process::Command;

/// The PEM files of one run; `dir` holds them as files too.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Vec<u8>,
    pub server_cert: Vec<u8>,
    pub server_key: Vec<u8>,
    pub client_cert: Vec<u8>,
    pub client_key: Vec<u8>,
    pub other_ca: Vec<u8>,
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

/// Makes a fresh PKI in a temporary directory.
pub fn pki() -> Pki {
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
