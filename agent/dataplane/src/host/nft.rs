//! The agent's nftables table for one network: outbound masquerade and, for
//! the backends without an eBPF program to do it (ipip, kernel-fan),
//! anti-spoofing:
//!
//! - chain `forward`: a packet from the bridge for the overlay whose source is
//!   not in this host's slice is counted and dropped before it is
//!   encapsulated (egress anti-spoofing);
//! - chain `prerouting`: an IPIP packet whose outer source is the underlay's
//!   network or broadcast address (no host has them) is counted and dropped
//!   before the kernel's ipip code decapsulates it.
//!
//! The eBPF backend makes both checks in its programs (and counts them in its
//! map), so its table holds only the masquerade rule.
//!
//! Writes speak nf_tables netlink directly: one batch
//! ([`crate::netlink::nftables::Batch`]) per change, sent as one atomic
//! transaction ([`crate::netlink::nft_transaction`]), encoded as nft 1.0.6
//! encodes the same rules so `nft list` shows them as its own. The `nft`
//! binary (1.0.6) reads the whole ruleset, one dump per table, before it
//! adds anything, so a create through it cost more with every network on
//! the host; writes do not need it at all. It stays for listings only
//! ([`Nft::list_table`]: drift summaries and counters, from its stable JSON).
//!
//! One table per network, `table ip fan_<id>`, owned entirely by the agent:
//! applying replaces the whole table in one transaction
//! (`add table; delete table; add table …`), so it is idempotent and never
//! leaves a half-written ruleset.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use ipnetwork::Ipv4Network;
use serde_json::Value;
use tokio::process::Command;
use tracing::debug;

use crate::netlink::nftables::{BaseChain, Batch, CmpOp, Expr, Hook, IpField};
use crate::{BackendKind, Counters, DataplaneError, NetworkPlan, Result};

/// The name of a network's table: `fan_<network_id>` with '-' replaced by '_'.
pub fn table_name(network_id: &str) -> String {
    format!("fan_{}", network_id.replace('-', "_"))
}

/// How a table is named in messages and drifts: "nft table ip fan_prod_250".
pub fn table_object(network_id: &str) -> String {
    format!("nft table ip {}", table_name(network_id))
}

/// Longest nftables table name the kernel takes (NFT_NAME_MAXLEN 256 minus
/// the NUL, Linux ≥ 4.14). This used to be 64 here, which refused network
/// ids of 61 to 63 characters only when programming, with an nft message.
pub const MAX_TABLE_NAME_LEN: usize = 255;

// Every valid network id must give a usable table name.
const _: () = assert!(4 + fan_core::names::MAX_NETWORK_ID_LEN <= MAX_TABLE_NAME_LEN);

fn check_table_name(name: &str) -> Result<()> {
    // nft identifiers: a letter or '_' then letters, digits, '_'. Anything
    // else would need quoting on the `nft list table` command line.
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_TABLE_NAME_LEN;
    if ok {
        Ok(())
    } else {
        Err(DataplaneError::other(
            format!("nft table {name}"),
            "network id is not usable as an nftables table name (letters, digits, '-', '_')",
        ))
    }
}

/// The expected masquerade rule, in nft syntax.
pub fn masquerade_rule(slice: Ipv4Network, overlay: Ipv4Network) -> String {
    format!(
        "ip saddr {}/{} ip daddr != {}/{} masquerade",
        slice.network(),
        slice.prefix(),
        overlay.network(),
        overlay.prefix()
    )
}

/// The chains' descriptions as [`summarize`] renders them.
const POSTROUTING_CHAIN: &str =
    "chain postrouting { type nat hook postrouting priority 100; policy accept; }";
const FORWARD_CHAIN: &str = "chain forward { type filter hook forward priority 0; policy accept; }";
const PREROUTING_CHAIN: &str =
    "chain prerouting { type filter hook prerouting priority 0; policy accept; }";

/// True when the table carries the anti-spoofing rules: anti-spoofing on and
/// a backend without the checks in its own programs.
pub fn has_anti_spoofing(plan: &NetworkPlan) -> bool {
    plan.anti_spoofing && plan.backend != BackendKind::Ebpf
}

/// True when the network needs a table at all.
pub fn needs_table(plan: &NetworkPlan) -> bool {
    plan.masquerade || has_anti_spoofing(plan)
}

