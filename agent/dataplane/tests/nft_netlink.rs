//! The agent's nftables tables written by nf_tables netlink transactions
//! (no `nft` process on the write path), against the real kernel, each test
//! in a fresh namespace `<kit unique id>-nftnl` deleted by the kit even when
//! it panics. The `nft` binary reads the tables back: its JSON listing must
//! summarize to the plan's expected summary, and its decoding of the
//! kernel's expressions must equal that of the same rules written by
//! `nft -f` itself. Needs root; skipped (with a message) otherwise.

use std::process::Command;

use fan_dataplane::host::nft::{
    self, bogus_outer_source_rule, egress_spoof_rule, expected_summary, has_anti_spoofing,
    masquerade_rule, summarize, table_name, Nft,
};
use fan_dataplane::netlink::{nft_generation, nft_transaction};
use fan_dataplane::{BackendKind, NetworkPlan};
use fan_testkit::netns::in_fresh_netns;
use serde_json::Value;

mod support;

/// A plan on host .28 with the given shape.
fn plan(
    id: &str,
    backend: BackendKind,
    masquerade: bool,
    anti_spoofing: bool,
    overlay: &str,
    slice: &str,
    underlay: &str,
) -> NetworkPlan {
    NetworkPlan {
        masquerade,
        anti_spoofing,
        overlay: overlay.parse().unwrap(),
        slice: slice.parse().unwrap(),
        underlay: underlay.parse().unwrap(),
        ..support::host28_plan(id, &format!("fan-{id}"), "ul0", backend)
    }
}

/// Every shape the agent writes: masquerade on/off, the three backends,
/// overlays /8 /12 /16, slices /24 /28, underlays /16 and /31.
fn plans() -> Vec<NetworkPlan> {
    use BackendKind::*;
    vec![
        plan(
            "a",
            Ipip,
            true,
            true,
            "250.0.0.0/8",
            "250.0.28.0/24",
            "172.30.0.0/16",
        ),
        plan(
            "b",
            KernelFan,
            false,
            true,
            "250.0.0.0/12",
            "250.0.28.16/28",
            "172.30.0.0/31",
        ),
        plan(
            "c",
            Ebpf,
            true,
            true,
            "10.20.0.0/16",
            "10.20.28.0/24",
            "172.30.0.0/16",
        ),
        plan(
            "d",
            Ipip,
            true,
            true,
            "250.0.0.0/12",
            "250.0.28.16/28",
            "172.30.0.0/16",
        ),
        plan(
            "e",
            KernelFan,
            true,
            false,
            "10.20.0.0/16",
            "10.20.3.16/28",
            "10.0.0.0/31",
        ),
        plan(
            "f",
            KernelFan,
            false,
            true,
            "250.0.0.0/8",
            "250.0.28.0/24",
            "172.30.0.0/16",
        ),
    ]
}

/// Runs the `nft` binary (in the calling thread's namespace).
fn nft_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new("nft").args(args).output().expect("run nft");
    (
        out.status.success(),
        String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        })
        .into_owned(),
    )
}

/// The table's summary as nft lists it; None when absent.
fn listed(name: &str) -> Option<Vec<String>> {
    let (ok, out) = nft_cmd(&["-j", "list", "table", "ip", name]);
    ok.then(|| summarize(&serde_json::from_str::<Value>(&out).expect("nft JSON")))
}

/// nft's decoding of the kernel's expressions for table `name` (what
/// `--debug=netlink` prints), with the table's name and handles left out.
fn decoded(name: &str) -> String {
    let (ok, out) = nft_cmd(&["--debug=netlink", "list", "table", "ip", name]);
    assert!(ok, "{out}");
    let mut lines: Vec<String> = out
        .lines()
        // Only the debug dump: the listing itself follows "table ip …".
        .take_while(|l| !l.starts_with("table ip"))
        .map(|l| l.replace(name, "T"))
        .collect();
    // A set's elements come in its hash order, which differs from set to set.
    let mut start = 0;
    while start < lines.len() {
        let run = lines[start..]
            .iter()
            .take_while(|l| l.starts_with("\telement"))
            .count();
        lines[start..start + run].sort();
        start += run.max(1);
    }
    lines.join("\n")
}

/// The `nft -f` script the agent used to write for `plan`, into table `table`.
fn nft_script(plan: &NetworkPlan, table: &str) -> String {
    let mut s = format!("add table ip {table}\n");
    if plan.masquerade {
        s += &format!(
            "add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             add rule ip {table} postrouting {}\n",
            masquerade_rule(plan.slice, plan.overlay)
        );
    }
    if has_anti_spoofing(plan) {
        s += &format!(
            "add chain ip {table} forward {{ type filter hook forward priority filter; policy accept; }}\n\
             add rule ip {table} forward {}\n",
            egress_spoof_rule(plan)
        );
        if let Some(rule) = bogus_outer_source_rule(plan) {
            s += &format!(
                "add chain ip {table} prerouting {{ type filter hook prerouting priority filter; policy accept; }}\n\
                 add rule ip {table} prerouting {rule}\n"
            );
        }
    }
    s
}

fn nft_script_run(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft -f -");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f - {script}");
}

