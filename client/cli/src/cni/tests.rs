//! Unit tests of the pure parts and of `run` up to the first agent call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use fan_client::{Error, Ipv4Cidr, Owner, DEFAULT_TARGET};
use serde_json::{json, Value};

use super::*;

fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    }
}

fn conf(extra: Value) -> Vec<u8> {
    let mut base = json!({
        "cniVersion": "1.0.0",
        "name": "fan",
        "type": "bridge",
        "bridge": "fan-250",
        "mtu": 1480,
        "ipam": {"type": "fan-ipam", "network": "fan"},
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&base).unwrap()
}

fn err_code(r: Result<NetConf, CniError>) -> u32 {
    r.expect_err("should fail").code
}

#[test]
fn commands_parse_and_gate_by_version() {
    for (s, c) in [
        ("ADD", Command::Add),
        ("DEL", Command::Del),
        ("CHECK", Command::Check),
        ("GC", Command::Gc),
        ("STATUS", Command::Status),
        ("VERSION", Command::Version),
    ] {
        assert_eq!(s.parse::<Command>().unwrap(), c);
        assert_eq!(c.to_string(), s);
    }
    assert_eq!("add".parse::<Command>().unwrap_err().code, 4);
    assert!(version_at_least("1.1.0", "1.0.0"));
    assert!(version_at_least("0.4.0", "0.4.0"));
    assert!(!version_at_least("0.3.1", "0.4.0"));
    assert!(!version_at_least("1.0", "0.3.0"));
    let old = conf(json!({"cniVersion": "0.3.1"}));
    assert_eq!(err_code(parse_config(&old, Command::Check)), 1);
    assert!(parse_config(&old, Command::Add).is_ok());
    let v100 = conf(json!({}));
    assert_eq!(err_code(parse_config(&v100, Command::Gc)), 1);
    assert_eq!(err_code(parse_config(&v100, Command::Status)), 1);
}

#[test]
fn environment() {
    let inv = Invocation::from_env(env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]))
    .unwrap();
    assert_eq!(
        inv.owner().unwrap(),
        Owner::with_interface("abc123", "eth0")
    );
    assert_eq!(inv.args["K8S_POD_NAME"], "web-0");

    let missing = |pairs: &[(&str, &str)]| Invocation::from_env(env(pairs)).unwrap_err();
    assert_eq!(missing(&[]).code, 4);
    assert_eq!(
        missing(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).code,
        4
    );
    assert_eq!(
        missing(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c")]).code,
        4
    );
    assert_eq!(
        missing(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "a-very-long-interface-name")
        ])
        .code,
        4
    );
    assert_eq!(
        missing(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "has space"),
            ("CNI_IFNAME", "eth0")
        ])
        .code,
        4
    );
    // The agent's device-name rule, not a looser one: `eth@0` is refused
    // here, naming the variable and the rule, before any call to the agent.
    for bad in ["eth@0", "eth:0", ".", ""] {
        let err = missing(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", bad),
        ]);
        assert_eq!(err.code, 4, "{bad:?}");
        assert!(err.msg.contains("CNI_IFNAME"), "{bad:?}: {}", err.msg);
        assert!(
            fan_core::names::validate_device_name(bad).is_err(),
            "{bad:?} must also be refused by the agent's rule"
        );
    }
    assert_eq!(
        missing(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "novalue")]).code,
        4
    );
    // GC, STATUS and VERSION need no attachment.
    for c in ["GC", "STATUS", "VERSION"] {
        assert!(Invocation::from_env(env(&[("CNI_COMMAND", c)])).is_ok());
    }
}

