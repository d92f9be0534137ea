//! `fan-ipam`: the CNI IPAM plugin of the fan.
//!
//! Run by a CNI main plugin (`bridge`, `ptp`, …) with the `CNI_*`
//! environment and the network configuration on stdin; asks the host's fan
//! agent for addresses. See [`fan_client::cni`] for the commands, the
//! configuration and the error codes.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use fan_client::cni::{self, CniError, Outcome};

fn main() -> ExitCode {
    let lookup = |k: &str| std::env::var(k).ok();
    if lookup("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        // Run by hand: say what this is, and still answer like a plugin.
        eprintln!(
            "fan-ipam {}: CNI IPAM plugin for fan networks (CNI spec {})",
            env!("CARGO_PKG_VERSION"),
            cni::SUPPORTED_VERSIONS.join(", ")
        );
    }
    let outcome = match read_stdin().and_then(|stdin| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(runtime.block_on(cni::run(lookup, &stdin)))
    }) {
        Ok(outcome) => outcome,
        Err(err) => Outcome::error(
            &CniError::new(cni::code::IO_FAILURE, "cannot run fan-ipam")
                .with_details(format!("{err:#}")),
            cni::LATEST_VERSION,
        ),
    };
    for line in &outcome.stderr {
        eprintln!("{line}");
    }
    let mut stdout = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(stdout, "{}", outcome.stdout);
    }
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}

/// The network configuration; nothing when stdin is a terminal (`VERSION`
/// run by hand), so that the plugin never waits for typing.
fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::new();
    if !stdin.is_terminal() {
        stdin
            .read_to_end(&mut buf)
            .context("cannot read the network configuration from stdin")?;
    }
    Ok(buf)
}
