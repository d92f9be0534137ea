//! What one loaded program is (its name, its maps), looked up by its id,
//! and the raw bpf(2) call the netkit hook ([`super::netkit`]) shares.
//!
//! aya only offers `loaded_programs()`, which walks every program on the
//! host (three bpf(2) calls each): with two programs per network that made
//! each adoption check O(networks). Two calls by id do the same job.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_prog_info` (uapi/linux/bpf.h) up to `name`:
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
    name: [u8; 16],
}

/// `union bpf_attr` is 128 bytes at most in current kernels; unused bytes
/// must be zero.
#[repr(C, align(8))]
pub(super) struct Attr(pub(super) [u8; 128]);

impl Attr {
    /// An all-zero attribute block.
    pub(super) fn zeroed() -> Self {
        Attr([0; 128])
    }

    /// Writes `value` at byte `offset` (native endianness, as the kernel reads it).
    pub(super) fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// Writes `value` at byte `offset`.
    pub(super) fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    /// Reads the u32 at byte `offset` (after the kernel wrote it).
    pub(super) fn get_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(bytes)
    }
}

pub(super) fn sys_bpf(cmd: libc::c_long, attr: &mut Attr, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of `size` bytes that
    // outlives the call; pointers inside it point to buffers the caller owns.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A new descriptor of program `prog_id`.
pub(super) fn prog_fd(prog_id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::zeroed();
    attr.put_u32(0, prog_id);
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, 12)?;
    // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says of one program.
pub struct ProgramFacts {
    /// The program's name (the kernel keeps the first 15 bytes).
    pub name: String,
    /// The ids of the maps it uses.
    pub map_ids: BTreeSet<u32>,
}

/// The ids of the maps program `prog_id` uses; `None` when there is no such
/// program (or the kernel refuses to say).
pub fn map_ids(prog_id: u32) -> Option<BTreeSet<u32>> {
    facts(prog_id).map(|f| f.map_ids)
}

/// The name and maps of program `prog_id`; `None` when there is no such
/// program (or the kernel refuses to say).
pub fn facts(prog_id: u32) -> Option<ProgramFacts> {
    let fd = prog_fd(prog_id).ok()?;
    let mut ids = vec![0u32; 64];
    let mut info = ProgInfoHead {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let info_ptr: *mut ProgInfoHead = &mut info;
    let mut attr = Attr::zeroed();
    // struct { u32 bpf_fd; u32 info_len; u64 info; }
    attr.put_u32(0, fd.as_raw_fd() as u32);
    attr.put_u32(4, std::mem::size_of::<ProgInfoHead>() as u32);
    attr.put_u64(8, info_ptr as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16).ok()?;
    // The kernel reports how many maps the program has; it wrote at most
    // as many as we gave room for.
    // SAFETY: `info` is live; read through the pointer the kernel wrote to.
    let count = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*info_ptr).nr_map_ids)) };
    let count = count as usize;
    if count > ids.len() {
        return None;
    }
    // SAFETY: as above.
    let name = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*info_ptr).name)) };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(ProgramFacts {
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        map_ids: ids[..count].iter().copied().collect(),
    })
}
