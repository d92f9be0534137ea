//! Running one command: the IPAM plugin first (delegated as the spec says:
//! same environment, same configuration), then the devices.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use fan_cli::cni::{
    begin, code, invalid_config, version_json, CniError, Command, Invocation, Outcome,
};
use fan_dataplane::netlink::Netlink;
use serde_json::Value;

use crate::conf::{self, addressing, host_alias, host_name, Interface};
use crate::link;

/// Plugging the container failed (netlink); `details` says what the kernel said.
pub const PLUG_FAILED: u32 = 110;

enum Failure {
    Ours(CniError),
    /// What the IPAM plugin answered when it failed: passed on as it is.
    Ipam(Outcome),
}

impl From<CniError> for Failure {
    fn from(e: CniError) -> Self {
        Failure::Ours(e)
    }
}

/// Runs one invocation: the environment through `lookup`, the network
/// configuration in `stdin`.
pub async fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let (version, invocation) = match begin(&lookup, stdin) {
        Ok(started) => started,
        Err(done) => return done,
    };
    let result = match conf::parse(stdin) {
        Ok(conf) => execute(&invocation, &conf, &lookup, stdin).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(stdout) => Outcome::ok(stdout, Vec::new()),
        Err(Failure::Ours(e)) => Outcome::error(&e, &version),
        Err(Failure::Ipam(outcome)) => outcome,
    }
}

async fn execute(
    invocation: &Invocation,
    conf: &conf::BridgeConf,
    lookup: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, Failure> {
    let ipam = |command: Command| delegate(conf, command, lookup, stdin);
    match invocation.command {
        Command::Version => Ok(Some(version_json())),
        Command::Gc | Command::Status => ipam(invocation.command).map(|_| None),
        Command::Add => add(invocation, conf, ipam(Command::Add)?, &ipam)
            .await
            .map(Some),
        Command::Del => {
            let at = attachment(invocation)?;
            let nl = netlink()?;
            // The device first, then the address: no address is handed out
            // again while a device still carries it. A device of that name
            // that is not this attachment's is left alone.
            link::unplug(&nl, &at.host, &at.alias)
                .await
                .map_err(|e| plug_failed("delete the host's end", e))?;
            ipam(Command::Del).map(|_| None)
        }
        Command::Check => {
            ipam(Command::Check)?;
            let at = attachment(invocation)?;
            let prev_result = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| invalid_config("prevResult: required for CHECK, the ADD result"))?;
            let addressing = addressing(prev_result)?;
            let netns = required_netns(invocation)?;
            let nl = netlink()?;
            link::check(&nl, &at.host, &conf.bridge, &netns, &at.ifname, &addressing)
                .await
                .map_err(|e| {
                    CniError::new(code::CHECK_FAILED, "the container's link differs")
                        .with_details(format!("{e:#}"))
                })?;
            Ok(None)
        }
    }
}

async fn add(
    invocation: &Invocation,
    conf: &conf::BridgeConf,
    ipam_result: Value,
    ipam: &impl Fn(Command) -> Result<Value, Failure>,
) -> Result<Value, Failure> {
    let at = attachment(invocation)?;
    let netns = required_netns(invocation)?;
    let plugged = async {
        let addressing = addressing(&ipam_result)?;
        let nl = netlink()?;
        link::plug(
            &nl,
            conf.link,
            &at.host,
            &at.alias,
            &conf.bridge,
            conf.mtu,
            &netns,
            &at.ifname,
            &addressing,
        )
        .await
        .map_err(|e| plug_failed("plug the container", e))
    }
    .await;
    let plugged = match plugged {
        Ok(p) => p,
        Err(e) => {
            // The address goes back: nothing of a failed ADD stays.
            let _ = ipam(Command::Del);
            return Err(e.into());
        }
    };
    let host = Interface {
        name: plugged.host.name.clone(),
        mac: conf::mac_text(plugged.host.mac),
        sandbox: None,
    };
    let container = Interface {
        name: at.ifname,
        mac: conf::mac_text(plugged.container_mac),
        sandbox: Some(netns),
    };
    Ok(conf::add_result(
        &conf.cni_version,
        &ipam_result,
        &host,
        &container,
    ))
}

/// One attachment: the container's interface and the host's end of its
/// pair (name and the alias that marks it as this attachment's).
struct Attachment {
    ifname: String,
    host: String,
    alias: String,
}

fn attachment(invocation: &Invocation) -> Result<Attachment, CniError> {
    let owner = invocation.owner()?;
    Ok(Attachment {
        host: host_name(&owner.container_id, &owner.interface),
        alias: host_alias(&owner.container_id, &owner.interface),
        ifname: owner.interface,
    })
}

fn required_netns(invocation: &Invocation) -> Result<String, CniError> {
    invocation.netns.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS is required for {}", invocation.command),
        )
    })
}

fn netlink() -> Result<Netlink, CniError> {
    Netlink::new().map_err(|e| plug_failed("open netlink", e))
}

fn plug_failed(doing: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(PLUG_FAILED, format!("cannot {doing}")).with_details(e.to_string())
}

/// Finds `name` in `CNI_PATH`.
fn find_plugin(name: &str, lookup: &impl Fn(&str) -> Option<String>) -> Result<PathBuf, CniError> {
    let path = lookup("CNI_PATH")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_PATH is not set: cannot find the IPAM plugin",
            )
        })?;
    path.split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("ipam.type: no plugin {name:?} in CNI_PATH"),
            )
            .with_details(path.clone())
        })
}

/// Runs the IPAM plugin with `command`, the rest of the environment as
/// given and the same configuration; its JSON answer on success (null when
/// it printed nothing), its own error otherwise.
fn delegate(
    conf: &conf::BridgeConf,
    command: Command,
    lookup: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Value, Failure> {
    let program = find_plugin(&conf.ipam_type, lookup)?;
    let io = |e: std::io::Error| {
        Failure::Ours(
            CniError::new(
                code::IO_FAILURE,
                format!("cannot run {}", program.display()),
            )
            .with_details(e.to_string()),
        )
    };
    let mut child = Process::new(&program)
        .env("CNI_COMMAND", command.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(Failure::Ipam(Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 1,
        }));
    }
    if stdout.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| {
        Failure::Ours(
            CniError::new(
                code::DECODE_FAILURE,
                format!("{} printed no JSON", program.display()),
            )
            .with_details(e.to_string()),
        )
    })
}