/// The egress anti-spoofing rule (chain `forward`), in nft syntax.
pub fn egress_spoof_rule(plan: &NetworkPlan) -> String {
    format!(
        "iifname \"{}\" ip daddr {}/{} ip saddr != {}/{} counter drop",
        plan.bridge,
        plan.overlay.network(),
        plan.overlay.prefix(),
        plan.slice.network(),
        plan.slice.prefix()
    )
}

/// The decap rule (chain `prerouting`): IPIP from the underlay's network or
/// broadcast address. None for /31 and /32 underlays, where both are hosts.
pub fn bogus_outer_source_rule(plan: &NetworkPlan) -> Option<String> {
    (plan.underlay.prefix() <= 30).then(|| {
        format!(
            "ip protocol 4 ip saddr {{ {}, {} }} counter drop",
            plan.underlay.network(),
            plan.underlay.broadcast()
        )
    })
}

/// Interface names are compared as IFNAMSIZ (16) NUL-padded bytes: the one
/// device-name rule (fan-core: at most 15 bytes of letters, digits, '_',
/// '.', '-') keeps them within it and listable by nft.
fn check_interface_name(name: &str) -> Result<()> {
    fan_core::names::validate_device_name(name).map_err(|e| {
        DataplaneError::other(
            format!("nft rule for bridge {name:?}"),
            format!("bridge name is not usable in an nftables rule: {e}"),
        )
    })
}

/// The transaction that (re)creates the network's table atomically.
pub fn apply_batch(plan: &NetworkPlan) -> Result<Batch> {
    let table = table_name(&plan.network_id);
    check_table_name(&table)?;
    // "add" before "delete" makes the delete succeed when the table is absent.
    let mut batch = Batch::new();
    batch.new_table(&table, false);
    batch.delete_table(&table);
    batch.new_table(&table, false);
    table_body(plan, &table, &mut batch)?;
    Ok(batch)
}

/// The transaction that creates the network's table when the kernel has
/// none: the exclusive create fails (and with it the whole transaction,
/// EEXIST) if the table exists. Without the replace's delete the kernel
/// has less to do.
pub fn create_batch(plan: &NetworkPlan) -> Result<Batch> {
    let table = table_name(&plan.network_id);
    check_table_name(&table)?;
    let mut batch = Batch::new();
    batch.new_table(&table, true);
    table_body(plan, &table, &mut batch)?;
    Ok(batch)
}

/// The chains and rules of the network's table, after the table itself,
/// as nft 1.0.6 would write [`expected_summary`]'s lines.
fn table_body(plan: &NetworkPlan, table: &str, batch: &mut Batch) -> Result<()> {
    let chain = |name: &str, kind: &str, hook, priority| BaseChain {
        name: name.into(),
        kind: kind.into(),
        hook,
        priority,
    };
    if plan.masquerade {
        // masquerade_rule(): ip saddr SLICE ip daddr != OVERLAY masquerade
        batch.new_chain(table, &chain("postrouting", "nat", Hook::Postrouting, 100));
        let mut rule = Expr::prefix_match(IpField::Saddr, CmpOp::Eq, plan.slice);
        rule.extend(Expr::prefix_match(IpField::Daddr, CmpOp::Neq, plan.overlay));
        rule.push(Expr::Masquerade);
        batch.new_rule(table, "postrouting", &rule);
    }
    if has_anti_spoofing(plan) {
        check_interface_name(&plan.bridge)?;
        // egress_spoof_rule(): iifname BRIDGE ip daddr OVERLAY ip saddr != SLICE counter drop
        batch.new_chain(table, &chain("forward", "filter", Hook::Forward, 0));
        let mut rule = Expr::iifname_match(&plan.bridge);
        rule.extend(Expr::prefix_match(IpField::Daddr, CmpOp::Eq, plan.overlay));
        rule.extend(Expr::prefix_match(IpField::Saddr, CmpOp::Neq, plan.slice));
        rule.extend([Expr::Counter, Expr::Drop]);
        batch.new_rule(table, "forward", &rule);
        if bogus_outer_source_rule(plan).is_some() {
            // ip protocol 4 ip saddr { NETWORK, BROADCAST } counter drop
            batch.new_chain(table, &chain("prerouting", "filter", Hook::Prerouting, 0));
            const SET_ID: u32 = 1;
            let bogus = [plan.underlay.network(), plan.underlay.broadcast()];
            batch.new_anonymous_addr_set(table, SET_ID, &bogus);
            let mut rule = Expr::ip_protocol_match(4);
            rule.extend(Expr::set_lookup(IpField::Saddr, SET_ID));
            rule.extend([Expr::Counter, Expr::Drop]);
            batch.new_rule(table, "prerouting", &rule);
        }
    }
    Ok(())
}

