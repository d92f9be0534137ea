//! Parsers and validators: underlay specs, /etc/network/fan, names; malformed input.

use std::net::Ipv4Addr;

use fan_core::config::{parse_fan_config, ConfigError, FanConfigEntry};
use fan_core::fan::{parse_network, parse_overlay, FanError};
use fan_core::names::{
    default_bridge_name, legacy_bridge_name, validate_container_id, validate_device_name,
    validate_label, validate_labels, validate_network_id, MAX_LABELS,
};
use fan_core::underlay::{HostInterfaceAddress, ResolvedUnderlay, UnderlaySpec};
use ipnetwork::Ipv4Network;
use proptest::prelude::*;

fn n(s: &str) -> Ipv4Network {
    parse_network(s).unwrap()
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

// ---------- malformed input, across every parser ----------

#[test]
fn malformed_inputs_table() {
    type Parser = fn(&str) -> Result<(), String>;
    let network: Parser = |s| parse_network(s).map(|_| ()).map_err(|e| e.to_string());
    let overlay: Parser = |s| parse_overlay(s).map(|_| ()).map_err(|e| e.to_string());
    let underlay: Parser = |s| {
        UnderlaySpec::parse(s)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let config: Parser = |s| parse_fan_config(s).map(|_| ()).map_err(|e| e.to_string());
    let netid: Parser = |s| validate_network_id(s).map_err(|e| e.to_string());
    let device: Parser = |s| validate_device_name(s).map_err(|e| e.to_string());
    let container: Parser = |s| validate_container_id(s).map_err(|e| e.to_string());

    // (parser name, parser, "input|fragment the error must contain" lines)
    let cases: &[(&str, Parser, &[&str])] = &[
        (
            "network",
            network,
            &[
                "|expected a CIDR",
                "10.0.0.0|expected a CIDR",
                "10.0.0.0/33|expected a CIDR",
                "10.0.0.0/08|expected a CIDR",
                "10.0.0.0/+8|expected a CIDR",
                "010.0.0.0/8|expected a CIDR",
                "10.0.0/8|expected a CIDR",
                " 10.0.0.0/8|expected a CIDR",
                "10.0.0.1/8|host bits set; did you mean 10.0.0.0/8?",
            ],
        ),
        (
            "overlay",
            overlay,
            &[
                "256|\"256\" is not valid",
                "250.0.0.0|bare first octet",
                "0250|bare first octet",
                "-1|bare first octet",
                "250.0.0.0/8/8|bare first octet",
                "250.0.0.1/8|did you mean 250.0.0.0/8?",
                "250.0.0.0/31|prefix must be at most /30",
                "127.0.0.0/8|loopback",
            ],
        ),
        (
            "underlay",
            underlay,
            &[
                "|empty address",
                "10.0.0.256/16|not an IPv4 address",
                "10.0.0/16|not an IPv4 address",
                "10.0.0.1/0|must be a number in 1..=32",
                "10.0.0.1/33|must be a number in 1..=32",
                "10.0.0.1/|must be a number in 1..=32",
                "eth0|needs a prefix, e.g. eth0/16",
                "default|needs a prefix, e.g. default/16",
                "averyveryverylongname/16|the limit is 15",
                "eth:0/16|contains ':'",
                "../16|reserved",
            ],
        ),
        (
            "config",
            config,
            &[
                "250 eth0/16 foo|line 1: unknown flag \"foo\"",
                "\n\n250 eth0/16 bridge|line 3: flag \"bridge\" needs",
                "250 eth0/16 host-reserve|line 1: flag \"host-reserve\" needs",
                "250 eth0/16 host-reserve x|\"x\" is not a non-negative integer",
                "250 eth0/16 host-reserve 0|must be between 1",
                "250 eth0/16 host-reserve 254|must be between 1 (the gateway .1) and 253",
                "250 eth0/16 dhcp dhcp|flag \"dhcp\" given twice",
                "250|line 1: missing underlay",
                "250 eth0/8|overlay prefix /8 must be less than underlay prefix /8",
                "250.0.0.0/24 eth0/25|gives /31 slices",
                "250 eth0/16\n250.0.0.0/8 eth1/16|line 2: overlay 250.0.0.0/8 is already configured on line 1",
                "250 eth0/16 bridge fan/250|contains '/'",
            ],
        ),
        (
            "netid",
            netid,
            &[
                "|must not be empty",
                "Fan|contains 'F'",
                "1fan|must start with a letter",
                "fan-|must not end with '-'",
            ],
        ),
        (
            "device",
            device,
            &[
                ".|reserved",
                "..|reserved",
                "eth 0|contains ' '",
                "eth\0|contains '\\0'",
                "fan-1234567890ab|the limit is 15",
            ],
        ),
        (
            "container",
            container,
            &[
                "|must not be empty",
                "abc def|contains ' '",
                "abcé|contains 'é'",
            ],
        ),
    ];
    let long_id = "a".repeat(64);
    let mut checked = 0;
    let rows = cases.iter().flat_map(|(what, parse, rows)| {
        rows.iter().map(move |row| {
            let (input, want) = row.split_once('|').expect("input|fragment");
            (*what, *parse, input, want)
        })
    });
    let long = (
        "netid",
        netid,
        long_id.as_str(),
        "is 64 bytes long; the limit is 63",
    );
    for (what, parse, input, want) in rows.chain([long]) {
        checked += 1;
        match parse(input) {
            Ok(()) => panic!("{what}: {input:?} was accepted"),
            Err(e) => assert!(
                e.contains(want),
                "{what}: {input:?}: got {e:?}, want {want:?}"
            ),
        }
    }
    assert!(checked >= 20);
}

// ---------- underlay ----------

#[test]
fn underlay_parse_forms() {
    let cidr = |address: &str, prefix| UnderlaySpec::Cidr {
        address: a(address),
        prefix,
    };
    let interface = |name: &str, prefix| UnderlaySpec::Interface {
        name: name.into(),
        prefix,
    };
    let cases = [
        ("172.30.0.0/16", cidr("172.30.0.0", 16)),
        ("172.30.0.28/16", cidr("172.30.0.28", 16)),
        ("172.30.0.28", cidr("172.30.0.28", 16)),
        ("10.1.2.7/24", cidr("10.1.2.7", 24)),
        ("eth0/16", interface("eth0", 16)),
        ("enp0s31f6.100/20", interface("enp0s31f6.100", 20)),
        ("default/16", UnderlaySpec::DefaultRoute { prefix: 16 }),
        ("default/32", UnderlaySpec::DefaultRoute { prefix: 32 }),
    ];
    for (text, want) in cases {
        assert_eq!(UnderlaySpec::parse(text).unwrap(), want, "{text}");
        assert_eq!(text.parse::<UnderlaySpec>().unwrap(), want);
    }
    assert_eq!(
        UnderlaySpec::parse("172.30.0.28").unwrap().to_string(),
        "172.30.0.28/16"
    );
    assert_eq!(UnderlaySpec::parse("default/16").unwrap().prefix(), 16);
}

fn iface(name: &str, addr: &str, prefix_len: u8, mtu: u32) -> HostInterfaceAddress {
    HostInterfaceAddress {
        interface: name.into(),
        address: a(addr),
        prefix_len,
        mtu,
    }
}

fn host_addrs() -> Vec<HostInterfaceAddress> {
    vec![
        iface("lo", "127.0.0.1", 8, 65536),
        iface("eth0", "172.30.0.28", 24, 9001),
        iface("eth0", "172.30.5.9", 24, 9001),
        iface("eth1", "10.1.2.7", 24, 1500),
        iface("eth2", "0.0.0.0", 0, 1500), // exists, no IPv4
    ]
}

#[test]
fn underlay_resolve() {
    let addrs = host_addrs();
    let ok = |spec: &str, dflt: Option<&str>| {
        UnderlaySpec::parse(spec)
            .unwrap()
            .resolve(&addrs, dflt)
            .unwrap()
    };
    assert_eq!(
        ok("172.30.0.0/16", None),
        ResolvedUnderlay {
            network: n("172.30.0.0/16"),
            address: a("172.30.0.28"),
            interface: "eth0".into(),
            mtu: 9001
        }
    );
    // A host address picks exactly that address.
    assert_eq!(ok("172.30.5.9/16", None).address, a("172.30.5.9"));
    // The network uses the spec's prefix, not the interface's /24.
    assert_eq!(ok("172.30.5.9", None).network, n("172.30.0.0/16"));
    assert_eq!(ok("eth1/24", None).network, n("10.1.2.0/24"));
    assert_eq!(ok("eth1/16", None).address, a("10.1.2.7"));
    assert_eq!(ok("eth0/16", None).address, a("172.30.0.28"));
    let d = ok("default/16", Some("eth1"));
    assert_eq!(
        (d.network, d.address, d.interface.as_str(), d.mtu),
        (n("10.1.0.0/16"), a("10.1.2.7"), "eth1", 1500)
    );
    // /32 "network" means exactly that address.
    assert_eq!(ok("10.1.2.7/32", None).network, n("10.1.2.7/32"));

    let err = |spec: &str, dflt: Option<&str>| {
        UnderlaySpec::parse(spec)
            .unwrap()
            .resolve(&addrs, dflt)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("172.30.0.99/16", None),
        "address 172.30.0.99 is not configured on this host"
    );
    assert_eq!(
        err("192.168.0.0/16", None),
        "no address in 192.168.0.0/16 is configured on this host"
    );
    assert_eq!(err("eth9/16", None), "no interface \"eth9\"");
    assert_eq!(
        err("eth2/16", None),
        "interface \"eth2\" has no IPv4 address"
    );
    assert_eq!(
        err("default/16", None),
        "this host has no IPv4 default route"
    );
    assert_eq!(
        err("default/16", Some("eth2")),
        "interface \"eth2\" has no IPv4 address"
    );
    // eth1's address is the network address of 10.1.2.7/30's network? No: 10.1.2.4/30 -> .7 is broadcast.
    assert!(err("eth1/30", None).contains("broadcast address of underlay 10.1.2.4/30"));
    assert!(matches!(
        UnderlaySpec::parse("0.0.0.0/8")
            .unwrap()
            .resolve(&addrs, None),
        Err(FanError::NoAddressInNetwork { .. })
    ));
}

// ---------- names ----------

#[test]
fn bridge_names() {
    let cases = [
        ("250.0.0.0/8", "fan-250"),
        ("240.0.0.0/4", "fan-240"),
        ("128.0.0.0/1", "fan-128"),
        ("10.20.0.0/16", "fan-10-20"),
        ("10.16.0.0/12", "fan-10-16"),
        ("10.20.30.0/24", "fan-10-20-30"),
        ("250.1.2.0/23", "fan-250-1-2"),
        ("10.20.30.40/30", "fan-10-20-30-40"),
        ("250.1.2.4/30", "fan-250-1-2-4"),
        ("250.100.200.4/30", "fan-fa64c804"),
    ];
    for (ov, want) in cases {
        assert_eq!(default_bridge_name(n(ov)), want, "{ov}");
    }
    assert_eq!(legacy_bridge_name(n("250.0.28.0/24")), "fan-250-0-28");
    assert_eq!(legacy_bridge_name(n("255.255.255.0/24")), "fan-255-255-255");
    assert_eq!(legacy_bridge_name(n("99.224.80.0/20")), "fan-99-224-80");
}

#[test]
fn bridge_names_exhaustive_prefixes() {
    // Every prefix 1..=30 over worst-case (3-digit) and small octets gives a valid device name.
    for p in 1..=30u8 {
        for base in [u32::MAX, 0xFAFA_FAFA, 0x0A14_1E28, 0x8000_0000, 0xF0F0_F0F0] {
            let mask = u32::MAX << (32 - u32::from(p));
            let ov = Ipv4Network::new(Ipv4Addr::from(base & mask), p).unwrap();
            let name = default_bridge_name(ov);
            validate_device_name(&name).unwrap_or_else(|e| panic!("{ov}: {e}"));
            assert!(name.starts_with("fan-"), "{name}");
            let legacy = legacy_bridge_name(ov);
            validate_device_name(&legacy).unwrap_or_else(|e| panic!("{ov}: {e}"));
        }
    }
}

#[test]
fn name_validators_accept() {
    for id in ["a", "fan", "fan-250", "a1-b2", &("a".repeat(63))] {
        validate_network_id(id).unwrap();
    }
    for dev in [
        "eth0",
        "fan-250-0-28",
        "enp0s31f6.100",
        "a_b",
        "x",
        "123456789012345",
    ] {
        validate_device_name(dev).unwrap();
    }
    validate_container_id("0123abcdef").unwrap();
    validate_container_id(&"x".repeat(256)).unwrap();
    assert!(validate_container_id(&"x".repeat(257))
        .unwrap_err()
        .to_string()
        .contains("limit is 256"));
    validate_label("app.kubernetes.io/name", "web server").unwrap();
    validate_label("k", "").unwrap();
    validate_label("k", &"é".repeat(256)).unwrap();
    assert!(validate_label("k", &"é".repeat(257))
        .unwrap_err()
        .to_string()
        .contains("257 characters long"));
    assert!(validate_label("", "v")
        .unwrap_err()
        .to_string()
        .contains("label key must not be empty"));
    assert!(validate_label("a b", "v")
        .unwrap_err()
        .to_string()
        .contains("contains ' '"));
    assert!(validate_label("k", "a\nb")
        .unwrap_err()
        .to_string()
        .contains("'\\n'"));
    assert!(validate_label(&"k".repeat(64), "v").is_err());
    let many: Vec<(String, String)> = (0..=MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    let e = validate_labels(many.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
    assert_eq!(e.to_string(), "33 labels given; the limit is 32");
    validate_labels(
        many[..MAX_LABELS]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap();
}

// ---------- config ----------

#[test]
fn config_parse_example_file() {
    let text = "\
# /etc/network/fan
250.0.0.0/8 172.30.0.0/16 dhcp host-reserve 1   # the lab fan

  251 eth0/16 bridge fan-251 auto
252.0.0.0/8 default/24 off#no space before comment
   # indented comment
";
    let got = parse_fan_config(text).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        FanConfigEntry {
            line: 2,
            overlay: n("250.0.0.0/8"),
            underlay: UnderlaySpec::Cidr {
                address: a("172.30.0.0"),
                prefix: 16
            },
            dhcp: true,
            off: false,
            auto: false,
            bridge: None,
            host_reserve: Some(1),
        }
    );
    assert_eq!(got[1].line, 4);
    assert_eq!(got[1].overlay, n("251.0.0.0/8"));
    assert_eq!(got[1].bridge.as_deref(), Some("fan-251"));
    assert!(got[1].auto && !got[1].off && !got[1].dhcp);
    assert_eq!(got[2].underlay, UnderlaySpec::DefaultRoute { prefix: 24 });
    assert!(got[2].off);
    assert_eq!(
        got[0].to_line(),
        "250.0.0.0/8 172.30.0.0/16 dhcp host-reserve 1"
    );
    assert_eq!(got[1].to_line(), "251.0.0.0/8 eth0/16 auto bridge fan-251");
    assert_eq!(got[2].to_string(), "252.0.0.0/8 default/24 off");
    assert_eq!(parse_fan_config("").unwrap(), vec![]);
    assert_eq!(parse_fan_config("# only\n\n   \n").unwrap(), vec![]);
}

#[test]
fn config_error_display() {
    let e = parse_fan_config("250 eth0/16\n# c\n250.1.0.0/16 eth0/24 foo\n").unwrap_err();
    assert_eq!(
        e,
        ConfigError {
            line: 3,
            message: "unknown flag \"foo\"".into()
        }
    );
    assert_eq!(e.to_string(), "line 3: unknown flag \"foo\"");
    let e = parse_fan_config("250.0.0.1/8 eth0/16").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: overlay: \"250.0.0.1/8\": host bits set; did you mean 250.0.0.0/8?"
    );
}

// ---------- properties ----------

fn device_name() -> impl Strategy<Value = String> {
    "[a-z][a-zA-Z0-9_.-]{0,14}".prop_filter("reserved word", |s| s != "default")
}

fn underlay_spec() -> impl Strategy<Value = UnderlaySpec> {
    prop_oneof![
        (any::<u32>(), 1u8..=32).prop_map(|(x, p)| UnderlaySpec::Cidr {
            address: Ipv4Addr::from(x),
            prefix: p
        }),
        (device_name(), 1u8..=32)
            .prop_map(|(name, prefix)| UnderlaySpec::Interface { name, prefix }),
        (1u8..=32).prop_map(|prefix| UnderlaySpec::DefaultRoute { prefix }),
    ]
}

fn config_entry() -> impl Strategy<Value = FanConfigEntry> {
    (2u8..=30, any::<u32>())
        .prop_filter_map("illegal overlay", |(o, x)| {
            let ov =
                Ipv4Network::new(Ipv4Addr::from(x & (u32::MAX << (32 - u32::from(o)))), o).unwrap();
            fan_core::fan::validate_overlay(ov).ok().map(|_| ov)
        })
        .prop_flat_map(|ov| {
            let o = ov.prefix();
            ((o + 2)..=32u8).prop_flat_map(move |u| {
                let slice_prefix = o + 32 - u;
                let max_reserve = fan_core::ipam::max_host_reserve(slice_prefix);
                let spec = prop_oneof![
                    any::<u32>().prop_map(move |x| UnderlaySpec::Cidr {
                        address: Ipv4Addr::from(x),
                        prefix: u
                    }),
                    device_name().prop_map(move |name| UnderlaySpec::Interface { name, prefix: u }),
                    Just(UnderlaySpec::DefaultRoute { prefix: u }),
                ];
                (
                    Just(ov),
                    spec,
                    any::<(bool, bool, bool)>(),
                    proptest::option::of(device_name()),
                    proptest::option::of(1..=max_reserve),
                )
            })
        })
        .prop_map(
            |(overlay, underlay, (dhcp, off, auto), bridge, host_reserve)| FanConfigEntry {
                line: 0,
                overlay,
                underlay,
                dhcp,
                off,
                auto,
                bridge,
                host_reserve,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn prop_underlay_display_round_trip(spec in underlay_spec()) {
        let text = spec.to_string();
        prop_assert_eq!(UnderlaySpec::parse(&text).unwrap(), spec);
    }

    #[test]
    fn prop_config_line_round_trip(entry in config_entry()) {
        let line = entry.to_line();
        let parsed = parse_fan_config(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0], &FanConfigEntry { line: 1, ..entry.clone() });
        // With comments and blank lines around it, only the line number changes.
        let text = format!("# header\n\n{line} # trailing\n");
        prop_assert_eq!(&parse_fan_config(&text).unwrap()[0], &FanConfigEntry { line: 3, ..entry });
    }

    #[test]
    fn prop_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = parse_network(&s);
        let _ = parse_overlay(&s);
        let _ = UnderlaySpec::parse(&s);
        let _ = parse_fan_config(&s);
        let _ = validate_network_id(&s);
        let _ = validate_device_name(&s);
        let _ = validate_container_id(&s);
    }

    #[test]
    fn prop_default_bridge_name_valid(x in any::<u32>(), p in 1u8..=30) {
        let ov = Ipv4Network::new(Ipv4Addr::from(x & (u32::MAX << (32 - u32::from(p)))), p).unwrap();
        prop_assert!(validate_device_name(&default_bridge_name(ov)).is_ok());
    }
}
