//! The egress fast path on each bridge port.
//!
//! `fan_fastpath` on the bridge sees a container's frame only after the
//! bridge handled it. On the ingress of the port (the host side of the
//! container's veth) the same program sees it first and hands it to the
//! underlay without the bridge. On a netkit port it runs earlier still,
//! inside the container's transmit (see [`super::netkit`]). Ports are
//! learned from the kernel (veth or netkit links whose master is the fan
//! bridge and whose peer lives in another namespace), so containers plugged
//! by anyone are covered; until a port is learned, the filter on the bridge
//! carries its traffic.
//!
//! The program is pinned in the network's pin directory ([`PROGRAM_PIN`]) by
//! `apply` so the endpoint refresher can attach it to ports that appear
//! later. The agent removes only its own filter from a port (our priority,
//! handle and program name); the clsact qdisc it may have added stays with
//! the port and goes when the port goes.

use std::collections::HashSet;
use std::path::Path;

use aya::programs::SchedClassifier;
use tracing::{debug, info};

use super::tc::{self, Hook};
use super::{netkit, EbpfBackend, FASTPATH_PROGRAM};
use crate::netlink::Netlink;
use crate::{DataplaneError, Result};

/// File name of the pinned fast-path program in the network's pin directory.
pub const PROGRAM_PIN: &str = "prog_fan_fastpath";

/// A container's port on the fan bridge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    /// Interface index (host namespace).
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MAC address: a new device at a reused ifindex has another.
    pub mac: Option<[u8; 6]>,
    /// A netkit primary: the program runs in the peer's transmit, not on
    /// tc ingress.
    pub netkit: bool,
}

/// Pins the freshly loaded fast-path program, replacing an older pin.
pub fn pin_program(program: &mut SchedClassifier, pin_dir: &Path) -> Result<()> {
    let path = pin_dir.join(PROGRAM_PIN);
    let _ = std::fs::remove_file(&path);
    program
        .pin(&path)
        .map_err(|e| DataplaneError::other(format!("pin {}", path.display()), e))
}

/// Attaches the pinned program to every port in `ports` that does not run
/// it yet (replacing an older program in our filter); ports listed in
/// `known` are skipped. Returns the ports now running it.
pub async fn attach(
    nl: &Netlink,
    ports: &[Port],
    pin_dir: &Path,
    priority: u16,
    known: &HashSet<Port>,
) -> Result<Vec<Port>> {
    let todo: Vec<&Port> = ports.iter().filter(|p| !known.contains(*p)).collect();
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let path = pin_dir.join(PROGRAM_PIN);
    let context = || format!("open pinned program {}", path.display());
    let mut program =
        SchedClassifier::from_pin(&path).map_err(|e| DataplaneError::other(context(), e))?;
    let prog_id = program
        .info()
        .map_err(|e| DataplaneError::other(context(), e))?
        .id();
    let mut done = Vec::new();
    for port in todo {
        if port.netkit {
            let fd = program
                .fd()
                .map_err(|e| DataplaneError::other(context(), e))?;
            match netkit::attach(port.index, std::os::fd::AsFd::as_fd(fd), prog_id) {
                Ok(true) => info!(port = %port.name, "egress fast path attached to netkit peer"),
                Ok(false) => {}
                // Gone meanwhile (a container stopping): nothing to do.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue,
                Err(e) => {
                    return Err(DataplaneError::other(
                        format!("attach netkit peer program on {}", port.name),
                        e,
                    ))
                }
            }
            done.push(port.clone());
            continue;
        }
        let (ifindex, name) = (&port.index, &port.name);
        let filters =
            match tc::list_filters_at(nl.handle(), *ifindex, Hook::Ingress, priority).await {
                Ok(f) => f,
                // Gone meanwhile (a container stopping): nothing to do.
                Err(e) => {
                    debug!(port = %name, error = %e, "port not listed");
                    continue;
                }
            };
        let (main, _) = EbpfBackend::ours(&filters, priority, FASTPATH_PROGRAM);
        if main.is_some_and(|f| f.prog_id == Some(prog_id)) {
            done.push(port.clone());
            continue;
        }
        tc::ensure_clsact(nl.handle(), *ifindex).await?;
        tc::attach(&mut program, name, Hook::Ingress, priority, main.is_some())?;
        info!(port = %name, "egress fast path attached on bridge port");
        done.push(port.clone());
    }
    Ok(done)
}

/// Removes our fast-path filter from each port (a port gone meanwhile is
/// not an error).
pub async fn detach(nl: &Netlink, ports: &[Port], priority: u16) -> Result<()> {
    for port in ports {
        let (ifindex, name) = (&port.index, &port.name);
        if port.netkit {
            match netkit::detach(*ifindex) {
                Ok(n) if n > 0 => {
                    debug!(port = %name, "egress fast path detached from netkit peer")
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => {
                    return Err(DataplaneError::other(
                        format!("detach netkit peer program from {name}"),
                        e,
                    ))
                }
            }
            continue;
        }
        let Ok(filters) = tc::list_filters_at(nl.handle(), *ifindex, Hook::Ingress, priority).await
        else {
            continue;
        };
        let (main, extra) = EbpfBackend::ours(&filters, priority, FASTPATH_PROGRAM);
        for f in main.into_iter().chain(extra) {
            tc::delete_filter(nl.handle(), *ifindex, Hook::Ingress, f.priority, f.handle).await?;
            debug!(port = %name, "egress fast path detached from bridge port");
        }
    }
    Ok(())
}
