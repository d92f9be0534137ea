//! Network namespaces for tests: a guard that deletes its namespace on drop,
//! veth pairs between namespaces, a runner that executes a closure or a
//! future inside a namespace, and a teardown that always runs every step.

use std::ffi::OsStr;
use std::fmt::Display;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{ip, run_command, unique_id, Error, Result, PREFIX};

/// A network namespace under /run/netns, deleted on drop (panic or not).
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    /// Whether dropping this handle deletes the namespace.
    owned: bool,
}

impl Netns {
    /// Creates the namespace `name` (which should start with a
    /// [`unique_id`]) with loopback up.
    pub fn new(name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace named `<unique id>-<tag>`.
    pub fn unique(tag: &str) -> Result<Netns> {
        Netns::new(&format!("{}-{tag}", unique_id()))
    }

    /// A handle on a namespace someone else owns (not deleted on drop),
    /// e.g. to use one from another thread.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_owned(),
            owned: false,
        }
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NS ARGS...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs inside the namespace (net namespace only: it
    /// keeps the caller's mounts, so bpffs pins stay visible).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs a command in the namespace, failing on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut command = self.command(program);
        command.args(args);
        run_command(
            command,
            format!("{program} {} in {}", args.join(" "), self.name),
        )
    }

    /// Pings `target` `count` times (ping's own rule: any reply succeeds).
    pub fn ping(&self, target: Ipv4Addr, count: u32) -> Result<()> {
        self.exec(
            "ping",
            &[
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &target.to_string(),
            ],
        )
        .map(|_| ())
    }

    /// Runs `body` on a thread of its own inside this namespace (netlink
    /// sockets, /proc/sys/net and child processes all belong to it); a
    /// panic in `body` is resumed on the caller.
    pub fn run<T, F>(&self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path();
        let file =
            std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let result = std::thread::spawn(move || {
            // SAFETY: a valid namespace fd; setns affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            drop(file);
            body()
        })
        .join();
        match result {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs the future `body` makes on a current-thread tokio runtime on a
    /// thread of its own inside this namespace (see [`Netns::run`]).
    pub fn block_on<T, F, Fut>(&self, body: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(body())
        })
    }

    /// Deletes the namespace now, reporting a failure (a namespace already
    /// gone is not one). Handles from [`Netns::existing`] delete nothing.
    pub fn delete(mut self) -> Result<()> {
        let owned = std::mem::replace(&mut self.owned, false);
        if owned {
            delete_netns(&self.name)
        } else {
            Ok(())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            if let Err(err) = delete_netns(&self.name) {
                eprintln!("teardown: {err}");
            }
        }
    }
}

/// Deletes `/run/netns/NAME` as `ip netns del` does (detach the bind mount,
/// remove the file); a namespace already gone is fine.
pub fn delete_netns(name: &str) -> Result<()> {
    let path = PathBuf::from(format!("/run/netns/{name}"));
    unmount(&path)?;
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            what: format!("delete namespace {name}"),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Detaches the mount on `path`; not a mount point or absent is fine.
fn unmount(path: &Path) -> Result<()> {
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other preconditions.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
            return Err(Error::Io {
                what: format!("unmount {}", path.display()),
                source: err,
            });
        }
    }
    Ok(())
}

/// Detaches whatever is mounted on `dir` (e.g. a bpffs pin root) and
/// removes the directory; both already gone is fine.
pub fn unmount_and_remove(dir: &Path) -> Result<()> {
    unmount(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            what: format!("remove {}", dir.display()),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Creates a veth pair: `a_name` in `a`, its peer `b_name` in `b` (both down).
pub fn veth_pair(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])
    .map(|_| ())
}

/// Runs the future `body` makes inside a fresh namespace (`<unique id>-<tag>`,
/// loopback up) on its own thread, and deletes the namespace after, also
/// when `body` panics. Skipped, with a message, unless root.
pub fn in_fresh_netns<F, Fut>(tag: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if crate::skip_unless_root() {
        return;
    }
    let netns = Netns::unique(tag).unwrap_or_else(|e| panic!("{e}"));
    netns.block_on(body);
}

/// Undo steps that all run, last added first, whatever fails; the
/// failures are reported together. Runs on drop what was not run.
#[derive(Default)]
pub struct Teardown {
    steps: Vec<(String, Step)>,
    errors: Vec<String>,
}

type Step = Box<dyn FnOnce() -> Result<()> + Send>;

