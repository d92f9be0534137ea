//! Reaching a device in another network namespace that our namespace knows
//! only by its id (a veth's IFLA_LINK_NETNSID: the container's side).
//!
//! The kernel has no call from an id to the namespace: IFLA_TARGET_NETNSID
//! on a link change *moves* our device of that index into the namespace
//! instead. So the namespace is found among those open somewhere (named
//! ones under /run/netns and Docker's, and every process's), by asking the kernel which
//! id each has here (RTM_GETNSID), and the change is made by a thread that
//! entered it.

use std::collections::{BTreeSet, HashMap, HashSet};
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

/// The namespaces our namespace knows by the ids in `wanted`, opened,
/// from one search that stops once all are found; an id no process or
/// name holds any more is missing from the answer.
pub(super) fn open_by_ids(wanted: &BTreeSet<i32>) -> io::Result<HashMap<i32, File>> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    let mut seen = HashSet::from([(own.dev(), own.ino())]);
    let mut found = HashMap::new();
    for path in candidates() {
        if found.len() == wanted.len() {
            break;
        }
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
        if let Some(id) = batch::netnsid_of(file.as_fd())?.filter(|id| wanted.contains(id)) {
            found.insert(id, file);
        }
    }
    Ok(found)
}

/// Runs `work` on a thread that entered the namespace `netns`: the
/// caller's threads stay where they are.
pub fn within<T: Send>(netns: &File, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
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

/// Sets the IPv4 GSO/GRO size limits of devices in other namespaces, each
/// given as (namespace id here, device index there, size); one search for
/// the namespaces serves them all. The result of each, in order.
pub(super) fn set_ipv4_gso_gro_max_sizes(changes: &[(i32, u32, u32)]) -> Vec<io::Result<()>> {
    if changes.is_empty() {
        return Vec::new();
    }
    let ids = changes.iter().map(|(id, _, _)| *id).collect();
    let namespaces = match open_by_ids(&ids) {
        Ok(n) => n,
        Err(e) => {
            return changes
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect()
        }
    };
    changes
        .iter()
        .map(|(id, index, size)| match namespaces.get(id) {
            Some(netns) => within(netns, || batch::set_ipv4_gso_gro_max_size(*index, *size)),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no namespace with id {id} is open"),
            )),
        })
        .collect()
}
