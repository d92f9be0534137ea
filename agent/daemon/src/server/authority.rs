//! Requests whose HTTP/2 `:authority` is not a valid URI authority.
//!
//! grpc-core clients (Python grpcio, grpc-java, C++/Ruby/PHP), grpcurl
//! `-unix` and Go with a custom dialer send the unix socket path as
//! `:authority` (raw `/run/fan/agent.sock` or percent-encoded). Stock h2
//! resets such streams before any service runs; the patched h2 in
//! `third_party/h2` passes them on with [`h2::ext::MalformedAuthority`]
//! instead, and the listener decides here: the unix socket serves them (the
//! authority names nothing there: the peer is whoever can open the socket),
//! the mutual-TLS TCP listener refuses them as unpatched h2 did, because a TCP
//! peer's authority is a host name and a path there is a broken or hostile client.

use h2::ext::MalformedAuthority;
use tonic::body::Body;
use tonic::codegen::http;

/// Unix socket: notes a socket-path authority and serves the request.
pub fn accept_on_unix(request: http::Request<Body>) -> http::Request<Body> {
    if let Some(raw) = request.extensions().get::<MalformedAuthority>() {
        tracing::debug!(
            authority = %raw.as_bytes().escape_ascii(),
            path = request.uri().path(),
            "unix socket: serving a request whose :authority is not a host (a socket path)"
        );
    }
    request
}

/// TCP listener: refuses a request whose `:authority` is not a valid authority
/// with INVALID_ARGUMENT, logged at warn with the reason.
pub fn refuse_on_tcp(request: http::Request<Body>) -> Result<http::Request<Body>, tonic::Status> {
    let Some(raw) = request.extensions().get::<MalformedAuthority>() else {
        return Ok(request);
    };
    let authority = raw.as_bytes().escape_ascii().to_string();
    tracing::warn!(
        %authority,
        path = request.uri().path(),
        "TCP listener: refused a request with a malformed :authority (not a host[:port])"
    );
    Err(tonic::Status::invalid_argument(format!(
        "malformed :authority {authority:?}: the TCP listener accepts only host[:port]"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as the patched h2 hands it on; building the extension needs
    /// the h2 server, so these tests cover only the clean pass-through.
    fn request() -> http::Request<Body> {
        http::Request::builder()
            .uri("/grpc.health.v1.Health/Check")
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn requests_without_the_extension_pass_both_listeners() {
        assert_eq!(
            accept_on_unix(request()).uri().path(),
            "/grpc.health.v1.Health/Check"
        );
        assert!(refuse_on_tcp(request()).is_ok());
    }
}