#[test]
fn config_defaults_and_fields() {
    let c = parse_config(&conf(json!({})), Command::Add).unwrap();
    assert_eq!(c.cni_version, "1.0.0");
    assert_eq!(c.name, "fan");
    assert_eq!(c.ipam.network, "fan");
    assert_eq!(c.ipam.agent, DEFAULT_TARGET);
    assert_eq!(c.ipam.routes, None);
    assert_eq!(c.mtu, Some(1480));
    assert_eq!(c.requested, None);
    assert_eq!(c.valid_attachments, None);

    let c = parse_config(
        &conf(json!({
            "cniVersion": "1.1.0",
            "mtu": 0,
            "ipam": {"type": "fan-ipam", "network": "fan-250", "agent": "unix:///tmp/a.sock",
                     "routes": [{"dst": "250.0.0.0/8"}, {"dst": "10.0.0.0/8", "gw": "250.0.28.254"}]},
            "runtimeConfig": {"ips": ["250.0.28.9/24"]},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
            "prevResult": {"ips": []},
        })),
        Command::Gc,
    )
    .unwrap();
    assert_eq!(c.mtu, None);
    assert_eq!(c.ipam.agent, "unix:///tmp/a.sock");
    let routes = c.ipam.routes.unwrap();
    assert_eq!(routes[0].dst.to_string(), "250.0.0.0/8");
    assert_eq!(routes[1].gw, Some(Ipv4Addr::new(250, 0, 28, 254)));
    assert_eq!(c.requested, Some(Ipv4Addr::new(250, 0, 28, 9)));
    assert_eq!(c.valid_attachments.unwrap(), vec![Owner::new("c1")]);
    assert!(c.prev_result.is_some());

    // The early misspelling libcni also sends.
    let c = parse_config(
        &conf(json!({"cniVersion": "1.1.0", "cni.dev/attachments": [{"containerID": "c", "ifname": "net1"}]})),
        Command::Gc,
    )
    .unwrap();
    assert_eq!(
        c.valid_attachments.unwrap(),
        vec![Owner::with_interface("c", "net1")]
    );
    let c = parse_config(
        &conf(json!({"args": {"cni": {"ips": ["250.0.28.7"]}}})),
        Command::Add,
    )
    .unwrap();
    assert_eq!(c.requested, Some(Ipv4Addr::new(250, 0, 28, 7)));
}

#[test]
fn config_errors_have_spec_codes() {
    let parse = |v: Value| parse_config(&conf(v), Command::Add);
    assert_eq!(err_code(parse_config(b"{not json", Command::Add)), 6);
    assert_eq!(err_code(parse_config(b"[1]", Command::Add)), 6);
    assert_eq!(err_code(parse(json!({"cniVersion": "9.9.9"}))), 1);
    assert_eq!(err_code(parse(json!({"cniVersion": "0.2.0"}))), 1);
    assert_eq!(err_code(parse(json!({"cniVersion": null}))), 7);
    assert_eq!(err_code(parse(json!({"name": ""}))), 7);
    assert_eq!(err_code(parse(json!({"ipam": null}))), 7);
    assert_eq!(err_code(parse(json!({"ipam": {"type": "fan-ipam"}}))), 7);
    let e =
        parse(json!({"ipam": {"type": "fan-ipam", "network": "fan", "netwrok": "x"}})).unwrap_err();
    assert_eq!(e.code, 2);
    assert!(e.msg.contains("ipam.netwrok"), "{e}");
    assert_eq!(
        err_code(parse(
            json!({"ipam": {"type": "fan-ipam", "network": "fan", "agent": "ftp://x"}})
        )),
        7
    );
    assert_eq!(
        err_code(parse(
            json!({"ipam": {"type": "fan-ipam", "network": "fan", "routes": [{"dst": "fd00::/8"}]}})
        )),
        7
    );
    assert_eq!(err_code(parse(json!({"mtu": "big"}))), 7);
    assert_eq!(
        err_code(parse(json!({"runtimeConfig": {"ips": ["fd00::5/64"]}}))),
        7
    );
    assert_eq!(
        err_code(parse(
            json!({"runtimeConfig": {"ips": ["250.0.28.5", "250.0.28.6"]}})
        )),
        7
    );
    assert_eq!(
        err_code(parse_config(
            &conf(
                json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "c"}]})
            ),
            Command::Gc
        )),
        7
    );
    // The version of the error reply: the configuration's when supported.
    assert_eq!(
        reply_version(&conf(json!({"cniVersion": "0.4.0"}))),
        "0.4.0"
    );
    assert_eq!(
        reply_version(&conf(json!({"cniVersion": "7.0.0"}))),
        LATEST_VERSION
    );
    assert_eq!(reply_version(b""), LATEST_VERSION);
}

