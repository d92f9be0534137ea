//! Connection admission for the agent's listeners: a bounded number of open
//! connections, idle ones closed, and no busy loop at the file-descriptor limit.
//!
//! Why: an accept loop that meets `EMFILE` retries at once and spins a core
//! while every descriptor stays held by clients that never speak. Here every
//! accepted connection is tracked with the time it last sent a byte; at the
//! cap (or when `accept` runs out of descriptors) the connection that has been
//! quiet the longest is closed to make room, so a client that speaks is served
//! even under a flood of idle ones. A connection that sends nothing within the
//! handshake timeout, or nothing at all for the idle timeout, is closed.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The cap is never lowered below this.
const MIN_CONNECTIONS: usize = 16;

/// Limits applied to one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once; at the cap the quietest is closed for a newcomer.
    pub max_connections: usize,
    /// A connection that sends no byte within this time after accept is closed.
    pub handshake_timeout: Duration,
    /// A connection that sends no byte for this long is closed (clients reconnect).
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// Descriptors kept free for the agent's own files, netlink and BPF.
    pub const RESERVED_DESCRIPTORS: u64 = 128;

    /// The limits for a process whose descriptor limit is `nofile`: the cap
    /// never exceeds what the process can open besides its own needs.
    pub fn for_descriptor_limit(max_connections: usize, nofile: u64) -> ConnectionLimits {
        let fit = nofile
            .saturating_sub(Self::RESERVED_DESCRIPTORS)
            .max(MIN_CONNECTIONS as u64);
        ConnectionLimits {
            max_connections: max_connections.min(usize::try_from(fit).unwrap_or(usize::MAX)),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Raises the soft descriptor limit to the hard one (as Go's runtime does) and
/// returns the soft limit in force.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(error = %err, soft, hard, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the descriptor limit");
            1024
        }
    }
}

/// What the registry knows of one open connection.
#[derive(Debug)]
struct Tracked {
    /// Milliseconds since the registry's epoch at the last byte read.
    last_read_ms: AtomicU64,
    /// Whether any byte was read yet.
    spoke: AtomicBool,
    /// Set to close the connection; its next poll fails.
    closed: AtomicBool,
    waker: AtomicWaker,
}

#[derive(Debug)]
struct Registry {
    epoch: Instant,
    limits: ConnectionLimits,
    listener: &'static str,
    /// Starts at the configured cap; lowered when the descriptor limit turns out smaller.
    max_connections: AtomicUsize,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>) -> (u64, Arc<Tracked>) {
        let tracked = Arc::new(Tracked {
            last_read_ms: AtomicU64::new(self.now_ms()),
            spoke: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open();
        let max = self.max_connections.load(Ordering::Relaxed);
        let live = open
            .values()
            .filter(|t| !t.closed.load(Ordering::Relaxed))
            .count();
        if live >= max {
            let count = open.len();
            if let Some(quietest) = Self::quietest(&open) {
                quietest.close();
                tracing::warn!(
                    listener = self.listener,
                    open = count,
                    max,
                    "connection limit reached: closing the connection quiet the longest"
                );
            }
        }
        open.insert(id, tracked.clone());
        (id, tracked)
    }

    /// The connection to close first: one that never spoke before one that
    /// did, then the longest quiet, then the oldest.
    fn quietest(open: &HashMap<u64, Arc<Tracked>>) -> Option<&Arc<Tracked>> {
        open.iter()
            .filter(|(_, t)| !t.closed.load(Ordering::Relaxed))
            .min_by_key(|(id, t)| {
                (
                    t.spoke.load(Ordering::Relaxed),
                    t.last_read_ms.load(Ordering::Relaxed),
                    **id,
                )
            })
            .map(|(_, t)| t)
    }

    /// Out of descriptors with `open` connections: the real room is less
    /// than the cap, so lower the cap to 90 % of what is open and close the
    /// quietest connections down to it. Later newcomers then replace one
    /// connection each, without meeting the limit again.
    fn shed_for_descriptors(&self) -> (usize, usize) {
        let open = self.open();
        let live = open
            .values()
            .filter(|t| !t.closed.load(Ordering::Relaxed))
            .count();
        let cap = (live - live / 10).max(MIN_CONNECTIONS);
        self.max_connections.fetch_min(cap, Ordering::Relaxed);
        let mut closed = 0;
        while live - closed > cap {
            match Self::quietest(&open) {
                Some(quietest) => quietest.close(),
                None => break,
            }
            closed += 1;
        }
        (cap, closed)
    }

    /// Closes connections past their handshake or idle timeout.
    fn expire(&self) -> usize {
        let now = self.now_ms();
        let handshake =
            u64::try_from(self.limits.handshake_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(self.limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let open = self.open();
        let mut expired = 0;
        for tracked in open.values() {
            let quiet = now.saturating_sub(tracked.last_read_ms.load(Ordering::Relaxed));
            let limit = if tracked.spoke.load(Ordering::Relaxed) {
                idle
            } else {
                handshake
            };
            if quiet >= limit && !tracked.closed.load(Ordering::Relaxed) {
                tracked.close();
                expired += 1;
            }
        }
        expired
    }
}

impl Tracked {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.waker.wake();
    }
}

/// An accepted connection that the registry can close.
#[derive(Debug)]
pub struct LimitedConnection<IO> {
    inner: IO,
    id: u64,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
}

impl<IO> LimitedConnection<IO> {
    fn check_open(&self, cx: &mut Context<'_>) -> io::Result<()> {
        self.tracked.waker.register(cx.waker());
        if self.tracked.closed.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by the agent (idle or over the connection limit)",
            ));
        }
        Ok(())
    }
}

