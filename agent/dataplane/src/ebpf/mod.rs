//! The `ebpf` backend: IPIP (RFC 2003) encapsulation by tc eBPF programs,
//! for kernels without the ipip module or Ubuntu's fan patch.
//!
//! What `apply` builds for a network with index N:
//!
//! - the tunnel device `fantunN`, one end of a veth pair (peer `fantunNp`),
//!   ARP off, MTU `plan.mtu`, up, with ifalias `fan:<network_id>`;
//! - the route `plan.overlay dev fantunN src plan.gateway proto 250`
//!   ([`ROUTE_PROTOCOL`]);
//! - `fan_encap` on egress of `fantunN` and `fan_decap` on ingress of the
//!   underlay device, as cls_bpf filters (priority [`tc_priority`]`(N)`,
//!   handle [`TC_HANDLE`]) under a clsact qdisc. Netlink filters, not TCX
//!   links, so the data path survives the agent process;
//! - with the egress fast path on (default; off with
//!   [`EbpfBackend::with_egress_fast_path`]), `fan_fastpath` on ingress of the
//!   network's bridge and of each of its ports (see [`ports`]: learned from
//!   the kernel, as they appear; on a netkit port the program runs in the
//!   container's transmit instead, see [`netkit`]), same priority and handle: container packets for a
//!   remote slice are encapsulated there and redirected to the underlay
//!   device, skipping the host's routing, FORWARD chain and the tunnel
//!   device; everything else (the outside, TTL 1, too big for the tunnel,
//!   IP options, fragments) goes on to the stack and the tunnel device as
//!   before (the slow path);
//! - the maps `fan_config`, `fan_counters`, `fan_endpoints`, pinned in
//!   `<pin_root>/<network_id>/` (a private bpffs is mounted on the pin root
//!   when it is not bpffs already).
//!
//! `apply` adopts what it finds: the same program stays attached, a
//! different one is swapped in place in the same filter, and the pinned maps
//! (counters included) are reused; it never stacks a second filter.
//!
//! Delivery after decapsulation: destinations in the endpoint map go straight
//! into the container namespace with `bpf_redirect_peer` (see [`endpoints`]:
//! this bypasses the host's FORWARD chain and bridge netfilter); the rest
//! enters the stack as if received on the tunnel device, like packets of an
//! ipip device, so strict rp_filter and `-i fantunN` firewall rules work.

pub mod big_tcp;
pub mod endpoints;
pub mod maps;
pub mod netkit;
pub mod next_hop;
mod observe;
pub mod pin;
pub mod ports;
mod prog_info;
pub mod tc;
pub mod tunnel;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use async_trait::async_trait;
use aya::maps::{Array, Map, MapData, MapInfo, PerCpuArray};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use tracing::{debug, info, warn};

use crate::host::Errors;
use crate::netlink::{Link, Netlink, NetlinkSlot};
use crate::{
    Availability, BackendKind, Counters, DataplaneError, Encapsulation, NetworkPlan, Observation,
    Result,
};

use maps::{
    FanConfig, AGENT_OWNS_UNDERLAY_CLSACT, CONFIG_MAP, COUNTERS_MAP, FLAG_EGRESS_FASTPATH,
    FLAG_PEER_FASTPATH, FLAG_UNDERLAY_ON_LINK,
};
use tc::{error_chain, Hook};

pub use tc::TC_HANDLE;
pub use tunnel::{tunnel_name, tunnel_peer_name};

/// Route protocol number marking the agent's routes (re-exported from the crate root).
pub use crate::ROUTE_PROTOCOL;

/// The default pin root of a host agent.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/fan";

/// Program attached on egress of the tunnel device.
pub const ENCAP_PROGRAM: &str = "fan_encap";
/// Program attached on ingress of the underlay device.
pub const DECAP_PROGRAM: &str = "fan_decap";
/// Program attached on ingress of the network's bridge (egress fast path).
pub const FASTPATH_PROGRAM: &str = "fan_fastpath";

/// Base of the tc priorities; network N uses `TC_PRIORITY_BASE + N`.
pub const TC_PRIORITY_BASE: u16 = 0xfa00;
/// Networks per host the priority range allows.
pub const MAX_NETWORK_INDEX: u16 = 0x04ff;

/// The compiled programs (agent/bpf/fan.bpf.c, built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fan.bpf.o"));

/// The tc filter priority of network `index` (same on both hooks).
pub fn tc_priority(index: u16) -> Result<u16> {
    if index > MAX_NETWORK_INDEX {
        return Err(DataplaneError::other(
            "eBPF tc priority",
            format!("network index {index} above {MAX_NETWORK_INDEX}"),
        ));
    }
    Ok(TC_PRIORITY_BASE + index)
}

fn other(context: impl Into<String>, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::other(context, e)
}

/// Loads the object: maps pinned in (or reused from) `pin_dir` when given,
/// encap and decap loaded (verified) but not attached. The fast-path program
/// is loaded on demand ([`load_fast_path`]): it needs Linux 5.12
/// (`bpf_check_mtu`), the rest of the backend 5.10.
fn load_object(pin_dir: Option<&Path>) -> Result<Ebpf> {
    let loader = match pin_dir {
        Some(_) => &PINNED_LOADER,
        None => &PROBE_LOADER,
    };
    let mut loader = loader.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = pin_dir {
        // Every map's path, every time: nothing of the last network's stays.
        for name in maps::ALL_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let object_phase = crate::timing::phase("ebpf.load.object");
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| other("load eBPF object", error_chain(&e)))?;
    drop(object_phase);
    drop(loader);
    let _programs_phase = crate::timing::phase("ebpf.load.verify");
    for name in [ENCAP_PROGRAM, DECAP_PROGRAM] {
        program(&mut ebpf, name)?
            .load()
            .map_err(|e| other(format!("load program {name}"), error_chain(&e)))?;
    }
    Ok(ebpf)
}

