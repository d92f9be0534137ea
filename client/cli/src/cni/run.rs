//! Running one CNI command: the only part that talks to the agent.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use fan_client::{
    AllocationRequest, ConnectOptions, Error, FanClient, NetworkState, Owner, Selector,
};

use super::*;

/// What the plugin process prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// For stdout (a result, the version answer or an error); may be empty.
    pub stdout: String,
    /// Lines for stderr (warnings, a summary of GC).
    pub stderr: Vec<String>,
    /// 0 on success, 1 with an error on stdout.
    pub exit_code: u8,
}

impl Outcome {
    /// A success: `stdout` printed (if any), `stderr` lines, exit 0.
    pub fn ok(stdout: Option<Value>, stderr: Vec<String>) -> Self {
        Self {
            stdout: stdout.map(|v| v.to_string()).unwrap_or_default(),
            stderr,
            exit_code: 0,
        }
    }

    /// The outcome of a failure: the error JSON on stdout, exit 1.
    pub fn error(err: &CniError, cni_version: &str) -> Self {
        Self {
            stdout: err.to_json(cni_version).to_string(),
            stderr: Vec::new(),
            exit_code: 1,
        }
    }

    /// Prints it as a plugin must (the stderr lines, then stdout) and
    /// returns the exit code.
    pub fn emit(&self) -> std::process::ExitCode {
        use std::io::Write;
        for line in &self.stderr {
            eprintln!("{line}");
        }
        let mut stdout = std::io::stdout().lock();
        if !self.stdout.is_empty() {
            let _ = writeln!(stdout, "{}", self.stdout);
        }
        let _ = stdout.flush();
        std::process::ExitCode::from(self.exit_code)
    }
}

/// The network configuration on stdin; nothing when stdin is a terminal
/// (`VERSION` run by hand), so that a plugin never waits for typing.
pub fn read_stdin() -> std::io::Result<Vec<u8>> {
    use std::io::{IsTerminal, Read};
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::new();
    if !stdin.is_terminal() {
        stdin.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

/// The start of every plugin invocation: the version errors are reported
/// in and the environment; or the whole outcome already (`VERSION`, a bad
/// environment).
pub fn begin(
    lookup: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<(String, Invocation), Outcome> {
    let version = reply_version(stdin);
    let invocation = Invocation::from_env(lookup).map_err(|e| Outcome::error(&e, &version))?;
    if invocation.command == Command::Version {
        return Err(Outcome::ok(Some(version_json()), Vec::new()));
    }
    Ok((version, invocation))
}

/// Timeouts of the agent calls: short enough that a runtime's own deadline
/// (minutes) is never what ends a call.
fn connect_options() -> ConnectOptions {
    ConnectOptions::default()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10))
}

/// Runs one plugin invocation: the environment through `lookup`, the
/// network configuration in `stdin`.
pub async fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let (version, invocation) = match begin(&lookup, stdin) {
        Ok(started) => started,
        Err(done) => return done,
    };
    let conf = match parse_config_env(stdin, invocation.command, &lookup) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, &version),
    };
    let mut stderr = Vec::new();
    match execute(&invocation, &conf, &mut stderr).await {
        Ok(stdout) => Outcome::ok(stdout, stderr),
        Err(e) => {
            let mut out = Outcome::error(&e, &conf.cni_version);
            out.stderr = stderr;
            out
        }
    }
}

async fn connect(conf: &NetConf, doing: &str) -> Result<FanClient, CniError> {
    FanClient::connect_with(&conf.ipam.agent, connect_options())
        .await
        .map_err(|e| agent_error(&e, doing))
}

