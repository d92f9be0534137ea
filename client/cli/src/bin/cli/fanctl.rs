//! fanctl compatibility: `up`, `down`, `show`, on top of the agent's
//! networks.
//!
//! Naming rule: `up` names the network after its overlay exactly as fanctl
//! 0.12 names the bridge ([`fan_core::names::default_bridge_name`]):
//! 250.0.0.0/8 → `fan-250`, 10.20.0.0/16 → `fan-10-20`. fanctl allows one
//! fan per overlay on a host, so the name is unique, and running the same
//! `up` twice is a no-op (CreateNetwork is idempotent). `--bridge` only sets
//! the bridge device, never the network id.
//!
//! `down -o/-u` finds the network by overlay and underlay, never by name, so
//! it also finds networks made with `network create`.

use std::path::{Path, PathBuf};

use fan_client::{Network, NetworkSpec};
use fan_core::{FanConfigEntry, Ipv4Network, UnderlaySpec};
use serde::Serialize;
use serde_json::Value;

use super::error::UsageError;
use super::output::{to_json, Render};
use super::table::Table;

/// One fan to bring up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpPlan {
    /// The network id, from the overlay.
    pub network_id: String,
    /// The spec to create.
    pub spec: NetworkSpec,
    /// The config line it comes from (`up -a`).
    pub line: Option<usize>,
}

/// The network id `up` uses for an overlay (`fan-250`).
pub fn network_id_for(overlay: Ipv4Network) -> String {
    fan_core::names::default_bridge_name(overlay)
}

/// The plan of `up -o OVERLAY -u UNDERLAY [--host-reserve N] [--bridge NAME] [--dhcp]`.
pub fn plan_up(
    overlay: Ipv4Network,
    underlay: &UnderlaySpec,
    host_reserve: Option<u32>,
    bridge: Option<String>,
    dhcp: bool,
) -> UpPlan {
    UpPlan {
        network_id: network_id_for(overlay),
        spec: NetworkSpec {
            host_reserve,
            bridge,
            dhcp,
            ..NetworkSpec::new(overlay.to_string(), underlay.to_string())
        },
        line: None,
    }
}

/// fanctl's positional form (`up 250.0.0.0/8 eth0/16 dhcp host-reserve 1`):
/// the words are one `/etc/network/fan` line, parsed by the same grammar.
pub fn parse_positional(words: &[String]) -> Result<FanConfigEntry, UsageError> {
    let line = words.join(" ");
    let mut entries = fan_core::parse_fan_config(&line)
        .map_err(|e| UsageError::new(format!("{line:?}: {}", e.message), "USAGE"))?;
    match entries.pop() {
        Some(entry) if entries.is_empty() => Ok(entry),
        _ => Err(UsageError::new(
            "expected OVERLAY UNDERLAY [FLAGS]".to_owned(),
            "USAGE",
        )),
    }
}

/// Reads a `/etc/network/fan` file; an unreadable or invalid file is a
/// usage error.
pub fn read_config(path: &Path) -> Result<Vec<FanConfigEntry>, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError::new(
            format!("cannot read {}: {e}", path.display()),
            "CONFIG_UNREADABLE",
        )
    })?;
    fan_core::parse_fan_config(&text)
        .map_err(|e| UsageError::new(format!("{}: {e}", path.display()), "CONFIG_INVALID"))
}

/// The config path of `-a` (default `/etc/network/fan`).
pub fn config_path(config: &Option<PathBuf>) -> PathBuf {
    config
        .clone()
        .unwrap_or_else(|| PathBuf::from(super::args::DEFAULT_FAN_CONFIG))
}

/// The entries `-a` acts on: every line not flagged `off`. `auto` is
/// accepted and changes nothing (every non-off line is brought up, as
/// fanctl does).
pub fn active(entries: &[FanConfigEntry]) -> impl Iterator<Item = &FanConfigEntry> {
    entries.iter().filter(|e| !e.off)
}

/// The plans of `up -a`: every line not flagged `off`, `dhcp` included.
pub fn plan_up_all(entries: &[FanConfigEntry]) -> Vec<UpPlan> {
    active(entries)
        .map(|e| UpPlan {
            line: Some(e.line),
            ..plan_up(
                e.overlay,
                &e.underlay,
                e.host_reserve,
                e.bridge.clone(),
                e.dhcp,
            )
        })
        .collect()
}