/// A loader without kernel BTF. The programs use only the stable
/// __sk_buff context and packet data, so no CO-RE relocation needs it; but
/// `EbpfLoader::new` parses /sys/kernel/btf/vmlinux all the same (~20 ms
/// and ~20 MiB each time), so a loader is made once per process and reused.
fn loader_without_btf() -> Mutex<EbpfLoader<'static>> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    Mutex::new(loader)
}

/// The loader of the networks' objects (their pin paths are set on each use).
static PINNED_LOADER: LazyLock<Mutex<EbpfLoader<'static>>> = LazyLock::new(loader_without_btf);
/// The loader of the availability probe (no pins).
static PROBE_LOADER: LazyLock<Mutex<EbpfLoader<'static>>> = LazyLock::new(loader_without_btf);

fn load_fast_path(ebpf: &mut Ebpf) -> Result<()> {
    let _phase = crate::timing::phase("ebpf.load.verify");
    program(ebpf, FASTPATH_PROGRAM)?
        .load()
        .map_err(|e| other(format!("load program {FASTPATH_PROGRAM}"), error_chain(&e)))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| other("eBPF object", format!("no program {name}")))?
        .try_into()
        .map_err(|e| other(format!("program {name}"), e))
}

/// Expected (key size, value size, max entries) of each pinned map.
fn expected_shape(name: &str) -> (u32, u32, u32) {
    match name {
        CONFIG_MAP => (4, std::mem::size_of::<FanConfig>() as u32, 1),
        COUNTERS_MAP => (4, 8, maps::slot::COUNT),
        _ => (4, std::mem::size_of::<maps::Endpoint>() as u32, 16384),
    }
}

