//! The side-effect half: sockets, the store, tasks.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::packet::{self, DropReason, LeaseView, Plan, ReplyKind, Request, Settings};
use super::ratelimit::RateLimiter;
use crate::model::{now_ms, NetworkRecord, Selector};
use crate::state::Store;

/// How long an OFFERed address stays allocated to the client without a REQUEST.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long a DECLINEd address stays out of circulation.
pub const DECLINE_HOLD: Duration = Duration::from_secs(600);
/// How often expired leases are released.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the supervisor looks for networks to serve or stop.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Requests handled at once per network (their commits share transactions).
const IN_FLIGHT: usize = 64;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// Per-network counters: what was received and what became of it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams received.
    pub received: AtomicU64,
    /// OFFERs sent.
    pub offers: AtomicU64,
    /// ACKs sent (leases and INFORMs).
    pub acks: AtomicU64,
    /// NAKs sent.
    pub naks: AtomicU64,
    /// Leases released by the client.
    pub releases: AtomicU64,
    /// Addresses declined by clients (quarantined).
    pub declines: AtomicU64,
    /// DISCOVERs that got no offer: no free address (or the store refused).
    pub exhausted: AtomicU64,
    /// Leases and quarantines released by the expiry sweep.
    pub expired: AtomicU64,
    /// Packets dropped, by reason.
    pub dropped: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn drop_packet(&self, network: &str, reason: DropReason) {
        let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        *dropped.entry(reason.as_str()).or_default() += 1;
        tracing::debug!(network, reason = reason.as_str(), dropped = ?*dropped, "dhcp: packet dropped");
    }

    /// One line for the log: every counter.
    pub fn summary(&self) -> String {
        let dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "received {} offers {} acks {} naks {} releases {} declines {} exhausted {} expired {} dropped {:?}",
            self.received.load(Ordering::Relaxed),
            self.offers.load(Ordering::Relaxed),
            self.acks.load(Ordering::Relaxed),
            self.naks.load(Ordering::Relaxed),
            self.releases.load(Ordering::Relaxed),
            self.declines.load(Ordering::Relaxed),
            self.exhausted.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
            *dropped
        )
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Runs the DHCP servers of every network with `dhcp` set.
pub struct DhcpService {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    counters: Arc<Mutex<HashMap<String, Arc<Counters>>>>,
}

impl DhcpService {
    /// Starts the supervisor: it follows the stored networks.
    pub fn start(store: Store) -> DhcpService {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(supervise(store, stopped, counters.clone()));
        DhcpService {
            stop,
            task,
            counters,
        }
    }

    /// The counters of a network's server, while it runs.
    pub fn counters(&self, network: &str) -> Option<Arc<Counters>> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(network)
            .cloned()
    }

    /// Stops every server and the sweep; returns once they are gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What a running server was started from: a change restarts it.
#[derive(PartialEq, Eq)]
struct ServerKey {
    create_time_ms: u64,
    settings: Settings,
    bridge: String,
}

struct Running {
    key: ServerKey,
    task: JoinHandle<()>,
}

fn settings_of(record: &NetworkRecord) -> Settings {
    Settings {
        slice: record.slice,
        host_reserve: record.spec.host_reserve,
        gateway: record.gateway(),
        mtu: u16::try_from(record.effective_mtu()).unwrap_or(u16::MAX),
        lease_seconds: record.spec.dhcp_lease_seconds.max(1),
        dns: record.spec.dhcp_dns.clone(),
    }
}

async fn supervise(
    store: Store,
    mut stopped: watch::Receiver<bool>,
    counters: Arc<Mutex<HashMap<String, Arc<Counters>>>>,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let Ok(networks) = store.networks().await else {
            continue;
        };
        let wanted: HashMap<String, ServerKey> = networks
            .iter()
            .filter(|n| n.spec.dhcp)
            .map(|n| {
                (
                    n.id.clone(),
                    ServerKey {
                        create_time_ms: n.create_time_ms,
                        settings: settings_of(n),
                        bridge: n.spec.bridge.clone(),
                    },
                )
            })
            .collect();
        running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|k| *k == r.key) && !r.task.is_finished();
            if !keep {
                r.task.abort();
                tracing::info!(network = %id, bridge = %r.key.bridge, "dhcp: server stopped");
                counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
            }
            keep
        });
        for (id, key) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let c = Arc::new(Counters::default());
            counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), c.clone());
            let task = tokio::spawn(serve(
                store.clone(),
                id.clone(),
                key.bridge.clone(),
                key.settings.clone(),
                c,
            ));
            running.insert(id, Running { key, task });
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            for id in running.keys() {
                let c = counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(id)
                    .cloned();
                sweep(&store, id, c.as_deref()).await;
            }
        }
    }
    for (id, r) in running {
        r.task.abort();
        let _ = r.task.await;
        tracing::debug!(network = %id, "dhcp: server stopped at shutdown");
    }
}