async fn execute(
    inv: &Invocation,
    conf: &NetConf,
    stderr: &mut Vec<String>,
) -> Result<Option<Value>, CniError> {
    let network = conf.ipam.network.as_str();
    match inv.command {
        Command::Version => Ok(Some(version_json())),
        Command::Add => add(inv, conf, stderr).await.map(Some),
        Command::Del => {
            let owner = inv.owner()?;
            let doing = format!("release the address of {owner} in {network:?}");
            let client = connect(conf, &doing).await?;
            match client
                .release_address(network, &Selector::Owner(owner), true)
                .await
            {
                Ok(_) => Ok(None),
                // The network is gone (deleted with --force, or never
                // created): nothing is allocated, which is what DEL wants.
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(agent_error(&e, &doing)),
            }
        }
        Command::Check => {
            let owner = inv.owner()?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| invalid_config("CHECK needs prevResult in the configuration"))?;
            let doing = format!("read the allocation of {owner} in {network:?}");
            let client = connect(conf, &doing).await?;
            let allocation = client
                .get_allocation(network, &Selector::Owner(owner.clone()))
                .await
                .map_err(|e| {
                    if e.is_not_found() {
                        CniError::new(
                            code::CHECK_FAILED,
                            format!("{owner} has no address in fan network {network:?}"),
                        )
                        .with_details(e.to_string())
                    } else {
                        agent_error(&e, &doing)
                    }
                })?;
            check_prev_result(prev, allocation.cidr(), allocation.gateway)?;
            if let Some(mtu) = conf.mtu.filter(|m| *m > allocation.mtu) {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    format!(
                        "the configured mtu {mtu} exceeds the fan network's MTU {}",
                        allocation.mtu
                    ),
                ));
            }
            Ok(None)
        }
        Command::Gc => gc(conf, stderr).await.map(|()| None),
        Command::Status => {
            let not_available = |msg: String| CniError::new(code::NOT_AVAILABLE, msg);
            let client = FanClient::connect_with(&conf.ipam.agent, connect_options())
                .await
                .map_err(|e| {
                    not_available(format!(
                        "the fan agent at {} is unreachable",
                        conf.ipam.agent
                    ))
                    .with_details(e.to_string())
                })?;
            let net = client.get_network(network).await.map_err(|e| {
                let msg = if e.is_not_found() {
                    format!("fan network {network:?} does not exist on this host")
                } else {
                    format!("cannot read fan network {network:?}")
                };
                not_available(msg).with_details(e.to_string())
            })?;
            if net.status.state != NetworkState::Ready {
                return Err(not_available(format!(
                    "fan network {network:?} is {}",
                    net.status.state
                ))
                .with_details(net.status.reason));
            }
            Ok(None)
        }
    }
}

async fn add(
    inv: &Invocation,
    conf: &NetConf,
    stderr: &mut Vec<String>,
) -> Result<Value, CniError> {
    let owner = inv.owner()?;
    let network = conf.ipam.network.as_str();
    let doing = format!("allocate an address for {owner} in {network:?}");
    let client = connect(conf, &doing).await?;
    let missing_network = |e: &Error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("fan network {network:?} does not exist on this host (yet)"),
        )
        .with_details(format!(
            "{e}; create it with `fan-client network create {network} …`, or fix ipam.network"
        ))
    };
    match conf.mtu {
        Some(mtu) => {
            let net = client.get_network(network).await.map_err(|e| {
                if e.is_not_found() {
                    missing_network(&e)
                } else {
                    agent_error(&e, &doing)
                }
            })?;
            if mtu > net.status.mtu && net.status.mtu > 0 {
                return Err(invalid_config(format!(
                    "mtu {mtu} is larger than the MTU {} of fan network {network:?}",
                    net.status.mtu
                ))
                .with_details(format!(
                    "set \"mtu\": {} in the main plugin's configuration; larger packets would be dropped on the underlay",
                    net.status.mtu
                )));
            }
        }
        None => stderr.push(format!(
            "fan-ipam: warning: the configuration sets no \"mtu\"; the container interface should use the fan network's MTU (see `fan-client network show {network}`)"
        )),
    }
    let mut request = AllocationRequest::new(owner);
    request.address = requested_with_args(conf.requested, &inv.args)?;
    request.labels = allocation_labels(conf, &inv.args);
    let allocation = client
        .allocate_address(network, &request)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                missing_network(&e)
            } else {
                agent_error(&e, &doing)
            }
        })?;
    Ok(IpamAnswer::new(
        allocation.cidr(),
        allocation.gateway,
        conf.ipam.routes.as_deref(),
    )
    .to_json(&conf.cni_version))
}

async fn gc(conf: &NetConf, stderr: &mut Vec<String>) -> Result<(), CniError> {
    let network = conf.ipam.network.as_str();
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| invalid_config("GC needs cni.dev/valid-attachments in the configuration"))?;
    let doing = format!("collect stale allocations in {network:?}");
    let client = connect(conf, &doing).await?;
    // A dry run lists every allocation of the fan network whose owner is not
    // valid; only those this CNI network made are released (the fan network
    // may also hold addresses of other CNI networks or of fan-client users,
    // which this runtime knows nothing about).
    let stale = match client
        .garbage_collect_allocations(network, valid, true)
        .await
    {
        Ok(stale) => stale,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(agent_error(&e, &doing)),
    };
    let mine: BTreeSet<Owner> = stale
        .into_iter()
        .filter(|a| a.labels.get(LABEL_CNI_NETWORK) == Some(&truncate(&conf.name)))
        .map(|a| a.owner)
        .collect();
    let mut first_error = None;
    let mut released = 0;
    for owner in mine {
        match client
            .release_address(network, &Selector::Owner(owner.clone()), true)
            .await
        {
            Ok(Some(a)) => {
                released += 1;
                stderr.push(format!("fan-ipam: GC released {} of {owner}", a.address));
            }
            Ok(None) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                stderr.push(format!("fan-ipam: GC could not release {owner}: {e}"));
                first_error.get_or_insert_with(|| agent_error(&e, &doing));
            }
        }
    }
    stderr.push(format!(
        "fan-ipam: GC of {network:?} for CNI network {:?}: {released} released",
        conf.name
    ));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