/// Unpins maps whose shape does not match this build (left by another
/// version); aya would otherwise reuse them and the programs would misread.
fn drop_incompatible_pins(dir: &Path) {
    for name in maps::ALL_MAPS {
        let path = dir.join(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
            continue;
        };
        let shape = (info.key_size(), info.value_size(), info.max_entries());
        if shape != expected_shape(name) {
            warn!(map = %path.display(), ?shape, "pinned map has another layout; replacing it");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// True when every map is pinned with this build's layout.
fn pins_compatible(dir: &Path) -> bool {
    maps::ALL_MAPS.iter().all(|name| {
        MapInfo::from_pin(dir.join(name)).is_ok_and(|info| {
            (info.key_size(), info.value_size(), info.max_entries()) == expected_shape(name)
        })
    })
}

/// Serialises writes of config maps: an apply writes the whole config, the
/// endpoint refresher one flag of it (read, change, write).
static CONFIG_WRITES: Mutex<()> = Mutex::new(());

/// Writes `config` (keeping the agent flags recorded before) unless the map
/// already holds it.
fn set_config<T: std::borrow::BorrowMut<MapData>>(
    array: &mut Array<T, FanConfig>,
    mut config: FanConfig,
    network_id: &str,
) -> Result<()> {
    let _writing = CONFIG_WRITES.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(previous) = array.get(&0, 0) {
        config.agent_flags |= previous.agent_flags;
        if previous == config {
            return Ok(());
        }
    }
    array
        .set(0, config, 0)
        .map_err(|e| other(format!("write config of network {network_id}"), e))
}

/// Says when the fast path starts or stops giving the kernel the next hop.
fn log_on_link(network_id: &str, before: bool, after: &std::result::Result<(), String>) {
    match after {
        Ok(()) if !before => {
            info!(network = %network_id, "underlay on-link: the fast path gives the kernel the next hop")
        }
        Err(why) if before => {
            info!(network = %network_id, reason = %why, "fast path: the kernel looks the underlay route up again")
        }
        _ => debug!(network = %network_id, on_link = after.is_ok(), "underlay next hop unchanged"),
    }
}

/// Follows the routing in the pinned configs of `networks` (pin directory,
/// network id): sets or clears [`FLAG_UNDERLAY_ON_LINK`] (see [`next_hop`]).
/// The tables are read under the config lock, so whichever writer comes
/// last also read last: a verdict from an older read never overwrites a
/// newer one. For the endpoint refresher and the end of an apply.
pub fn follow_routing(nl: &Netlink, networks: &[(&Path, &str)]) {
    let _writing = CONFIG_WRITES.lock().unwrap_or_else(|p| p.into_inner());
    let routing = nl.ipv4_routing_now();
    if let Err(e) = &routing {
        warn!(error = %e, "routing tables unreadable; the kernel looks the underlay up");
    }
    for (pin_dir, network_id) in networks {
        if let Err(e) = follow_one(pin_dir, network_id, routing.as_ref().ok()) {
            warn!(network = %network_id, error = %e, "following the routing failed");
        }
    }
}

fn follow_one(
    pin_dir: &Path,
    network_id: &str,
    routing: Option<&crate::netlink::RoutingView>,
) -> Result<()> {
    let context = || format!("follow routing in config of network {network_id}");
    let mut array = open_config(pin_dir).map_err(|e| other(context(), e))?;
    let config = array.get(&0, 0).map_err(|e| other(context(), e))?;
    let mut followed = config;
    let verdict = next_hop::set_flag(&mut followed, routing);
    if followed != config {
        log_on_link(
            network_id,
            config.flags & FLAG_UNDERLAY_ON_LINK != 0,
            &verdict,
        );
        array.set(0, followed, 0).map_err(|e| other(context(), e))?;
    }
    Ok(())
}

/// The config map pinned in `pin_dir`, opened.
fn open_config(pin_dir: &Path) -> std::result::Result<Array<MapData, FanConfig>, String> {
    let data = MapData::from_pin(pin_dir.join(CONFIG_MAP)).map_err(|e| e.to_string())?;
    let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
    Array::try_from(map).map_err(|e| e.to_string())
}

fn read_config(pin_dir: &Path) -> Option<FanConfig> {
    open_config(pin_dir).ok()?.get(&0, 0).ok()
}

fn read_counter_slots(pin_dir: &Path) -> Result<Vec<u64>> {
    let path = pin_dir.join(COUNTERS_MAP);
    let context = || format!("read counters {}", path.display());
    let data = MapData::from_pin(&path).map_err(|e| other(context(), e))?;
    let map = Map::from_map_data(data).map_err(|e| other(context(), e))?;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| other(context(), e))?;
    (0..array.len())
        .map(|i| {
            array
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .map_err(|e| other(context(), e))
        })
        .collect()
}

/// The programs' config of the network pinned in `pin_dir`, if any: for
/// diagnostics and tests (which fast paths the agent switched on).
pub fn pinned_config(pin_dir: &Path) -> Option<FanConfig> {
    read_config(pin_dir)
}

/// The counter slots ([`maps::slot`]) of the network pinned in `pin_dir`
/// (`<pin root>/<network id>`), summed over CPUs: for diagnostics and tests
/// that must tell which program counted, e.g.
/// [`maps::slot::FAST_PATH_ENCAPSULATED`].
pub fn pinned_counter_slots(pin_dir: &Path) -> Result<Vec<u64>> {
    read_counter_slots(pin_dir)
}

fn pinned_map_ids(pin_dir: &Path) -> Option<BTreeSet<u32>> {
    maps::ALL_MAPS
        .iter()
        .map(|name| MapInfo::from_pin(pin_dir.join(name)).ok().map(|i| i.id()))
        .collect()
}

/// True when program `prog_id` uses only pinned maps, the config among them
/// (each program uses a subset: encap has no endpoint map).
fn uses_pinned_maps(prog_id: u32, pinned: Option<&BTreeSet<u32>>, config_id: Option<u32>) -> bool {
    let (Some(pinned), Some(config_id)) = (pinned, config_id) else {
        return false;
    };
    program_map_ids(prog_id).is_some_and(|ids| ids.contains(&config_id) && ids.is_subset(pinned))
}

fn config_map_id(pin_dir: &Path) -> Option<u32> {
    MapInfo::from_pin(pin_dir.join(CONFIG_MAP))
        .ok()
        .map(|i| i.id())
}

/// The ids of the maps program `prog_id` uses.
fn program_map_ids(prog_id: u32) -> Option<BTreeSet<u32>> {
    prog_info::map_ids(prog_id)
}

/// What to do with one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttachAction {
    Keep,
    Replace,
    Create,
}

fn decide(
    existing: Option<&tc::Filter>,
    tag: u64,
    maps_match: impl Fn(u32) -> bool,
) -> AttachAction {
    match existing {
        None => AttachAction::Create,
        Some(f) => {
            let same_program = f.tag == Some(tag) && f.prog_id.is_some_and(&maps_match);
            if same_program {
                AttachAction::Keep
            } else {
                AttachAction::Replace
            }
        }
    }
}

/// One hook the backend owns: which program on which device.
struct HookSite<'a> {
    program: &'static str,
    interface: &'a str,
    ifindex: u32,
    hook: Hook,
}

/// What [`EbpfBackend::load_and_attach`] did.
struct Attached {
    /// The fast-path filter runs on the bridge.
    fast: bool,
}

fn describe_hook(site: &HookSite<'_>) -> String {
    format!(
        "tc filter {} on {} {}",
        site.program,
        site.interface,
        site.hook.as_str()
    )
}

/// The tc eBPF IPIP backend. See the module docs for what it builds.
#[derive(Debug)]
pub struct EbpfBackend {
    pin_root: PathBuf,
    peer_fast_path: bool,
    egress_fast_path: bool,
    /// Container ports follow the underlay's IPv4 GSO/GRO limits.
    big_tcp: bool,
    /// Set once this kernel refused the fast-path program: the slow path
    /// carries everything and `observe` stops expecting the filter.
    egress_fast_path_unsupported: AtomicBool,
    /// The programs' tags, known once each was loaded (the same for every
    /// network of this build).
    program_tags: Mutex<HashMap<&'static str, u64>>,
    /// The networks whose fast-path endpoint maps the refresher keeps in sync.
    synced: endpoints::Registry,
    /// The bridge ports running the egress fast path, per network.
    ports_running: endpoints::PortsRunning,
    /// The one task doing that for all of them (started with the first).
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The data plane's connection (or one per operation).
    netlink: NetlinkSlot,
}

