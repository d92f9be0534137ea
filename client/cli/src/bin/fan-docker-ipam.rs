//! `fan-docker-ipam`: Docker's remote IPAM plugin, backed by the fan agent.
//!
//! Serves Docker's plugin protocol (HTTP/1.1 + JSON) on a unix socket in
//! `/run/docker/plugins/`, where dockerd discovers it by name; every
//! address Docker hands to a container is then an allocation in the host's
//! fan agent. See [`fan_cli::docker`] for the calls and their answers.
//!
//! ```sh
//! fan-docker-ipam &                           # /run/docker/plugins/fan.sock
//! docker network create --driver bridge --ipam-driver fan --ipam-opt fan-network=fan-250 \
//!     -o com.docker.network.bridge.name=fan-250 -o com.docker.network.driver.mtu=1480 \
//!     -o com.docker.network.bridge.enable_ip_masquerade=false fan
//! ```

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use fan_cli::docker::{IpamPlugin, CONTENT_TYPE, DEFAULT_SOCKET};
use fan_client::{ConnectOptions, DEFAULT_TARGET};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// Docker IPAM plugin serving addresses from the fan agent.
#[derive(Debug, Parser)]
#[command(
    name = "fan-docker-ipam",
    version,
    after_help = "Example:\n  fan-docker-ipam --socket /run/docker/plugins/fan.sock\n  \
                  docker network create --driver bridge --ipam-driver fan --ipam-opt fan-network=fan-250 \\\n    \
                  -o com.docker.network.bridge.name=fan-250 -o com.docker.network.driver.mtu=1480 \\\n    \
                  -o com.docker.network.bridge.enable_ip_masquerade=false fan"
)]
struct Args {
    /// The fan agent.
    #[arg(long, env = "FAN_AGENT", default_value = DEFAULT_TARGET)]
    agent: String,
    /// The plugin socket; its file name (without `.sock`) is the name
    /// Docker knows the driver by (`--ipam-driver`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The fan network for Docker networks that name none with
    /// `--ipam-opt fan-network=ID` (default: the agent's only network).
    #[arg(long, value_name = "ID")]
    network: Option<String>,
}

/// Requests are a few hundred bytes; anything far larger is not Docker.
const MAX_BODY: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

/// Removes a stale socket left by an earlier run; refuses to touch any
/// other kind of file.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display())),
        Ok(_) => bail!(
            "--socket {} exists and is not a socket: not replacing it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot inspect --socket {}", path.display())),
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clear_stale_socket(&args.socket)?;
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("cannot listen on {}", args.socket.display()))?;
    let options = ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10));
    let plugin = Arc::new(IpamPlugin::new(&args.agent, options, args.network.clone()));
    eprintln!(
        "fan-docker-ipam: serving {} for the agent {}",
        args.socket.display(),
        args.agent
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("fan-docker-ipam: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let plugin = Arc::clone(&plugin);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let plugin = Arc::clone(&plugin);
                        async move { Ok::<_, Infallible>(answer(&plugin, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        eprintln!("fan-docker-ipam: connection: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

async fn answer(plugin: &IpamPlugin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.uri().path().trim_start_matches('/').to_string();
    let reply = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            let reply = plugin.handle(&method, &body).await;
            if reply.status != 200 {
                eprintln!(
                    "fan-docker-ipam: {method} {}: {}",
                    String::from_utf8_lossy(&body),
                    reply.body
                );
            }
            reply
        }
        Err(e) => fan_cli::docker::Reply {
            status: 400,
            body: serde_json::json!({ "Err": format!("cannot read the request body: {e}") }),
        },
    };
    Response::builder()
        .status(reply.status)
        .header("Content-Type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(reply.body.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"{}"))))
}
