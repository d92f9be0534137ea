//! The pin root on bpffs and the per-network pin directories under it.
//!
//! Several agents on one machine (one per network namespace, as in tests, or
//! under `ip netns exec`, which gives a fresh /sys without /sys/fs/bpf) must
//! not share pins, so the root is configurable and gets its own bpffs
//! instance when it is not on one already.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::{DataplaneError, Result};

/// `f_type` of a bpffs mount (BPF_FS_MAGIC).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `root` exists and is on bpffs, mounting a private bpffs
/// instance (mode 0700) on it when it is not. A root under /sys/fs/bpf gets
/// the standard bpffs mounted on /sys/fs/bpf instead when that is missing.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let context = || format!("bpffs at {}", root.display());
    // Under the standard location, make sure the standard mount exists
    // first (hosts without systemd, or /sys fresh from `ip netns exec`):
    // sysfs itself refuses mkdir.
    let standard = Path::new(STANDARD_BPFFS);
    if root.starts_with(standard)
        && root != standard
        && standard.is_dir()
        && !is_bpffs(standard).map_err(|e| DataplaneError::other(context(), e))?
    {
        mount_bpffs(standard, "")?;
    }
    std::fs::create_dir_all(root).map_err(|e| DataplaneError::other(context(), e))?;
    if is_bpffs(root).map_err(|e| DataplaneError::other(context(), e))? {
        return Ok(());
    }
    mount_bpffs(root, "mode=0700")
}

/// The conventional bpffs mount point.
pub const STANDARD_BPFFS: &str = "/sys/fs/bpf";

fn mount_bpffs(target: &Path, options: &str) -> Result<()> {
    let context = || format!("bpffs at {}", target.display());
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| DataplaneError::other(context(), e))?;
    let c_options = CString::new(options).map_err(|e| DataplaneError::other(context(), e))?;
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c_options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::other(
            context(),
            format!("mount -t bpf failed: {}", io::Error::last_os_error()),
        ));
    }
    info!(target = %target.display(), "mounted bpffs");
    Ok(())
}

/// The pin directory of one network: `<root>/<network_id>`. The id must be a
/// single path component.
pub fn network_dir(root: &Path, network_id: &str) -> Result<PathBuf> {
    if network_id.is_empty()
        || network_id == "."
        || network_id == ".."
        || network_id.contains(['/', '\0'])
    {
        return Err(DataplaneError::other(
            "eBPF pin directory",
            format!("network id {network_id:?} cannot be a directory name"),
        ));
    }
    Ok(root.join(network_id))
}

/// Removes the pinned objects in `dir` and the directory; absent is success.
pub fn remove_dir(dir: &Path) -> Result<()> {
    let context = || format!("remove pin directory {}", dir.display());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DataplaneError::other(context(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| DataplaneError::other(context(), e))?;
        // Unlinking a pin drops the pin's reference; the map lives on only
        // while a program or fd still holds it.
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::other(context(), e)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataplaneError::other(context(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_dirs_are_single_components() {
        let root = Path::new("/sys/fs/bpf/fan");
        assert_eq!(
            network_dir(root, "prod-250").unwrap(),
            root.join("prod-250")
        );
        assert!(network_dir(root, "../x").is_err());
        assert!(network_dir(root, "..").is_err());
        assert!(network_dir(root, "").is_err());
    }
}
