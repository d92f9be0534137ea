//! The `fan-client` command line: parsing, dispatch, output.

pub mod args;
pub mod cluster;
pub mod error;
pub mod fanctl;
pub mod output;
pub mod table;

use std::io::Write;

use anyhow::Context as _;
use clap::CommandFactory;
use fan_client::{
    Allocation, AllocationRequest, ConnectOptions, DeleteNetworkOptions, FanClient, NetworkSpec,
    ResolveScope, Selector, TlsConfig,
};

use args::{AddressCommand, Cli, ClusterCommand, Command, NetworkCommand, OutputFormat};
use error::UsageError;
use output::Render;

/// Checks what clap cannot: flags we know but do not support yet are
/// refused by name (exit 2), never ignored. Runs before any connection.
pub fn validate(cli: &Cli) -> Result<(), UsageError> {
    tls_config(cli)?;
    Ok(())
}

/// Writes a result in the chosen format.
fn emit(out: &mut dyn Write, format: OutputFormat, r: &dyn Render) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => out.write_all(r.table().as_bytes())?,
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&r.json()).context("encoding JSON")?;
            s.push('\n');
            out.write_all(s.as_bytes())?;
        }
    }
    Ok(())
}

/// The TLS settings of the --tls-* options; unreadable files are usage
/// errors.
fn tls_config(cli: &Cli) -> Result<Option<TlsConfig>, UsageError> {
    if !cli.wants_tls() {
        return Ok(None);
    }
    if !cli.agent.starts_with("https://") {
        return Err(UsageError::new(
            format!("--tls-* options need an https:// agent, not {}", cli.agent),
            "USAGE",
        ));
    }
    let read = |p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, UsageError> {
        p.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| {
                    UsageError::new(
                        format!("cannot read {}: {e}", p.display()),
                        "TLS_FILE_UNREADABLE",
                    )
                })
            })
            .transpose()
    };
    let mut tls = TlsConfig::default();
    tls.ca_certificate_pem = read(&cli.tls_ca)?;
    tls.client_certificate_pem = read(&cli.tls_cert)?;
    tls.client_key_pem = read(&cli.tls_key)?;
    tls.domain_name = cli.tls_server_name.clone();
    Ok(Some(tls))
}

async fn connect(cli: &Cli) -> anyhow::Result<FanClient> {
    let mut options = ConnectOptions::default().with_timeout(cli.timeout);
    if let Some(tls) = tls_config(cli)? {
        options = options.with_tls(tls);
    }
    Ok(FanClient::connect_with(&cli.agent, options).await?)
}

