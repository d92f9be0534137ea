//! Hand-made IPv4 packets sent as written (sources included) through a raw
//! socket inside a namespace, and tcpdump captures on a namespace's device:
//! what the anti-spoofing tests need to forge traffic and to see what left.

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::Netns;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (DF, TTL 64) with `options` (a multiple of 4 bytes).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0, "IP options are 32-bit words");
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend(total.to_be_bytes());
    ip.extend([0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    ip.extend(options);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(payload);
    ip
}

/// An ICMP echo request from `src` to `dst`.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0xfa, 0x09, 0, 1];
    icmp.extend(std::iter::repeat_n(0xab, 32));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, &[], &icmp)
}

/// An IPIP packet (outer `outer_src` > `outer_dst`, with `options`) around `inner`.
pub fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, options: &[u8], inner: &[u8]) -> Vec<u8> {
    ipv4(outer_src, outer_dst, IPPROTO_IPIP, options, inner)
}

/// Sends complete IPv4 packets (headers included, sources as written) from
/// namespace `ns` through a raw IPPROTO_RAW socket, in order (python3).
pub fn send_raw(ns: &Netns, packets: &[Vec<u8>]) -> Result<()> {
    const SENDER: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
        for p in sys.argv[1:]:\n\
        \x20   b = bytes.fromhex(p)\n\
        \x20   s.sendto(b, (socket.inet_ntoa(b[16:20]), 0))\n";
    let hex: Vec<String> = packets
        .iter()
        .map(|p| p.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let mut args = vec!["-c", SENDER];
    args.extend(hex.iter().map(String::as_str));
    ns.exec("python3", &args)
        .context("send raw packets (python3)")?;
    Ok(())
}

/// tcpdump (`-n -v`) on `ns`'s `device` until `count` packets matched
/// `filter` (20 s at most); returned once it listens.
pub fn start_capture(ns: &Netns, device: &str, filter: &str, count: usize) -> Result<Child> {
    let mut child = ns
        .command("timeout")
        .args(["20", "tcpdump", "-n", "-v", "-l", "-i", device, "-c"])
        .arg(count.to_string())
        .arg(filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("tcpdump")?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("tcpdump did not start"))?;
    Ok(child)
}

/// What a capture printed, once it ended.
pub fn finish_capture(child: Child) -> Result<String> {
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