impl std::fmt::Debug for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<&str> = self.steps.iter().map(|(what, _)| what.as_str()).collect();
        f.debug_struct("Teardown")
            .field("steps", &steps)
            .field("errors", &self.errors)
            .finish()
    }
}

impl Teardown {
    /// No steps yet.
    pub fn new() -> Teardown {
        Teardown::default()
    }

    /// Adds a step, run before the steps added earlier.
    pub fn defer(
        &mut self,
        what: impl Into<String>,
        step: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        self.steps.push((what.into(), Box::new(step)));
    }

    /// Hands `netns` over: it is deleted by [`Teardown::run`].
    pub fn netns(&mut self, netns: Netns) {
        self.defer(format!("delete namespace {}", netns.name), move || {
            netns.delete()
        });
    }

    /// Unmounts and removes `dir` in [`Teardown::run`].
    pub fn unmount_dir(&mut self, dir: PathBuf) {
        self.defer(format!("remove {}", dir.display()), move || {
            unmount_and_remove(&dir)
        });
    }

    /// Records the outcome of a step the caller ran itself.
    pub fn check<E: Display>(&mut self, what: &str, result: std::result::Result<(), E>) {
        if let Err(err) = result {
            self.errors.push(format!("{what}: {err}"));
        }
    }

    /// Runs every remaining step, last added first, and returns every
    /// failure (its own and those [`Teardown::check`] recorded).
    pub fn run(&mut self) -> Result<()> {
        while let Some((what, step)) = self.steps.pop() {
            let outcome = step();
            self.check(&what, outcome);
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown(std::mem::take(&mut self.errors)))
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Err(err) = self.run() {
            eprintln!("{err}");
        }
    }
}

/// Removes the namespaces of earlier test processes that no longer run
/// (`fe<pid tag>...`), so a killed run does not leave namespaces behind.
pub fn sweep_leftovers() {
    let live: std::collections::HashSet<String> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .map(crate::pid_tag)
                .collect()
        })
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_prefix(PREFIX).and_then(|rest| rest.get(..4)) else {
            continue;
        };
        if tag.chars().all(|c| c.is_ascii_hexdigit()) && !live.contains(tag) {
            let _ = delete_netns(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn teardown_runs_every_step_last_first_and_reports_every_failure() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut teardown = Teardown::new();
        for n in 0..3 {
            let ran = ran.clone();
            teardown.defer(format!("step {n}"), move || {
                ran.lock().unwrap().push(n);
                if n == 1 {
                    Ok(())
                } else {
                    Err(Error::Teardown(vec![format!("boom {n}")]))
                }
            });
        }
        teardown.check("own step", Err("refused"));
        let err = teardown.run().unwrap_err().to_string();
        assert_eq!(*ran.lock().unwrap(), vec![2, 1, 0]);
        assert_eq!(
            err,
            "teardown: own step: refused; step 2: teardown: boom 2; step 0: teardown: boom 0"
        );
        assert!(teardown.run().is_ok(), "steps run once");
    }

    #[test]
    fn names_carry_the_prefix_and_fit_an_interface_name() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX), "{a}");
        assert!(a.len() + "-h1".len() <= 15, "{a}");
    }

    #[test]
    fn a_namespace_is_gone_after_a_panicking_body() {
        if crate::skip_unless_root() {
            return;
        }
        let netns = Netns::unique("kit").unwrap();
        let path = netns.path();
        let name = netns.name.clone();
        let outcome = std::panic::catch_unwind(move || {
            netns.block_on(|| async { panic!("inside") });
        });
        assert!(outcome.is_err());
        assert!(!path.exists(), "{name} left behind");
    }

    #[test]
    fn a_veth_pair_joins_two_namespaces() {
        if crate::skip_unless_root() {
            return;
        }
        let a = Netns::unique("va").unwrap();
        let b = Netns::unique("vb").unwrap();
        veth_pair(&a, "left", &b, "right").unwrap();
        assert!(a
            .ip(&["-d", "link", "show", "left"])
            .unwrap()
            .contains("veth"));
        assert!(b
            .ip(&["-d", "link", "show", "right"])
            .unwrap()
            .contains("veth"));
        assert!(
            a.ip(&["link", "show", "right"]).is_err(),
            "the peer is in b only"
        );
        let in_a = a.run(|| crate::ip(&["-o", "link", "show"]).unwrap());
        assert!(in_a.contains("left") && !in_a.contains("right"), "{in_a}");
    }
}
