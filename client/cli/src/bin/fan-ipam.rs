//! `fan-ipam`: the CNI IPAM plugin of the fan.
//!
//! Run by a CNI main plugin (`bridge`, `ptp`, …) with the `CNI_*`
//! environment and the network configuration on stdin; asks the host's fan
//! agent for addresses. See [`fan_cli::cni`] for the commands, the
//! configuration and the error codes.
//!
//! Run by hand (no `CNI_COMMAND`), `fan-ipam conflist NETWORK` prints the
//! configuration list for a fan network, with the bridge and MTU the agent
//! reports, for `/etc/cni/net.d/`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use fan_cli::cni::{self, CniError, ConflistOptions, Outcome};
use fan_client::{FanClient, NetworkState, DEFAULT_TARGET};

/// fan-ipam run by hand: helpers around the plugin.
#[derive(Debug, Parser)]
#[command(
    name = "fan-ipam",
    version,
    about = "CNI IPAM plugin for fan networks; run by CNI main plugins with CNI_COMMAND set",
    after_help = "Example:\n  fan-ipam conflist fan > /etc/cni/net.d/10-fan.conflist"
)]
enum Tool {
    /// Print the CNI configuration list (bridge + fan-ipam + portmap) for a
    /// fan network, with the bridge and MTU its agent reports. Fails while
    /// the network is not ready, so that a runtime never sees the network
    /// before its data path works.
    Conflist {
        /// The fan network id.
        network: String,
        /// The agent, also written into the list for fan-ipam.
        #[arg(long, env = "FAN_AGENT", default_value = DEFAULT_TARGET)]
        agent: String,
        /// The CNI network name; default: the fan network id.
        #[arg(long)]
        name: Option<String>,
        /// The list's cniVersion (1.1.0 enables GC and STATUS; needs main
        /// plugins that speak spec 1.1.0: see `CNI_COMMAND=VERSION bridge`).
        #[arg(long, default_value = "1.0.0")]
        cni_version: String,
        /// Leave out the portmap plugin.
        #[arg(long)]
        no_portmap: bool,
        /// Plug containers with fan-bridge (netkit pairs on Linux 6.7+, so
        /// the fast path runs in the container's transmit; veth pairs
        /// elsewhere) instead of the reference bridge plugin.
        #[arg(long)]
        fan_bridge: bool,
    },
}

fn main() -> ExitCode {
    let lookup = |k: &str| std::env::var(k).ok();
    let plugin_mode = lookup("CNI_COMMAND").is_some_and(|c| !c.is_empty());
    let args: Vec<OsString> = std::env::args_os().collect();
    if !plugin_mode && args.len() > 1 {
        return tool(Tool::parse_from(args));
    }
    if !plugin_mode {
        // Run by hand without arguments: say what this is, and still answer
        // like a plugin (error 4 on stdout).
        eprintln!(
            "fan-ipam {}: CNI IPAM plugin for fan networks (CNI spec {}); see fan-ipam --help",
            env!("CARGO_PKG_VERSION"),
            cni::SUPPORTED_VERSIONS.join(", ")
        );
    }
    let outcome = match cni::read_stdin()
        .context("cannot read the network configuration from stdin")
        .and_then(|stdin| Ok(runtime()?.block_on(cni::run(lookup, &stdin))))
    {
        Ok(outcome) => outcome,
        Err(err) => Outcome::error(
            &CniError::new(cni::code::IO_FAILURE, "cannot run fan-ipam")
                .with_details(format!("{err:#}")),
            cni::LATEST_VERSION,
        ),
    };
    outcome.emit()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn tool(tool: Tool) -> ExitCode {
    let result = runtime().and_then(|rt| match tool {
        Tool::Conflist {
            network,
            agent,
            name,
            cni_version,
            no_portmap,
            fan_bridge,
        } => rt.block_on(print_conflist(
            network,
            agent,
            name,
            cni_version,
            !no_portmap,
            fan_bridge,
        )),
    });
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fan-ipam: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn print_conflist(
    network: String,
    agent: String,
    name: Option<String>,
    cni_version: String,
    portmap: bool,
    fan_bridge: bool,
) -> anyhow::Result<String> {
    if !cni::SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        bail!(
            "--cni-version {cni_version}: expected one of {}",
            cni::SUPPORTED_VERSIONS.join(", ")
        );
    }
    let client = FanClient::connect(&agent).await?;
    let net = client.get_network(&network).await?;
    if net.status.state != NetworkState::Ready {
        bail!(
            "fan network {network:?} is {} ({}); no configuration list until it is ready",
            net.status.state,
            net.status.reason
        );
    }
    if net.status.bridge.is_empty() || net.status.mtu == 0 {
        bail!("the agent reports no bridge or MTU for fan network {network:?}");
    }
    let list = cni::conflist(&ConflistOptions {
        name: name.unwrap_or_else(|| network.clone()),
        cni_version,
        network,
        agent,
        bridge: net.status.bridge,
        mtu: net.status.mtu,
        portmap,
        fan_bridge,
    });
    Ok(serde_json::to_string_pretty(&list)?)
}
