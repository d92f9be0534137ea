//! The egress fast path on each bridge port.
//!
//! `fan_fastpath` on the bridge sees a container's frame only after the
//! bridge handled it. On the ingress of the port (the host side of the
//! container's veth) the same program sees it first and hands it to the
//! underlay without the bridge. Ports are learned from the kernel (links
//! whose master is the fan bridge and whose veth peer lives in another
//! namespace), so containers plugged by anyone are covered; until a port is
//! learned, the filter on the bridge carries its traffic.
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
use super::{EbpfBackend, FASTPATH_PROGRAM};
use crate::netlink::Netlink;
use crate::{DataplaneError, Result};

/// File name of the pinned fast-path program in the network's pin directory.
pub const PROGRAM_PIN: &str = "prog_fan_fastpath";

/// A bridge port: ifindex, name and MAC (a new device at a reused ifindex
/// has another MAC).
pub type Port = (u32, String, Option<[u8; 6]>);

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
        let (ifindex, name, _) = port;
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
    for (ifindex, name, _) in ports {
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
