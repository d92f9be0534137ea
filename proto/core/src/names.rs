//! Names: network ids, Linux device names, bridge naming conventions, labels, container ids.

use ipnetwork::Ipv4Network;
use thiserror::Error;

/// Longest Linux device name (IFNAMSIZ 16 minus the NUL).
pub const MAX_DEVICE_NAME_LEN: usize = 15;
/// Longest network id (a DNS label, so it can appear in host names).
pub const MAX_NETWORK_ID_LEN: usize = 63;
/// Most labels one object may carry.
pub const MAX_LABELS: usize = 32;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Longest container id.
pub const MAX_CONTAINER_ID_LEN: usize = 256;

/// A name that breaks a naming rule. Messages name the kind of name, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of name ("network id", "device name", ...).
        what: &'static str,
    },
    /// The name is too long.
    #[error("{what} {value:?} is {len} {unit} long; the limit is {max}")]
    TooLong {
        /// Which kind of name.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
        /// "bytes" or "characters".
        unit: &'static str,
    },
    /// The name contains a character outside the allowed set.
    #[error("{what} {value:?} contains {ch:?}; allowed characters are {allowed}")]
    InvalidChar {
        /// Which kind of name.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The first disallowed character.
        ch: char,
        /// The allowed set, in words.
        allowed: &'static str,
    },
    /// The name breaks a structural rule (first/last character, reserved names).
    #[error("{what} {value:?} {rule}")]
    Rule {
        /// Which kind of name.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The rule, phrased to follow the value ("must start with a letter").
        rule: &'static str,
    },
    /// Too many labels.
    #[error("{count} labels given; the limit is {max}")]
    TooManyLabels {
        /// How many were given.
        count: usize,
        /// The limit ([`MAX_LABELS`]).
        max: usize,
    },
}

fn check_len(
    what: &'static str,
    value: &str,
    len: usize,
    max: usize,
    unit: &'static str,
) -> Result<(), NameError> {
    if len == 0 {
        return Err(NameError::Empty { what });
    }
    if len > max {
        return Err(NameError::TooLong {
            what,
            value: value.to_string(),
            len,
            max,
            unit,
        });
    }
    Ok(())
}

fn check_chars(
    what: &'static str,
    value: &str,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    match value.chars().find(|c| !ok(*c)) {
        Some(ch) => Err(NameError::InvalidChar {
            what,
            value: value.to_string(),
            ch,
            allowed,
        }),
        None => Ok(()),
    }
}

/// A network id: 1..=63 chars of `[a-z0-9-]`, starting with a letter, not ending with '-'
/// (a DNS label, so ids are safe in host names, file names and device-name hints).
pub fn validate_network_id(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "network id";
    check_len(WHAT, s, s.len(), MAX_NETWORK_ID_LEN, "bytes")?;
    check_chars(WHAT, s, "a-z, 0-9 and '-'", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NameError::Rule {
            what: WHAT,
            value: s.to_string(),
            rule: "must start with a letter a-z",
        });
    }
    if s.ends_with('-') {
        return Err(NameError::Rule {
            what: WHAT,
            value: s.to_string(),
            rule: "must not end with '-'",
        });
    }
    Ok(())
}

/// A Linux device name: 1..=15 bytes (IFNAMSIZ), not "." or "..", and (stricter than the
/// kernel, which only forbids '/', ':', whitespace and NUL) only `[A-Za-z0-9_.-]`.
pub fn validate_device_name(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "device name";
    check_len(WHAT, s, s.len(), MAX_DEVICE_NAME_LEN, "bytes")?;
    check_chars(WHAT, s, "A-Z, a-z, 0-9, '_', '.' and '-'", |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    })?;
    if s == "." || s == ".." {
        return Err(NameError::Rule {
            what: WHAT,
            value: s.to_string(),
            rule: "is reserved (\".\" and \"..\" are not device names)",
        });
    }
    Ok(())
}

/// Bridge name in fanctl 0.12 style: "fan-" plus the overlay octets its prefix covers,
/// rounding up (`fan-250` for /8, `fan-10-20` for /16, `fan-10-20-30` for /24). If that
/// would exceed 15 bytes, "fan-" plus the overlay address as 8 hex digits.
///
/// Distinct non-overlapping overlays always get distinct names.
pub fn default_bridge_name(overlay: Ipv4Network) -> String {
    let addr = overlay.network();
    let octets = usize::from(overlay.prefix().div_ceil(8)).max(1);
    let parts: Vec<String> = addr.octets()[..octets]
        .iter()
        .map(|o| o.to_string())
        .collect();
    let name = format!("fan-{}", parts.join("-"));
    if name.len() <= MAX_DEVICE_NAME_LEN {
        name
    } else {
        format!("fan-{:08x}", u32::from(addr))
    }
}

/// Bridge name in fanctl 0.3 style: "fan-" plus the first three octets of the slice
/// (`fan-250-0-28` for 250.0.28.0/24). At most 15 bytes ("fan-255-255-255").
pub fn legacy_bridge_name(slice: Ipv4Network) -> String {
    let [a, b, c, _] = slice.network().octets();
    format!("fan-{a}-{b}-{c}")
}

/// A label: key 1..=63 chars of `[A-Za-z0-9._/-]`, value at most 256 characters with no
/// control characters.
pub fn validate_label(key: &str, value: &str) -> Result<(), NameError> {
    check_len("label key", key, key.len(), MAX_LABEL_KEY_LEN, "bytes")?;
    check_chars(
        "label key",
        key,
        "A-Z, a-z, 0-9, '.', '_', '/' and '-'",
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'),
    )?;
    let len = value.chars().count();
    if len > MAX_LABEL_VALUE_LEN {
        return Err(NameError::TooLong {
            what: "label value",
            value: value.to_string(),
            len,
            max: MAX_LABEL_VALUE_LEN,
            unit: "characters",
        });
    }
    check_chars(
        "label value",
        value,
        "any character except control characters",
        |c| !c.is_control(),
    )
}

/// A whole label set: at most [`MAX_LABELS`] entries, each valid per [`validate_label`].
pub fn validate_labels<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), NameError> {
    let mut count = 0;
    for (k, v) in labels {
        validate_label(k, v)?;
        count += 1;
    }
    if count > MAX_LABELS {
        return Err(NameError::TooManyLabels {
            count,
            max: MAX_LABELS,
        });
    }
    Ok(())
}

/// A container id: 1..=256 printable ASCII characters, no whitespace.
pub fn validate_container_id(s: &str) -> Result<(), NameError> {
    const WHAT: &str = "container id";
    check_len(WHAT, s, s.len(), MAX_CONTAINER_ID_LEN, "bytes")?;
    check_chars(WHAT, s, "printable ASCII without whitespace", |c| {
        c.is_ascii_graphic()
    })
}
