//! The TCP listener: mutual TLS only.
//!
//! `--listen ADDR:PORT` serves the same services as the unix socket, and only
//! with TLS and a client certificate that chains to `--tls-client-ca`. There
//! is no plaintext TCP mode, not even on loopback: a TCP port can be reached by
//! every local user (and a container sharing the host network), so a peer must
//! prove who it is with a certificate, the way unix peers do with their uid.
//! Each request is tagged with the certificate's subject as a
//! [`PeerIdentity`], which audit lines name.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::caller::PeerIdentity;

/// A peer that connects and stalls the handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalive probes, so a peer host that vanished
/// (power loss, partition) does not hold its connection forever.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The TCP flags as given on the command line, before they are checked.
#[derive(Debug, Clone, Default)]
pub struct TcpFlags {
    /// `--listen`: the TCP address to serve on.
    pub listen: Option<SocketAddr>,
    /// `--tls-cert`: PEM certificate (chain) the agent presents.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key of that certificate.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`: PEM CA certificate(s) client certificates must chain to.
    pub tls_client_ca: Option<PathBuf>,
}

/// A checked TCP listener configuration: the address and the loaded TLS settings.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    tls: ServerTlsConfig,
}

/// Why the TCP listener cannot be configured or opened.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `--listen` without all of the TLS flags.
    #[error(
        "--listen {listen} needs {missing}: TCP is served only with mutual TLS \
         (there is no plaintext TCP mode)"
    )]
    MissingFlags {
        /// The requested address.
        listen: SocketAddr,
        /// The missing flags, e.g. "--tls-key and --tls-client-ca".
        missing: String,
    },
    /// TLS flags without `--listen`: they would silently do nothing.
    #[error("{given} given without --listen; the TLS flags configure only the TCP listener")]
    WithoutListen {
        /// The flags given.
        given: String,
    },
    /// A certificate or key file is unreadable or does not hold what it should.
    #[error("{flag} {}: {message}", path.display())]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate, key or CA (e.g. a key of another certificate).
    #[error("TLS configuration (--tls-cert, --tls-key, --tls-client-ca): {0}")]
    Config(String),
    /// The address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

impl TcpFlags {
    /// Checks the flags and loads the certificate files; `None` when TCP is off.
    ///
    /// Refuses `--listen` unless all three TLS flags are given, naming the
    /// missing ones, and refuses TLS flags without `--listen`.
    pub fn load(self) -> Result<Option<TcpConfig>, TlsError> {
        let files = [
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            ("--tls-client-ca", &self.tls_client_ca),
        ];
        let Some(listen) = self.listen else {
            let given: Vec<&str> = files
                .iter()
                .filter(|(_, p)| p.is_some())
                .map(|(f, _)| *f)
                .collect();
            if given.is_empty() {
                return Ok(None);
            }
            return Err(TlsError::WithoutListen {
                given: join_flags(&given),
            });
        };
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(f, _)| *f)
            .collect();
        let (Some(cert), Some(key), Some(ca)) = (self.tls_cert, self.tls_key, self.tls_client_ca)
        else {
            return Err(TlsError::MissingFlags {
                listen,
                missing: join_flags(&missing),
            });
        };
        let cert_pem = read_pem(
            "--tls-cert",
            &cert,
            |label| label == "CERTIFICATE",
            "CERTIFICATE",
        )?;
        let key_pem = read_pem(
            "--tls-key",
            &key,
            |label| label.ends_with("PRIVATE KEY"),
            "PRIVATE KEY",
        )?;
        warn_if_key_readable(&key);
        let ca_pem = read_pem(
            "--tls-client-ca",
            &ca,
            |label| label == "CERTIFICATE",
            "CERTIFICATE",
        )?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT);
        // Builds the rustls config now, so a key that does not parse or a CA
        // that is not a usable trust anchor stops the start-up, not the first peer.
        Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| TlsError::Config(error_chain(&e)))?;
        Ok(Some(TcpConfig { listen, tls }))
    }
}

