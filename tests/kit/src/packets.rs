//! Hand-made IPv4 packets sent as written (sources included) through a raw
//! socket inside a namespace, and tcpdump captures on a namespace's device:
//! what the anti-spoofing tests (the dataplane's and the end-to-end ones)
//! need to forge traffic and to see what left.

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::{Error, Netns, Result};

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

/// An ICMP echo request from `src` to `dst` with 32 bytes of payload.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    icmp_echo_sized(src, dst, 32)
}

/// An ICMP echo request from `src` to `dst` with `payload` bytes of payload.
pub fn icmp_echo_sized(src: Ipv4Addr, dst: Ipv4Addr, payload: usize) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0, 0xfa, 0x09, 0, 1];
    icmp.extend(std::iter::repeat_n(0xab, payload));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, &[], &icmp)
}

/// An IPIP packet (outer `outer_src` > `outer_dst`, with `options`) around `inner`.
pub fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, options: &[u8], inner: &[u8]) -> Vec<u8> {
    ipv4(outer_src, outer_dst, IPPROTO_IPIP, options, inner)
}

/// Sends complete IPv4 packets (headers included, sources as written) from
/// namespace `ns` through a raw IPPROTO_RAW socket, in order.
pub fn send_raw(ns: &Netns, packets: &[Vec<u8>]) -> Result<()> {
    let packets: Vec<(Ipv4Addr, Vec<u8>)> = packets
        .iter()
        .map(|p| (Ipv4Addr::new(p[16], p[17], p[18], p[19]), p.clone()))
        .collect();
    ns.run(move || send_on_raw_socket(libc::IPPROTO_RAW, &packets))
}

/// Sends `inner` to `to` from namespace `ns` through a raw IPPROTO_IPIP
/// socket: the kernel's own IPIP code adds the outer header (and fragments
/// it if it must).
pub fn send_ipip(ns: &Netns, to: Ipv4Addr, inner: &[u8]) -> Result<()> {
    let packets = vec![(to, inner.to_vec())];
    ns.run(move || send_on_raw_socket(libc::IPPROTO_IPIP, &packets))
}

/// One raw socket of `protocol` (path MTU discovery off, so the kernel
/// fragments what it must), each packet sent to its address.
fn send_on_raw_socket(protocol: libc::c_int, packets: &[(Ipv4Addr, Vec<u8>)]) -> Result<()> {
    let io = |what: &str| Error::Io {
        what: what.to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain socket calls on a socket we own; buffers outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol);
        if fd < 0 {
            return Err(io("raw socket"));
        }
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&dont as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let mut result = Ok(());
        for (to, packet) in packets {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(to.octets()),
                },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if n != packet.len() as isize {
                result = Err(io(&format!("sendto {to} ({} bytes)", packet.len())));
                break;
            }
        }
        libc::close(fd);
        result
    }
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
        .map_err(|source| Error::Spawn {
            program: "tcpdump (apt-get install tcpdump)".into(),
            source,
        })?;
    // tcpdump says "listening on" on stderr once the socket is open.
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| Error::Io {
            what: format!("tcpdump on {device}"),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "did not start listening"),
        })?;
    Ok(child)
}

/// What a capture printed, once it ended.
pub fn finish_capture(child: Child) -> Result<String> {
    let out = child.wait_with_output().map_err(|source| Error::Io {
        what: "wait for tcpdump".into(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
