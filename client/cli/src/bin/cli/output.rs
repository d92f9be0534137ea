//! What each command prints: a table for people, or stable JSON.
//!
//! Every command result implements [`Render`]. The JSON shapes are
//! documented in the crate README ("JSON output"); they are built from the
//! SDK's serde types, so a field added to the SDK shows up in JSON too, and
//! no field is ever removed or renamed within `v1`.

use std::net::Ipv4Addr;

use fan_client::{
    format_rfc3339, AgentInfo, Allocation, DeleteOutcome, Drift, Network, NetworkState, Resolution,
};
use serde::Serialize;
use serde_json::{json, Value};

use super::table::Table;

/// A command result that can be printed both ways.
pub trait Render {
    /// The text for people (ends with a newline, or is empty).
    fn table(&self) -> String;
    /// The JSON document.
    fn json(&self) -> Value;
}

/// Serializes an SDK value (which cannot fail: plain data, string keys).
pub fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serializes")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn time(t: Option<std::time::SystemTime>) -> String {
    t.map(format_rfc3339).unwrap_or_default()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

// ---- info ----------------------------------------------------------------

impl Render for AgentInfo {
    fn table(&self) -> String {
        let mut kv = Table::headless();
        kv.row(["Version:", &self.version]);
        kv.row(["Hostname:", &self.hostname]);
        kv.row(["Kernel:", &self.kernel_release]);
        kv.row(["Auto backend:", &opt(self.auto_backend)]);
        let mut out = kv.render();
        out.push('\n');
        let mut addrs = Table::new(["INTERFACE", "ADDRESS", "MTU"]);
        for a in &self.addresses {
            addrs.row([
                a.interface.clone(),
                a.address.to_string(),
                a.mtu.to_string(),
            ]);
        }
        out.push_str(&addrs.render());
        out.push('\n');
        let mut backends = Table::new(["BACKEND", "AVAILABLE", "REASON"]);
        for b in &self.backends {
            backends.row([
                b.backend.to_string(),
                yes_no(b.available).to_string(),
                b.reason.clone(),
            ]);
        }
        out.push_str(&backends.render());
        out
    }

    fn json(&self) -> Value {
        to_json(self)
    }
}

// ---- networks --------------------------------------------------------------

/// The state column: `ready`, or `degraded: <reason>`.
fn state_text(n: &Network) -> String {
    if n.status.reason.is_empty() || n.status.state == NetworkState::Ready {
        n.status.state.to_string()
    } else {
        format!("{}: {}", n.status.state, n.status.reason)
    }
}

impl Render for Network {
    fn table(&self) -> String {
        let s = &self.spec;
        let st = &self.status;
        let mut kv = Table::headless();
        kv.row(["Network:", &self.id]);
        kv.row(["State:", &state_text(self)]);
        kv.row(["Overlay:", &s.overlay]);
        kv.row(["Underlay:", &s.underlay]);
        kv.row([
            "Underlay address:".to_string(),
            match st.underlay_address {
                Some(a) if st.underlay_interface.is_empty() => a.to_string(),
                Some(a) => format!("{a} ({})", st.underlay_interface),
                None => String::new(),
            },
        ]);
        kv.row(["Slice:".to_string(), opt(st.slice)]);
        kv.row(["Gateway:".to_string(), opt(st.gateway)]);
        kv.row(["Bridge:", &st.bridge]);
        kv.row(["MTU:".to_string(), st.mtu.to_string()]);
        kv.row([
            "Backend:".to_string(),
            match st.backend {
                Some(b) => format!("{b} (asked: {})", s.backend),
                None => format!("- (asked: {})", s.backend),
            },
        ]);
        kv.row(["Host reserve:".to_string(), opt(s.host_reserve)]);
        kv.row(["Masquerade:".to_string(), opt(s.masquerade.map(yes_no))]);
        kv.row([
            "Anti-spoofing:".to_string(),
            opt(s.anti_spoofing.map(yes_no)),
        ]);
        kv.row([
            "DHCP:".to_string(),
            if s.dhcp {
                let mut text = format!("yes (lease {}s", s.dhcp_lease_seconds.unwrap_or(3600));
                if !s.dhcp_dns.is_empty() {
                    text.push_str(&format!(", dns {}", s.dhcp_dns.join(",")));
                }
                text.push(')');
                text
            } else {
                "no".to_string()
            },
        ]);
        kv.row([
            "Allocated:".to_string(),
            format!("{} of {}", st.allocated, st.capacity),
        ]);
        if let Some(c) = st.counters {
            kv.row([
                "Counters:".to_string(),
                format!(
                    "encapsulated {} decapsulated {} dropped-spoofed {} dropped-spoofed-egress {} dropped-fragment {} dropped-other {}",
                    c.encapsulated, c.decapsulated, c.dropped_spoofed, c.dropped_spoofed_egress, c.dropped_fragment, c.dropped_other
                ),
            ]);
        }
        kv.row(["Created:".to_string(), time(self.create_time)]);
        kv.render()
    }

