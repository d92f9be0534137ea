//! The link cache against the real kernel: lookups see every change made
//! before them, by anyone (here the `ip` tool), with no dump of their own.
//! Each test runs in a fresh network namespace (the test kit's runner,
//! deleted after, panic or not; skipped unless root).

use fan_dataplane::netlink::{Link, Netlink};
use fan_testkit::sh;

async fn link(nl: &Netlink, name: &str) -> Option<Link> {
    nl.link_by_name(name).await.expect("look up link")
}

/// What the `ip` tool says: does a device of that name exist here?
fn ip_knows(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn lookups_follow_changes_made_by_others() {
    fan_testkit::in_fresh_netns("lc", || async {
        let nl = Netlink::new().expect("netlink");
        // The first lookup dumps.
        assert!(link(&nl, "lo").await.is_some_and(|l| l.loopback));
        assert!(link(&nl, "flc-a").await.is_none());

        // Created by another process: seen by the very next lookup.
        sh(&[
            "ip", "link", "add", "flc-a", "type", "veth", "peer", "name", "flc-b",
        ]);
        let a = link(&nl, "flc-a").await.expect("new veth seen");
        let b = link(&nl, "flc-b").await.expect("its peer seen");
        assert_eq!(a.kind.as_deref(), Some("veth"));
        assert_eq!(a.link, Some(b.index));
        assert!(!a.link_in_other_netns());
        assert_eq!(nl.link_by_index(a.index).await.unwrap(), Some(a.clone()));

        // Enslaved and freed again: the bridge's own per-port notifications
        // (a DELLINK of family AF_BRIDGE when the port leaves) must not
        // remove the device.
        sh(&["ip", "link", "add", "flc-br", "type", "bridge"]);
        let bridge = link(&nl, "flc-br").await.expect("bridge seen");
        sh(&["ip", "link", "set", "flc-a", "master", "flc-br"]);
        assert_eq!(link(&nl, "flc-a").await.unwrap().master, Some(bridge.index));
        sh(&["ip", "link", "set", "flc-a", "nomaster"]);
        let freed = link(&nl, "flc-a").await.expect("a freed port stays");
        assert_eq!(freed.master, None);

        // Renamed, re-aliased, brought up, new MTU: the same index, new facts.
        sh(&["ip", "link", "set", "flc-b", "name", "flc-c"]);
        assert!(link(&nl, "flc-b").await.is_none());
        assert_eq!(link(&nl, "flc-c").await.unwrap().index, b.index);
        sh(&[
            "ip", "link", "set", "flc-c", "alias", "fan:test", "mtu", "1400", "up",
        ]);
        let c = link(&nl, "flc-c").await.unwrap();
        assert_eq!(
            (c.alias.as_deref(), c.mtu, c.up),
            (Some("fan:test"), 1400, true)
        );
        // (The bridge's MAC followed its port and then went to zero.)
        let bridges = nl.links_of_kind("bridge").await.unwrap();
        assert_eq!(
            bridges
                .iter()
                .map(|l| (l.index, l.name.as_str(), l.mac))
                .collect::<Vec<_>>(),
            vec![(bridge.index, "flc-br", Some([0; 6]))]
        );

        // An alias set on a device that is down goes unannounced by the
        // kernel: ours is seen at once (the device is read again), someone
        // else's once the cache is told to read everything again.
        sh(&["ip", "link", "add", "flc-d", "type", "bridge"]);
        let d = link(&nl, "flc-d").await.unwrap();
        assert!(!d.up);
        nl.set_alias(d.index, "fan:ours").await.unwrap();
        assert_eq!(
            link(&nl, "flc-d").await.unwrap().alias.as_deref(),
            Some("fan:ours")
        );
        sh(&["ip", "link", "set", "flc-d", "alias", "theirs"]);
        nl.reread_links();
        assert_eq!(
            link(&nl, "flc-d").await.unwrap().alias.as_deref(),
            Some("theirs")
        );
        sh(&["ip", "link", "del", "flc-d"]);

        // A runtime plugging a container: a veth pair made here, one end
        // moved into the container's namespace. The kernel announces only
        // the departure; the end that stays must learn where its peer is.
        let container = fan_testkit::Netns::unique("lcc").expect("container netns");
        sh(&[
            "ip", "link", "add", "flc-h", "type", "veth", "peer", "name", "flc-k",
        ]);
        assert!(!link(&nl, "flc-h").await.unwrap().link_in_other_netns());
        sh(&["ip", "link", "set", "flc-k", "netns", &container.name]);
        assert!(link(&nl, "flc-k").await.is_none());
        assert!(link(&nl, "flc-h").await.unwrap().link_in_other_netns());
        // The container goes, and with it both ends.
        container.delete().expect("delete container netns");
        // The kernel dismantles a namespace in the background: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ip_knows("flc-h") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!ip_knows("flc-h"), "the kernel deleted the host end");
        assert!(link(&nl, "flc-h").await.is_none(), "the cache saw it go");

        // Deleted: both ends of the veth are gone.
        sh(&["ip", "link", "del", "flc-a"]);
        assert!(link(&nl, "flc-a").await.is_none());
        assert!(link(&nl, "flc-c").await.is_none());
        assert!(nl.link_by_index(b.index).await.unwrap().is_none());

        // Many devices at once, then a second connection (its own dump)
        // agrees with the followed one, field for field.
        sh(&["ip", "link", "del", "flc-br"]);
        let mut batch = String::new();
        for i in 0..50 {
            batch.push_str(&format!(
                "link add flc-m{i} mtu {} type veth peer name flc-n{i}\n",
                1300 + i
            ));
        }
        let path = std::env::temp_dir().join(format!("flc-batch-{}", std::process::id()));
        std::fs::write(&path, batch).unwrap();
        sh(&["ip", "-batch", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let fresh = Netlink::new().expect("netlink");
        let followed = nl.links().await.unwrap();
        assert_eq!(followed.len(), 101, "lo and 50 veth pairs");
        assert_eq!(fresh.links().await.unwrap(), followed);
    });
}

#[test]
fn addresses_come_from_the_raw_dump() {
    fan_testkit::in_fresh_netns("la", || async {
        let nl = Netlink::new().expect("netlink");
        sh(&[
            "ip", "link", "add", "fla-a", "type", "veth", "peer", "name", "fla-b",
        ]);
        sh(&["ip", "addr", "add", "172.30.0.28/16", "dev", "fla-a"]);
        sh(&["ip", "addr", "add", "10.9.0.1/24", "dev", "fla-a"]);
        // Point-to-point: the device's own address (IFA_LOCAL), not the peer's.
        sh(&[
            "ip",
            "addr",
            "add",
            "10.8.0.1",
            "peer",
            "10.8.0.2/32",
            "dev",
            "fla-b",
        ]);
        let a = link(&nl, "fla-a").await.unwrap();
        let b = link(&nl, "fla-b").await.unwrap();
        let mut of_a = nl.ipv4_addresses(a.index).await.unwrap();
        of_a.sort();
        assert_eq!(
            of_a,
            vec![
                "10.9.0.1/24".parse().unwrap(),
                "172.30.0.28/16".parse().unwrap()
            ]
        );
        assert_eq!(
            nl.ipv4_addresses(b.index).await.unwrap(),
            vec!["10.8.0.1/32".parse().unwrap()]
        );
        let all = nl.all_ipv4_addresses().await.unwrap();
        assert!(all
            .iter()
            .any(|x| x.interface == "fla-b" && x.address == "10.8.0.1/32".parse().unwrap()));
        assert!(all
            .iter()
            .any(|x| x.loopback && x.address.ip().is_loopback()));
        assert_eq!(all.len(), 4, "{all:?}");
    });
}
