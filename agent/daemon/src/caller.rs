//! Who made a request: the one place that reads the transport's peer
//! information (unix credentials, TCP address, client-certificate subject).
//!
//! The server attaches a [`PeerIdentity`] to requests over mutual TLS; the
//! API reads it for audit lines. Both depend on this module, neither on the
//! other for it.

use tonic::codegen::http;
use tonic::Request;

/// The identity of a TCP peer (its client-certificate subject), attached to requests.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub String);

/// Who made a request: unix peer credentials, or the TCP peer and its
/// client-certificate subject when mutual TLS is on.
pub fn caller<T>(request: &Request<T>) -> String {
    caller_of(request.extensions())
}

/// [`caller`], from the request's extensions.
pub fn caller_of(extensions: &http::Extensions) -> String {
    if let Some(info) = extensions.get::<tonic::transport::server::UdsConnectInfo>() {
        if let Some(cred) = info.peer_cred {
            return format!(
                "unix:uid={},gid={},pid={}",
                cred.uid(),
                cred.gid(),
                cred.pid().unwrap_or(0)
            );
        }
        return "unix:unknown".to_owned();
    }
    if let Some(subject) = extensions.get::<PeerIdentity>() {
        return subject.0.clone();
    }
    match extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        Some(addr) => format!("tcp:{addr}"),
        None => "unknown".to_owned(),
    }
}