impl EbpfBackend {
    /// A backend pinning its maps under `pin_root` (e.g. [`DEFAULT_PIN_ROOT`]).
    /// Agents sharing a mount namespace need distinct roots.
    pub fn new(pin_root: PathBuf) -> Self {
        EbpfBackend {
            pin_root,
            peer_fast_path: true,
            egress_fast_path: true,
            big_tcp: true,
            egress_fast_path_unsupported: AtomicBool::new(false),
            program_tags: Mutex::new(HashMap::new()),
            synced: Default::default(),
            ports_running: Default::default(),
            refresher: Mutex::new(None),
            netlink: NetlinkSlot::default(),
        }
    }

    /// Turns the `bpf_redirect_peer` fast path on (default) or off. Off,
    /// every decapsulated packet goes through the host stack and bridge
    /// (firewall-visible, but super-packets are segmented in software).
    pub fn with_peer_fast_path(mut self, on: bool) -> Self {
        self.peer_fast_path = on;
        self
    }

    /// Turns the egress fast path on (default) or off. Off, container
    /// packets for remote slices take the slow path: the host's routing and
    /// FORWARD chain, then `fan_encap` on the tunnel device.
    pub fn with_egress_fast_path(mut self, on: bool) -> Self {
        self.egress_fast_path = on;
        self
    }

    /// Lets container ports follow the underlay device's IPv4 GSO/GRO
    /// limits (default), or leaves them as their runtime made them. See
    /// [`big_tcp`].
    pub fn with_big_tcp(mut self, on: bool) -> Self {
        self.big_tcp = on;
        self
    }

    /// Whether the egress fast path is wanted and this kernel runs it.
    fn egress_fast_path_active(&self) -> bool {
        self.egress_fast_path && !self.egress_fast_path_unsupported.load(Ordering::Relaxed)
    }

    /// The pin root.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Where the network's maps are pinned: `<pin_root>/<network_id>`.
    pub fn pin_dir(&self, plan: &NetworkPlan) -> Result<PathBuf> {
        pin::network_dir(&self.pin_root, &plan.network_id)
    }

    /// Re-reads the bridge's neighbours and FDB and syncs the fast-path
    /// endpoint map; returns how many containers the fast path now reaches.
    /// `apply` starts a task doing this on netlink events; call this when
    /// the runtime does not run continuously (tests) or to force a sync.
    pub async fn refresh_endpoints(&self, plan: &NetworkPlan) -> Result<usize> {
        let nl = self.netlink.get()?;
        endpoints::refresh(&nl, plan, &self.pin_dir(plan)?).await
    }

    /// The network's counters, summed over CPUs, from the pinned map.
    pub fn counters(&self, plan: &NetworkPlan) -> Result<Counters> {
        Ok(maps::counters_from_slots(&read_counter_slots(
            &self.pin_dir(plan)?,
        )?))
    }

    /// Decapsulated packets delivered by the peer fast path (a diagnostic).
    pub fn peer_redirected(&self, plan: &NetworkPlan) -> Result<u64> {
        let slots = read_counter_slots(&self.pin_dir(plan)?)?;
        Ok(slots
            .get(maps::slot::PEER_REDIRECTED as usize)
            .copied()
            .unwrap_or(0))
    }

    /// Packets the egress fast path encapsulated (also counted in
    /// `encapsulated`; a diagnostic).
    pub fn fast_path_encapsulated(&self, plan: &NetworkPlan) -> Result<u64> {
        let slots = read_counter_slots(&self.pin_dir(plan)?)?;
        Ok(slots
            .get(maps::slot::FAST_PATH_ENCAPSULATED as usize)
            .copied()
            .unwrap_or(0))
    }

    fn stop_refresher(&self, network_id: &str) {
        let now_empty = {
            let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            synced.remove(network_id);
            synced.is_empty()
        };
        if now_empty {
            // No network left: the task and its socket go.
            if let Some(task) = self.lock_refresher().take() {
                task.abort();
            }
        }
    }

