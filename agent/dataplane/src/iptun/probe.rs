//! Is the kernel's ipip module there? Shared by the ipip and kernel-fan
//! backends.
//!
//! `modprobe ipip` is tried at most once per process (it is harmless when
//! the module is loaded or built in, and the module is global, so the
//! namespace of the caller does not matter). Then `/sys/module/ipip` tells:
//! it exists for a loaded module and for a built-in one (the module has a
//! parameter, `log_ecn_error`, so sysfs lists it either way).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tracing::debug;

/// Where the kernel lists the ipip module.
pub const SYS_MODULE_IPIP: &str = "/sys/module/ipip";

/// The reason given when the module is missing.
pub const NO_IPIP: &str = "kernel has no ipip module (CONFIG_NET_IPIP)";

static MODPROBE: OnceLock<Option<String>> = OnceLock::new();

/// Runs `modprobe ipip` once per process; returns its complaint, if any.
pub fn modprobe_ipip() -> Option<String> {
    MODPROBE
        .get_or_init(|| {
            if Path::new(SYS_MODULE_IPIP).exists() {
                return None;
            }
            let result = Command::new("modprobe")
                .arg("ipip")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output();
            match result {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
                Err(e) => Some(format!("cannot run modprobe: {e}")),
            }
        })
        .clone()
}

/// Ok when the ipip module is available (loaded now, or built in); the
/// reason otherwise.
pub fn ipip_module() -> Result<(), String> {
    let complaint = modprobe_ipip();
    if Path::new(SYS_MODULE_IPIP).exists() {
        return Ok(());
    }
    debug!(?complaint, "modprobe ipip");
    Err(match complaint {
        Some(c) if !c.is_empty() => format!("{NO_IPIP}; modprobe ipip: {c}"),
        _ => NO_IPIP.to_string(),
    })
}
