//! Opaque page tokens bound to the request that produced them.
//!
//! A token is hex of `crc32(binding ‖ position) ‖ position`, where the
//! binding names the method and every filter of the request (network id,
//! owner, label selector) and the position is the last key of the page. A
//! token presented with a different binding (another network's or filter's
//! request), or damaged, fails its check and is refused with
//! INVALID_ARGUMENT naming `page_token`. The check is an integrity check
//! against mix-ups, not a secret: tokens carry nothing confidential.

use crate::error::{AgentError, Result};

const RULE: &str = "is not a token this request produced: it was issued for another network, \
                    filter or method, or is damaged; start again with an empty page_token";

/// Encodes `position` (the last key of a page) bound to `binding`.
pub fn encode(binding: &str, position: &str) -> String {
    let mut bytes = checksum(binding, position).to_be_bytes().to_vec();
    bytes.extend_from_slice(position.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a token for `binding` into its position; `field` names the
/// request field in the error.
pub fn decode(field: &str, binding: &str, token: &str) -> Result<String> {
    let invalid = || AgentError::invalid(field, RULE);
    if token.len() < 8 || !token.len().is_multiple_of(2) || token.len() > 1024 {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let (sum, position) = bytes.split_at(4);
    let position = std::str::from_utf8(position).map_err(|_| invalid())?;
    let sum: [u8; 4] = sum.try_into().map_err(|_| invalid())?;
    if u32::from_be_bytes(sum) != checksum(binding, position) {
        return Err(invalid());
    }
    Ok(position.to_owned())
}

fn checksum(binding: &str, position: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(b"fan-page-token-v1\0");
    hasher.update(binding.as_bytes());
    hasher.update(b"\0");
    hasher.update(position.as_bytes());
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_decodes_only_for_its_own_binding() {
        let token = encode("allocations\0fan\0\0", "fan/250.0.28.4");
        assert!(!token.contains("250.0"));
        assert_eq!(
            decode("page_token", "allocations\0fan\0\0", &token).unwrap(),
            "fan/250.0.28.4"
        );
        for other in ["allocations\0other\0\0", "allocations\0fan\0c1\0"] {
            assert!(decode("page_token", other, &token).is_err());
        }
        assert!(decode("page_token", "allocations\0fan\0\0", "250.0.28.4").is_err());
    }
}