/// Releases the network's DHCP leases and quarantines whose time is up.
async fn sweep(store: &Store, network: &str, counters: Option<&Counters>) {
    let now = now_ms() / 1000;
    let expired = |a: &crate::model::AllocationRecord| {
        packet::lease_expiry(&a.owner, &a.labels).is_some_and(|t| t <= now)
    };
    // Read first: most sweeps find nothing and need no transaction.
    let mut after = None;
    let mut any = false;
    loop {
        let Ok((page, more)) = store.allocations_page(network, after, 1024).await else {
            return;
        };
        any |= page.iter().any(expired);
        after = page.last().map(|a| a.address);
        if any || !more {
            break;
        }
    }
    if !any {
        return;
    }
    // The store re-checks each lease in the transaction: one renewed in
    // the meantime is kept.
    match store
        .release_where(network, "DHCP lease expired", move |a| {
            packet::lease_expiry(&a.owner, &a.labels).is_some_and(|t| t <= now)
        })
        .await
    {
        Ok(released) => {
            for a in &released {
                tracing::info!(network, address = %a.address, owner = %a.owner, "dhcp: lease expired, released");
                if let Some(c) = counters {
                    bump(&c.expired);
                }
            }
        }
        Err(err) => tracing::warn!(network, error = %err, "dhcp: lease sweep failed"),
    }
}

/// A UDP socket on port 67 that only sees (and sends on) `bridge`.
fn bind(bridge: &str) -> std::io::Result<UdpSocket> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Several networks' servers share port 67, each on its own device.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::Broadcast, &true)?;
    socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(bridge))?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, SERVER_PORT),
    )?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

struct Context {
    store: Store,
    network: String,
    settings: Settings,
    counters: Arc<Counters>,
    socket: UdpSocket,
}

