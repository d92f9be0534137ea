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
//! We drive the `nft` binary (through tokio::process) instead of speaking
//! nf_tables netlink ourselves: there is no maintained pure-Rust nf_tables
//! netlink crate compatible with our pinned dependencies, and `nft -f -`
//! gives us atomic transactions and a stable JSON listing for free.
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
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::debug;

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
    // else would need quoting and could inject into the script.
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

/// Interface names go into the script quoted: the one device-name rule
/// (fan-core: letters, digits, '_', '.', '-') leaves nothing that could close
/// the quote.
fn check_interface_name(name: &str) -> Result<()> {
    fan_core::names::validate_device_name(name).map_err(|e| {
        DataplaneError::other(
            format!("nft rule for bridge {name:?}"),
            format!("bridge name is not usable in an nftables rule: {e}"),
        )
    })
}

/// The `nft -f -` script that (re)creates the network's table atomically.
pub fn apply_script(plan: &NetworkPlan) -> Result<String> {
    let table = table_name(&plan.network_id);
    check_table_name(&table)?;
    // "add" before "delete" makes the delete succeed when the table is absent.
    let mut script = format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         add table ip {table}\n"
    );
    script.push_str(&table_body(plan, &table)?);
    Ok(script)
}

/// The `nft -f -` script that creates the network's table when the kernel
/// has none: `create` fails (and with it the whole transaction) if the table
/// exists. Without the replace script's delete it costs a quarter as much
/// (measured with nft 1.0.6: 4 ms against 17 on an empty ruleset, 31 against
/// 47 beside 100 other tables).
pub fn create_script(plan: &NetworkPlan) -> Result<String> {
    let table = table_name(&plan.network_id);
    check_table_name(&table)?;
    let mut script = format!("create table ip {table}\n");
    script.push_str(&table_body(plan, &table)?);
    Ok(script)
}

/// The chains and rules of the network's table, after the table itself.
fn table_body(plan: &NetworkPlan, table: &str) -> Result<String> {
    let mut script = String::new();
    if plan.masquerade {
        script.push_str(&format!(
            "add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip {table} postrouting {}\n",
            masquerade_rule(plan.slice, plan.overlay)
        ));
    }
    if has_anti_spoofing(plan) {
        check_interface_name(&plan.bridge)?;
        script.push_str(&format!(
            "add chain ip {table} forward {{ type filter hook forward priority filter; policy accept; }}\n\
             add rule ip {table} forward {}\n",
            egress_spoof_rule(plan)
        ));
        if let Some(rule) = bogus_outer_source_rule(plan) {
            script.push_str(&format!(
                "add chain ip {table} prerouting {{ type filter hook prerouting priority filter; policy accept; }}\n\
                 add rule ip {table} prerouting {rule}\n"
            ));
        }
    }
    Ok(script)
}