#[test]
fn add_result_per_version() {
    let address: Ipv4Cidr = "250.0.28.2/24".parse().unwrap();
    let gw = Ipv4Addr::new(250, 0, 28, 1);
    let answer = IpamAnswer::new(address, gw, None);
    assert_eq!(
        answer.to_json("1.0.0"),
        json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "250.0.28.1"}],
        })
    );
    assert_eq!(
        answer.to_json("0.4.0")["ips"][0],
        json!({"version": "4", "address": "250.0.28.2/24", "gateway": "250.0.28.1"})
    );
    let routes = [
        RouteConf {
            dst: "250.0.0.0/8".parse().unwrap(),
            gw: None,
        },
        RouteConf {
            dst: "10.1.2.3/8".parse().unwrap(),
            gw: Some(Ipv4Addr::new(250, 0, 28, 254)),
        },
    ];
    let answer = IpamAnswer::new(address, gw, Some(&routes));
    assert_eq!(
        answer.to_json("1.1.0")["routes"],
        json!([
            {"dst": "250.0.0.0/8", "gw": "250.0.28.1"},
            {"dst": "10.0.0.0/8", "gw": "250.0.28.254"},
        ])
    );
    assert_eq!(
        IpamAnswer::new(address, gw, Some(&[])).to_json("1.0.0")["routes"],
        json!([])
    );
}

#[test]
fn version_and_error_json() {
    let v = version_json();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let e = CniError::new(11, "the fan agent is unreachable");
    assert_eq!(
        e.to_json("1.0.0"),
        json!({"cniVersion": "1.0.0", "code": 11, "msg": "the fan agent is unreachable"})
    );
    let e = e.with_details("no socket");
    assert_eq!(e.to_json("1.0.0")["details"], "no socket");
    assert_eq!(
        e.to_string(),
        "the fan agent is unreachable (CNI error 11): no socket"
    );
}

#[test]
fn conflist_uses_the_agents_bridge_and_mtu() {
    let mut o = ConflistOptions {
        name: "fan".into(),
        cni_version: "1.0.0".into(),
        network: "fan".into(),
        agent: DEFAULT_TARGET.into(),
        bridge: "fan-250".into(),
        mtu: 1430,
        portmap: true,
        fan_bridge: false,
    };
    let v = conflist(&o);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["name"], "fan");
    let bridge = &v["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "fan-250");
    assert_eq!(bridge["mtu"], 1430);
    assert_eq!(bridge["isGateway"], false);
    assert_eq!(bridge["ipMasq"], false);
    assert_eq!(
        bridge["ipam"],
        json!({"type": "fan-ipam", "network": "fan", "agent": "unix:///run/fan/agent.sock"})
    );
    assert_eq!(v["plugins"][1]["type"], "portmap");
    o.portmap = false;
    assert_eq!(conflist(&o)["plugins"].as_array().unwrap().len(), 1);
    // What the bridge plugin is given parses as fan-ipam's configuration.
    let mut plugin = bridge.clone();
    plugin["cniVersion"] = v["cniVersion"].clone();
    plugin["name"] = v["name"].clone();
    let c = parse_config(plugin.to_string().as_bytes(), Command::Add).unwrap();
    assert_eq!((c.mtu, c.ipam.network.as_str()), (Some(1430), "fan"));
    // With fan-bridge: the same bridge, MTU and IPAM, netkit where it can.
    o.fan_bridge = true;
    let main = conflist(&o)["plugins"][0].clone();
    assert_eq!(main["type"], "fan-bridge");
    assert_eq!(
        (&main["bridge"], &main["mtu"], &main["link"]),
        (&json!("fan-250"), &json!(1430), &json!("auto"))
    );
    assert_eq!(main["ipam"], bridge["ipam"]);
}

