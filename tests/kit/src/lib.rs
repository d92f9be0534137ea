//! The test kit every test of the workspace shares (not published).
//!
//! - [`Netns`]: a network namespace named by the one prefix rule
//!   ([`unique_id`]), deleted when dropped, also when the test panics; its
//!   [`Netns::block_on`] runs a future inside it on a thread of its own.
//! - [`veth_pair`]: a veth pair whose ends live in two namespaces.
//! - [`Teardown`]: undo steps that all run, whatever fails, and report every
//!   failure together (netavark's rule for tearing a network down).
//! - [`skip_unless_root`]: the one check (and message) of root-only tests.
//! - [`packets`]: hand-made IPv4 packets sent from a raw socket in a
//!   namespace, and tcpdump captures.
//! - [`pki`]: a CA and the server and client certificates it signs (rcgen,
//!   no `openssl` process).
//! - [`run`], [`ip`], [`sh`]: commands, failing with their stderr.

pub mod netns;
pub mod packets;
pub mod pki;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use netns::{in_fresh_netns, sweep_leftovers, veth_pair, Netns, Teardown};

/// What a kit helper failed to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started.
    #[error("spawn {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A program exited non-zero.
    #[error("{command} failed: {output}")]
    Failed {
        /// The command line (and the namespace it ran in).
        command: String,
        /// Its stdout and stderr, trimmed.
        output: String,
    },
    /// A file-system or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Making a certificate failed.
    #[error("certificate {name}: {source}")]
    Certificate {
        /// The certificate's file name.
        name: String,
        /// Why.
        source: rcgen::Error,
    },
    /// Several teardown steps failed (every step still ran).
    #[error("teardown: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

/// The kit's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True (after saying so on stderr) when the test must be skipped because
/// it needs root: `if fan_testkit::skip_unless_root() { return; }`.
pub fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    let thread = std::thread::current();
    eprintln!(
        "skipping {}: network namespace tests need root",
        thread.name().unwrap_or("test")
    );
    true
}

/// The first letters of every name the kit hands out; [`sweep_leftovers`]
/// removes the namespaces of dead processes that carry it.
pub const PREFIX: &str = "fe";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The 4 hex digits of a process id that follow [`PREFIX`].
pub fn pid_tag(pid: u32) -> String {
    format!("{:04x}", pid % 0x10000)
}

/// A name unique on this machine while this process runs, short enough to
/// prefix interface names (15 bytes at most): `fe<pid tag><counter>`.
pub fn unique_id() -> String {
    format!(
        "{PREFIX}{}{:x}",
        pid_tag(std::process::id()),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn output_text(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    format!("{}{}", stdout.trim(), stderr.trim())
}

/// Runs `command`, failing with its output when it exits non-zero.
pub fn run_command(mut command: Command, shown: String) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .map_err(|source| Error::Spawn { program, source })?;
    if !output.status.success() {
        return Err(Error::Failed {
            command: shown,
            output: output_text(&output),
        });
    }
    Ok(output)
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, format!("{program} {}", args.join(" ")))
}

/// `ip ARGS...`; its stdout.
pub fn ip(args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&run("ip", args)?.stdout).into_owned())
}

/// Runs `args[0]` with the rest as arguments (in the calling thread's
/// namespace); its stdout. Panics with the output when it fails.
pub fn sh(args: &[&str]) -> String {
    match run(args[0], &args[1..]) {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(err) => panic!("{err}"),
    }
}

/// Runs `args[0]` with the rest as arguments; whether it succeeded and its
/// stdout followed by its stderr. Panics only when it cannot start.
pub fn try_sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