#[test]
fn tables_list_as_planned_and_as_nft_writes_them() {
    in_fresh_netns("nftnl", || async {
        let nft = Nft::new();
        for plan in plans() {
            let name = table_name(&plan.network_id);
            if !nft::needs_table(&plan) {
                continue;
            }
            // The create path (absent table: exclusive create).
            nft.ensure_table(&plan).await.expect("create table");
            assert_eq!(listed(&name), Some(expected_summary(&plan)), "{plan:?}");
            // nft's own encoding of the same rules decodes identically.
            let reference = format!("ref_{}", plan.network_id);
            nft_script_run(&nft_script(&plan, &reference));
            assert_eq!(decoded(&name), decoded(&reference), "{plan:?}");
            nft_cmd(&["delete", "table", "ip", &reference]);
            // Unchanged: ensure leaves it alone (the cache answers).
            let generation = nft_generation().unwrap();
            nft.ensure_table(&plan).await.unwrap();
            assert_eq!(nft_generation().unwrap(), generation);
        }
        // One table per planned network, nothing else.
        let (_, tables) = nft_cmd(&["list", "tables", "ip"]);
        let count = plans().iter().filter(|p| nft::needs_table(p)).count();
        assert_eq!(tables.lines().count(), count, "{tables}");
    });
}

#[test]
fn create_of_an_existing_table_fails_with_eexist_and_changes_nothing() {
    in_fresh_netns("nftnl", || async {
        let nft = Nft::new();
        let first = &plans()[0];
        nft.apply_table(first).await.unwrap();
        let name = table_name(&first.network_id);
        // Another plan for the same network, created exclusively.
        let other = NetworkPlan {
            masquerade: false,
            ..plans()[3].clone()
        };
        let other = NetworkPlan {
            network_id: first.network_id.clone(),
            ..other
        };
        let generation = nft_generation().unwrap();
        let err = nft_transaction(&nft::create_batch(&other).unwrap()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        // Nothing committed: same generation, same table.
        assert_eq!(nft_generation().unwrap(), generation);
        assert_eq!(listed(&name), Some(expected_summary(first)));
        // A transaction the kernel refuses part of (a rule in a chain that
        // does not exist) commits nothing either and names its errno.
        let mut batch = fan_dataplane::netlink::nftables::Batch::new();
        batch.new_table("fan_fresh", true);
        batch.new_rule(
            "fan_fresh",
            "nochain",
            &[fan_dataplane::netlink::nftables::Expr::Counter],
        );
        let err = nft_transaction(&batch).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert_eq!(nft_generation().unwrap(), generation);
        assert_eq!(listed("fan_fresh"), None);
    });
}

#[test]
fn replace_resets_a_tampered_table_and_delete_removes_it() {
    in_fresh_netns("nftnl", || async {
        let nft = Nft::new();
        let plan = plans()[0].clone();
        let name = table_name(&plan.network_id);
        nft.apply_table(&plan).await.unwrap();
        // Replacing a table as it is: one transaction, same table.
        let generation = nft_generation().unwrap();
        nft.apply_table(&plan).await.unwrap();
        assert_eq!(nft_generation().unwrap(), generation.wrapping_add(1));
        assert_eq!(listed(&name), Some(expected_summary(&plan)));
        // Tampered by hand: a rule gone, a chain added.
        nft_cmd(&["flush", "chain", "ip", &name, "forward"]);
        nft_cmd(&["add", "chain", "ip", &name, "extra"]);
        assert_ne!(listed(&name), Some(expected_summary(&plan)));
        nft.ensure_table(&plan).await.unwrap();
        assert_eq!(listed(&name), Some(expected_summary(&plan)));
        // Another shape for the same network replaces the whole table.
        let smaller = NetworkPlan {
            masquerade: false,
            ..plan.clone()
        };
        nft.ensure_table(&smaller).await.unwrap();
        assert_eq!(listed(&name), Some(expected_summary(&smaller)));
        nft.delete_table(&plan.network_id).await.unwrap();
        assert_eq!(listed(&name), None);
        // Absent: deleting again is success and commits nothing.
        let generation = nft_generation().unwrap();
        nft.delete_table(&plan.network_id).await.unwrap();
        assert_eq!(nft_generation().unwrap(), generation);
    });
}

#[test]
fn writes_need_no_nft_binary() {
    in_fresh_netns("nftnl", || async {
        let missing = Nft::with_program("/nonexistent/nft");
        let plan = plans()[3].clone();
        let name = table_name(&plan.network_id);
        missing
            .ensure_table(&plan)
            .await
            .expect("create without nft");
        assert_eq!(listed(&name), Some(expected_summary(&plan)));
        missing
            .apply_table(&plan)
            .await
            .expect("replace without nft");
        assert_eq!(listed(&name), Some(expected_summary(&plan)));
        // Listing does need it, and says so.
        let err = missing.list_table(&name).await.unwrap_err();
        assert!(err.to_string().contains("install nftables"), "{err}");
        missing
            .delete_table(&plan.network_id)
            .await
            .expect("delete without nft");
        assert_eq!(listed(&name), None);
    });
}