#[test]
fn check_compares_address_and_gateway() {
    let address: Ipv4Cidr = "250.0.28.2/24".parse().unwrap();
    let gw = Ipv4Addr::new(250, 0, 28, 1);
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/c"}],
        "ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.1", "interface": 0}],
    });
    assert!(check_prev_result(&prev, address, gw).is_ok());
    let no_gw = json!({"ips": [{"address": "250.0.28.2/24"}]});
    assert!(check_prev_result(&no_gw, address, gw).is_ok());
    let other = json!({"ips": [{"address": "250.0.28.3/24", "gateway": "250.0.28.1"}]});
    let e = check_prev_result(&other, address, gw).unwrap_err();
    assert_eq!(e.code, code::CHECK_FAILED);
    assert!(e.details.contains("250.0.28.3/24"), "{e}");
    let prefix = json!({"ips": [{"address": "250.0.28.2/16"}]});
    assert!(check_prev_result(&prefix, address, gw).is_err());
    let bad_gw = json!({"ips": [{"address": "250.0.28.2/24", "gateway": "250.0.28.254"}]});
    assert!(check_prev_result(&bad_gw, address, gw).is_err());
    assert!(check_prev_result(&json!({}), address, gw).is_err());
}

#[test]
fn requested_address_from_cni_args() {
    let args = |v: &str| BTreeMap::from([("IP".to_string(), v.to_string())]);
    let a = Ipv4Addr::new(250, 0, 28, 200);
    assert_eq!(requested_with_args(None, &BTreeMap::new()).unwrap(), None);
    assert_eq!(
        requested_with_args(Some(a), &BTreeMap::new()).unwrap(),
        Some(a)
    );
    assert_eq!(
        requested_with_args(None, &args("250.0.28.200")).unwrap(),
        Some(a)
    );
    assert_eq!(
        requested_with_args(None, &args("250.0.28.200/24,fd00::5")).unwrap(),
        Some(a)
    );
    assert_eq!(
        requested_with_args(Some(a), &args("250.0.28.200")).unwrap(),
        Some(a)
    );
    let e =
        requested_with_args(Some(Ipv4Addr::new(250, 0, 28, 9)), &args("250.0.28.200")).unwrap_err();
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.msg.contains("different addresses"), "{}", e.msg);
    let e = requested_with_args(None, &args("nope")).unwrap_err();
    assert!(e.msg.contains("\"nope\" is not an IP address"), "{}", e.msg);
    let e = requested_with_args(None, &args("250.0.28.2,250.0.28.3")).unwrap_err();
    assert!(e.msg.contains("more than one"), "{}", e.msg);
}

#[test]
fn agent_from_fan_agent_unless_configured() {
    let lookup = |k: &str| (k == "FAN_AGENT").then(|| "unix:///tmp/other.sock".to_string());
    let c = parse_config_env(&conf(json!({})), Command::Add, lookup).unwrap();
    assert_eq!(c.ipam.agent, "unix:///tmp/other.sock");
    let mut v: Value = serde_json::from_slice(&conf(json!({}))).unwrap();
    v["ipam"]["agent"] = json!("unix:///run/x.sock");
    let c = parse_config_env(v.to_string().as_bytes(), Command::Add, lookup).unwrap();
    assert_eq!(c.ipam.agent, "unix:///run/x.sock");
    let bad = |k: &str| (k == "FAN_AGENT").then(|| "ftp://x".to_string());
    let e = parse_config_env(&conf(json!({})), Command::Add, bad).unwrap_err();
    assert!(e.msg.starts_with("FAN_AGENT:"), "{}", e.msg);
}