    fn json(&self) -> Value {
        to_json(self)
    }
}

/// `network list`: many networks.
pub struct NetworkList(pub Vec<Network>);

impl Render for NetworkList {
    fn table(&self) -> String {
        let mut t = Table::new([
            "NAME",
            "OVERLAY",
            "UNDERLAY",
            "SLICE",
            "BRIDGE",
            "BACKEND",
            "STATE",
            "ALLOCATED",
        ]);
        for n in &self.0 {
            t.row([
                n.id.clone(),
                n.spec.overlay.clone(),
                n.spec.underlay.clone(),
                opt(n.status.slice),
                n.status.bridge.clone(),
                opt(n.status.backend),
                state_text(n),
                format!("{}/{}", n.status.allocated, n.status.capacity),
            ]);
        }
        t.render()
    }

    fn json(&self) -> Value {
        to_json(&self.0)
    }
}

/// `network delete`.
pub struct Deleted {
    /// The network id.
    pub network: String,
    /// What the agent did.
    pub outcome: DeleteOutcome,
}

impl Render for Deleted {
    fn table(&self) -> String {
        if self.outcome.deleted {
            format!(
                "network {} deleted ({} allocations released)\n",
                self.network, self.outcome.released_allocations
            )
        } else {
            format!("network {} did not exist\n", self.network)
        }
    }

    fn json(&self) -> Value {
        json!({
            "network": self.network,
            "deleted": self.outcome.deleted,
            "released_allocations": self.outcome.released_allocations,
        })
    }
}

/// `network check`.
pub struct Checked {
    /// The network id.
    pub network: String,
    /// The differences found.
    pub drifts: Vec<Drift>,
}

impl Render for Checked {
    fn table(&self) -> String {
        if self.drifts.is_empty() {
            return format!(
                "network {}: the kernel matches the desired state\n",
                self.network
            );
        }
        let mut t = Table::new(["OBJECT", "EXPECTED", "OBSERVED"]);
        for d in &self.drifts {
            t.row([d.object.clone(), d.expected.clone(), d.observed.clone()]);
        }
        t.render()
    }

    fn json(&self) -> Value {
        json!({ "network": self.network, "drifts": to_json(&self.drifts) })
    }
}

// ---- addresses -------------------------------------------------------------