/// Whether `n` is the fan (`overlay`, `underlay`).
///
/// The overlays must be equal. The underlays match when their canonical
/// forms are equal (`172.30.0.28` = `172.30.0.28/16`), or when the agent
/// resolved the network's underlay to an address that the given underlay
/// names: the same address, an address inside the given network, or the
/// address of the given interface, with the same prefix.
pub fn matches(n: &Network, overlay: Ipv4Network, underlay: &UnderlaySpec) -> bool {
    match fan_core::parse_overlay(&n.spec.overlay) {
        Ok(o) if o == overlay => {}
        _ => return false,
    }
    let Ok(spec) = UnderlaySpec::parse(&n.spec.underlay) else {
        return false;
    };
    if spec == *underlay {
        return true;
    }
    if spec.prefix() != underlay.prefix() {
        return false;
    }
    let Some(actual) = n.status.underlay_address else {
        return false;
    };
    match underlay {
        UnderlaySpec::Cidr { address, prefix } => {
            let given = Ipv4Network::new(*address, *prefix).ok();
            *address == actual
                || given.is_some_and(|g| g.network() == *address && g.contains(actual))
        }
        UnderlaySpec::Interface { name, .. } => *name == n.status.underlay_interface,
        UnderlaySpec::DefaultRoute { .. } => false,
    }
}

/// The networks among `all` that are the fan (`overlay`, `underlay`).
pub fn find<'a>(
    all: &'a [Network],
    overlay: Ipv4Network,
    underlay: &UnderlaySpec,
) -> Vec<&'a Network> {
    all.iter()
        .filter(|n| matches(n, overlay, underlay))
        .collect()
}

/// Why `down -o/-u` found nothing, with a hint when the overlay alone
/// matches.
pub fn not_found_message(all: &[Network], overlay: Ipv4Network, underlay: &UnderlaySpec) -> String {
    let same_overlay: Vec<String> = all
        .iter()
        .filter(|n| fan_core::parse_overlay(&n.spec.overlay).ok() == Some(overlay))
        .map(|n| format!("{} (underlay {})", n.id, n.spec.underlay))
        .collect();
    let mut msg = format!("no fan with overlay {overlay} and underlay {underlay} is up");
    if !same_overlay.is_empty() {
        msg.push_str(&format!("; with that overlay: {}", same_overlay.join(", ")));
    }
    msg
}

/// One row of `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShowRow {
    /// The bridge device.
    pub bridge: String,
    /// The local underlay address with the underlay prefix
    /// (`172.30.0.28/16`), or the spec when not resolved.
    pub underlay: String,
    /// The overlay, CIDR.
    pub overlay: String,
    /// fanctl's flags (`host-reserve 1`).
    pub flags: Vec<String>,
    /// The network id.
    pub network: String,
}

/// The `show` row of a network.
pub fn show_row(n: &Network) -> ShowRow {
    let prefix = UnderlaySpec::parse(&n.spec.underlay)
        .ok()
        .map(|s| s.prefix());
    let underlay = match (n.status.underlay_address, prefix) {
        (Some(a), Some(p)) => format!("{a}/{p}"),
        _ => n.spec.underlay.clone(),
    };
    let bridge = if !n.status.bridge.is_empty() {
        n.status.bridge.clone()
    } else if let Some(b) = &n.spec.bridge {
        b.clone()
    } else {
        fan_core::parse_overlay(&n.spec.overlay)
            .map(network_id_for)
            .unwrap_or_default()
    };
    let overlay = fan_core::parse_overlay(&n.spec.overlay)
        .map(|o| o.to_string())
        .unwrap_or_else(|_| n.spec.overlay.clone());
    let mut flags = Vec::new();
    if n.spec.dhcp {
        flags.push("dhcp".to_owned());
    }
    flags.push(format!("host-reserve {}", n.spec.host_reserve.unwrap_or(1)));
    ShowRow {
        bridge,
        underlay,
        overlay,
        flags,
        network: n.id.clone(),
    }
}

/// `show`: fanctl's table.
pub struct Show(pub Vec<ShowRow>);

impl Render for Show {
    fn table(&self) -> String {
        let mut t = Table::new(["Bridge", "Underlay", "Overlay", "Flags"]);
        for r in &self.0 {
            t.row([
                r.bridge.clone(),
                r.underlay.clone(),
                r.overlay.clone(),
                r.flags.join(" "),
            ]);
        }
        t.render()
    }

