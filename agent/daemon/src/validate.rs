//! Request validation that needs no host state: every rule names its field.
//! Host-dependent checks (underlay resolution, MTU bound) live in `agent`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use fan_core::names;
use fan_core::underlay::UnderlaySpec;

use crate::error::{AgentError, Result, Violation};
use crate::model::{BackendChoice, NetworkSpec, Owner, DEFAULT_INTERFACE};

/// Smallest MTU accepted for a fan network (RFC 791 minimum datagram all hosts accept).
pub const MIN_MTU: u32 = 576;
/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most owners one garbage-collection request may name.
pub const MAX_VALID_OWNERS: usize = 100_000;

/// A create request's spec as received, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecInput {
    /// Overlay CIDR (or a bare first octet).
    pub overlay: String,
    /// Underlay spec.
    pub underlay: String,
    /// Host reserve; None means 1.
    pub host_reserve: Option<u32>,
    /// Bridge name; empty means the default.
    pub bridge: String,
    /// MTU; 0 means underlay MTU − 20.
    pub mtu: u32,
    /// Backend; None means auto.
    pub backend: Option<BackendChoice>,
    /// Masquerade; None means true.
    pub masquerade: Option<bool>,
    /// Anti-spoofing; None means true.
    pub anti_spoofing: Option<bool>,
    /// Accept an overlay overlapping the host's addresses or routes.
    pub allow_overlap: bool,
    /// Serve DHCP on the bridge.
    pub dhcp: bool,
    /// DNS servers for DHCP clients, as given.
    pub dhcp_dns: Vec<String>,
    /// DHCP lease seconds; 0 means the default.
    pub dhcp_lease_seconds: u32,
    /// Network labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The DHCP lease time when none is given.
pub const DEFAULT_DHCP_LEASE_SECONDS: u32 = 3600;
/// Shortest DHCP lease time accepted.
pub const MIN_DHCP_LEASE_SECONDS: u32 = 10;
/// Longest DHCP lease time accepted (a week).
pub const MAX_DHCP_LEASE_SECONDS: u32 = 604_800;
/// Most DNS servers a network hands to DHCP clients.
pub const MAX_DHCP_DNS: usize = 8;

/// Checks the DHCP options of a spec: (dns servers, normalized lease
/// seconds). Shared by CreateNetwork and UpdateNetwork (which passes the
/// values the spec would have after the update).
pub fn dhcp_options(
    checks: &mut Checks,
    dhcp: bool,
    dhcp_dns: &[String],
    dhcp_lease_seconds: u32,
) -> (Vec<Ipv4Addr>, u32) {
    if !dhcp {
        if !dhcp_dns.is_empty() {
            checks.check::<()>(Err(AgentError::invalid(
                "spec.dhcp_dns",
                "is only allowed with spec.dhcp set",
            )));
        }
        if dhcp_lease_seconds != 0 {
            checks.check::<()>(Err(AgentError::invalid(
                "spec.dhcp_lease_seconds",
                "is only allowed with spec.dhcp set",
            )));
        }
        return (Vec::new(), 0);
    }
    if dhcp_dns.len() > MAX_DHCP_DNS {
        checks.check::<()>(Err(AgentError::invalid(
            "spec.dhcp_dns",
            format!("at most {MAX_DHCP_DNS} servers, got {}", dhcp_dns.len()),
        )));
    }
    let mut dns = Vec::new();
    for (i, text) in dhcp_dns.iter().enumerate() {
        match text.parse::<Ipv4Addr>() {
            Ok(a) => dns.push(a),
            Err(_) => {
                checks.check::<()>(Err(AgentError::invalid(
                    format!("spec.dhcp_dns[{i}]"),
                    format!("{text:?} is not an IPv4 address"),
                )));
            }
        }
    }
    let lease = match dhcp_lease_seconds {
        0 => DEFAULT_DHCP_LEASE_SECONDS,
        s if (MIN_DHCP_LEASE_SECONDS..=MAX_DHCP_LEASE_SECONDS).contains(&s) => s,
        s => {
            checks.check::<()>(Err(AgentError::invalid(
                "spec.dhcp_lease_seconds",
                format!(
                    "must be 0 ({DEFAULT_DHCP_LEASE_SECONDS}) or between \
                     {MIN_DHCP_LEASE_SECONDS} and {MAX_DHCP_LEASE_SECONDS}, got {s}"
                ),
            )));
            0
        }
    };
    (dns, lease)
}

/// Collects the violations of every field of a request, so one answer lists
/// them all (`google.rpc.BadRequest`) instead of only the first.
#[derive(Debug, Default)]
pub struct Checks {
    violations: Vec<Violation>,
    other: Option<AgentError>,
}

impl Checks {
    /// No violations yet.
    pub fn new() -> Self {
        Checks::default()
    }

    /// The value of `result`, or None after recording its violations (or,
    /// for an error that is not a violation, keeping the first such error).
    pub fn check<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(AgentError::InvalidArgument { violations }) => {
                self.violations.extend(violations);
                None
            }
            Err(other) => {
                self.other.get_or_insert(other);
                None
            }
        }
    }

    /// Whether nothing failed so far.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.other.is_none()
    }

    /// Ok when every check passed, else every violation (a non-violation error first).
    pub fn finish(self) -> Result<()> {
        if let Some(other) = self.other {
            return Err(other);
        }
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(AgentError::InvalidArgument {
                violations: self.violations,
            })
        }
    }

    /// `value` when every check passed, else [`Checks::finish`]'s error.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T> {
        match (self.is_ok(), value) {
            (true, Some(value)) => Ok(value),
            (_, value) => {
                self.finish()?;
                // Unreachable in practice: a None value always comes with a
                // recorded failure. Say so instead of panicking.
                value.ok_or_else(|| AgentError::invalid("request", "is invalid"))
            }
        }
    }
}