fn labels_text(a: &Allocation) -> String {
    a.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Render for Allocation {
    fn table(&self) -> String {
        let mut kv = Table::headless();
        kv.row(["Address:".to_string(), self.cidr().to_string()]);
        kv.row(["Gateway:".to_string(), self.gateway.to_string()]);
        kv.row(["MTU:".to_string(), self.mtu.to_string()]);
        kv.row(["Network:", &self.network_id]);
        kv.row(["Owner:", &self.owner.container_id]);
        kv.row(["Interface:", &self.owner.interface]);
        kv.row(["Labels:".to_string(), labels_text(self)]);
        kv.row(["Created:".to_string(), time(self.create_time)]);
        kv.render()
    }

    fn json(&self) -> Value {
        to_json(self)
    }
}

fn allocation_table(allocs: &[Allocation]) -> Table {
    let mut t = Table::new(["ADDRESS", "OWNER", "INTERFACE", "LABELS", "CREATED"]);
    for a in allocs {
        t.row([
            a.cidr().to_string(),
            a.owner.container_id.clone(),
            a.owner.interface.clone(),
            labels_text(a),
            time(a.create_time),
        ]);
    }
    t
}

/// `address list`.
pub struct AllocationList(pub Vec<Allocation>);

impl Render for AllocationList {
    fn table(&self) -> String {
        allocation_table(&self.0).render()
    }

    fn json(&self) -> Value {
        to_json(&self.0)
    }
}

/// `address release`.
pub struct Released {
    /// The network id.
    pub network: String,
    /// The released allocation; `None` when nothing was allocated.
    pub allocation: Option<Allocation>,
}

impl Render for Released {
    fn table(&self) -> String {
        match &self.allocation {
            Some(a) => format!(
                "released {} of {} in {}\n",
                a.address, a.owner, self.network
            ),
            None => format!("nothing to release in {}\n", self.network),
        }
    }

    fn json(&self) -> Value {
        json!({ "network": self.network, "released": to_json(&self.allocation) })
    }
}

/// `address gc`.
pub struct Collected {
    /// The network id.
    pub network: String,
    /// Dry run?
    pub dry_run: bool,
    /// What was (or would be) released.
    pub released: Vec<Allocation>,
}

impl Render for Collected {
    fn table(&self) -> String {
        let verb = if self.dry_run {
            "would release"
        } else {
            "released"
        };
        let mut out = format!(
            "{verb} {} allocation(s) in {}\n",
            self.released.len(),
            self.network
        );
        if !self.released.is_empty() {
            out.push_str(&allocation_table(&self.released).render());
            if self.dry_run {
                out.push_str("run again with --yes to release them\n");
            }
        }
        out
    }

    fn json(&self) -> Value {
        json!({
            "network": self.network,
            "dry_run": self.dry_run,
            "released": to_json(&self.released),
        })
    }
}

// ---- resolve -----------------------------------------------------------------

/// `resolve`.
pub struct Resolved {
    /// The address asked about.
    pub address: Ipv4Addr,
    /// How it resolves.
    pub resolutions: Vec<Resolution>,
}

impl Render for Resolved {
    fn table(&self) -> String {
        if self.resolutions.is_empty() {
            return format!("{} is in no known fan\n", self.address);
        }
        let mut t = Table::new(["NETWORK", "KIND", "UNDERLAY-HOST", "SLICE"]);
        for r in &self.resolutions {
            t.row([
                r.network_id.clone().unwrap_or_else(|| "(ad hoc)".into()),
                if r.is_overlay { "overlay" } else { "underlay" }.to_string(),
                r.underlay_host.to_string(),
                r.slice.to_string(),
            ]);
        }
        t.render()
    }

    fn json(&self) -> Value {
        json!({ "address": self.address.to_string(), "resolutions": to_json(&self.resolutions) })
    }
}

// ---- watch ----------------------------------------------------------------

/// One event as `fan-client watch` prints it for people:
/// `REVISION TIME KIND NETWORK DETAIL`.
pub fn event_line(e: &fan_client::WatchEvent) -> String {
    let detail = match (&e.allocation, e.state) {
        (Some(a), _) => format!("{} {}", a.address, a.owner),
        (None, Some(state)) => format!("{} {}", state.as_str(), e.reason),
        (None, None) => e.reason.clone(),
    };
    format!(
        "{} {} {} {} {}",
        e.revision,
        time(e.time),
        e.kind.as_str(),
        e.network_id,
        detail
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_client::{
        Backend, BackendAvailability, HostAddress, NetworkSpec, NetworkStatus, Owner,
    };
    use std::collections::BTreeMap;
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn network() -> Network {
        Network {
            id: "fan-250".into(),
            name: "networks/fan-250".into(),
            spec: NetworkSpec {
                overlay: "250.0.0.0/8".into(),
                underlay: "172.30.0.28/16".into(),
                host_reserve: Some(1),
                bridge: Some("fan-250".into()),
                mtu: Some(1480),
                backend: Backend::Auto,
                masquerade: Some(true),
                anti_spoofing: Some(true),
                allow_overlap: false,
                labels: Default::default(),
                ..NetworkSpec::default()
            },
            status: NetworkStatus {
                underlay_address: Some(Ipv4Addr::new(172, 30, 0, 28)),
                underlay_interface: "eth0".into(),
                slice: Some("250.0.28.0/24".parse().unwrap()),
                gateway: Some(Ipv4Addr::new(250, 0, 28, 1)),
                bridge: "fan-250".into(),
                mtu: 1480,
                backend: Some(Backend::Ebpf),
                state: NetworkState::Ready,
                reason: String::new(),
                allocated: 2,
                capacity: 252,
                counters: None,
            },
            create_time: Some(UNIX_EPOCH + Duration::from_secs(1_735_689_600)),
        }
    }

    pub(crate) fn allocation() -> Allocation {
        Allocation {
            name: "networks/fan-250/allocations/250.0.28.2".into(),
            network_id: "fan-250".into(),
            owner: Owner::new("web-1"),
            address: Ipv4Addr::new(250, 0, 28, 2),
            prefix_length: 24,
            gateway: Ipv4Addr::new(250, 0, 28, 1),
            mtu: 1480,
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            create_time: None,
        }
    }

    #[test]
    fn network_json_shape_is_stable() {
        let v = network().json();
        assert_eq!(
            v,
            json!({
                "id": "fan-250",
                "name": "networks/fan-250",
                "spec": {
                    "overlay": "250.0.0.0/8",
                    "underlay": "172.30.0.28/16",
                    "host_reserve": 1,
                    "bridge": "fan-250",
                    "mtu": 1480,
                    "backend": "auto",
                    "masquerade": true,
                    "anti_spoofing": true
                },
                "status": {
                    "underlay_address": "172.30.0.28",
                    "underlay_interface": "eth0",
                    "slice": "250.0.28.0/24",
                    "gateway": "250.0.28.1",
                    "bridge": "fan-250",
                    "mtu": 1480,
                    "backend": "ebpf",
                    "state": "ready",
                    "reason": "",
                    "allocated": 2,
                    "capacity": 252,
                    "counters": null
                },
                "create_time": "2025-01-01T00:00:00Z"
            })
        );
        assert_eq!(NetworkList(vec![network()]).json(), json!([v]));
    }

    #[test]
    fn allocation_json_shape_is_stable() {
        let v = allocation().json();
        assert_eq!(
            v,
            json!({
                "name": "networks/fan-250/allocations/250.0.28.2",
                "network_id": "fan-250",
                "owner": {"container_id": "web-1", "interface": "eth0"},
                "address": "250.0.28.2",
                "prefix_length": 24,
                "gateway": "250.0.28.1",
                "mtu": 1480,
                "labels": {"app": "web"},
                "create_time": null
            })
        );
        let r = Released {
            network: "fan-250".into(),
            allocation: None,
        };
        assert_eq!(r.json(), json!({"network": "fan-250", "released": null}));
        let gc = Collected {
            network: "fan-250".into(),
            dry_run: true,
            released: vec![allocation()],
        };
        assert_eq!(gc.json()["dry_run"], json!(true));
        assert_eq!(gc.json()["released"][0]["address"], json!("250.0.28.2"));
    }

    #[test]
    fn other_json_shapes() {
        let d = Deleted {
            network: "fan-250".into(),
            outcome: DeleteOutcome {
                deleted: true,
                released_allocations: 3,
            },
        };
        assert_eq!(
            d.json(),
            json!({"network": "fan-250", "deleted": true, "released_allocations": 3})
        );
        let c = Checked {
            network: "fan-250".into(),
            drifts: vec![Drift {
                object: "bridge fan-250".into(),
                expected: "mtu 1480".into(),
                observed: "mtu 1500".into(),
            }],
        };
        assert_eq!(
            c.json(),
            json!({"network": "fan-250", "drifts": [
                {"object": "bridge fan-250", "expected": "mtu 1480", "observed": "mtu 1500"}]})
        );
        let r = Resolved {
            address: Ipv4Addr::new(250, 0, 28, 7),
            resolutions: vec![Resolution {
                network_id: None,
                is_overlay: true,
                underlay_host: Ipv4Addr::new(172, 30, 0, 28),
                slice: "250.0.28.0/24".parse().unwrap(),
            }],
        };
        assert_eq!(
            r.json(),
            json!({"address": "250.0.28.7", "resolutions": [
                {"network_id": null, "is_overlay": true, "underlay_host": "172.30.0.28", "slice": "250.0.28.0/24"}]})
        );
        let info = AgentInfo {
            version: "0.1.0".into(),
            hostname: "h1".into(),
            kernel_release: "6.8.0".into(),
            addresses: vec![HostAddress {
                interface: "eth0".into(),
                address: "172.30.0.28/16".parse().unwrap(),
                mtu: 1500,
            }],
            backends: vec![BackendAvailability {
                backend: Backend::KernelFan,
                available: false,
                reason: "no fan patch".into(),
            }],
            auto_backend: Some(Backend::Ebpf),
        };
        assert_eq!(
            info.json(),
            json!({"version": "0.1.0", "hostname": "h1", "kernel_release": "6.8.0",
                   "addresses": [{"interface": "eth0", "address": "172.30.0.28/16", "mtu": 1500}],
                   "backends": [{"backend": "kernel-fan", "available": false, "reason": "no fan patch"}],
                   "auto_backend": "ebpf"})
        );
        assert!(info.table().contains("kernel-fan  no         no fan patch"));
    }

    #[test]
    fn tables_for_people() {
        let list = NetworkList(vec![network()]).table();
        assert_eq!(
            list,
            "NAME     OVERLAY      UNDERLAY        SLICE          BRIDGE   BACKEND  STATE  ALLOCATED\n\
             fan-250  250.0.0.0/8  172.30.0.28/16  250.0.28.0/24  fan-250  ebpf     ready  2/252\n"
        );
        let mut degraded = network();
        degraded.status.state = NetworkState::Degraded;
        degraded.status.reason = "bridge missing".into();
        assert!(NetworkList(vec![degraded.clone()])
            .table()
            .contains("degraded: bridge missing"));
        assert!(degraded
            .table()
            .contains("State:             degraded: bridge missing"));
        let show = allocation().table();
        assert!(show.starts_with("Address:    250.0.28.2/24\n"));
        assert!(show.contains("Labels:     app=web\n"));
        assert!(show.contains("Created:    -\n"));
        let list = AllocationList(vec![allocation()]).table();
        assert_eq!(
            list,
            "ADDRESS        OWNER  INTERFACE  LABELS   CREATED\n\
             250.0.28.2/24  web-1  eth0       app=web  -\n"
        );
        let r = Released {
            network: "fan-250".into(),
            allocation: Some(allocation()),
        };
        assert_eq!(r.table(), "released 250.0.28.2 of web-1/eth0 in fan-250\n");
    }
}