    fn lock_refresher(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        // A panic elsewhere must not stop teardown: the slot stays usable.
        self.refresher.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_refresher(&self, want: endpoints::Followed) -> Result<()> {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(want.plan.network_id.clone(), want);
        let mut task = self.lock_refresher();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        // A connection of its own: its dumps run outside the data plane's
        // serialization, and one socket allows one dump at a time.
        *task = Some(endpoints::spawn_refresher(
            Netlink::new()?,
            self.synced.clone(),
            self.ports_running.clone(),
        )?);
        Ok(())
    }

    fn lock_tags(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, u64>> {
        self.program_tags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the programs, writes the config and attaches or adopts the
    /// encap and decap filters, and the fast-path filter when `fast` is
    /// given. Skips the load when every one of those filters already runs
    /// this build's program on the pinned maps. Synchronous: aya objects
    /// never cross an await point.
    #[allow(clippy::too_many_arguments)]
    fn load_and_attach(
        &self,
        plan: &NetworkPlan,
        pin_dir: &Path,
        mut config: FanConfig,
        encap: &HookSite<'_>,
        encap_existing: Option<&tc::Filter>,
        decap: &HookSite<'_>,
        decap_existing: Option<&tc::Filter>,
        fast: Option<(&HookSite<'_>, Option<&tc::Filter>)>,
    ) -> Result<Attached> {
        // Every filter already runs this build's program on the pinned maps
        // (every reconcile pass, for every network): only the config may
        // need writing, and loading (verifying) the object again is skipped.
        // A program whose tag is not known yet (never loaded) means a load.
        let kept = {
            let tags = self.lock_tags();
            let pinned = pinned_map_ids(pin_dir);
            let config_id = config_map_id(pin_dir);
            let maps_match = |prog_id: u32| uses_pinned_maps(prog_id, pinned.as_ref(), config_id);
            [(encap, encap_existing), (decap, decap_existing)]
                .into_iter()
                .chain(fast)
                .all(|(site, existing)| {
                    tags.get(site.program)
                        .is_some_and(|tag| decide(existing, *tag, maps_match) == AttachAction::Keep)
                })
        };
        let program_pinned = fast.is_none() || pin_dir.join(ports::PROGRAM_PIN).exists();
        if kept && program_pinned && pins_compatible(pin_dir) {
            let mut array = open_config(pin_dir)
                .map_err(|e| other(format!("write config of network {}", plan.network_id), e))?;
            set_config(&mut array, config, &plan.network_id)?;
            debug!(network = %plan.network_id, "programs unchanged, kept");
            return Ok(Attached {
                fast: fast.is_some(),
            });
        }

        let load_phase = crate::timing::phase("ebpf.load");
        let pins_phase = crate::timing::phase("ebpf.load.pins");
        drop_incompatible_pins(pin_dir);
        drop(pins_phase);
        let mut ebpf = load_object(Some(pin_dir))?;
        let fast = match fast {
            Some(site) => match load_fast_path(&mut ebpf) {
                Ok(()) => Some(site),
                Err(e) => {
                    // The slow path carries everything; say so once.
                    warn!(network = %plan.network_id, error = %e,
                        "egress fast path unavailable on this kernel; using the slow path");
                    self.egress_fast_path_unsupported
                        .store(true, Ordering::Relaxed);
                    config.flags &= !(FLAG_EGRESS_FASTPATH | FLAG_UNDERLAY_ON_LINK);
                    None
                }
            },
            None => None,
        };

        // Config before attach: a new filter never runs unconfigured.
        {
            let _phase = crate::timing::phase("ebpf.load.config");
            let map = ebpf
                .map_mut(CONFIG_MAP)
                .ok_or_else(|| other("eBPF object", "no config map"))?;
            let mut array: Array<&mut MapData, FanConfig> =
                Array::try_from(map).map_err(|e| other("config map", e))?;
            set_config(&mut array, config, &plan.network_id)?;
        }

        drop(load_phase);
        let _attach_phase = crate::timing::phase("ebpf.attach");
        let pinned = pinned_map_ids(pin_dir);
        let config_id = config_map_id(pin_dir);
        let maps_match = |prog_id: u32| uses_pinned_maps(prog_id, pinned.as_ref(), config_id);
        let priority = tc_priority(plan.index)?;
        let mut tags = HashMap::new();
        let sites = [(encap, encap_existing), (decap, decap_existing)]
            .into_iter()
            .chain(fast);
        for (site, existing) in sites {
            let prog = program(&mut ebpf, site.program)?;
            let tag = prog
                .info()
                .map_err(|e| other(format!("program {}", site.program), e))?
                .tag();
            tags.insert(site.program, tag);
            match decide(existing, tag, maps_match) {
                AttachAction::Keep => {
                    debug!(filter = %describe_hook(site), "program unchanged, kept")
                }
                action => {
                    tc::attach(
                        prog,
                        site.interface,
                        site.hook,
                        priority,
                        action == AttachAction::Replace,
                    )?;
                    info!(filter = %describe_hook(site), ?action, network = %plan.network_id, "attached");
                }
            }
        }
        // Tags do not depend on the maps a program was loaded with: the
        // same for every network of this build.
        self.lock_tags().extend(tags);
        // For the bridge ports, now and as they appear.
        if fast.is_some() {
            ports::pin_program(program(&mut ebpf, FASTPATH_PROGRAM)?, pin_dir)?;
        }
        // Dropping `ebpf` closes our fds: filters hold the programs, pins the maps.
        Ok(Attached {
            fast: fast.is_some(),
        })
    }

    async fn underlay_link(nl: &Netlink, plan: &NetworkPlan) -> Result<Link> {
        nl.link_by_name(&plan.underlay_interface)
            .await?
            .ok_or_else(|| {
                other(
                    format!("underlay device {}", plan.underlay_interface),
                    "no such device",
                )
            })
    }

    /// Our filter on a hook (priority and handle ours, cls_bpf, our program
    /// name), plus any other filters of ours at that priority (duplicates).
    fn ours<'a>(
        filters: &'a [tc::Filter],
        priority: u16,
        program: &str,
    ) -> (Option<&'a tc::Filter>, Vec<&'a tc::Filter>) {
        let mut main = None;
        let mut extra = Vec::new();
        for f in filters
            .iter()
            .filter(|f| f.priority == priority && f.kind == "bpf")
        {
            if f.handle == TC_HANDLE && main.is_none() {
                main = Some(f);
            } else if f.name.as_deref() == Some(program) {
                extra.push(f);
            }
        }
        (main, extra)
    }
}

impl Drop for EbpfBackend {
    fn drop(&mut self) {
        // Only the endpoint sync stops; filters and pins stay (restart-safe).
        if let Some(task) = self.lock_refresher().take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Encapsulation for EbpfBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ebpf
    }

    fn use_netlink(&self, netlink: &Netlink) {
        self.netlink.set(netlink);
    }

    async fn availability(&self) -> Availability {
        // The agent probes at start: the networks' loader is made then
        // too, not on the first create.
        LazyLock::force(&PINNED_LOADER);
        // Loading both programs makes the verifier check the program type
        // and every helper (skb_adjust_room, redirect_neigh, redirect_peer).
        let (available, reason) = match load_object(None) {
            Ok(_) => (
                true,
                "tc eBPF programs load (sched_cls, skb_adjust_room, redirect_neigh, redirect_peer)"
                    .to_string(),
            ),
            Err(e) => (
                false,
                format!("cannot load the tc eBPF programs (needs root/CAP_BPF+CAP_NET_ADMIN and Linux >= 5.10): {e}"),
            ),
        };
        Availability {
            backend: BackendKind::Ebpf,
            available,
            reason,
        }
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<()> {
        let mut config = maps::config_from_plan(plan)?;
        let priority = tc_priority(plan.index)?;
        let pin_dir = self.pin_dir(plan)?;
        pin::ensure_bpffs(&self.pin_root)?;
        std::fs::create_dir_all(&pin_dir)
            .map_err(|e| other(format!("create {}", pin_dir.display()), e))?;
        let previous = read_config(&pin_dir);

        let tunnel_phase = crate::timing::phase("ebpf.tunnel");
        let nl = self.netlink.get()?;
        let underlay = Self::underlay_link(&nl, plan).await?;
        let tunnel = tunnel::ensure_tunnel(&nl, plan).await?;
        let tunnel_mac = tunnel.mac.ok_or_else(|| {
            other(
                format!("tunnel device {}", tunnel.name),
                "no Ethernet address",
            )
        })?;

        // The underlay device changed (renamed, replaced): our filter on
        // the old one must not linger.
        if let Some(prev) = previous {
            if prev.underlay_ifindex != 0 && prev.underlay_ifindex != underlay.index {
                let _ = tc::delete_filter(
                    nl.handle(),
                    prev.underlay_ifindex,
                    Hook::Ingress,
                    priority,
                    TC_HANDLE,
                )
                .await;
            }
        }

        drop(tunnel_phase);
        let tc_phase = crate::timing::phase("ebpf.tc_list");
        tc::ensure_clsact(nl.handle(), tunnel.index).await?;
        if tc::ensure_clsact(nl.handle(), underlay.index).await? {
            config.agent_flags |= AGENT_OWNS_UNDERLAY_CLSACT;
        }
        config.underlay_ifindex = underlay.index;
        config.tunnel_ifindex = tunnel.index;
        config.tunnel_mac = tunnel_mac;
        if self.peer_fast_path {
            config.flags |= FLAG_PEER_FASTPATH;
        }
        let fast_path = self.egress_fast_path_active();
        let bridge = nl
            .link_by_name(&plan.bridge)
            .await?
            .ok_or_else(|| other(format!("bridge {}", plan.bridge), "no such device"))?;
        config.bridge_mac = bridge.mac.unwrap_or_default();
        if fast_path {
            config.flags |= FLAG_EGRESS_FASTPATH;
            tc::ensure_clsact(nl.handle(), bridge.index).await?;
        }
        if fast_path {
            // Kept as it is until `follow_routing` below decides from a
            // fresh read, under the config lock.
            config.flags |= previous.map_or(0, |p| p.flags & FLAG_UNDERLAY_ON_LINK);
        }

        let encap = HookSite {
            program: ENCAP_PROGRAM,
            interface: &tunnel.name,
            ifindex: tunnel.index,
            hook: Hook::Egress,
        };
        let decap = HookSite {
            program: DECAP_PROGRAM,
            interface: &plan.underlay_interface,
            ifindex: underlay.index,
            hook: Hook::Ingress,
        };
        let encap_filters =
            tc::list_filters_at(nl.handle(), encap.ifindex, encap.hook, priority).await?;
        let decap_filters =
            tc::list_filters_at(nl.handle(), decap.ifindex, decap.hook, priority).await?;
        let (encap_main, encap_extra) = Self::ours(&encap_filters, priority, ENCAP_PROGRAM);
        let (decap_main, decap_extra) = Self::ours(&decap_filters, priority, DECAP_PROGRAM);
        // Duplicates at our priority (older versions, manual attaches) go.
        for (site, extra) in [(&encap, &encap_extra), (&decap, &decap_extra)] {
            for f in extra.iter() {
                warn!(filter = %describe_hook(site), handle = f.handle, "removing duplicate filter");
                tc::delete_filter(nl.handle(), site.ifindex, site.hook, f.priority, f.handle)
                    .await?;
            }
        }

        let fast = HookSite {
            program: FASTPATH_PROGRAM,
            interface: &plan.bridge,
            ifindex: bridge.index,
            hook: Hook::Ingress,
        };
        let fast_filters =
            tc::list_filters_at(nl.handle(), fast.ifindex, fast.hook, priority).await?;
        let (fast_main, fast_extra) = Self::ours(&fast_filters, priority, FASTPATH_PROGRAM);
        if !fast_path {
            // Switched off: our filter on the bridge goes (the config flag
            // already makes it pass everything).
            for f in fast_main.iter().copied().chain(fast_extra.iter().copied()) {
                tc::delete_filter(nl.handle(), fast.ifindex, fast.hook, f.priority, f.handle)
                    .await?;
            }
        } else {
            for f in fast_extra.iter() {
                warn!(filter = %describe_hook(&fast), handle = f.handle, "removing duplicate filter");
                tc::delete_filter(nl.handle(), fast.ifindex, fast.hook, f.priority, f.handle)
                    .await?;
            }
        }

        drop(tc_phase);
        let attached = self.load_and_attach(
            plan,
            &pin_dir,
            config,
            &encap,
            encap_main,
            &decap,
            decap_main,
            fast_path.then_some((&fast, fast_main)),
        )?;
        if fast_path && !attached.fast {
            for f in fast_main.into_iter() {
                tc::delete_filter(nl.handle(), fast.ifindex, fast.hook, f.priority, f.handle)
                    .await?;
            }
        }
        // The next hop: decided here, after our write, so that a route or
        // rule change the refresher followed meanwhile is not undone.
        if attached.fast {
            follow_routing(&nl, &[(pin_dir.as_path(), plan.network_id.as_str())]);
        }

        // The route last: traffic reaches the tunnel only once encap is there.
        let route_phase = crate::timing::phase("ebpf.route");
        tunnel::ensure_route(&nl, plan, tunnel.index).await?;
        drop(route_phase);
        let _endpoints_phase = crate::timing::phase("ebpf.endpoints");

        // Endpoints and ports are synced on every apply (a create, or a
        // reconcile pass that found drift): reading this bridge's tables
        // costs what its containers cost, whatever else the host runs.
        let follow = endpoints::Followed {
            plan: plan.clone(),
            pin_dir: pin_dir.clone(),
            endpoints: self.peer_fast_path,
            ports: attached.fast.then_some(priority),
            big_tcp: self.big_tcp,
        };
        {
            if self.big_tcp {
                endpoints::reread_underlay(&nl, &plan.underlay_interface).await;
            }
            match endpoints::Snapshot::take_for(&nl, plan).await {
                Ok(snapshot) => {
                    if self.peer_fast_path {
                        let desired = snapshot.endpoints(plan);
                        if let Err(e) = endpoints::write_map(&pin_dir, &desired) {
                            // The slow path still delivers everything.
                            warn!(network = %plan.network_id, error = %e, "fast-path endpoint sync failed");
                        }
                    }
                    let bridge_ports = snapshot.bridge_ports(plan);
                    if attached.fast {
                        // Every port checked (a reload replaced the program).
                        let none = Default::default();
                        match ports::attach(&nl, &bridge_ports, &pin_dir, priority, &none).await {
                            Ok(done) => {
                                endpoints::lock_ports(&self.ports_running)
                                    .insert(plan.network_id.clone(), done.into_iter().collect());
                            }
                            // The filter on the bridge carries their traffic.
                            Err(e) => {
                                warn!(network = %plan.network_id, error = %e, "egress fast path on bridge ports failed")
                            }
                        }
                    } else {
                        endpoints::lock_ports(&self.ports_running).remove(&plan.network_id);
                        ports::detach(&nl, &bridge_ports, priority).await?;
                    }
                    if self.big_tcp {
                        let resizes = snapshot.big_tcp_resizes(plan);
                        big_tcp::apply(&nl, &plan.network_id, &resizes).await;
                    }
                }
                Err(e) => {
                    warn!(network = %plan.network_id, error = %e, "fast-path endpoint sync failed")
                }
            }
        }
        if follow.endpoints || follow.ports.is_some() || follow.big_tcp {
            self.ensure_refresher(follow)?;
        } else {
            self.stop_refresher(&plan.network_id);
        }
        Ok(())
    }

    async fn observe(&self, plan: &NetworkPlan) -> Result<Observation> {
        let priority = tc_priority(plan.index)?;
        let pin_dir = self.pin_dir(plan)?;
        let nl = self.netlink.get()?;
        let mut drifts = observe::Drifts::default();
        let tunnel = observe::tunnel_device(&nl, plan, &mut drifts).await;
        observe::overlay_route(&nl, plan, tunnel.as_ref(), &mut drifts).await?;
        let maps_present = observe::pinned_maps(&pin_dir, &mut drifts);
        let underlay = nl.link_by_name(&plan.underlay_interface).await?;
        let routing = nl.ipv4_routing().ok();
        self.observe_config(
            plan,
            &pin_dir,
            underlay.as_ref(),
            tunnel.as_ref(),
            routing.as_ref(),
            &mut drifts,
        );
        self.observe_filters(
            &nl,
            plan,
            &pin_dir,
            priority,
            maps_present,
            tunnel.as_ref(),
            underlay.as_ref(),
            &mut drifts,
        )
        .await?;
        let counters = read_counter_slots(&pin_dir)
            .ok()
            .map(|slots| maps::counters_from_slots(&slots));
        Ok(Observation {
            drifts: drifts.0,
            counters,
        })
    }

    async fn remove(&self, plan: &NetworkPlan) -> Result<()> {
        self.stop_refresher(&plan.network_id);
        endpoints::lock_ports(&self.ports_running).remove(&plan.network_id);
        let mut errors = Errors::new();
        let priority = tc_priority(plan.index)?;
        let pin_dir = self.pin_dir(plan)?;
        let config = read_config(&pin_dir);
        let nl = self.netlink.get()?;

        errors.record(tunnel::delete_route(&nl, plan).await);

        // Decap filter on the underlay: the plan's device and the one the
        // config recorded (in case it was renamed).
        let mut underlay_indexes = Vec::new();
        if let Some(Some(link)) = errors.record(nl.link_by_name(&plan.underlay_interface).await) {
            underlay_indexes.push(link.index);
        }
        if let Some(c) = config {
            if c.underlay_ifindex != 0 && !underlay_indexes.contains(&c.underlay_ifindex) {
                underlay_indexes.push(c.underlay_ifindex);
            }
        }
        for ifindex in underlay_indexes {
            let Some(filters) = errors
                .record(tc::list_filters_at(nl.handle(), ifindex, Hook::Ingress, priority).await)
            else {
                continue;
            };
            let (main, extra) = Self::ours(&filters, priority, DECAP_PROGRAM);
            for f in main.into_iter().chain(extra) {
                errors.record(
                    tc::delete_filter(nl.handle(), ifindex, Hook::Ingress, f.priority, f.handle)
                        .await,
                );
            }
            // The qdisc only if we created it and nothing else uses it now.
            if config.is_some_and(|c| c.agent_flags & AGENT_OWNS_UNDERLAY_CLSACT != 0) {
                let ingress =
                    errors.record(tc::list_filters(nl.handle(), ifindex, Hook::Ingress).await);
                let egress =
                    errors.record(tc::list_filters(nl.handle(), ifindex, Hook::Egress).await);
                if let (Some(i), Some(e)) = (ingress, egress) {
                    if i.is_empty() && e.is_empty() {
                        errors.record(tc::delete_clsact(nl.handle(), ifindex).await);
                    } else {
                        debug!(ifindex, "clsact still has filters of others; kept");
                    }
                }
            }
        }

        // The fast-path filter on the bridge and its ports (the host part
        // deletes the bridge, and its qdisc with it, after us).
        if let Some(snapshot) = errors.record(endpoints::Snapshot::take_for(&nl, plan).await) {
            errors.record(ports::detach(&nl, &snapshot.bridge_ports(plan), priority).await);
        }
        if let Some(Some(bridge)) = errors.record(nl.link_by_name(&plan.bridge).await) {
            if let Some(filters) = errors.record(
                tc::list_filters_at(nl.handle(), bridge.index, Hook::Ingress, priority).await,
            ) {
                let (main, extra) = Self::ours(&filters, priority, FASTPATH_PROGRAM);
                for f in main.into_iter().chain(extra) {
                    errors.record(
                        tc::delete_filter(
                            nl.handle(),
                            bridge.index,
                            Hook::Ingress,
                            f.priority,
                            f.handle,
                        )
                        .await,
                    );
                }
            }
        }

        // The tunnel pair (its qdisc and encap filter go with it).
        match tunnel::owned_tunnel(&nl, plan).await {
            Ok(Some(link)) => {
                errors.record(nl.delete_link(link.index).await);
                info!(tunnel = %link.name, network = %plan.network_id, "deleted tunnel device");
            }
            Ok(None) => {}
            Err(e) => {
                // Someone else's device with our name: not ours to delete.
                warn!(error = %e, "tunnel device name taken by another device; left alone");
            }
        }

        errors.record(pin::remove_dir(&pin_dir));
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(tag: Option<u64>, prog_id: Option<u32>) -> tc::Filter {
        tc::Filter {
            priority: 0xfa00,
            handle: TC_HANDLE,
            kind: "bpf".into(),
            name: Some(ENCAP_PROGRAM.into()),
            prog_id,
            tag,
        }
    }

    #[test]
    fn adoption_decisions() {
        assert_eq!(decide(None, 7, |_| true), AttachAction::Create);
        assert_eq!(
            decide(Some(&filter(Some(7), Some(1))), 7, |_| true),
            AttachAction::Keep
        );
        assert_eq!(
            decide(Some(&filter(Some(8), Some(1))), 7, |_| true),
            AttachAction::Replace
        );
        // Same code but other maps (pins lost): must be replaced.
        assert_eq!(
            decide(Some(&filter(Some(7), Some(1))), 7, |_| false),
            AttachAction::Replace
        );
    }

    #[test]
    fn priorities_and_names() {
        assert_eq!(tc_priority(0).unwrap(), 0xfa00);
        assert_eq!(tc_priority(MAX_NETWORK_INDEX).unwrap(), 0xfeff);
        assert!(tc_priority(MAX_NETWORK_INDEX + 1).is_err());
        assert_eq!(tunnel_name(65535), "fantun65535");
        assert!(tunnel_peer_name(65535).len() <= 15);
    }

    #[test]
    fn duplicates_are_found() {
        let mut dup = filter(Some(1), Some(2));
        dup.handle = 1;
        let other_prio = tc::Filter {
            priority: 1,
            ..filter(Some(1), Some(2))
        };
        let filters = vec![filter(Some(1), Some(2)), dup, other_prio];
        let (main, extra) = EbpfBackend::ours(&filters, 0xfa00, ENCAP_PROGRAM);
        assert_eq!(main.unwrap().handle, TC_HANDLE);
        assert_eq!(extra.len(), 1);
    }
}