/// Runs a parsed command line, writing results to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    validate(&cli)?;
    let fmt = cli.output;
    match &cli.command {
        Command::Completions { shell } => {
            // clap_complete panics when a write fails; render first, then write,
            // so `… | head -1` ends quietly like every other command.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "fan-client", &mut script);
            out.write_all(&script)?;
            Ok(())
        }
        Command::Info => {
            let c = connect(&cli).await?;
            emit(out, fmt, &c.get_agent_info().await?)
        }
        Command::Network(cmd) => network(&cli, cmd, out).await,
        Command::Watch(a) => {
            use futures::StreamExt;
            let c = connect(&cli).await?;
            let options = fan_client::WatchOptions {
                network_id: a.network.clone().unwrap_or_default(),
                kinds: a.kinds.clone(),
                start_revision: a.from,
            };
            let mut events = std::pin::pin!(c.watch_events(&options).await?);
            while let Some(event) = events.next().await {
                let line = match fmt {
                    OutputFormat::Json => serde_json::to_string(&event?)?,
                    OutputFormat::Table => output::event_line(&event?),
                };
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Ok(())
        }
        Command::Address(cmd) => address(&cli, cmd, out).await,
        Command::Resolve(a) => {
            let scope = match (&a.network, a.overlay, a.underlay) {
                (Some(n), _, _) => ResolveScope::Network(n.clone()),
                (None, Some(o), Some(u)) => ResolveScope::AdHoc {
                    overlay: args::to_cidr(o),
                    underlay: args::to_cidr(u),
                },
                _ => ResolveScope::AllNetworks,
            };
            let c = connect(&cli).await?;
            let resolutions = c.resolve_address(a.address, &scope).await?;
            emit(
                out,
                fmt,
                &output::Resolved {
                    address: a.address,
                    resolutions,
                },
            )
        }
        Command::Up(a) => {
            let plans = match (a.all, a.overlay, &a.underlay) {
                (true, _, _) => {
                    let path = fanctl::config_path(&a.config);
                    let entries = fanctl::read_config(&path)?;
                    fanctl::plan_up_all(&entries)
                }
                (false, Some(o), Some(u)) => {
                    vec![fanctl::plan_up(
                        o,
                        u,
                        a.host_reserve,
                        a.bridge.clone(),
                        a.dhcp,
                    )]
                }
                _ => {
                    // fanctl's positional form; --host-reserve/--bridge/--dhcp still apply.
                    let e = fanctl::parse_positional(&a.fan)?;
                    vec![fanctl::plan_up(
                        e.overlay,
                        &e.underlay,
                        a.host_reserve.or(e.host_reserve),
                        a.bridge.clone().or(e.bridge),
                        a.dhcp || e.dhcp,
                    )]
                }
            };
            let c = connect(&cli).await?;
            let mut changes = Vec::new();
            for p in plans {
                let n = c.create_network(&p.network_id, &p.spec).await?;
                changes.push(fanctl::FanChange {
                    network: n.id,
                    overlay: p.spec.overlay,
                    underlay: p.spec.underlay,
                    changed: true,
                    line: p.line,
                });
            }
            emit(
                out,
                fmt,
                &fanctl::Changes {
                    verb: "up",
                    changes,
                },
            )
        }
        Command::Down(a) => down(&cli, a, out).await,
        Command::Docker(a) => {
            let c = connect(&cli).await?;
            let net = c.get_network(&a.network).await?;
            let recipe = if a.bridge_mode {
                fan_cli::docker::bridge_recipe(&net)
            } else {
                let name = a.name.as_deref().unwrap_or(&a.network);
                fan_cli::docker::plugin_recipe(&net, &a.plugin, name)
            };
            out.write_all(recipe?.as_bytes())?;
            Ok(())
        }
        Command::Show => {
            let c = connect(&cli).await?;
            let nets = c.list_networks().await?;
            emit(
                out,
                fmt,
                &fanctl::Show(nets.iter().map(fanctl::show_row).collect()),
            )
        }
        Command::Cluster(ClusterCommand::Status(a)) => {
            let rows = cluster::query_all(&a.agents, a.agent_timeout).await;
            let status = cluster::ClusterStatus(rows);
            emit(out, fmt, &status)?;
            if a.strict {
                status.check()?;
            }
            Ok(())
        }
    }
}

async fn network(cli: &Cli, cmd: &NetworkCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let fmt = cli.output;
    let c = connect(cli).await?;
    match cmd {
        NetworkCommand::Create(a) => {
            let spec = NetworkSpec {
                host_reserve: a.host_reserve,
                bridge: a.bridge.clone(),
                mtu: a.mtu,
                backend: a.backend.into(),
                masquerade: a.no_masquerade.then_some(false),
                anti_spoofing: a.no_anti_spoofing.then_some(false),
                allow_overlap: a.allow_overlap,
                dhcp: a.dhcp,
                dhcp_dns: a.dhcp_dns.clone(),
                dhcp_lease_seconds: a.dhcp_lease_seconds,
                ..NetworkSpec::new(a.overlay.clone(), a.underlay.clone())
            };
            emit(out, fmt, &c.create_network(&a.name, &spec).await?)
        }
        NetworkCommand::List => emit(out, fmt, &output::NetworkList(c.list_networks().await?)),
        NetworkCommand::Show { name } => emit(out, fmt, &c.get_network(name).await?),
        NetworkCommand::Delete {
            name,
            force,
            allow_missing,
        } => {
            let outcome = c
                .delete_network(
                    name,
                    DeleteNetworkOptions {
                        force: *force,
                        allow_missing: *allow_missing,
                    },
                )
                .await?;
            emit(
                out,
                fmt,
                &output::Deleted {
                    network: name.clone(),
                    outcome,
                },
            )
        }
        NetworkCommand::Update(a) => {
            let labels = if a.clear_labels {
                Some(Default::default())
            } else {
                (!a.labels.is_empty()).then(|| a.labels.iter().cloned().collect())
            };
            let update = fan_client::NetworkUpdate {
                host_reserve: a.host_reserve,
                mtu: a.mtu,
                masquerade: a.masquerade,
                anti_spoofing: a.anti_spoofing,
                labels,
                dhcp: a.dhcp,
                dhcp_dns: if a.clear_dhcp_dns {
                    Some(Vec::new())
                } else {
                    (!a.dhcp_dns.is_empty()).then(|| a.dhcp_dns.clone())
                },
                dhcp_lease_seconds: a.dhcp_lease_seconds,
            };
            let (network, _) = c.update_network(&a.name, &update).await?;
            emit(out, fmt, &network)
        }
        NetworkCommand::Check { name } => {
            let drifts = c.check_network(name).await?;
            emit(
                out,
                fmt,
                &output::Checked {
                    network: name.clone(),
                    drifts,
                },
            )
        }
    }
}