impl<IO> Drop for LimitedConnection<IO> {
    fn drop(&mut self) {
        self.registry.open().remove(&self.id);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LimitedConnection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.registry.now_ms();
            self.tracked.last_read_ms.store(now, Ordering::Relaxed);
            self.tracked.spoke.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LimitedConnection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for LimitedConnection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Something that accepts connections (a unix or TCP listener).
pub trait Acceptor: Send + 'static {
    /// The accepted connection.
    type Io: Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl std::future::Future<Output = io::Result<Self::Io>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Whether an accept error means the process or system is out of descriptors.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts from `listener` under `limits` in a task of its own, yielding the
/// connections for `serve_with_incoming`. The task ends when the stream is dropped.
pub fn admit<A: Acceptor>(
    mut listener: A,
    limits: ConnectionLimits,
    name: &'static str,
) -> ReceiverStream<io::Result<LimitedConnection<A::Io>>> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        limits,
        listener: name,
        max_connections: AtomicUsize::new(limits.max_connections),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    });
    let (tx, rx) = mpsc::channel(64);
    let reaper = registry.clone();
    let reaper_tx = tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !reaper_tx.is_closed() {
            tick.tick().await;
            let expired = reaper.expire();
            if expired > 0 {
                tracing::debug!(listener = name, expired, "closed idle connections");
            }
        }
    });
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
            };
            match accepted {
                Ok(io) => {
                    let (id, tracked) = registry.register();
                    let connection = LimitedConnection {
                        inner: io,
                        id,
                        tracked,
                        registry: registry.clone(),
                    };
                    if tx.send(Ok(connection)).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let open = registry.open().len();
                    let shed = out_of_descriptors(&err).then(|| registry.shed_for_descriptors());
                    // Warn at most once a second: a flood must not flood the log too.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_warning = Some(Instant::now());
                        match shed {
                            Some((cap, closed)) => {
                                tracing::warn!(listener = name, open, cap, closed, error = %err,
                                "out of file descriptors: lowered the connection cap and closed the quietest connections")
                            }
                            None => {
                                tracing::warn!(listener = name, open, error = %err, "accept failed; backing off")
                            }
                        }
                    }
                    // Never retry at once: the error would come straight back
                    // before the closed connections have released their descriptors.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_agent_itself() {
        let limits = ConnectionLimits::for_descriptor_limit(4096, 1024);
        assert_eq!(limits.max_connections, 1024 - 128);
        let limits = ConnectionLimits::for_descriptor_limit(100, 1 << 20);
        assert_eq!(limits.max_connections, 100);
        let limits = ConnectionLimits::for_descriptor_limit(100, 10);
        assert_eq!(limits.max_connections, 16);
    }

    #[tokio::test]
    async fn at_the_cap_the_quietest_connection_is_closed_for_a_newcomer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = ConnectionLimits {
            max_connections: 2,
            handshake_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        };
        let mut incoming = admit(listener, limits, "test");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_stream::StreamExt;
        let _c1 = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut first = incoming.next().await.unwrap().unwrap();
        let mut c2 = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut second = incoming.next().await.unwrap().unwrap();
        // The second speaks, so the first is the quietest.
        c2.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        second.read_exact(&mut byte).await.unwrap();
        let _c3 = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _third = incoming.next().await.unwrap().unwrap();
        let err = first.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        // The one that spoke is still open.
        c2.write_all(b"y").await.unwrap();
        second.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"y");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = ConnectionLimits {
            max_connections: 10,
            handshake_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(60),
        };
        let mut incoming = admit(listener, limits, "test");
        use tokio::io::AsyncReadExt;
        use tokio_stream::StreamExt;
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut accepted = incoming.next().await.unwrap().unwrap();
        let mut byte = [0u8; 1];
        // The reaper runs every second; the read fails once it has.
        let err = accepted.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
