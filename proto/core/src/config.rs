//! The `/etc/network/fan` file format (FAN.md §3 item 8).
//!
//! One `overlay underlay [flags]` line per fan; `#` starts a comment anywhere on a line;
//! blank lines are skipped. Flags: `dhcp`, `off`, `auto`, `bridge NAME`, `host-reserve N`.
//!
//! ```text
//! # fan for the lab
//! 250.0.0.0/8 172.30.0.0/16 dhcp host-reserve 1
//! 251 eth0/16 bridge fan-251 auto
//! ```

use std::collections::HashMap;
use std::fmt;

use ipnetwork::Ipv4Network;

use crate::fan::{parse_overlay, MAX_SLICE_PREFIX};
use crate::ipam::max_host_reserve;
use crate::names::validate_device_name;
use crate::underlay::UnderlaySpec;

/// One fan line of `/etc/network/fan`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FanConfigEntry {
    /// 1-based line number in the file (0 for entries built in code).
    pub line: usize,
    /// The overlay network.
    pub overlay: Ipv4Network,
    /// The underlay as written.
    pub underlay: UnderlaySpec,
    /// `dhcp`: serve DHCP on the bridge.
    pub dhcp: bool,
    /// `off`: keep the line but do not bring the fan up.
    pub off: bool,
    /// `auto`: bring up with `fanctl up -a`.
    pub auto: bool,
    /// `bridge NAME`: explicit bridge device name.
    pub bridge: Option<String>,
    /// `host-reserve N`: host addresses .1 .. .N reserved for the host (default 1).
    pub host_reserve: Option<u32>,
}

/// A syntax or rule error in `/etc/network/fan`, pointing at its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfigError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong, naming the offending value.
    pub message: String,
}

/// Parses the whole file; the first error stops parsing.
///
/// Besides syntax, each line is checked against the rules that need no host knowledge:
/// overlay rules, overlay/underlay prefixes, the bridge name, the host reserve against the
/// slice size; and no overlay may appear on two lines (one map per overlay).
pub fn parse_fan_config(text: &str) -> Result<Vec<FanConfigEntry>, ConfigError> {
    let mut entries = Vec::new();
    let mut seen: HashMap<Ipv4Network, usize> = HashMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("");
        if content.trim().is_empty() {
            continue;
        }
        let entry = parse_line(line, content).map_err(|message| ConfigError { line, message })?;
        if let Some(first) = seen.insert(entry.overlay, line) {
            return Err(ConfigError {
                line,
                message: format!(
                    "overlay {} is already configured on line {first}; one fan per overlay",
                    entry.overlay
                ),
            });
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_line(line: usize, content: &str) -> Result<FanConfigEntry, String> {
    let mut tokens = content.split_whitespace();
    let overlay_text = tokens.next().ok_or("empty line")?;
    let overlay = parse_overlay(overlay_text).map_err(|e| format!("overlay: {e}"))?;
    let underlay_text = tokens
        .next()
        .ok_or_else(|| format!("missing underlay after overlay {overlay_text:?}"))?;
    let underlay = UnderlaySpec::parse(underlay_text).map_err(|e| e.to_string())?;
    // The prefix rules need only the prefixes, so they can be checked before resolution.
    let (o, u) = (overlay.prefix(), underlay.prefix());
    if o >= u {
        return Err(format!(
            "overlay {overlay} with underlay {underlay}: overlay prefix /{o} must be less than \
             underlay prefix /{u}"
        ));
    }
    if o + (32 - u) > MAX_SLICE_PREFIX {
        return Err(format!(
            "overlay {overlay} with underlay {underlay} gives /{} slices; slices must be \
             /{MAX_SLICE_PREFIX} or larger (overlay prefix + 32 - underlay prefix <= \
             {MAX_SLICE_PREFIX})",
            o + (32 - u)
        ));
    }

    let mut entry = FanConfigEntry {
        line,
        overlay,
        underlay,
        dhcp: false,
        off: false,
        auto: false,
        bridge: None,
        host_reserve: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    while let Some(flag) = tokens.next() {
        if seen.contains(&flag) {
            return Err(format!("flag {flag:?} given twice"));
        }
        match flag {
            "dhcp" => entry.dhcp = true,
            "off" => entry.off = true,
            "auto" => entry.auto = true,
            "bridge" => {
                let name = tokens
                    .next()
                    .ok_or("flag \"bridge\" needs a device name argument")?;
                validate_device_name(name).map_err(|e| format!("flag \"bridge\": {e}"))?;
                entry.bridge = Some(name.to_string());
            }
            "host-reserve" => {
                let n = tokens
                    .next()
                    .ok_or("flag \"host-reserve\" needs a number argument")?;
                let v = n
                    .parse::<u32>()
                    .ok()
                    .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        format!("flag \"host-reserve\": {n:?} is not a non-negative integer")
                    })?;
                let slice_prefix = overlay.prefix() + (32 - entry.underlay.prefix());
                let max = max_host_reserve(slice_prefix);
                if v == 0 || v > max {
                    return Err(format!(
                        "flag \"host-reserve\": {v} must be between 1 (the gateway .1) and {max} \
                         for /{slice_prefix} slices (at least one address must stay assignable)"
                    ));
                }
                entry.host_reserve = Some(v);
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
        seen.push(flag);
    }
    Ok(entry)
}

impl FanConfigEntry {
    /// Canonical line: full overlay CIDR, canonical underlay, then flags in the fixed order
    /// `dhcp off auto bridge NAME host-reserve N`. Parsing it yields the same entry.
    pub fn to_line(&self) -> String {
        let mut s = format!("{} {}", self.overlay, self.underlay);
        if self.dhcp {
            s.push_str(" dhcp");
        }
        if self.off {
            s.push_str(" off");
        }
        if self.auto {
            s.push_str(" auto");
        }
        if let Some(b) = &self.bridge {
            s.push_str(" bridge ");
            s.push_str(b);
        }
        if let Some(n) = self.host_reserve {
            s.push_str(&format!(" host-reserve {n}"));
        }
        s
    }
}

impl fmt::Display for FanConfigEntry {
    /// Same as [`FanConfigEntry::to_line`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}