/// A bound TCP listener with its TLS settings, ready to serve.
#[derive(Debug)]
pub struct TcpListener {
    listener: std::net::TcpListener,
    tls: ServerTlsConfig,
    local: SocketAddr,
}

impl TcpConfig {
    /// Binds the address (before serving starts, so a taken port stops the start-up).
    pub fn bind(&self) -> Result<TcpListener, TlsError> {
        let bind_error = |source| TlsError::Bind {
            addr: self.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(self.listen).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        Ok(TcpListener {
            listener,
            tls: self.tls.clone(),
            local,
        })
    }
}

impl TcpListener {
    /// Serves `routes` with mutual TLS until `shutdown` resolves.
    pub async fn serve(
        self,
        routes: Routes,
        limits: super::connections::ConnectionLimits,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tracing::info!(listen = %self.local, "serving on TCP with mutual TLS");
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(listen = %self.local, error = %err, "cannot register the TCP listener");
                return Ok(());
            }
        };
        let incoming = super::connections::admit(KeepAliveListener(listener), limits, "tcp");
        Server::builder()
            .tls_config(self.tls)?
            // Outermost: a socket-path :authority never reaches a service over TCP.
            .layer(tower::filter::FilterLayer::new(
                super::authority::refuse_on_tcp
                    as fn(http::Request<Body>) -> Result<http::Request<Body>, tonic::Status>,
            ))
            .layer(tower::util::MapRequestLayer::new(
                attach_identity as fn(http::Request<Body>) -> http::Request<Body>,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }
}

/// Accepts TCP connections with no Nagle delay and keepalive probes, so a
/// peer that vanished releases its connection.
struct KeepAliveListener(tokio::net::TcpListener);

impl super::connections::Acceptor for KeepAliveListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        use nix::sys::socket::{setsockopt, sockopt};
        let (stream, _) = self.0.accept().await?;
        // Responses are small; do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let idle = u32::try_from(TCP_KEEPALIVE.as_secs()).unwrap_or(u32::MAX);
        if let Err(err) = setsockopt(&stream, sockopt::KeepAlive, &true)
            .and_then(|()| setsockopt(&stream, sockopt::TcpKeepIdle, &idle))
        {
            tracing::debug!(error = %err, "cannot enable TCP keepalive");
        }
        Ok(stream)
    }
}

/// Tags a request with its peer's certificate subject, for [`crate::caller::caller`].
fn attach_identity(mut request: http::Request<Body>) -> http::Request<Body> {
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
    let Some(info) = info else {
        return request;
    };
    let remote = info
        .get_ref()
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    // The first certificate is the peer's own; the rest is its chain.
    let subject = info
        .peer_certs()
        .and_then(|certs| certs.first().map(|c| describe_certificate(c.as_ref())))
        .unwrap_or_else(|| "no client certificate".into());
    request
        .extensions_mut()
        .insert(PeerIdentity(format!("tls:{subject} from {remote}")));
    request
}

/// The subject of a DER certificate, with its subject alternative names:
/// `O=fan, CN=ops [DNS:ops.example]` (RDNs in certificate order).
pub fn describe_certificate(der: &[u8]) -> String {
    let cert = match X509Certificate::from_der(der) {
        Ok((_, cert)) => cert,
        // rustls accepted it, so this is unlikely; still say something useful.
        Err(_) => return format!("unparsed certificate ({} bytes)", der.len()),
    };
    let mut text = cert.subject().to_string();
    if text.is_empty() {
        text = "empty subject".into();
    }
    let names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(n) => Some(format!("DNS:{n}")),
                GeneralName::RFC822Name(n) => Some(format!("email:{n}")),
                GeneralName::URI(n) => Some(format!("URI:{n}")),
                GeneralName::IPAddress(bytes) => ip_text(bytes).map(|ip| format!("IP:{ip}")),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !names.is_empty() {
        text.push_str(&format!(" [{}]", names.join(",")));
    }
    text
}

fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Reads a PEM file and checks it holds a block with a wanted label, so a
/// swapped or empty file is refused by flag name rather than by a TLS error.
fn read_pem(
    flag: &'static str,
    path: &Path,
    wanted: impl Fn(&str) -> bool,
    what: &str,
) -> Result<Vec<u8>, TlsError> {
    let fail = |message: String| TlsError::File {
        flag,
        path: path.to_owned(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("read: {e}")))?;
    let mut found = false;
    for block in Pem::iter_from_buffer(&bytes) {
        let block = block.map_err(|e| fail(format!("not PEM: {e}")))?;
        if wanted(&block.label) {
            if block.label == "CERTIFICATE" {
                block
                    .parse_x509()
                    .map_err(|e| fail(format!("a CERTIFICATE block does not parse: {e}")))?;
            }
            found = true;
        }
    }
    if !found {
        return Err(fail(format!("holds no {what} PEM block")));
    }
    Ok(bytes)
}

/// A key others can read is as good as published; say so (but start: the
/// operator may have reasons, e.g. a group-readable secret mount).
fn warn_if_key_readable(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the TLS private key is readable by every user; chmod o-r it"
            );
        }
    }
}

fn join_flags(flags: &[&str]) -> String {
    match flags {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// An error with its sources, as tonic's transport errors say little on top.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_testkit::pki::{Ca, Leaf, Usage};

    fn flags(listen: bool, cert: bool, key: bool, ca: bool) -> TcpFlags {
        TcpFlags {
            listen: listen.then(|| "127.0.0.1:7443".parse().unwrap()),
            tls_cert: cert.then(|| PathBuf::from("/nonexistent/cert.pem")),
            tls_key: key.then(|| PathBuf::from("/nonexistent/key.pem")),
            tls_client_ca: ca.then(|| PathBuf::from("/nonexistent/ca.pem")),
        }
    }

    #[test]
    fn nothing_given_means_no_tcp() {
        assert!(flags(false, false, false, false).load().unwrap().is_none());
    }

    #[test]
    fn listen_needs_every_tls_flag_by_name() {
        let err = flags(true, false, false, false).load().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--listen 127.0.0.1:7443 needs --tls-cert, --tls-key and --tls-client-ca: TCP is \
             served only with mutual TLS (there is no plaintext TCP mode)"
        );
        let err = flags(true, true, true, false).load().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--listen 127.0.0.1:7443 needs --tls-client-ca:"),
            "{err}"
        );
        let err = flags(true, true, false, true).load().unwrap_err();
        assert!(err.to_string().contains("needs --tls-key:"), "{err}");
    }

    #[test]
    fn tls_flags_without_listen_are_refused() {
        let err = flags(false, true, false, true).load().unwrap_err();
        assert_eq!(
            err.to_string(),
            "--tls-cert and --tls-client-ca given without --listen; the TLS flags configure only \
             the TCP listener"
        );
    }

    #[test]
    fn unreadable_and_wrong_files_name_their_flag() {
        let err = flags(true, true, true, true).load().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--tls-cert /nonexistent/cert.pem: read:"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = TcpFlags {
            tls_cert: Some(empty.clone()),
            tls_key: Some(empty.clone()),
            tls_client_ca: Some(empty.clone()),
            ..flags(true, false, false, false)
        }
        .load()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--tls-cert {}: holds no CERTIFICATE PEM block",
                empty.display()
            )
        );
    }

    #[test]
    fn join_flags_reads_as_a_sentence() {
        assert_eq!(join_flags(&["--a"]), "--a");
        assert_eq!(join_flags(&["--a", "--b"]), "--a and --b");
        assert_eq!(join_flags(&["--a", "--b", "--c"]), "--a, --b and --c");
    }

    /// A CA (the test kit's) and certificates it signs, written to a temporary directory.
    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
    }

    impl Pki {
        fn new(ca_name: &str) -> Pki {
            let pki = Pki {
                dir: tempfile::tempdir().unwrap(),
                ca: Ca::new(ca_name).unwrap(),
            };
            std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Issues `name.pem` / `name.key` with CN=name and the given DNS names.
        fn issue(&self, name: &str, dns: &[&str]) -> Leaf {
            let leaf = self
                .ca
                .issue(&format!("CN={name}"), dns, Usage::Any)
                .unwrap();
            leaf.write(self.dir.path(), name).unwrap();
            leaf
        }

        fn flags(&self, server: &str) -> TcpFlags {
            TcpFlags {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                tls_cert: Some(self.path(&format!("{server}.pem"))),
                tls_key: Some(self.path(&format!("{server}.key"))),
                tls_client_ca: Some(self.path("ca.pem")),
            }
        }
    }

    #[test]
    fn certificates_load_and_keys_must_be_keys() {
        let pki = Pki::new("fan test CA");
        pki.issue("agent", &["localhost"]);
        assert!(pki.flags("agent").load().unwrap().is_some());
        // A certificate given as the key is refused by flag name.
        let err = TcpFlags {
            tls_key: Some(pki.path("agent.pem")),
            ..pki.flags("agent")
        }
        .load()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("--tls-key ")
                && err.to_string().ends_with("holds no PRIVATE KEY PEM block"),
            "{err}"
        );
        // The key of another certificate is refused by rustls at start-up.
        pki.issue("other", &["localhost"]);
        let err = TcpFlags {
            tls_key: Some(pki.path("other.key")),
            ..pki.flags("agent")
        }
        .load()
        .unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
    }

    #[test]
    fn subjects_name_the_certificate_and_its_alternative_names() {
        let pki = Pki::new("fan test CA");
        let cert = pki.issue("ops-team", &["ops.example"]);
        assert_eq!(
            describe_certificate(&cert.der),
            "CN=ops-team [DNS:ops.example]"
        );
        let cert = pki.issue("bare", &[]);
        assert_eq!(describe_certificate(&cert.der), "CN=bare");
    }

    /// Serves gRPC health on loopback with mutual TLS and asks it once with `client`'s
    /// certificate (None: no certificate) trusting `server_ca`.
    async fn health_check(pki: &Pki, client: Option<(&Pki, &str)>) -> Result<(), tonic::Status> {
        let config = pki.flags("agent").load().unwrap().unwrap();
        let listener = config.bind().unwrap();
        let port = listener.local.port();
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = crate::server::connections::ConnectionLimits::for_descriptor_limit(64, 1024);
        let server = tokio::spawn(listener.serve(Routes::new(health), limits, async {
            let _ = stopped.await;
        }));
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca.pem()))
            .domain_name("localhost");
        if let Some((client_pki, name)) = client {
            let cert = std::fs::read(client_pki.path(&format!("{name}.pem"))).unwrap();
            let key = std::fs::read(client_pki.path(&format!("{name}.key"))).unwrap();
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        let result = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .map(|_| ());
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        result
    }

    #[tokio::test]
    async fn mutual_tls_on_loopback() {
        let pki = Pki::new("fan test CA");
        pki.issue("agent", &["localhost"]);
        pki.issue("client-a", &[]);
        health_check(&pki, Some((&pki, "client-a"))).await.unwrap();
        // No client certificate: the handshake fails, the call with it.
        health_check(&pki, None).await.unwrap_err();
        // A certificate of another CA: refused the same way.
        let rogue = Pki::new("rogue CA");
        rogue.issue("client-a", &[]);
        health_check(&pki, Some((&rogue, "client-a")))
            .await
            .unwrap_err();
    }

    #[test]
    fn garbage_is_described_not_panicked_on() {
        assert_eq!(
            describe_certificate(b"junk"),
            "unparsed certificate (4 bytes)"
        );
        assert_eq!(ip_text(&[127, 0, 0, 1]).unwrap().to_string(), "127.0.0.1");
        assert!(ip_text(&[1, 2, 3]).is_none());
    }
}