#[test]
fn labels_from_name_and_pod_args() {
    let c = parse_config(&conf(json!({"name": "k8s-pod-network"})), Command::Add).unwrap();
    let args =
        parse_cni_args("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;IgnoreUnknown=1").unwrap();
    let labels = allocation_labels(&c, &args);
    assert_eq!(labels.len(), 4);
    assert_eq!(labels[LABEL_CNI_NETWORK], "k8s-pod-network");
    assert_eq!(labels[LABEL_CREATED_BY], CREATED_BY_CNI);
    assert_eq!(labels[LABEL_POD_NAMESPACE], "kube-system");
    assert_eq!(labels[LABEL_POD_NAME], "dns-1");
    assert_eq!(allocation_labels(&c, &BTreeMap::new()).len(), 2);
}

#[test]
fn agent_errors_map_to_cni_codes() {
    use tonic::Code;
    let rpc = |code: Code, reason: &str| Error::Rpc {
        code,
        message: "m".into(),
        reason: Some(reason.into()),
        domain: String::new(),
        metadata: BTreeMap::new(),
        details: Default::default(),
    };
    let unreachable = Error::Connect {
        target: "unix:///run/fan/agent.sock".into(),
        detail: "No such file or directory (os error 2)".into(),
    };
    let e = agent_error(&unreachable, "allocate");
    assert_eq!(e.code, 11);
    assert!(e.details.contains("AGENT_UNREACHABLE"), "{e}");
    assert_eq!(
        agent_error(
            &Error::Timeout {
                after: Duration::from_secs(1)
            },
            "x"
        )
        .code,
        11
    );
    assert_eq!(
        agent_error(&rpc(Code::Unavailable, "SHUTTING_DOWN"), "x").code,
        11
    );
    assert_eq!(
        agent_error(&rpc(Code::ResourceExhausted, "SLICE_EXHAUSTED"), "x").code,
        101
    );
    assert_eq!(
        agent_error(&rpc(Code::InvalidArgument, "FIELD_INVALID"), "x").code,
        7
    );
    let e = agent_error(&rpc(Code::Internal, "STATE_STORE_FAILED"), "x");
    assert_eq!(e.code, 100);
    assert_eq!(e.details, "m (STATE_STORE_FAILED)");
}

#[tokio::test]
async fn run_version_and_early_errors_need_no_agent() {
    let out = run(
        env(&[("CNI_COMMAND", "VERSION")]),
        b"{\"cniVersion\":\"1.0.0\"}",
    )
    .await;
    assert_eq!(out.exit_code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out.stdout).unwrap(),
        version_json()
    );

    let out = run(env(&[]), b"").await;
    assert_eq!(out.exit_code, 1);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], 4);
    assert_eq!(v["cniVersion"], LATEST_VERSION);

    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let out = run(
        env(&add),
        &conf(json!({"cniVersion": "0.4.0", "ipam": {"type": "fan-ipam"}})),
    )
    .await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (out.exit_code, v["code"].as_u64(), v["cniVersion"].as_str()),
        (1, Some(7), Some("0.4.0"))
    );

    // An agent that is not there: ADD says "try again later", STATUS "not available".
    let dir = tempfile::tempdir().unwrap();
    let target = format!("unix://{}/none.sock", dir.path().display());
    let cfg = conf(
        json!({"cniVersion": "1.1.0", "ipam": {"type": "fan-ipam", "network": "fan", "agent": target}}),
    );
    let out = run(env(&add), &cfg).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((out.exit_code, v["code"].as_u64()), (1, Some(11)), "{v}");
    let out = run(env(&[("CNI_COMMAND", "STATUS")]), &cfg).await;
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((out.exit_code, v["code"].as_u64()), (1, Some(50)), "{v}");
}