async fn address(cli: &Cli, cmd: &AddressCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let fmt = cli.output;
    let c = connect(cli).await?;
    match cmd {
        AddressCommand::Allocate(a) => {
            let mut req = AllocationRequest::new(args::owner_of(&a.owner, &a.interface));
            req.address = a.address;
            req.labels = a.label_map();
            emit(out, fmt, &c.allocate_address(&a.network, &req).await?)
        }
        AddressCommand::Release(a) => {
            let allocation = c
                .release_address(&a.network, &a.selector.selector(), a.allow_missing)
                .await?;
            emit(
                out,
                fmt,
                &output::Released {
                    network: a.network.clone(),
                    allocation,
                },
            )
        }
        AddressCommand::List { network } => emit(
            out,
            fmt,
            &output::AllocationList(c.list_allocations(network).await?),
        ),
        AddressCommand::Show(a) => emit(
            out,
            fmt,
            &c.get_allocation(&a.network, &a.selector.selector()).await?,
        ),
        AddressCommand::Gc(a) => {
            // The agent's GC knows no scope: ask what it would release,
            // keep the scope's part, and release those one by one (by
            // owner, so an address that changed hands meanwhile stays).
            let stale: Vec<Allocation> = c
                .garbage_collect_allocations(&a.network, &a.valid_owners, true)
                .await?
                .into_iter()
                .filter(|al| a.in_scope(al))
                .collect();
            let released = if a.yes {
                let mut released = Vec::new();
                for al in stale {
                    let owner = Selector::Owner(al.owner.clone());
                    if let Some(r) = c.release_address(&a.network, &owner, true).await? {
                        released.push(r);
                    }
                }
                released
            } else {
                stale
            };
            emit(
                out,
                fmt,
                &output::Collected {
                    network: a.network.clone(),
                    dry_run: !a.yes,
                    released,
                },
            )
        }
    }
}

