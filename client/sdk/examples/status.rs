//! Print an agent's host, backends and networks.
//!
//! ```sh
//! cargo run -p fan-client --example status -- unix:///run/fan/agent.sock
//! ```
//!
//! The target is the first argument, else `$FAN_AGENT`, else the agent's
//! default unix socket. Errors print as one line, `<message> (<REASON>)`.

use std::process::ExitCode;
use std::time::Duration;

use fan_client::{ConnectOptions, FanClient, DEFAULT_TARGET};

#[tokio::main]
async fn main() -> ExitCode {
    let target = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("FAN_AGENT").ok())
        .unwrap_or_else(|| DEFAULT_TARGET.to_string());
    match run(&target).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("status: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(target: &str) -> Result<(), fan_client::Error> {
    let options = ConnectOptions::default().with_timeout(Duration::from_secs(3));
    let client = FanClient::connect_with(target, options).await?;
    let info = client.get_agent_info().await?;
    println!(
        "agent {} on {} (kernel {})",
        info.version, info.hostname, info.kernel_release
    );
    for b in &info.backends {
        let state = if b.available {
            "available"
        } else {
            "unavailable"
        };
        println!("  backend {:<10} {state} {}", b.backend.as_str(), b.reason);
    }
    // list_networks follows every page.
    for n in client.list_networks().await? {
        println!(
            "network {} {} over {}: {} ({}/{} addresses)",
            n.id,
            n.spec.overlay,
            n.spec.underlay,
            n.status.state,
            n.status.allocated,
            n.status.capacity
        );
    }
    Ok(())
}