    fn json(&self) -> Value {
        to_json(&self.0)
    }
}

/// One fan brought up or down.
#[derive(Debug, Clone, Serialize)]
pub struct FanChange {
    /// The network id.
    pub network: String,
    /// The overlay, CIDR.
    pub overlay: String,
    /// The underlay as given.
    pub underlay: String,
    /// `up`: the network is up (created or already there). `down`: the
    /// network was deleted (false when it was not up).
    pub changed: bool,
    /// The config line, for `-a`.
    pub line: Option<usize>,
}

/// `up` / `down` results.
pub struct Changes {
    /// "up" or "down".
    pub verb: &'static str,
    /// One entry per fan.
    pub changes: Vec<FanChange>,
}

impl Render for Changes {
    fn table(&self) -> String {
        let mut out = String::new();
        for c in &self.changes {
            let what = match (self.verb, c.changed) {
                ("up", _) => "up",
                (_, true) => "down",
                (_, false) => "was not up",
            };
            out.push_str(&format!(
                "{}: {} {} {}\n",
                c.network, c.overlay, c.underlay, what
            ));
        }
        out
    }

    fn json(&self) -> Value {
        to_json(&self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_client::{NetworkState, NetworkStatus};
    use std::net::Ipv4Addr;

    fn net(id: &str, overlay: &str, underlay: &str, addr: Option<[u8; 4]>, iface: &str) -> Network {
        Network {
            id: id.into(),
            name: format!("networks/{id}"),
            spec: NetworkSpec {
                host_reserve: Some(1),
                ..NetworkSpec::new(overlay, underlay)
            },
            status: NetworkStatus {
                underlay_address: addr.map(Ipv4Addr::from),
                underlay_interface: iface.into(),
                slice: None,
                gateway: None,
                bridge: if addr.is_some() {
                    id.into()
                } else {
                    String::new()
                },
                mtu: 1480,
                backend: None,
                state: NetworkState::Ready,
                reason: String::new(),
                allocated: 0,
                capacity: 0,
                counters: None,
            },
            create_time: None,
        }
    }

    fn ov(s: &str) -> Ipv4Network {
        fan_core::parse_overlay(s).unwrap()
    }

    fn ul(s: &str) -> UnderlaySpec {
        UnderlaySpec::parse(s).unwrap()
    }

    #[test]
    fn up_names_network_after_overlay() {
        let p = plan_up(ov("250"), &ul("172.30.0.28"), Some(4), None, false);
        assert_eq!(p.network_id, "fan-250");
        assert_eq!(p.spec.overlay, "250.0.0.0/8");
        assert_eq!(p.spec.underlay, "172.30.0.28/16");
        assert_eq!(p.spec.host_reserve, Some(4));
        assert_eq!(p.spec.bridge, None);
        assert_eq!(network_id_for(ov("10.20.0.0/16")), "fan-10-20");
        let p = plan_up(
            ov("251.0.0.0/8"),
            &ul("eth0/16"),
            None,
            Some("br0".into()),
            true,
        );
        assert!(p.spec.dhcp);
        assert_eq!(p.network_id, "fan-251");
        assert_eq!(p.spec.bridge.as_deref(), Some("br0"));
        fan_core::names::validate_network_id(&p.network_id).unwrap();
    }

    #[test]
    fn up_all_skips_off_and_keeps_dhcp() {
        let text = "# lab\n250.0.0.0/8 172.30.0.0/16 host-reserve 2\n251 eth0/16 off\n252 eth0/16 auto bridge fanb\n";
        let entries = fan_core::parse_fan_config(text).unwrap();
        let plans = plan_up_all(&entries);
        let ids: Vec<_> = plans.iter().map(|p| p.network_id.as_str()).collect();
        assert_eq!(ids, ["fan-250", "fan-252"]);
        assert_eq!(plans[0].spec.host_reserve, Some(2));
        assert_eq!(plans[0].line, Some(2));
        assert_eq!(plans[1].spec.bridge.as_deref(), Some("fanb"));

        let entries = fan_core::parse_fan_config("250 eth0/16\n251 eth0/16 dhcp\n").unwrap();
        let plans = plan_up_all(&entries);
        assert!(!plans[0].spec.dhcp && plans[1].spec.dhcp);
        let entries = fan_core::parse_fan_config("251 eth0/16 dhcp off\n").unwrap();
        assert!(plan_up_all(&entries).is_empty());
    }

    #[test]
    fn positional_form_is_a_config_line() {
        let words: Vec<String> = ["250.0.0.0/8", "eth0/16", "dhcp", "host-reserve", "1"]
            .map(String::from)
            .to_vec();
        let e = parse_positional(&words).unwrap();
        assert_eq!(e.overlay.to_string(), "250.0.0.0/8");
        assert_eq!(e.underlay.to_string(), "eth0/16");
        assert!(e.dhcp);
        assert_eq!(e.host_reserve, Some(1));
        let err = parse_positional(&["250".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("missing underlay"), "{err}");
        let err = parse_positional(&["250".into(), "eth0/16".into(), "bogus".into()]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn config_errors_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = read_config(&missing).unwrap_err();
        assert_eq!(err.reason, "CONFIG_UNREADABLE");
        let bad = dir.path().join("fan");
        std::fs::write(&bad, "250 eth0/16 frobnicate\n").unwrap();
        let err = read_config(&bad).unwrap_err();
        assert_eq!(err.reason, "CONFIG_INVALID");
        assert!(err.message.contains("line 1"), "{}", err.message);
        assert_eq!(config_path(&None), PathBuf::from("/etc/network/fan"));
    }

    #[test]
    fn down_matches_overlay_and_underlay() {
        let n = net(
            "fan-250",
            "250.0.0.0/8",
            "172.30.0.28/16",
            Some([172, 30, 0, 28]),
            "eth0",
        );
        assert!(matches(&n, ov("250"), &ul("172.30.0.28/16")));
        assert!(matches(&n, ov("250"), &ul("172.30.0.28")));
        assert!(matches(&n, ov("250"), &ul("172.30.0.0/16")));
        assert!(matches(&n, ov("250"), &ul("eth0/16")));
        assert!(!matches(&n, ov("251"), &ul("172.30.0.28/16")));
        assert!(!matches(&n, ov("250"), &ul("172.30.0.29/16")));
        assert!(!matches(&n, ov("250"), &ul("172.30.0.28/24")));
        assert!(!matches(&n, ov("250"), &ul("eth1/16")));

        let by_iface = net(
            "fan-251",
            "251.0.0.0/8",
            "eth0/16",
            Some([172, 30, 0, 28]),
            "eth0",
        );
        assert!(matches(&by_iface, ov("251"), &ul("eth0/16")));
        assert!(matches(&by_iface, ov("251"), &ul("172.30.0.28/16")));
        let unresolved = net("fan-252", "252.0.0.0/8", "eth0/16", None, "");
        assert!(matches(&unresolved, ov("252"), &ul("eth0/16")));
        assert!(!matches(&unresolved, ov("252"), &ul("172.30.0.28/16")));

        let all = vec![n, by_iface, unresolved];
        assert_eq!(find(&all, ov("250"), &ul("172.30.0.28")).len(), 1);
        let msg = not_found_message(&all, ov("250"), &ul("10.0.0.1/16"));
        assert_eq!(
            msg,
            "no fan with overlay 250.0.0.0/8 and underlay 10.0.0.1/16 is up; with that overlay: fan-250 (underlay 172.30.0.28/16)"
        );
    }

    #[test]
    fn show_prints_fanctl_table() {
        let nets = [
            net(
                "fan-250",
                "250.0.0.0/8",
                "172.30.0.0/16",
                Some([172, 30, 0, 28]),
                "eth0",
            ),
            net("fan-251", "251.0.0.0/8", "eth0/16", None, ""),
        ];
        let show = Show(nets.iter().map(show_row).collect());
        assert_eq!(
            show.table(),
            "Bridge   Underlay        Overlay      Flags\n\
             fan-250  172.30.0.28/16  250.0.0.0/8  host-reserve 1\n\
             fan-251  eth0/16         251.0.0.0/8  host-reserve 1\n"
        );
        assert_eq!(
            show.json()[0],
            serde_json::json!({"bridge": "fan-250", "underlay": "172.30.0.28/16",
                "overlay": "250.0.0.0/8", "flags": ["host-reserve 1"], "network": "fan-250"})
        );
    }
}
