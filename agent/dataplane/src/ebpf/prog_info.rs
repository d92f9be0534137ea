//! The maps of one loaded program, looked up by its id.
//!
//! aya only offers `loaded_programs()`, which walks every program on the
//! host (three bpf(2) calls each): with two programs per network that made
//! each adoption check O(networks). Two calls by id do the same job.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info` (uapi/linux/bpf.h) up to `map_ids`:
/// the kernel fills at most `info_len` bytes, so a prefix is enough.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
}

/// `union bpf_attr` is 128 bytes at most in current kernels; unused bytes
/// must be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of `size` bytes that
    // outlives the call; pointers inside it point to buffers the caller owns.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn prog_fd(prog_id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr([0; 128]);
    attr.0[..4].copy_from_slice(&prog_id.to_ne_bytes());
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, 12)?;
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ids of the maps program `prog_id` uses; `None` when there is no such
/// program (or the kernel refuses to say).
pub fn map_ids(prog_id: u32) -> Option<BTreeSet<u32>> {
    let fd = prog_fd(prog_id).ok()?;
    let mut ids = vec![0u32; 64];
    let mut info = ProgInfoHead {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let info_ptr: *mut ProgInfoHead = &mut info;
    let mut attr = Attr([0; 128]);
    // struct { u32 bpf_fd; u32 info_len; u64 info; }
    attr.0[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(std::mem::size_of::<ProgInfoHead>() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info_ptr as u64).to_ne_bytes());
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16).ok()?;
    // The kernel reports how many maps the program has; it wrote at most
    // as many as we gave room for.
    // SAFETY: `info` is live; read through the pointer the kernel wrote to.
    let count = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*info_ptr).nr_map_ids)) };
    let count = count as usize;
    if count > ids.len() {
        return None;
    }
    Some(ids[..count].iter().copied().collect())
}
