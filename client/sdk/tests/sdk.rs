//! The SDK against the real agent, served in-process on the in-memory data
//! plane over a unix socket (`support`; no root needed): connection, every
//! typed call, ErrorInfo decoding over the wire, page following; retries and
//! timeouts through the fault proxy in front of it.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use fan_client::{
    AllocationRequest, Backend, Code, ConnectOptions, DeleteNetworkOptions, Error, FanClient,
    NetworkSpec, NetworkState, Owner, ResolveScope, RetryPolicy, Selector,
};
use support::{status, BackendKind, FakeDataplane, FaultProxy, TestAgent};

async fn setup() -> (TestAgent, FanClient) {
    let agent = support::start().await;
    let client = FanClient::connect(&agent.target()).await.unwrap();
    (agent, client)
}

/// The real agent behind the fault proxy, and a client through it.
async fn setup_proxied() -> (FaultProxy, FanClient) {
    let proxy = FaultProxy::start().await;
    let client = FanClient::connect(&proxy.target).await.unwrap();
    (proxy, client)
}

fn spec() -> NetworkSpec {
    NetworkSpec::new("250", "172.30.0.28/16")
}

#[tokio::test]
async fn connect_forms_and_unreachable() {
    let agent = support::start().await;
    for target in [
        agent.target(),
        format!("unix:{}", agent.socket().display()),
        agent.socket().display().to_string(),
    ] {
        let c = FanClient::connect(&target).await.unwrap();
        assert_eq!(c.target(), target);
        let info = c.get_agent_info().await.unwrap();
        assert_eq!(info.addresses[0].address.to_string(), "172.30.0.28/16");
    }
    let err = FanClient::connect("unix:/nonexistent/agent.sock")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(err.reason(), "AGENT_UNREACHABLE");
    assert!(err.is_unreachable());
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
    let err = FanClient::connect("ftp://x:1").await.unwrap_err();
    assert_eq!(err.reason(), "INVALID_TARGET");
    // nothing listens on this port of the loopback address
    let err = FanClient::connect_with(
        "http://127.0.0.1:1",
        ConnectOptions::default().with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "AGENT_UNREACHABLE", "{err}");
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn https_without_tls_feature_is_refused_clearly() {
    let err = FanClient::connect("https://127.0.0.1:1").await.unwrap_err();
    assert_eq!(err.reason(), "TLS_UNSUPPORTED");
    assert!(err.to_string().contains("`tls` feature"), "{err}");
}

#[tokio::test]
async fn agent_info() {
    // A host whose kernel has no fan patch: the agent picks eBPF.
    let host = FakeDataplane::new();
    host.set_availability(BackendKind::KernelFan, false, "no fan patch in this kernel");
    let agent = support::start_on(host).await;
    let c = FanClient::connect(&agent.target()).await.unwrap();
    let info = c.get_agent_info().await.unwrap();
    // The agent reports its own version and this machine's kernel.
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(info.kernel_release, release.trim());
    assert_eq!(info.addresses[0].interface, "eth0");
    assert_eq!(info.addresses[0].address.to_string(), "172.30.0.28/16");
    assert_eq!(info.addresses[0].mtu, 1500);
    let backends: Vec<_> = info
        .backends
        .iter()
        .map(|b| (b.backend, b.available))
        .collect();
    assert_eq!(
        backends,
        [
            (Backend::KernelFan, false),
            (Backend::Ebpf, true),
            (Backend::Ipip, true)
        ]
    );
    assert_eq!(info.backends[0].reason, "no fan patch in this kernel");
    assert_eq!(info.auto_backend, Some(Backend::Ebpf));
}

#[tokio::test]
async fn network_lifecycle() {
    let (_agent, c) = setup().await;
    let n = c.create_network("fan-250", &spec()).await.unwrap();
    assert_eq!(n.id, "fan-250");
    assert_eq!(n.name, "networks/fan-250");
    assert_eq!(n.spec.overlay, "250.0.0.0/8");
    assert_eq!(n.spec.host_reserve, Some(1));
    assert_eq!(n.status.slice.unwrap().to_string(), "250.0.28.0/24");
    assert_eq!(n.status.gateway, Some(Ipv4Addr::new(250, 0, 28, 1)));
    assert_eq!(n.status.state, NetworkState::Ready);
    assert!(n.create_time.is_some());
    // idempotent
    let again = c.create_network("fan-250", &spec()).await.unwrap();
    assert_eq!(again, n);
    // different spec
    let mut other = spec();
    other.host_reserve = Some(3);
    let err = c.create_network("fan-250", &other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(err.reason(), fan_client::reason::NETWORK_EXISTS);

    assert_eq!(c.get_network("fan-250").await.unwrap(), n);
    let err = c.get_network("nope").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(
        err.to_string(),
        "network \"nope\" not found (NETWORK_NOT_FOUND)"
    );

    assert!(c.check_network("fan-250").await.unwrap().is_empty());

    let out = c
        .delete_network("fan-250", DeleteNetworkOptions::default())
        .await
        .unwrap();
    assert!(out.deleted);
    let out = c
        .delete_network(
            "fan-250",
            DeleteNetworkOptions {
                allow_missing: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!out.deleted);
    let err = c
        .delete_network("fan-250", DeleteNetworkOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn lists_follow_every_page() {
    let (proxy, c) = setup_proxied().await;
    for (i, octet) in (240..245).enumerate() {
        c.create_network(
            &format!("net-{i}"),
            &NetworkSpec::new(octet.to_string(), "172.30.0.28/16"),
        )
        .await
        .unwrap();
    }
    // Pages of two, followed by hand.
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c.list_networks_page(2, token.as_deref()).await.unwrap();
        assert!(page.items.len() <= 2);
        pages += 1;
        ids.extend(page.items.into_iter().map(|n| n.id));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(ids, ["net-0", "net-1", "net-2", "net-3", "net-4"]);
    assert_eq!(pages, 3);
    let all = c.list_networks().await.unwrap();
    assert_eq!(all.len(), 5);

    // More allocations than the agent's default page holds: the SDK
    // follows every page.
    let calls = (0..205).map(|i| {
        let c = c.clone();
        async move {
            c.allocate_address(
                "net-0",
                &AllocationRequest::new(Owner::new(format!("c{i}"))),
            )
            .await
        }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    let first = c.list_allocations_page("net-0", 0, None).await.unwrap();
    assert!(first.next_page_token.is_some());
    let default_page = first.items.len();
    assert!(default_page < 205, "{default_page}");
    let before = proxy.calls("ListAllocations");
    let all = c.list_allocations("net-0").await.unwrap();
    assert_eq!(all.len(), 205);
    assert!(all.windows(2).all(|w| w[0].address < w[1].address));
    assert_eq!(
        proxy.calls("ListAllocations") - before,
        205usize.div_ceil(default_page)
    );
}

#[tokio::test]
async fn allocation_lifecycle() {
    let (_agent, c) = setup().await;
    c.create_network("fan-250", &spec()).await.unwrap();
    let a = c
        .allocate_address(
            "fan-250",
            &AllocationRequest::new(Owner::new("web-1")).label("app", "web"),
        )
        .await
        .unwrap();
    assert_eq!(a.address, Ipv4Addr::new(250, 0, 28, 2));
    assert_eq!(a.cidr().to_string(), "250.0.28.2/24");
    assert_eq!(a.gateway, Ipv4Addr::new(250, 0, 28, 1));
    assert_eq!(a.owner, Owner::new("web-1"));
    assert_eq!(a.labels.get("app").map(String::as_str), Some("web"));
    // idempotent per owner
    let again = c
        .allocate_address("fan-250", &AllocationRequest::new(Owner::new("web-1")))
        .await
        .unwrap();
    assert_eq!(again.address, a.address);
    let b = c
        .allocate_address(
            "fan-250",
            &AllocationRequest::new(Owner::with_interface("db", "net1"))
                .address(Ipv4Addr::new(250, 0, 28, 9)),
        )
        .await
        .unwrap();
    assert_eq!(b.address, Ipv4Addr::new(250, 0, 28, 9));
    let err = c
        .allocate_address(
            "fan-250",
            &AllocationRequest::new(Owner::new("x")).address(Ipv4Addr::new(250, 0, 28, 9)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ADDRESS_HELD_BY_OTHER_OWNER");

    let got = c
        .get_allocation("fan-250", &Selector::Address(b.address))
        .await
        .unwrap();
    assert_eq!(got.owner, Owner::with_interface("db", "net1"));
    let got = c
        .get_allocation("fan-250", &Owner::new("web-1").into())
        .await
        .unwrap();
    assert_eq!(got.address, a.address);

    for i in 0..3 {
        c.allocate_address(
            "fan-250",
            &AllocationRequest::new(Owner::new(format!("c{i}"))),
        )
        .await
        .unwrap();
    }
    let all = c.list_allocations("fan-250").await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].address < w[1].address));

    let n = c.get_network("fan-250").await.unwrap();
    assert_eq!(n.status.allocated, 5);
    let err = c
        .delete_network("fan-250", DeleteNetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.to_string(),
        "network \"fan-250\" still has 5 allocation(s); release them first or delete with force (NETWORK_IN_USE)"
    );

    let gone = c
        .garbage_collect_allocations(
            "fan-250",
            &[Owner::new("web-1"), Owner::with_interface("db", "net1")],
            true,
        )
        .await
        .unwrap();
    assert_eq!(gone.len(), 3);
    assert_eq!(c.list_allocations("fan-250").await.unwrap().len(), 5);
    let gone = c
        .garbage_collect_allocations("fan-250", &[Owner::new("web-1")], false)
        .await
        .unwrap();
    assert_eq!(gone.len(), 4);

    let released = c
        .release_address("fan-250", &Owner::new("web-1").into(), false)
        .await
        .unwrap();
    assert_eq!(released.unwrap().address, a.address);
    let released = c
        .release_address("fan-250", &Owner::new("web-1").into(), true)
        .await
        .unwrap();
    assert!(released.is_none());
    let err = c
        .release_address("fan-250", &Owner::new("web-1").into(), false)
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn resolve() {
    let (_agent, c) = setup().await;
    c.create_network("fan-250", &spec()).await.unwrap();
    let r = c
        .resolve_address(Ipv4Addr::new(250, 0, 99, 7), &ResolveScope::AllNetworks)
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].is_overlay);
    assert_eq!(r[0].network_id.as_deref(), Some("fan-250"));
    assert_eq!(r[0].underlay_host, Ipv4Addr::new(172, 30, 0, 99));
    assert_eq!(r[0].slice.to_string(), "250.0.99.0/24");
    let r = c
        .resolve_address(
            Ipv4Addr::new(172, 30, 0, 28),
            &ResolveScope::Network("fan-250".into()),
        )
        .await
        .unwrap();
    assert!(!r[0].is_overlay);
    assert_eq!(r[0].slice.to_string(), "250.0.28.0/24");
    let r = c
        .resolve_address(
            Ipv4Addr::new(99, 6, 7, 8),
            &ResolveScope::AdHoc {
                overlay: "99.0.0.0/8".parse().unwrap(),
                underlay: "10.88.0.0/16".parse().unwrap(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r[0].network_id, None);
    assert_eq!(r[0].underlay_host, Ipv4Addr::new(10, 88, 6, 7));
}

#[tokio::test]
async fn reads_and_idempotent_writes_retry_on_unavailable_only() {
    let (agent, c) = setup_proxied().await;
    let unavailable = || status(Code::Unavailable, "agent restarting", "SHUTTING_DOWN");

    // a read: two failures, then success on the third attempt
    agent.fail("GetAgentInfo", vec![unavailable(), unavailable()]);
    c.get_agent_info().await.unwrap();
    assert_eq!(agent.calls("GetAgentInfo"), 3);

    // three failures exhaust the three attempts
    agent.fail(
        "ListNetworks",
        vec![unavailable(), unavailable(), unavailable()],
    );
    let err = c.list_networks().await.unwrap_err();
    assert_eq!(err.reason(), "SHUTTING_DOWN");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(agent.calls("ListNetworks"), 3);

    // CreateNetwork and AllocateAddress are idempotent: retried
    agent.fail("CreateNetwork", vec![unavailable()]);
    c.create_network("fan-250", &spec()).await.unwrap();
    assert_eq!(agent.calls("CreateNetwork"), 2);
    agent.fail("AllocateAddress", vec![unavailable()]);
    c.allocate_address("fan-250", &AllocationRequest::new(Owner::new("c1")))
        .await
        .unwrap();
    assert_eq!(agent.calls("AllocateAddress"), 2);

    // other codes are not retried, even for reads
    agent.fail(
        "GetNetwork",
        vec![status(Code::Internal, "disk on fire", "STATE_STORE_FAILED")],
    );
    let err = c.get_network("fan-250").await.unwrap_err();
    assert_eq!(err.to_string(), "disk on fire (STATE_STORE_FAILED)");
    assert_eq!(agent.calls("GetNetwork"), 1);

    // Release, Delete and GC are never retried
    agent.fail("ReleaseAddress", vec![unavailable()]);
    assert!(c
        .release_address("fan-250", &Owner::new("c1").into(), false)
        .await
        .is_err());
    assert_eq!(agent.calls("ReleaseAddress"), 1);
    agent.fail("GarbageCollectAllocations", vec![unavailable()]);
    assert!(c
        .garbage_collect_allocations("fan-250", &[], true)
        .await
        .is_err());
    assert_eq!(agent.calls("GarbageCollectAllocations"), 1);
    agent.fail("DeleteNetwork", vec![unavailable()]);
    assert!(c
        .delete_network("fan-250", DeleteNetworkOptions::default())
        .await
        .is_err());
    assert_eq!(agent.calls("DeleteNetwork"), 1);

    // retries can be switched off
    let once = FanClient::connect_with(
        &agent.target,
        ConnectOptions::default().with_retry(RetryPolicy::none()),
    )
    .await
    .unwrap();
    agent.fail("CheckNetwork", vec![unavailable()]);
    assert!(once.check_network("fan-250").await.is_err());
    assert_eq!(agent.calls("CheckNetwork"), 1);
}

#[tokio::test]
async fn per_call_timeout() {
    let (agent, c) = setup_proxied().await;
    // Far longer than the deadline: only the deadline can end the call.
    agent.delay("GetAgentInfo", Duration::from_secs(600));
    let fast = c.with_timeout(Duration::from_millis(200));
    assert_eq!(fast.timeout(), Duration::from_millis(200));
    let err = fast.get_agent_info().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.reason(), "DEADLINE_EXCEEDED");
    // not retried
    assert_eq!(agent.calls("GetAgentInfo"), 1);
    // the original client keeps its 10 s
    assert_eq!(c.timeout(), fan_client::DEFAULT_TIMEOUT);
}

#[tokio::test]
async fn concurrent_calls_share_one_client() {
    let (_agent, c) = setup().await;
    c.create_network("fan-250", &spec()).await.unwrap();
    let calls = (0..20).map(|i| {
        let c = c.clone();
        async move {
            c.allocate_address(
                "fan-250",
                &AllocationRequest::new(Owner::new(format!("c{i}"))),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut addrs: Vec<_> = results.into_iter().map(|r| r.unwrap().address).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 20);
}

/// One client outlives a restart of the agent on the same socket and state
/// (stopped as by SIGTERM): the acknowledged allocation is still there.
#[tokio::test]
async fn a_client_outlives_an_agent_restart() {
    let (agent, c) = setup().await;
    c.create_network("fan-250", &spec()).await.unwrap();
    let a = c
        .allocate_address("fan-250", &AllocationRequest::new(Owner::new("c1")))
        .await
        .unwrap();
    let host = agent.dataplane().clone();
    let dir = agent.stop().await.unwrap();
    let err = c.get_network("fan-250").await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    let _agent = TestAgent::builder()
        .dataplane(host)
        .directory(dir)
        .start()
        .await
        .unwrap();
    let got = c
        .get_allocation("fan-250", &Owner::new("c1").into())
        .await
        .unwrap();
    assert_eq!(got, a);
}
