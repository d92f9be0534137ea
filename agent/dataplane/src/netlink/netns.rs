//! Reaching a device in another network namespace that our namespace knows
//! only by its id (a veth's IFLA_LINK_NETNSID: the container's side).
//!
//! The kernel has no call from an id to the namespace: IFLA_TARGET_NETNSID
//! on a link change *moves* our device of that index into the namespace
//! instead. So the namespace is found among those open somewhere (named
//! ones under /run/netns and Docker's, and every process's), by asking the kernel which
//! id each has here (RTM_GETNSID), and the change is made by a thread that
//! entered it.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::batch;

/// Where network namespaces are open: named ones (`ip netns`, CNI
/// runtimes; Docker's), then each process's.
fn candidates() -> impl Iterator<Item = PathBuf> {
    let named = ["/run/netns", "/run/docker/netns"]
        .into_iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .map(|e| e.path());
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(processes)
}

/// The namespace our namespace knows by `netnsid`, opened; `None` when no
/// process or name holds it any more.
pub(super) fn open_by_id(netnsid: i32) -> io::Result<Option<File>> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    let mut seen = HashSet::from([(own.dev(), own.ino())]);
    for path in candidates() {
        // Processes come and go: what cannot be opened is skipped.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if batch::netnsid_of(file.as_fd())? == Some(netnsid) {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// Runs `work` on a thread that entered the namespace `netns`: the
/// caller's threads stay where they are.
pub(super) fn within<T: Send>(
    netns: &File,
    work: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; setns affects this thread only.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Sets the IPv4 GSO/GRO size limits of device `index` in the namespace
/// known here by `netnsid`.
pub(super) fn set_ipv4_gso_gro_max_size(netnsid: i32, index: u32, size: u32) -> io::Result<()> {
    let netns = open_by_id(netnsid)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no namespace with id {netnsid} is open"),
        )
    })?;
    within(&netns, || batch::set_ipv4_gso_gro_max_size(index, size))
}
