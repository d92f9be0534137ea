//! The agent's request rules (`fan_agent::validate`) on arbitrary field values:
//! no input panics, and what is accepted keeps the promised limits.
#![no_main]

use std::collections::BTreeMap;

use fan_agent::model::BackendChoice;
use fan_agent::validate::{self, SpecInput, MAX_PAGE_SIZE, MIN_MTU};
use fan_core::names;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    overlay: String,
    underlay: String,
    host_reserve: Option<u32>,
    bridge: String,
    mtu: u32,
    backend: Option<u8>,
    masquerade: Option<bool>,
    anti_spoofing: Option<bool>,
    network_id: String,
    container_id: String,
    interface: String,
    address: String,
    labels: Vec<(String, String)>,
    page_size: u32,
}

fuzz_target!(|input: Input| {
    let spec = SpecInput {
        overlay: input.overlay,
        underlay: input.underlay,
        host_reserve: input.host_reserve,
        bridge: input.bridge,
        mtu: input.mtu,
        backend: input.backend.map(|b| match b % 4 {
            0 => BackendChoice::Auto,
            1 => BackendChoice::KernelFan,
            2 => BackendChoice::Ebpf,
            _ => BackendChoice::Ipip,
        }),
        masquerade: input.masquerade,
        anti_spoofing: input.anti_spoofing,
        ..SpecInput::default()
    };
    if let Ok((network, underlay)) = validate::spec(&spec) {
        assert!(names::validate_device_name(&network.bridge).is_ok(), "{network:?}");
        assert!(network.mtu == 0 || (MIN_MTU..=65535).contains(&network.mtu));
        assert_eq!(network.underlay, underlay.to_string());
        assert_eq!(network.overlay.network(), network.overlay.ip(), "no host bits");
    }

    let _ = validate::network_id("network_id", &input.network_id);
    if let Ok(owner) = validate::owner("owner", &input.container_id, &input.interface) {
        assert!(!owner.container_id.is_empty());
        assert!(names::validate_device_name(&owner.interface).is_ok());
    }
    if let Ok(address) = validate::address("address", &input.address) {
        assert_eq!(address.to_string().parse(), Ok(address));
    }
    let labels: BTreeMap<String, String> = input.labels.into_iter().collect();
    if validate::labels("labels", &labels).is_ok() {
        assert!(labels.len() <= names::MAX_LABELS);
    }
    match validate::page_size("page_size", input.page_size) {
        Ok(n) => assert!(n >= 1 && n <= MAX_PAGE_SIZE as usize),
        Err(_) => assert!(input.page_size > MAX_PAGE_SIZE),
    }
});