/// The `nft -f -` script that removes the table, present or not.
pub fn delete_script(network_id: &str) -> Result<String> {
    let table = table_name(network_id);
    check_table_name(&table)?;
    Ok(format!("add table ip {table}\ndelete table ip {table}\n"))
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

/// Runs the `nft` binary.
///
/// Listings are cached by the kernel's ruleset generation
/// ([`crate::netlink::nft_generation`], one netlink round trip): while it
/// has not moved, no table changed, so a reconcile pass over unchanged
/// networks spawns no `nft` at all. The agent's own writes keep the rest
/// of the cache: a script that moved the generation by exactly one changed
/// only its table. Counters change without a new generation: callers that
/// need them list the table ([`Nft::list_table`]).
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

impl Nft {
    /// Uses `nft` from PATH.
    pub fn new() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            cache: Arc::default(),
        }
    }

    /// Uses the given nft binary.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Nft {
            program: program.into(),
            cache: Arc::default(),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            // nft's error messages come from strerror: keep them parseable.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            Err(e) => return Err(Some(e)),
        };
        if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(script.as_bytes()).await.map_err(Some)?;
            // Dropping the pipe closes it: nft reads to EOF.
        }
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

    /// Runs `nft -f -` with `script` as one atomic transaction.
    pub async fn run_script(&self, context: &str, script: &str) -> Result<()> {
        debug!(script, "nft -f -");
        let output = self
            .run(&["-f", "-"], Some(script))
            .await
            .map_err(|e| self.spawn_error(context, e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(DataplaneError::other(
                context,
                format!(
                    "nft -f - failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            ))
        }
    }

    /// `nft -j list table ip <name>`: `None` when the table does not exist.
    pub async fn list_table(&self, name: &str) -> Result<Option<Value>> {
        let context = format!("list nft table ip {name}");
        check_table_name(name)?;
        let output = match self.run(&["-j", "list", "table", "ip", name], None).await {
            Ok(o) => o,
            // Without nft there can be no table of ours.
            Err(None) => return Ok(None),
            Err(e) => return Err(self.spawn_error(&context, e)),
        };
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

    /// Runs a script that changes only table `name`, and remembers the
    /// table as `summary` when the ruleset moved by exactly that one
    /// transaction (the generation counts commits): what was known of
    /// the other tables stays true.
    async fn run_table_script(
        &self,
        context: &str,
        script: &str,
        name: &str,
        summary: Option<Vec<String>>,
    ) -> Result<()> {
        let before = generation();
        let result = self.run_script(context, script).await;
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
        self.run_table_script(
            &context,
            &apply_script(plan)?,
            &name,
            Some(expected_summary(plan)),
        )
        .await
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
        let created = self
            .run_table_script(
                &context,
                &create_script(plan)?,
                &name,
                Some(expected_summary(plan)),
            )
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(_) => self.apply_table(plan).await,
        }
    }

    /// Removes the network's table; absent (or no nft binary) is success.
    pub async fn delete_table(&self, network_id: &str) -> Result<()> {
        let name = table_name(network_id);
        if self.table_summary(&name).await?.is_none() {
            return Ok(());
        }
        let context = format!("delete {}", table_object(network_id));
        self.run_table_script(&context, &delete_script(network_id)?, &name, None)
            .await
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
    fn a_new_table_is_created_with_the_replace_scripts_body() {
        let plan = ipip_plan();
        let table = table_name(&plan.network_id);
        let create = create_script(&plan).unwrap();
        let replace = apply_script(&plan).unwrap();
        let body = create
            .strip_prefix(&format!("create table ip {table}\n"))
            .expect("starts with create");
        assert!(!body.is_empty());
        assert!(replace.ends_with(body), "{replace}");
        assert!(!create.contains("delete"), "{create}");
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

    #[test]
    fn anti_spoofing_rules_only_where_no_program_checks() {
        let mut plan = ipip_plan();
        assert!(has_anti_spoofing(&plan) && needs_table(&plan));
        let script = apply_script(&plan).unwrap();
        assert!(script.contains(
            "add rule ip fan_x forward iifname \"fan-x\" ip daddr 250.0.0.0/8 ip saddr != 250.0.28.0/24 counter drop"
        ), "{script}");
        assert!(script.contains(
            "add rule ip fan_x prerouting ip protocol 4 ip saddr { 172.30.0.0, 172.30.255.255 } counter drop"
        ), "{script}");
        assert!(!script.contains("masquerade"), "{script}");
        plan.backend = BackendKind::KernelFan;
        assert!(has_anti_spoofing(&plan));
        // eBPF checks in its programs; anti-spoofing off checks nowhere.
        plan.backend = BackendKind::Ebpf;
        assert!(!needs_table(&plan));
        plan.backend = BackendKind::Ipip;
        plan.anti_spoofing = false;
        assert!(!needs_table(&plan));
        // A /31 underlay: both addresses are hosts.
        let mut plan = ipip_plan();
        plan.underlay = "172.30.0.0/31".parse().unwrap();
        assert!(bogus_outer_source_rule(&plan).is_none());
        // A bridge name that would break out of the quotes is refused.
        let mut plan = ipip_plan();
        plan.bridge = "a\"b".into();
        assert!(apply_script(&plan).is_err());
    }

    #[test]
    fn anti_spoofing_listing_matches_expected_and_yields_counters() {
        // As nft 1.0.6 lists the table apply_script makes for ipip_plan().
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