async fn serve(
    store: Store,
    network: String,
    bridge: String,
    settings: Settings,
    counters: Arc<Counters>,
) {
    // The bridge appears when the data plane has programmed the network.
    let mut warned = false;
    let socket = loop {
        match bind(&bridge) {
            Ok(socket) => break socket,
            Err(err) => {
                if !warned {
                    tracing::warn!(network = %network, bridge = %bridge, error = %err, "dhcp: cannot listen on the bridge yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(network = %network, bridge = %bridge, slice = %settings.slice, lease_seconds = settings.lease_seconds, "dhcp: serving");
    let ctx = Arc::new(Context {
        store,
        network,
        settings,
        counters,
        socket,
    });
    let limiter = Mutex::new(RateLimiter::default());
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Dropped with this task: in-flight requests stop with the server.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; packet::MAX_PACKET + 1];
    loop {
        while tasks.try_join_next().is_some() {}
        let n = match ctx.socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(err) => {
                tracing::warn!(network = %ctx.network, error = %err, "dhcp: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        bump(&ctx.counters.received);
        let request = match packet::parse(&buf[..n]) {
            Ok(r) => r,
            Err(reason) => {
                ctx.counters.drop_packet(&ctx.network, reason);
                continue;
            }
        };
        let allowed = limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(request.hwaddr, Instant::now());
        if !allowed {
            ctx.counters
                .drop_packet(&ctx.network, DropReason::RateLimited);
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            handle(&ctx, request).await;
            drop(permit);
        });
    }
}

/// What the store holds about the addresses `request` is about.
async fn view(ctx: &Context, request: &Request) -> LeaseView {
    let owner = request.owner();
    let owned = ctx
        .store
        .allocation(&ctx.network, Selector::Owner(owner))
        .await
        .ok()
        .map(|a| a.address);
    let mut holders = BTreeMap::new();
    let named = [
        request.requested,
        (!request.ciaddr.is_unspecified()).then_some(request.ciaddr),
    ];
    for address in named.into_iter().flatten() {
        if let Ok(a) = ctx
            .store
            .allocation(&ctx.network, Selector::Address(address))
            .await
        {
            holders.insert(address, a.owner);
        }
    }
    LeaseView { owned, holders }
}

async fn handle(ctx: &Context, request: Request) {
    let started = Instant::now();
    let view = view(ctx, &request).await;
    let plan = packet::plan(&request, &view, &ctx.settings);
    let owner = request.owner();
    let now = now_ms() / 1000;
    let net = ctx.network.as_str();
    let c = &ctx.counters;
    match plan {
        Plan::Drop(reason) => c.drop_packet(net, reason),
        Plan::Offer { prefer } => {
            let result = match view.owned {
                // A client that holds a lease (a reboot, a lost ACK) is
                // offered it again as it stands: allocation labels are fixed,
                // and its expiry moves only when a REQUEST binds it.
                Some(address) => Ok(address),
                None => {
                    let labels =
                        packet::lease_labels("offered", now + OFFER_HOLD.as_secs(), Some(&request));
                    let mut result = ctx
                        .store
                        .allocate(net, owner.clone(), prefer, labels.clone())
                        .await;
                    if result.is_err() && prefer.is_some() {
                        // Taken in the meantime: any free address will do.
                        result = ctx.store.allocate(net, owner.clone(), None, labels).await;
                    }
                    result.map(|a| a.record.address)
                }
            };
            match result {
                Ok(address) => {
                    bump(&c.offers);
                    send(ctx, &request, ReplyKind::Offer(address), "").await;
                    tracing::debug!(network = net, owner = %owner, %address, micros = started.elapsed().as_micros() as u64, "dhcp: offer");
                }
                Err(err) => {
                    bump(&c.exhausted);
                    tracing::warn!(network = net, owner = %owner, error = %err, "dhcp: no offer");
                }
            }
        }
        Plan::Ack { address } => {
            let labels = packet::lease_labels(
                "bound",
                now + u64::from(ctx.settings.lease_seconds),
                Some(&request),
            );
            match bind_lease(ctx, &request, address, view.owned, labels).await {
                Ok(()) => {
                    bump(&c.acks);
                    send(ctx, &request, ReplyKind::Ack(address), "").await;
                    tracing::debug!(network = net, owner = %owner, %address, micros = started.elapsed().as_micros() as u64, "dhcp: ack");
                }
                Err(why) => {
                    bump(&c.naks);
                    tracing::info!(network = net, owner = %owner, %address, reason = %why, "dhcp: nak");
                    send(ctx, &request, ReplyKind::Nak, &why).await;
                }
            }
        }
        Plan::Nak { reason } => {
            bump(&c.naks);
            tracing::info!(network = net, owner = %owner, requested = ?request.requested, ciaddr = %request.ciaddr, reason, "dhcp: nak");
            send(ctx, &request, ReplyKind::Nak, reason).await;
        }
        Plan::Release { address } => {
            match ctx.store.release(net, Selector::Owner(owner.clone())).await {
                Ok(_) => {
                    bump(&c.releases);
                    tracing::info!(network = net, owner = %owner, %address, "dhcp: released by the client");
                }
                Err(err) => {
                    tracing::warn!(network = net, owner = %owner, error = %err, "dhcp: release failed")
                }
            }
        }
        Plan::Decline { address } => {
            bump(&c.declines);
            tracing::warn!(network = net, owner = %owner, %address, "dhcp: client declined the address (in use on the link?); quarantined");
            if let Err(err) = ctx.store.release(net, Selector::Owner(owner)).await {
                tracing::warn!(network = net, error = %err, "dhcp: decline: release failed");
                return;
            }
            let labels =
                packet::lease_labels("declined", now + DECLINE_HOLD.as_secs(), Some(&request));
            if let Err(err) = ctx
                .store
                .allocate(net, packet::declined_owner(address), Some(address), labels)
                .await
            {
                tracing::warn!(network = net, %address, error = %err, "dhcp: decline: cannot quarantine");
            }
        }
        Plan::Inform => {
            bump(&c.acks);
            send(ctx, &request, ReplyKind::InformAck, "").await;
        }
    }
}

/// Makes `address` the client's bound lease, durably; Err says why not.
async fn bind_lease(
    ctx: &Context,
    request: &Request,
    address: Ipv4Addr,
    owned: Option<Ipv4Addr>,
    labels: BTreeMap<String, String>,
) -> Result<(), String> {
    let owner = request.owner();
    let net = ctx.network.as_str();
    if owned != Some(address) {
        let a = ctx
            .store
            .allocate(net, owner.clone(), Some(address), labels.clone())
            .await
            .map_err(|e| e.to_string())?;
        if a.record.address != address {
            return Err(format!("client holds {}", a.record.address));
        }
        if a.newly_allocated {
            return Ok(());
        }
    }
    ctx.store
        .relabel(net, owner, address, labels)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn send(ctx: &Context, request: &Request, kind: ReplyKind, message: &str) {
    let bytes = packet::reply(request, kind, &ctx.settings, message);
    if bytes.is_empty() {
        return;
    }
    // A client with an address (renewing, INFORM) gets unicast; one
    // without gets a broadcast on the bridge (no ARP entry needed), as do
    // NAKs.
    let to = match kind {
        ReplyKind::Nak => Ipv4Addr::BROADCAST,
        _ if !request.ciaddr.is_unspecified() => request.ciaddr,
        _ => Ipv4Addr::BROADCAST,
    };
    let to = SocketAddr::V4(SocketAddrV4::new(to, CLIENT_PORT));
    if let Err(err) = ctx.socket.send_to(&bytes, to).await {
        tracing::warn!(network = %ctx.network, %to, error = %err, "dhcp: send failed");
    }
}
