//! A device's IPv4 GSO/GRO size limits (BIG TCP, Linux 6.3+), read and set
//! with one rtnetlink request each: the iproute2 of Debian 12 does not know
//! `gso_ipv4_max_size` / `gro_ipv4_max_size` (IFLA attributes 63 and 64).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Netns;

/// Every device's IPv4 GSO/GRO limit unless raised: 64 KB.
pub const LEGACY_GSO: u32 = 65_536;

/// `get NAME` prints the device's IPv4 GSO limit (exit 2: the kernel has
/// none); `set NAME SIZE` sets both limits and exits 0 only when the kernel
/// took them (an older kernel ignores the attributes).
const SCRIPT: &str = r#"
import socket, struct, sys
mode, name = sys.argv[1], sys.argv[2]
index = socket.if_nametoindex(name)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
def request(kind, attrs):
    body = struct.pack("BxHiII", 0, 0, index, 0, 0) + attrs
    s.send(struct.pack("IHHII", 16 + len(body), kind, 0x1 | 0x4, 1, 0) + body)
    return s.recv(65536)
def gso():
    reply = request(18, b"")
    off = 16 + 16
    while off + 4 <= len(reply):
        length, kind = struct.unpack("HH", reply[off:off + 4])
        if length < 4:
            break
        if kind & 0x3fff == 63:
            return struct.unpack("I", reply[off + 4:off + 8])[0]
        off += (length + 3) & ~3
    return None
if mode == "set":
    size = int(sys.argv[3])
    reply = request(16, b"".join(struct.pack("HHI", 8, t, size) for t in (63, 64)))
    if struct.unpack("i", reply[16:20])[0] != 0:
        sys.exit(1)
    sys.exit(0 if gso() == size else 2)
size = gso()
if size is None:
    sys.exit(2)
print(size)
"#;

/// Sets the IPv4 GSO and GRO limits of `device` in `ns`; false when the
/// kernel refuses them (above the driver's TSO limit) or does not have them.
pub fn set_ipv4_gso_gro(ns: &Netns, device: &str, size: u32) -> Result<bool> {
    let status = ns
        .command("python3")
        .args(["-c", SCRIPT, "set", device, &size.to_string()])
        .status()
        .context("python3")?;
    Ok(status.success())
}

/// The IPv4 GSO limit of `device` in `ns`; `None` on kernels without it.
pub fn ipv4_gso_max_size(ns: &Netns, device: &str) -> Result<Option<u32>> {
    read(ns.command("python3"), device)
}

/// The IPv4 GSO limit of `device` in the namespace open at `netns` (such
/// as `/proc/PID/ns/net` of a container's process).
pub fn ipv4_gso_max_size_at(netns: &str, device: &str) -> Result<Option<u32>> {
    let mut command = std::process::Command::new("nsenter");
    command.arg(format!("--net={netns}")).arg("python3");
    read(command, device)
}

/// Runs the script's `get` with `python3` (the command so far).
fn read(mut python3: std::process::Command, device: &str) -> Result<Option<u32>> {
    let out = python3
        .args(["-c", SCRIPT, "get", device])
        .output()
        .context("python3")?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(text.trim().parse().with_context(|| {
        format!("gso_ipv4_max_size of {device}: {text:?}")
    })?))
}

/// Waits (up to 30 s: the agent's endpoint resync runs every 10 s) until
/// `device` in `ns` has IPv4 GSO limit `size`.
pub async fn wait_for_ipv4_gso(ns: &Netns, device: &str, size: u32) -> Result<()> {
    wait_for(&format!("{device} in {}", ns.name), size, || {
        ipv4_gso_max_size(ns, device)
    })
    .await
}

/// [`wait_for_ipv4_gso`] for the namespace open at `netns`.
pub async fn wait_for_ipv4_gso_at(netns: &str, device: &str, size: u32) -> Result<()> {
    wait_for(&format!("{device} in {netns}"), size, || {
        ipv4_gso_max_size_at(netns, device)
    })
    .await
}

async fn wait_for(what: &str, size: u32, read: impl Fn() -> Result<Option<u32>>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = read()?;
        if now == Some(size) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: IPv4 GSO limit {now:?}, not {size}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether this kernel has IPv4 GSO limits at all (Linux 6.3+): read on
/// this process's loopback device.
pub fn big_tcp_supported() -> Result<bool> {
    let status = std::process::Command::new("python3")
        .args(["-c", SCRIPT, "get", "lo"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("python3")?;
    Ok(status.success())
}

/// Raises the IPv4 GSO/GRO limits of the host's side of the underlay: each
/// host's NIC (`eth0`) and the underlay bridge's (the switch's) ports. What
/// an administrator turning BIG TCP on does; the containers are the agent's
/// to follow. False when this kernel does not have the limits.
pub fn raise_underlay(bed: &crate::Testbed, size: u32) -> Result<bool> {
    for host in ["h28", "h27"] {
        let port = format!("{}{host}", bed.id);
        if !set_ipv4_gso_gro(&bed.host(host).netns, "eth0", size)?
            || !set_ipv4_gso_gro(&bed.underlay, &port, size)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// (bytes, packets) sent by `device` in `ns`.
pub fn tx(ns: &Netns, device: &str) -> Result<(u64, u64)> {
    let out = ns.exec("ip", &["-s", "-j", "link", "show", "dev", device])?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let tx = &links[0]["stats64"]["tx"];
    match (tx["bytes"].as_u64(), tx["packets"].as_u64()) {
        (Some(b), Some(p)) => Ok((b, p)),
        _ => bail!("no tx statistics for {device}: {links}"),
    }
}