async fn down(cli: &Cli, a: &args::DownArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // Read the config before connecting: a bad file is a usage error.
    let config = if a.all {
        let path = fanctl::config_path(&a.config);
        Some(fanctl::read_config(&path)?)
    } else {
        None
    };
    // fanctl's positional form names the fan like -o/-u.
    let positional = if a.fan.is_empty() {
        None
    } else {
        Some(fanctl::parse_positional(&a.fan)?)
    };
    let c = connect(cli).await?;
    let nets = c.list_networks().await?;
    // (network, overlay, underlay, line)
    let mut targets: Vec<(Option<String>, String, String, Option<usize>)> = Vec::new();
    let named = match &positional {
        Some(e) => Some((e.overlay, &e.underlay)),
        None => a.overlay.zip(a.underlay.as_ref()),
    };
    if let Some((o, u)) = named {
        let found = fanctl::find(&nets, o, u);
        match found.as_slice() {
            [] => {
                return Err(fan_client::Error::Rpc {
                    code: fan_client::Code::NotFound,
                    message: fanctl::not_found_message(&nets, o, u),
                    reason: Some("FAN_NOT_FOUND".into()),
                    domain: String::new(),
                    metadata: Default::default(),
                    details: Default::default(),
                }
                .into())
            }
            many => {
                for n in many {
                    targets.push((Some(n.id.clone()), o.to_string(), u.to_string(), None))
                }
            }
        }
    } else if let Some(entries) = &config {
        for e in fanctl::active(entries) {
            let found = fanctl::find(&nets, e.overlay, &e.underlay);
            if found.is_empty() {
                targets.push((
                    None,
                    e.overlay.to_string(),
                    e.underlay.to_string(),
                    Some(e.line),
                ));
            }
            for n in found {
                targets.push((
                    Some(n.id.clone()),
                    e.overlay.to_string(),
                    e.underlay.to_string(),
                    Some(e.line),
                ));
            }
        }
    } else {
        for n in &nets {
            targets.push((
                Some(n.id.clone()),
                n.spec.overlay.clone(),
                n.spec.underlay.clone(),
                None,
            ));
        }
    }
    let mut changes = Vec::new();
    for (id, overlay, underlay, line) in targets {
        let changed = match &id {
            Some(id) => {
                // fanctl refuses to take down a fan with containers attached;
                // so does the agent (no --force here).
                c.delete_network(
                    id,
                    DeleteNetworkOptions {
                        force: false,
                        allow_missing: true,
                    },
                )
                .await?
                .deleted
            }
            None => false,
        };
        changes.push(fanctl::FanChange {
            network: id.unwrap_or_else(|| {
                overlay
                    .parse()
                    .map(fanctl::network_id_for)
                    .unwrap_or_default()
            }),
            overlay,
            underlay,
            changed,
            line,
        });
    }
    emit(
        out,
        cli.output,
        &fanctl::Changes {
            verb: "down",
            changes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("fan-client").chain(args.iter().copied())).unwrap()
    }

    /// Runs a command line against an agent that does not exist.
    async fn run_offline(args: &[&str]) -> (anyhow::Result<()>, String) {
        let mut full = vec!["--agent", "unix:/nonexistent/fan-client-test.sock"];
        full.extend_from_slice(args);
        let mut out = Vec::new();
        let r = run(cli(&full), &mut out).await;
        (r, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn bad_positional_fan_exits_2_before_connecting() {
        let (r, out) = run_offline(&["up", "250", "eth0/16", "dhcp", "bogus"]).await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 2);
        assert!(line.contains("bogus"), "{line}");
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn config_problems_exit_2_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let (r, _) = run_offline(&["up", "-a", "--config", missing.to_str().unwrap()]).await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 2);
        assert!(line.ends_with("(CONFIG_UNREADABLE)"), "{line}");

        let bad = dir.path().join("fan");
        std::fs::write(&bad, "250 eth0/16 host-reserve 2\n251 eth0/16 dhcpx\n").unwrap();
        let (r, _) = run_offline(&["up", "-a", "--config", bad.to_str().unwrap()]).await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 2);
        assert!(line.ends_with("(CONFIG_INVALID)"), "{line}");
        let (r, _) = run_offline(&["down", "-a", "--config", missing.to_str().unwrap()]).await;
        assert_eq!(error::report(&r.unwrap_err()).0, 2);
    }

    #[tokio::test]
    async fn unreachable_agent_exits_1_with_one_line() {
        let (r, out) = run_offline(&["info"]).await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 1);
        assert!(
            line.starts_with(
                "fan-client: cannot connect to the agent at unix:/nonexistent/fan-client-test.sock:"
            ),
            "{line}"
        );
        assert!(line.ends_with("(AGENT_UNREACHABLE)"), "{line}");
        assert!(!line.contains('\n'));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn cluster_status_reports_unreachable_agents_and_strict_fails() {
        let (r, out) = run_offline(&[
            "cluster",
            "status",
            "--agents",
            "unix:/nonexistent/a,unix:/nonexistent/b",
        ])
        .await;
        r.unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("unix:/nonexistent/a  no"), "{out}");
        let (r, out) = run_offline(&[
            "-o",
            "json",
            "cluster",
            "status",
            "--agents",
            "unix:/nonexistent/a",
            "--strict",
        ])
        .await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 1);
        assert_eq!(
            line,
            "fan-client: 1 of 1 agents not healthy (1 unreachable) (CLUSTER_NOT_HEALTHY)"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["reachable"], serde_json::json!(false));
    }

    #[tokio::test]
    async fn tls_options_need_https_and_readable_files() {
        let (r, _) = run_offline(&["--tls-ca", "/etc/hostname", "info"]).await;
        let (code, line) = error::report(&r.unwrap_err());
        assert_eq!(code, 2);
        assert!(line.contains("need an https:// agent"), "{line}");
        let c = cli(&[
            "--agent",
            "https://127.0.0.1:1",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "info",
        ]);
        let err = run(c, &mut Vec::new()).await.unwrap_err();
        let (code, line) = error::report(&err);
        assert_eq!(code, 2);
        assert!(line.ends_with("(TLS_FILE_UNREADABLE)"), "{line}");
    }

    #[tokio::test]
    async fn completions_need_no_agent() {
        for shell in ["bash", "zsh", "fish"] {
            let (r, out) = run_offline(&["completions", shell]).await;
            r.unwrap();
            assert!(out.contains("fan-client"), "{shell}");
            assert!(out.contains("allocate"), "{shell}");
        }
    }
}
