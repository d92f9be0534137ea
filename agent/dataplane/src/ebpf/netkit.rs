//! The egress fast path inside a netkit device's transmit (Linux 6.7+).
//!
//! A veth hands every packet a container sends to the host's receive path
//! (a backlog queue, then tc ingress of the port, where [`super::ports`]
//! runs `fan_fastpath`): one more queue and softirq pass per packet than the
//! host's own traffic pays. A netkit pair runs BPF inside the container's
//! transmit instead: the program attached to the primary (host-side) device
//! as `BPF_NETKIT_PEER` sees the packet before it changes namespace, and a
//! redirect from there goes straight to the underlay device. tc and netkit
//! agree on return codes (0 pass, 2 drop, 7 redirect) and both run
//! `BPF_PROG_TYPE_SCHED_CLS` programs with the host-side device as
//! `skb->ifindex`, so the one program serves both hooks; what it passes
//! enters the host as it would from a veth (the bridge, the slow path).
//!
//! Attached with `BPF_PROG_ATTACH`, not a BPF link: like the netlink tc
//! filters, it stays when the agent exits and goes with the device. Ours is
//! a program named [`FASTPATH_PROGRAM`]; nothing else attached there is
//! touched.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::prog_info::{self, sys_bpf, Attr};
use super::FASTPATH_PROGRAM;

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_QUERY: libc::c_long = 16;
/// `enum bpf_attach_type`: programs run in the transmit of the peer
/// (container-side) device, attached through the primary.
pub const BPF_NETKIT_PEER: u32 = 55;
/// Swap the program given in `replace_bpf_fd` in place.
const BPF_F_REPLACE: u32 = 1 << 2;
/// Room for the ids one query returns (more programs than this on one
/// device would be someone else's business; the query says how many).
const QUERY_SLOTS: usize = 64;

/// The ids of the programs attached to the peer hook of netkit device
/// `ifindex`, in run order. Fails on a device that is not netkit.
pub fn peer_programs(ifindex: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; QUERY_SLOTS];
    // The query part of union bpf_attr: target_ifindex, attach_type,
    // query_flags, attach_flags, prog_ids, prog_cnt, then link fields.
    let mut attr = Attr::zeroed();
    attr.put_u32(0, ifindex);
    attr.put_u32(4, BPF_NETKIT_PEER);
    attr.put_u64(16, ids.as_mut_ptr() as u64);
    attr.put_u32(24, QUERY_SLOTS as u32);
    sys_bpf(BPF_PROG_QUERY, &mut attr, 64)?;
    ids.truncate((attr.get_u32(24) as usize).min(QUERY_SLOTS));
    Ok(ids)
}

/// Our programs (by name) on the peer hook of `ifindex`.
pub fn ours(ifindex: u32) -> io::Result<Vec<u32>> {
    Ok(peer_programs(ifindex)?
        .into_iter()
        .filter(|id| prog_info::facts(*id).is_some_and(|f| f.name == FASTPATH_PROGRAM))
        .collect())
}

/// The attach/detach part of union bpf_attr: target_ifindex, attach_bpf_fd,
/// attach_type, attach_flags, replace_bpf_fd (then relative_fd and
/// expected_revision, left 0: append, any revision).
fn attach_attr(ifindex: u32, program_fd: i32, flags: u32, replace_fd: i32) -> Attr {
    let mut attr = Attr::zeroed();
    attr.put_u32(0, ifindex);
    attr.put_u32(4, program_fd as u32);
    attr.put_u32(8, BPF_NETKIT_PEER);
    attr.put_u32(12, flags);
    attr.put_u32(16, replace_fd as u32);
    attr
}

/// Runs `program` (id `program_id`) on the peer hook of netkit device
/// `ifindex`: swapped in place for an older program of ours, appended
/// otherwise; any further program of ours goes. Returns whether it had to
/// be attached (false: it already ran there).
pub fn attach(ifindex: u32, program: BorrowedFd<'_>, program_id: u32) -> io::Result<bool> {
    let mut others = ours(ifindex)?;
    let attached = match others.iter().position(|id| *id == program_id) {
        Some(i) => {
            others.remove(i);
            false
        }
        None => {
            // The first older program of ours is swapped, in place.
            let replaced = others
                .first()
                .map(|old| prog_info::prog_fd(*old))
                .transpose()?;
            let mut attr = match &replaced {
                Some(old) => {
                    attach_attr(ifindex, program.as_raw_fd(), BPF_F_REPLACE, old.as_raw_fd())
                }
                None => attach_attr(ifindex, program.as_raw_fd(), 0, 0),
            };
            sys_bpf(BPF_PROG_ATTACH, &mut attr, 32)?;
            if replaced.is_some() {
                others.remove(0);
            }
            true
        }
    };
    for id in others {
        detach_one(ifindex, id)?;
    }
    Ok(attached)
}

fn detach_one(ifindex: u32, program_id: u32) -> io::Result<()> {
    let fd = prog_info::prog_fd(program_id)?;
    let mut attr = attach_attr(ifindex, fd.as_raw_fd(), 0, 0);
    sys_bpf(BPF_PROG_DETACH, &mut attr, 32).map(|_| ())
}

/// Removes our programs from the peer hook of `ifindex`; returns how many.
pub fn detach(ifindex: u32) -> io::Result<usize> {
    let ours = ours(ifindex)?;
    for id in &ours {
        detach_one(ifindex, *id)?;
    }
    Ok(ours.len())
}