/// Checks a network id.
pub fn network_id(field: &str, id: &str) -> Result<()> {
    names::validate_network_id(id).map_err(|e| AgentError::invalid(field, e))
}

/// Validates a spec and fills in defaults; also returns the parsed underlay.
/// Every invalid field is reported, not only the first.
pub fn spec(input: &SpecInput) -> Result<(NetworkSpec, UnderlaySpec)> {
    let mut checks = Checks::new();
    let overlay = checks.check(if input.overlay.is_empty() {
        Err(AgentError::invalid(
            "spec.overlay",
            "is required (e.g. 250.0.0.0/8)",
        ))
    } else {
        fan_core::fan::parse_overlay(&input.overlay)
            .map_err(|e| AgentError::invalid("spec.overlay", e))
    });
    let underlay = checks.check(if input.underlay.is_empty() {
        Err(AgentError::invalid(
            "spec.underlay",
            "is required (e.g. 172.30.0.0/16)",
        ))
    } else {
        UnderlaySpec::parse(&input.underlay).map_err(|e| AgentError::invalid("spec.underlay", e))
    });
    if !input.bridge.is_empty() {
        checks.check(
            names::validate_device_name(&input.bridge)
                .map_err(|e| AgentError::invalid("spec.bridge", e)),
        );
    }
    if input.mtu != 0 && !(MIN_MTU..=65535).contains(&input.mtu) {
        checks.check::<()>(Err(AgentError::invalid(
            "spec.mtu",
            format!(
                "must be 0 (underlay MTU − 20) or between {MIN_MTU} and 65535, got {}",
                input.mtu
            ),
        )));
    }
    let (dhcp_dns, dhcp_lease_seconds) = dhcp_options(
        &mut checks,
        input.dhcp,
        &input.dhcp_dns,
        input.dhcp_lease_seconds,
    );
    checks.check(labels("spec.labels", &input.labels));
    let (overlay, underlay) = checks.finish_with(overlay.zip(underlay))?;
    let bridge = if input.bridge.is_empty() {
        names::default_bridge_name(overlay)
    } else {
        input.bridge.clone()
    };
    let spec = NetworkSpec {
        overlay,
        underlay: underlay.to_string(),
        host_reserve: input.host_reserve.unwrap_or(1),
        bridge,
        mtu: input.mtu,
        backend: input.backend.unwrap_or(BackendChoice::Auto),
        masquerade: input.masquerade.unwrap_or(true),
        anti_spoofing: input.anti_spoofing.unwrap_or(true),
        allow_overlap: input.allow_overlap,
        dhcp: input.dhcp,
        dhcp_dns,
        dhcp_lease_seconds,
        labels: input.labels.clone(),
    };
    Ok((spec, underlay))
}

/// Validates an owner; an empty interface means "eth0". Both fields are checked.
pub fn owner(field: &str, container_id: &str, interface: &str) -> Result<Owner> {
    let mut checks = Checks::new();
    checks.check(if container_id.is_empty() {
        Err(AgentError::invalid(
            format!("{field}.container_id"),
            "is required",
        ))
    } else {
        names::validate_container_id(container_id)
            .map_err(|e| AgentError::invalid(format!("{field}.container_id"), e))
    });
    let interface = if interface.is_empty() {
        DEFAULT_INTERFACE
    } else {
        interface
    };
    checks.check(
        names::validate_device_name(interface)
            .map_err(|e| AgentError::invalid(format!("{field}.interface"), e)),
    );
    checks.finish()?;
    Ok(Owner {
        container_id: container_id.to_owned(),
        interface: interface.to_owned(),
    })
}

/// Parses a dotted-quad IPv4 address.
pub fn address(field: &str, text: &str) -> Result<Ipv4Addr> {
    text.parse().map_err(|_| {
        AgentError::invalid(
            field,
            format!("must be an IPv4 address like 250.0.28.5, got {text:?}"),
        )
    })
}

/// Checks allocation labels; every bad label is reported.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > names::MAX_LABELS {
        return Err(AgentError::invalid(
            field,
            format!("at most {} labels, got {}", names::MAX_LABELS, labels.len()),
        ));
    }
    let mut checks = Checks::new();
    for (key, value) in labels {
        checks.check(
            names::validate_label(key, value)
                .map_err(|e| AgentError::invalid(format!("{field}[{key:?}]"), e)),
        );
    }
    checks.finish()
}

/// Resolves a page size: 0 means the default; above the maximum is refused.
pub fn page_size(field: &str, size: u32) -> Result<usize> {
    match size {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        n => Err(AgentError::invalid(
            field,
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
    }
}

/// Parses a label selector "k=v,k2=v2" (empty: no constraint) into the
/// labels an item must all carry.
pub fn label_selector(field: &str, text: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    if text.is_empty() {
        return Ok(labels);
    }
    for (i, term) in text.split(',').enumerate() {
        let Some((key, value)) = term.split_once('=') else {
            return Err(AgentError::invalid(
                field,
                format!("term {} ({term:?}) must be key=value", i + 1),
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.len() > 63 {
            return Err(AgentError::invalid(
                field,
                format!(
                    "term {} ({term:?}): the key must be 1 to 63 characters",
                    i + 1
                ),
            ));
        }
        labels.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}
