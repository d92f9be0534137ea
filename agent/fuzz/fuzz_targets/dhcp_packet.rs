//! The DHCP server's packet path (`fan_agent::dhcp::packet`) on arbitrary
//! datagrams and lease views: parse → plan → reply never panics, and what
//! it decides keeps the server's promises (never an address outside the
//! leasable range, never another owner's address).
#![no_main]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use fan_agent::dhcp::packet::{self, LeaseView, Plan, ReplyKind, Settings};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    datagram: Vec<u8>,
    owned: Option<u8>,
    /// (last octet, holder client id)
    holders: Vec<(u8, Vec<u8>)>,
    lease_seconds: u32,
}

fuzz_target!(|input: Input| {
    let settings = Settings {
        slice: "250.0.28.0/24".parse().unwrap(),
        host_reserve: 1,
        gateway: Ipv4Addr::new(250, 0, 28, 1),
        mtu: 1480,
        lease_seconds: input.lease_seconds,
        dns: vec![Ipv4Addr::new(250, 0, 28, 1)],
    };
    let Ok(request) = packet::parse(&input.datagram) else {
        return;
    };
    let view = LeaseView {
        owned: input.owned.map(|o| Ipv4Addr::new(250, 0, 28, o)),
        holders: input
            .holders
            .iter()
            .map(|(o, id)| (Ipv4Addr::new(250, 0, 28, *o), packet::lease_owner(id)))
            .collect::<BTreeMap<_, _>>(),
    };
    let owner = request.owner();
    let plan = packet::plan(&request, &view, &settings);
    match plan {
        Plan::Offer { prefer: Some(a) } | Plan::Ack { address: a } => {
            assert!(settings.leasable(a), "{a} not leasable");
            assert!(view.holders.get(&a).is_none_or(|h| *h == owner), "{a} is someone else's");
            let reply = packet::reply(&request, ReplyKind::Ack(a), &settings, "");
            assert!(!reply.is_empty());
            let back = packet::parse(&reply);
            assert!(back.is_err(), "a reply must not parse as a request");
        }
        Plan::Release { address } | Plan::Decline { address } => {
            assert_eq!(view.owned, Some(address));
        }
        Plan::Nak { reason } => {
            let _ = packet::reply(&request, ReplyKind::Nak, &settings, reason);
        }
        Plan::Inform => {
            let _ = packet::reply(&request, ReplyKind::InformAck, &settings, "");
        }
        Plan::Offer { prefer: None } | Plan::Drop(_) => {}
    }
});
