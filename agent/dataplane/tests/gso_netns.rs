//! IPv4 GSO/GRO limits (BIG TCP) of a device in another namespace, known
//! here only by its id: the container's side of a veth. Real namespaces
//! (the test kit's runner, deleted after, panic or not; skipped unless
//! root, and on kernels without the limits, Linux < 6.3).

use fan_dataplane::netlink::{Link, Netlink};
use fan_testkit::{sh, Netns};

const BIG: u32 = 196_608;
const LEGACY: u32 = 65_536;

async fn link(nl: &Netlink, name: &str) -> Link {
    nl.link_by_name(name)
        .await
        .expect("look up link")
        .unwrap_or_else(|| panic!("no device {name}"))
}

/// The names of every device here.
async fn names(nl: &Netlink) -> Vec<String> {
    nl.links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect()
}

/// The IPv4 GSO and GRO limits of `device` in `netns`, read from inside.
fn limits_in(netns: &Netns, device: &'static str) -> (Option<u32>, Option<u32>) {
    netns.block_on(move || async move {
        let nl = Netlink::new().expect("netlink");
        let l = link(&nl, device).await;
        (l.gso_ipv4_max_size, l.gro_ipv4_max_size)
    })
}

#[test]
fn a_containers_side_gets_the_limits_and_nothing_moves() {
    fan_testkit::in_fresh_netns("gso", || async {
        let nl = Netlink::new().expect("netlink");
        let container = Netns::unique("gsoc").expect("container netns");
        sh(&[
            "ip", "link", "add", "fgso-h", "type", "veth", "peer", "name", "fgso-k",
        ]);
        sh(&["ip", "link", "set", "fgso-k", "netns", &container.name]);
        let host = link(&nl, "fgso-h").await;
        if host.gso_ipv4_max_size.is_none() {
            eprintln!("skipped: this kernel has no gso_ipv4_max_size (Linux 6.3+)");
            return;
        }
        let (Some(netnsid), Some(peer)) = (host.link_netnsid, host.link) else {
            panic!("the host side names its peer's namespace and index: {host:?}");
        };
        let ours_before = names(&nl).await;

        // An id no namespace has: an error, and nothing of ours moves (a
        // link change with IFLA_TARGET_NETNSID would move our device of
        // that index into the namespace instead).
        let results = Netlink::set_ipv4_gso_gro_max_sizes_elsewhere(&[(netnsid + 1000, peer, BIG)]);
        let error = results[0].as_ref().expect_err("unknown namespace id");
        assert!(error.to_string().contains("netns id"), "{error}");

        let results = Netlink::set_ipv4_gso_gro_max_sizes_elsewhere(&[(netnsid, peer, BIG)]);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert_eq!(limits_in(&container, "fgso-k"), (Some(BIG), Some(BIG)));
        // Only the peer: our side keeps its limits, our devices stay ours.
        nl.reread_link(host.index);
        let host = link(&nl, "fgso-h").await;
        assert_eq!(
            (host.gso_ipv4_max_size, host.gro_ipv4_max_size),
            (Some(LEGACY), Some(LEGACY))
        );
        let ours_after = names(&nl).await;
        assert_eq!(ours_before, ours_after);

        // Our own side, and the cache sees it (the kernel does not announce it).
        nl.set_ipv4_gso_gro_max_size(host.index, BIG)
            .await
            .expect("set ours");
        let host = link(&nl, "fgso-h").await;
        assert_eq!(
            (host.gso_ipv4_max_size, host.gro_ipv4_max_size),
            (Some(BIG), Some(BIG))
        );
        container.delete().expect("delete container netns");
    });
}
