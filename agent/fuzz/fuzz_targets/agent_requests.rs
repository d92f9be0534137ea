//! Request messages as they arrive: arbitrary protobuf bytes decoded with
//! prost, then converted and validated the way the gRPC service does
//! (`fan_agent::api::convert`, `fan_agent::validate`). The first byte picks
//! the message type. Decoding may fail; nothing may panic.
#![no_main]

use fan_agent::api::convert;
use fan_agent::validate;
use fan_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => {
            if let Ok(req) = pb::CreateNetworkRequest::decode(bytes) {
                let _ = validate::network_id("network_id", &req.network_id);
                if let Ok(input) = convert::spec_input(req.spec) {
                    let _ = validate::spec(&input);
                }
            }
        }
        1 => {
            if let Ok(req) = pb::AllocateAddressRequest::decode(bytes) {
                let _ = convert::owner("owner", req.owner);
                if !req.address.is_empty() {
                    let _ = validate::address("address", &req.address);
                }
                let labels = req.labels.into_iter().collect();
                let _ = validate::labels("labels", &labels);
            }
        }
        2 => {
            if let Ok(req) = pb::GetAllocationRequest::decode(bytes) {
                let _ = convert::selector(req.selector);
            }
        }
        3 => {
            if let Ok(req) = pb::ReleaseAddressRequest::decode(bytes) {
                let _ = convert::selector(req.selector);
            }
        }
        4 => {
            if let Ok(req) = pb::GarbageCollectAllocationsRequest::decode(bytes) {
                for owner in req.valid_owners.into_iter().take(validate::MAX_VALID_OWNERS) {
                    let _ = convert::owner("valid_owners", Some(owner));
                }
            }
        }
        5 => {
            if let Ok(req) = pb::ListAllocationsRequest::decode(bytes) {
                let _ = validate::page_size("page_size", req.page_size);
                // Allocation pages continue after an address.
                if !req.page_token.is_empty() {
                    let _ = validate::address("page_token", &req.page_token);
                }
            }
        }
        _ => {
            if let Ok(req) = pb::ResolveAddressRequest::decode(bytes) {
                let _ = validate::address("address", &req.address);
                let _ = fan_core::fan::parse_overlay(&req.overlay);
                let _ = fan_core::fan::parse_network(&req.underlay);
            }
        }
    }
});
