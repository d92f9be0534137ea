//! `fan-bridge`: the CNI main plugin that plugs containers into a fan
//! bridge (netkit pairs where the kernel has them); see [`fan_cni_bridge`].

use std::process::ExitCode;

use fan_cli::cni::{code, read_stdin, CniError, Outcome, LATEST_VERSION};

fn main() -> ExitCode {
    let lookup = |k: &str| std::env::var(k).ok();
    let outcome = match read_stdin().and_then(|stdin| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(fan_cni_bridge::run::run(lookup, &stdin)))
    }) {
        Ok(outcome) => outcome,
        Err(err) => Outcome::error(
            &CniError::new(code::IO_FAILURE, "cannot run fan-bridge").with_details(err.to_string()),
            LATEST_VERSION,
        ),
    };
    outcome.emit()
}