/// The transaction that removes the table, present or not.
pub fn delete_batch(network_id: &str) -> Result<Batch> {
    let table = table_name(network_id);
    check_table_name(&table)?;
    let mut batch = Batch::new();
    batch.new_table(&table, false);
    batch.delete_table(&table);
    Ok(batch)
}

/// What the table should look like, as [`summarize`] renders it (chains
/// first, in the order nft lists them, then rules).
pub fn expected_summary(plan: &NetworkPlan) -> Vec<String> {
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    if plan.masquerade {
        chains.push(POSTROUTING_CHAIN.to_string());
        rules.push(format!(
            "rule postrouting: {}",
            masquerade_rule(plan.slice, plan.overlay)
        ));
    }
    if has_anti_spoofing(plan) {
        chains.push(FORWARD_CHAIN.to_string());
        rules.push(format!("rule forward: {}", egress_spoof_rule(plan)));
        if let Some(rule) = bogus_outer_source_rule(plan) {
            chains.push(PREROUTING_CHAIN.to_string());
            rules.push(format!("rule prerouting: {rule}"));
        }
    }
    chains.extend(rules);
    chains
}

/// The packets dropped by the anti-spoofing rules of a listing: egress
/// (chain `forward`) as `dropped_spoofed_egress`, bogus outer sources (chain
/// `prerouting`) as `dropped_spoofed`.
pub fn anti_spoofing_counters(listing: &Value) -> Counters {
    let mut counters = Counters::default();
    let items = listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let packets: u64 = rule
            .get("expr")
            .and_then(Value::as_array)
            .map(|exprs| {
                exprs
                    .iter()
                    .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        match str_field(rule, "chain") {
            "forward" => counters.dropped_spoofed_egress += packets,
            "prerouting" => counters.dropped_spoofed += packets,
            _ => {}
        }
    }
    counters
}

/// Renders the chains and rules of an `nft -j list table` answer as lines,
/// in nft-like syntax for the shapes the agent writes, raw JSON otherwise.
pub fn summarize(listing: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let items = listing
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // nft lists chains before rules; keep that order.
    for item in &items {
        if let Some(chain) = item.get("chain") {
            let name = str_field(chain, "name");
            if chain.get("hook").is_some() {
                lines.push(format!(
                    "chain {name} {{ type {} hook {} priority {}; policy {}; }}",
                    str_field(chain, "type"),
                    str_field(chain, "hook"),
                    chain.get("prio").map(Value::to_string).unwrap_or_default(),
                    str_field(chain, "policy"),
                ));
            } else {
                lines.push(format!("chain {name} {{ }}"));
            }
        } else if let Some(rule) = item.get("rule") {
            let exprs = rule
                .get("expr")
                .and_then(Value::as_array)
                .map(|e| e.iter().map(render_expr).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            lines.push(format!("rule {}: {exprs}", str_field(rule, "chain")));
        } else if item.get("table").is_none() && item.get("metainfo").is_none() {
            // Sets, maps, flowtables…: nothing the agent writes.
            lines.push(item.to_string());
        }
    }
    lines
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn render_expr(expr: &Value) -> String {
    if let Some(m) = expr.get("match") {
        let left = m.get("left").and_then(|l| l.get("payload"));
        let right = m.get("right");
        let op = match str_field(m, "op") {
            "==" | "in" => String::new(),
            other => format!("{other} "),
        };
        // iifname "fan-250"
        if let (Some(key), Some(Value::String(name))) = (
            m.get("left")
                .and_then(|l| l.get("meta"))
                .and_then(|meta| meta.get("key"))
                .and_then(Value::as_str),
            right,
        ) {
            return format!("{key} {op}\"{name}\"");
        }
        // ip protocol 4 (nft names it "ipencap")
        if let (Some(payload), Some(Value::String(proto))) = (left, right) {
            if str_field(payload, "field") == "protocol" {
                let proto = if proto == "ipencap" { "4" } else { proto };
                return format!("{} protocol {op}{proto}", str_field(payload, "protocol"));
            }
        }
        if let (Some(payload), Some(right)) = (left, right) {
            let value = match right {
                Value::String(addr) => Some(format!("{addr}/32")),
                Value::Object(_) if right.get("set").is_some() => {
                    right.get("set").and_then(Value::as_array).map(|items| {
                        let items: Vec<String> = items
                            .iter()
                            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                            .collect();
                        format!("{{ {} }}", items.join(", "))
                    })
                }
                Value::Object(_) => right.get("prefix").map(|p| {
                    format!(
                        "{}/{}",
                        str_field(p, "addr"),
                        p.get("len").map(Value::to_string).unwrap_or_default()
                    )
                }),
                _ => None,
            };
            if let Some(value) = value {
                return format!(
                    "{} {} {op}{value}",
                    str_field(payload, "protocol"),
                    str_field(payload, "field")
                );
            }
        }
    } else if expr.get("masquerade").is_some_and(Value::is_null) {
        return "masquerade".to_string();
    } else if expr.get("drop").is_some_and(Value::is_null) {
        return "drop".to_string();
    } else if expr.get("counter").is_some() {
        // The values change with traffic: not part of the rule's shape.
        return "counter".to_string();
    }
    expr.to_string()
}

/// The agent's nftables tables: written by netlink transactions, listed
/// by the `nft` binary.
///
/// Listings are cached by the kernel's ruleset generation
/// ([`crate::netlink::nft_generation`], one netlink round trip): while it
/// has not moved, no table changed, so a reconcile pass over unchanged
/// networks spawns no `nft` at all. The agent's own writes keep the rest
/// of the cache: a transaction that moved the generation by exactly one
/// changed only its table. Counters change without a new generation:
/// callers that need them list the table ([`Nft::list_table`]).
///
/// The transactions are a few blocking netlink round trips (well under a
/// millisecond), made on the calling thread: its network namespace is the
/// one written, as for [`crate::netlink::Netlink`].
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
    cache: Arc<Mutex<Listings>>,
}

/// What is known of the ruleset at `generation`: table summaries
/// ([`summarize`]; `None`: absent) and, once read, the names of every
/// `ip` table (a table not among them is absent).
#[derive(Debug, Default)]
struct Listings {
    generation: Option<u32>,
    tables: HashMap<String, Option<Vec<String>>>,
    names: Option<HashSet<String>>,
}

impl Listings {
    /// Forgets everything unless it is valid at `generation`.
    fn at(&mut self, generation: u32) {
        if self.generation != Some(generation) {
            *self = Listings {
                generation: Some(generation),
                ..Listings::default()
            };
        }
    }

    /// The summary of table `name` if known (`Some(None)`: absent).
    fn get(&self, name: &str) -> Option<Option<Vec<String>>> {
        if let Some(summary) = self.tables.get(name) {
            return Some(summary.clone());
        }
        match &self.names {
            Some(names) if !names.contains(name) => Some(None),
            _ => None,
        }
    }

    fn set(&mut self, name: &str, summary: Option<Vec<String>>) {
        if let Some(names) = &mut self.names {
            if summary.is_some() {
                names.insert(name.to_string());
            } else {
                names.remove(name);
            }
        }
        self.tables.insert(name.to_string(), summary);
    }
}

fn generation() -> Option<u32> {
    crate::netlink::nft_generation().ok()
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

/// The outcome of running nft: Err(None) when the binary is missing.
type Output = std::result::Result<std::process::Output, Option<std::io::Error>>;

/// Runs `batch` as one nf_tables transaction.
fn transact(context: &str, batch: &Batch) -> Result<()> {
    debug!(context, messages = batch.len(), "nf_tables transaction");
    crate::netlink::blocking(|| crate::netlink::nft_transaction(batch))
        .map_err(|e| DataplaneError::other(context, format!("nf_tables transaction: {e}")))
}

impl Nft {
    /// Uses `nft` from PATH.
    pub fn new() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            cache: Arc::default(),
        }
    }

    /// Uses the given nft binary (for listings).
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Nft {
            program: program.into(),
            cache: Arc::default(),
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            // nft's error messages come from strerror: keep them parseable.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(e)),
        };
        child.wait_with_output().await.map_err(Some)
    }

    fn spawn_error(&self, context: &str, error: Option<std::io::Error>) -> DataplaneError {
        match error {
            None => DataplaneError::other(
                context,
                format!("{} not found (install nftables)", self.program.display()),
            ),
            Some(e) => {
                DataplaneError::other(context, format!("run {}: {e}", self.program.display()))
            }
        }
    }

    /// `nft -j list table ip <name>`: `None` when the table does not exist.
    pub async fn list_table(&self, name: &str) -> Result<Option<Value>> {
        let context = format!("list nft table ip {name}");
        check_table_name(name)?;
        // Without nft a table of ours can exist (writes need no binary)
        // but cannot be read: an error, not "absent".
        let output = self
            .run(&["-j", "list", "table", "ip", name])
            .await
            .map_err(|e| self.spawn_error(&context, e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(DataplaneError::other(
                context,
                format!("nft failed ({}): {}", output.status, stderr.trim()),
            ));
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| DataplaneError::other(context, format!("parse nft JSON: {e}")))
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Listings> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the cache knows of table `name` at the current generation
    /// (reading the table names by netlink once per generation, no `nft`
    /// run): `Some(None)` when absent, `None` when present but not listed yet.
    fn known(&self, name: &str) -> (Option<u32>, Option<Option<Vec<String>>>) {
        let Some(generation) = generation() else {
            return (None, None);
        };
        {
            let mut cache = self.lock_cache();
            cache.at(generation);
            if let Some(known) = cache.get(name) {
                return (Some(generation), Some(known));
            }
            if cache.names.is_some() {
                return (Some(generation), None);
            }
        }
        let Ok(names) = crate::netlink::nft_ip_tables() else {
            return (Some(generation), None);
        };
        let mut cache = self.lock_cache();
        // Kept only when nothing changed while the names were read.
        if crate::netlink::nft_generation().ok() == Some(generation) {
            cache.at(generation);
            cache.names = Some(names.into_iter().collect());
            return (Some(generation), cache.get(name));
        }
        (Some(generation), None)
    }

    /// Remembers `summary` for table `name` at `generation`.
    fn remember(&self, name: &str, generation: u32, summary: Option<Vec<String>>) {
        let mut cache = self.lock_cache();
        cache.at(generation);
        cache.set(name, summary);
    }

    /// Runs a transaction that changes only table `name`, and remembers
    /// the table as `summary` when the ruleset moved by exactly that one
    /// transaction (the generation counts commits): what was known of
    /// the other tables stays true.
    fn run_table_batch(
        &self,
        context: &str,
        batch: &Batch,
        name: &str,
        summary: Option<Vec<String>>,
    ) -> Result<()> {
        let before = generation();
        let result = transact(context, batch);
        let after = generation();
        if let (Ok(()), Some(before), Some(after)) = (&result, before, after) {
            let mut cache = self.lock_cache();
            if after == before.wrapping_add(1) && cache.generation == Some(before) {
                cache.generation = Some(after);
                cache.set(name, summary);
            }
        }
        result
    }

    /// The [`summarize`]d table `name` (`None`: absent), from the cache
    /// while the ruleset generation has not moved.
    pub async fn table_summary(&self, name: &str) -> Result<Option<Vec<String>>> {
        let (before, known) = self.known(name);
        if let Some(summary) = known {
            return Ok(summary);
        }
        let summary = self.list_table(name).await?.map(|l| summarize(&l));
        // Cached only when nothing changed while nft listed.
        if let Some(before) = before {
            if generation() == Some(before) {
                self.remember(name, before, summary.clone());
            }
        }
        Ok(summary)
    }

    /// Creates or replaces the network's table (masquerade and
    /// anti-spoofing rules as the plan asks).
    pub async fn apply_table(&self, plan: &NetworkPlan) -> Result<()> {
        let context = format!("apply {}", table_object(&plan.network_id));
        let name = table_name(&plan.network_id);
        self.run_table_batch(
            &context,
            &apply_batch(plan)?,
            &name,
            Some(expected_summary(plan)),
        )
    }

    /// Like [`Nft::apply_table`], but leaves a table that already
    /// lists as the plan wants alone: every reconcile pass applies every
    /// network, and rewriting a table costs a kernel transaction that grows
    /// with the number of tables. Known from the cache (no `nft` run) while
    /// the ruleset generation has not moved; a table the kernel does not
    /// have (its table names are read by netlink) is written without a
    /// listing, which is all a new network's create costs.
    pub async fn ensure_table(&self, plan: &NetworkPlan) -> Result<()> {
        let name = table_name(&plan.network_id);
        check_table_name(&name)?;
        // A table that exists is listed before it is replaced: rewriting
        // would reset its counters (and costs more than a listing).
        match self.table_summary(&name).await {
            Ok(Some(summary)) if summary == expected_summary(plan) => Ok(()),
            Ok(None) => self.create_table(plan).await,
            _ => self.apply_table(plan).await,
        }
    }

    /// Creates the network's table, known to be absent; if it appeared
    /// meanwhile the create fails as a whole and the table is replaced.
    async fn create_table(&self, plan: &NetworkPlan) -> Result<()> {
        let context = format!("create {}", table_object(&plan.network_id));
        let name = table_name(&plan.network_id);
        let created = self.run_table_batch(
            &context,
            &create_batch(plan)?,
            &name,
            Some(expected_summary(plan)),
        );
        match created {
            Ok(()) => Ok(()),
            Err(_) => self.apply_table(plan).await,
        }
    }

    /// Removes the network's table; absent is success. Needs no `nft`
    /// binary: presence comes from the cache or the kernel's table names.
    pub async fn delete_table(&self, network_id: &str) -> Result<()> {
        let name = table_name(network_id);
        check_table_name(&name)?;
        if let (_, Some(None)) = self.known(&name) {
            return Ok(());
        }
        let context = format!("delete {}", table_object(network_id));
        self.run_table_batch(&context, &delete_batch(network_id)?, &name, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(table_name("prod-250"), "fan_prod_250");
        assert!(check_table_name("fan_prod_250").is_ok());
        assert!(check_table_name("fan_a;b").is_err());
        assert!(check_table_name("fan_a b").is_err());
        // The longest valid network id gives a usable table name.
        let longest = "a".repeat(fan_core::names::MAX_NETWORK_ID_LEN);
        assert!(check_table_name(&table_name(&longest)).is_ok());
    }

    #[test]
    fn listings_know_absent_tables_only_from_a_full_name_list() {
        let mut cache = Listings::default();
        cache.at(7);
        assert_eq!(cache.get("fan_a"), None);
        cache.names = Some(["fan_b".to_string()].into_iter().collect());
        // Not among the kernel's tables: absent. Present but not listed: unknown.
        assert_eq!(cache.get("fan_a"), Some(None));
        assert_eq!(cache.get("fan_b"), None);
        cache.set("fan_a", Some(vec!["chain".into()]));
        assert_eq!(cache.get("fan_a"), Some(Some(vec!["chain".into()])));
        cache.set("fan_b", None);
        assert_eq!(cache.get("fan_b"), Some(None));
        // The same generation keeps everything, another forgets it all.
        cache.at(7);
        assert!(cache.get("fan_a").is_some());
        cache.at(8);
        assert_eq!(cache.get("fan_a"), None);
        assert!(cache.names.is_none());
    }

    #[test]
    fn a_new_table_is_created_with_the_replace_batchs_body() {
        let plan = ipip_plan();
        let table = table_name(&plan.network_id);
        let create = create_batch(&plan).unwrap();
        let replace = apply_batch(&plan).unwrap();
        let mut body = Batch::new();
        table_body(&plan, &table, &mut body).unwrap();
        assert!(!body.is_empty());
        // create: the exclusive table, then the body; replace: add, delete,
        // add, then the same body.
        let mut expected = Batch::new();
        expected.new_table(&table, true);
        table_body(&plan, &table, &mut expected).unwrap();
        assert_eq!(create, expected);
        let mut expected = Batch::new();
        expected.new_table(&table, false);
        expected.delete_table(&table);
        expected.new_table(&table, false);
        table_body(&plan, &table, &mut expected).unwrap();
        assert_eq!(replace, expected);
        assert_eq!(replace.len(), create.len() + 2);
        let mut delete = Batch::new();
        delete.new_table(&table, false);
        delete.delete_table(&table);
        assert_eq!(delete_batch(&plan.network_id).unwrap(), delete);
    }

    fn ipip_plan() -> NetworkPlan {
        NetworkPlan {
            network_id: "x".into(),
            index: 0,
            overlay: "250.0.0.0/8".parse().unwrap(),
            underlay: "172.30.0.0/16".parse().unwrap(),
            local_underlay: "172.30.0.28".parse().unwrap(),
            underlay_interface: "eth0".into(),
            underlay_mtu: 1500,
            slice: "250.0.28.0/24".parse().unwrap(),
            gateway: "250.0.28.1".parse().unwrap(),
            bridge: "fan-x".into(),
            mtu: 1480,
            masquerade: false,
            anti_spoofing: true,
            backend: BackendKind::Ipip,
        }
    }

    /// The number of messages of the plan's table body.
    fn body_of(plan: &NetworkPlan) -> usize {
        let mut body = Batch::new();
        table_body(plan, "fan_x", &mut body).unwrap();
        body.len()
    }

    #[test]
    fn anti_spoofing_rules_only_where_no_program_checks() {
        let mut plan = ipip_plan();
        assert!(has_anti_spoofing(&plan) && needs_table(&plan));
        // forward chain + rule, prerouting chain + set + elements + rule.
        assert_eq!(body_of(&plan), 6);
        assert_eq!(
            egress_spoof_rule(&plan),
            "iifname \"fan-x\" ip daddr 250.0.0.0/8 ip saddr != 250.0.28.0/24 counter drop"
        );
        assert_eq!(
            bogus_outer_source_rule(&plan).unwrap(),
            "ip protocol 4 ip saddr { 172.30.0.0, 172.30.255.255 } counter drop"
        );
        plan.masquerade = true;
        assert_eq!(body_of(&plan), 8);
        plan.masquerade = false;
        plan.backend = BackendKind::KernelFan;
        assert!(has_anti_spoofing(&plan));
        // eBPF checks in its programs; anti-spoofing off checks nowhere.
        plan.backend = BackendKind::Ebpf;
        assert!(!needs_table(&plan));
        assert_eq!(body_of(&plan), 0);
        plan.backend = BackendKind::Ipip;
        plan.anti_spoofing = false;
        assert!(!needs_table(&plan));
        // A /31 underlay: both addresses are hosts.
        let mut plan = ipip_plan();
        plan.underlay = "172.30.0.0/31".parse().unwrap();
        assert!(bogus_outer_source_rule(&plan).is_none());
        assert_eq!(body_of(&plan), 2);
        // A bridge name longer than IFNAMSIZ or with odd bytes is refused.
        let mut plan = ipip_plan();
        plan.bridge = "a\"b".into();
        assert!(apply_batch(&plan).is_err());
        plan.bridge = "a".repeat(16);
        assert!(create_batch(&plan).is_err());
    }

    #[test]
    fn anti_spoofing_listing_matches_expected_and_yields_counters() {
        // As nft 1.0.6 lists the table apply_batch makes for ipip_plan().
        let json: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "fan_x", "handle": 1}},
            {"chain": {"family": "ip", "table": "fan_x", "name": "forward", "handle": 1,
              "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "fan_x", "name": "prerouting", "handle": 3,
              "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "fan_x", "chain": "forward", "handle": 2, "expr": [
              {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "fan-x"}},
              {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                         "right": {"prefix": {"addr": "250.0.0.0", "len": 8}}}},
              {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "right": {"prefix": {"addr": "250.0.28.0", "len": 24}}}},
              {"counter": {"packets": 7, "bytes": 588}}, {"drop": null}]}},
            {"rule": {"family": "ip", "table": "fan_x", "chain": "prerouting", "handle": 5, "expr": [
              {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}},
                         "right": "ipencap"}},
              {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "right": {"set": ["172.30.0.0", "172.30.255.255"]}}},
              {"counter": {"packets": 2, "bytes": 168}}, {"drop": null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(summarize(&json), expected_summary(&ipip_plan()));
        let c = anti_spoofing_counters(&json);
        assert_eq!((c.dropped_spoofed_egress, c.dropped_spoofed), (7, 2));
    }

    #[test]
    fn summary_of_our_table_matches_expected_rule() {
        let json: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "fan_x", "handle": 2}},
            {"chain": {"family": "ip", "table": "fan_x", "name": "postrouting", "handle": 1,
              "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "fan_x", "chain": "postrouting", "handle": 2, "expr": [
              {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                         "right": {"prefix": {"addr": "250.0.28.0", "len": 24}}}},
              {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                         "right": {"prefix": {"addr": "250.0.0.0", "len": 8}}}},
              {"masquerade": null}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            summarize(&json),
            vec![
                POSTROUTING_CHAIN.to_string(),
                "rule postrouting: ip saddr 250.0.28.0/24 ip daddr != 250.0.0.0/8 masquerade"
                    .to_string()
            ]
        );
    }
}
