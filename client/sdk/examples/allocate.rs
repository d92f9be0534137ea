//! Allocate an address for a container, print it, release it.
//!
//! ```sh
//! FAN_AGENT=unix:///run/fan/agent.sock \
//! FAN_NETWORK=fan-250 FAN_OVERLAY=250.0.0.0/8 FAN_UNDERLAY=default/16 \
//!     cargo run -p fan-client --example allocate -- my-container
//! ```
//!
//! Connects to `$FAN_AGENT` (default: the agent's unix socket), creates the
//! network `$FAN_NETWORK` from `$FAN_OVERLAY` over `$FAN_UNDERLAY` if it does
//! not exist yet, allocates an address for the container `$FAN_CONTAINER`
//! or the one named on the command line (default `example-container`),
//! prints what a CNI plugin
//! would configure, and releases the address again.

use fan_client::{AllocationRequest, FanClient, NetworkSpec, Owner, Selector, DEFAULT_TARGET};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
pub async fn main() -> Result<(), fan_client::Error> {
    let target = env_or("FAN_AGENT", DEFAULT_TARGET);
    let network = env_or("FAN_NETWORK", "fan-250");
    let container = std::env::var("FAN_CONTAINER")
        .ok()
        .or_else(|| std::env::args().nth(1))
        .unwrap_or_else(|| "example-container".to_string());

    let client = FanClient::connect(&target).await?;

    // Create the network only when it is missing; an existing one is used
    // as it is.
    let net = match client.get_network(&network).await {
        Ok(net) => net,
        Err(e) if e.is_not_found() => {
            let spec = NetworkSpec::new(
                env_or("FAN_OVERLAY", "250.0.0.0/8"),
                env_or("FAN_UNDERLAY", "default/16"),
            );
            println!(
                "creating network {network} ({} over {})",
                spec.overlay, spec.underlay
            );
            client.create_network(&network, &spec).await?
        }
        Err(e) => return Err(e),
    };
    println!(
        "network {}: slice {} on bridge {} ({})",
        net.id,
        net.status
            .slice
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        net.status.bridge,
        net.status.state
    );

    // Allocating is idempotent per owner: running this twice for the same
    // container returns the same address.
    let owner = Owner::new(container.as_str());
    let alloc = client
        .allocate_address(
            &net.id,
            &AllocationRequest::new(owner.clone()).label("example", "allocate"),
        )
        .await?;
    println!(
        "{owner}: address {} gateway {} mtu {}",
        alloc.cidr(),
        alloc.gateway,
        alloc.mtu
    );

    let released = client
        .release_address(&net.id, &Selector::Owner(owner.clone()), false)
        .await?;
    if let Some(a) = released {
        println!("{owner}: released {}", a.address);
    }
    Ok(())
}
