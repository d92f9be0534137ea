//! Reading and writing `net.ipv4` sysctls under /proc/sys/net/ipv4.
//!
//! Plain blocking `std::fs` on purpose: these are tiny procfs files, and
//! /proc/sys/net resolves to the network namespace of the *calling thread*.
//! Moving the I/O to a blocking pool thread (tokio::fs) would read another
//! namespace's values whenever a thread has entered a namespace with setns.
//!
//! Keys are given as path components (`&["conf", "eth0.100", "rp_filter"]`)
//! because device names may contain dots; errors name the key the way
//! sysctl(8) does (`net.ipv4.conf.eth0/100.rp_filter`).

use std::path::PathBuf;

use tracing::info;

use crate::{DataplaneError, Result};

/// The directory holding the IPv4 sysctls.
pub const IPV4_ROOT: &str = "/proc/sys/net/ipv4";

/// `rp_filter` value for loose reverse-path filtering (RFC 3704 loose mode).
pub const RP_FILTER_LOOSE: u32 = 2;
/// `rp_filter` value for strict reverse-path filtering: drops decapsulated packets.
pub const RP_FILTER_STRICT: u32 = 1;

/// The sysctl(8) name of an IPv4 key: dots inside a component become '/'.
pub fn key_name(components: &[&str]) -> String {
    let mut name = String::from("net.ipv4");
    for c in components {
        name.push('.');
        name.push_str(&c.replace('.', "/"));
    }
    name
}

fn key_path(components: &[&str]) -> PathBuf {
    let mut path = PathBuf::from(IPV4_ROOT);
    for c in components {
        path.push(c);
    }
    path
}

fn check_components(components: &[&str]) -> Result<()> {
    // A device name is a path component here; never let one escape the tree.
    if components.is_empty()
        || components
            .iter()
            .any(|c| c.is_empty() || c.contains('/') || *c == "." || *c == "..")
    {
        return Err(DataplaneError::other(
            format!("sysctl {}", key_name(components)),
            "invalid key",
        ));
    }
    Ok(())
}

/// Reads an IPv4 sysctl as a trimmed string.
pub fn read(components: &[&str]) -> Result<String> {
    check_components(components)?;
    std::fs::read_to_string(key_path(components))
        .map(|s| s.trim().to_string())
        .map_err(|e| DataplaneError::other(format!("read sysctl {}", key_name(components)), e))
}

/// Reads an IPv4 sysctl holding one unsigned integer.
pub fn read_u32(components: &[&str]) -> Result<u32> {
    let raw = read(components)?;
    raw.parse().map_err(|_| {
        DataplaneError::other(
            format!("read sysctl {}", key_name(components)),
            format!("not a number: {raw:?}"),
        )
    })
}

/// Writes an IPv4 sysctl unconditionally.
pub fn write(components: &[&str], value: &str) -> Result<()> {
    check_components(components)?;
    std::fs::write(key_path(components), value).map_err(|e| {
        DataplaneError::other(format!("write sysctl {}={value}", key_name(components)), e)
    })
}

/// Sets an integer IPv4 sysctl; writes (and logs) only when it differs.
/// Returns true when it was changed.
pub fn ensure_u32(components: &[&str], value: u32) -> Result<bool> {
    let current = read_u32(components)?;
    if current == value {
        return Ok(false);
    }
    write(components, &value.to_string())?;
    info!(key = %key_name(components), from = current, to = value, "set sysctl");
    Ok(true)
}

/// `net.ipv4.ip_forward`.
pub fn ip_forward() -> Result<bool> {
    Ok(read_u32(&["ip_forward"])? != 0)
}

/// Turns `net.ipv4.ip_forward` on or off.
pub fn set_ip_forward(on: bool) -> Result<bool> {
    ensure_u32(&["ip_forward"], u32::from(on))
}

/// `net.ipv4.conf.<dev>.rp_filter` (0 off, 1 strict, 2 loose).
pub fn rp_filter(dev: &str) -> Result<u32> {
    read_u32(&["conf", dev, "rp_filter"])
}

/// Sets `net.ipv4.conf.<dev>.rp_filter`.
pub fn set_rp_filter(dev: &str, value: u32) -> Result<bool> {
    ensure_u32(&["conf", dev, "rp_filter"], value)
}

/// `net.ipv4.conf.<dev>.send_redirects`.
pub fn send_redirects(dev: &str) -> Result<bool> {
    Ok(read_u32(&["conf", dev, "send_redirects"])? != 0)
}

/// Sets `net.ipv4.conf.<dev>.send_redirects`.
pub fn set_send_redirects(dev: &str, on: bool) -> Result<bool> {
    ensure_u32(&["conf", dev, "send_redirects"], u32::from(on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_sysctl() {
        assert_eq!(
            key_name(&["conf", "eth0.100", "rp_filter"]),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(key_name(&["ip_forward"]), "net.ipv4.ip_forward");
    }

    #[test]
    fn escaping_keys_are_refused() {
        assert!(read(&["conf", "..", "x"]).is_err());
        assert!(read(&["conf", "a/b", "rp_filter"]).is_err());
        let err = read(&["conf", "fhb-no-such-dev", "rp_filter"]).unwrap_err();
        assert!(err
            .to_string()
            .contains("net.ipv4.conf.fhb-no-such-dev.rp_filter"));
    }
}
