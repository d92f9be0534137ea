//! `fan-bridge`: a CNI main plugin that plugs a container into a fan
//! network's bridge.
//!
//! It does what the reference `bridge` plugin does for a fan (a pair of
//! devices, the host's end on the bridge, the container's end with the
//! address from the IPAM plugin and a default route through the gateway),
//! with one difference: where the kernel has netkit (Linux 6.7+) the pair
//! is a netkit pair in L2 mode, not a veth. The fan agent learns the
//! netkit primary on its bridge like any port and runs its egress fast path
//! inside the container's own transmit (`BPF_NETKIT_PEER`): a packet for a
//! remote host goes from the container's socket to the underlay device
//! without crossing into the host's receive path first. On an older kernel
//! the pair is a veth and everything works as with `bridge`.
//!
//! The configuration (a conflist entry; `ipam` as for `bridge`):
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "fan", "type": "fan-bridge",
//!  "bridge": "fan-250", "mtu": 1480, "link": "auto",
//!  "ipam": {"type": "fan-ipam", "network": "fan"}}
//! ```
//!
//! `bridge` (required) must exist (the agent made it); `mtu` (default: the
//! bridge's) goes on both ends; `link` is `auto` (netkit where the kernel
//! has it, else veth), `netkit` (fail without it) or `veth`. The IPAM
//! plugin is run from `CNI_PATH` with the same environment and
//! configuration, as the spec says a main plugin delegates.
//!
//! The host's end is named `fan` + 8 hex digits of a hash of the container
//! id and interface name, so `DEL` finds it without the container's
//! namespace, and marked with the ifalias `fan-bridge:<id>/<ifname>`: a
//! device of that name without this mark (another attachment's, after a
//! collision of the 32-bit names, or anyone's) is never touched.
//!
//! [`conf`] is pure (the configuration, the names, the result); [`link`]
//! does the netlink work; [`run`] runs one command.

pub mod conf;
pub mod link;
pub mod run;
