//! `/etc/network/fan` parser: arbitrary text never panics, and every entry it
//! accepts prints as a canonical line that parses back to the same entry.
#![no_main]

use fan_core::{parse_fan_config, FanConfigEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file as UTF-8 text (fan-client rejects other bytes first).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = parse_fan_config(text) else {
        return;
    };
    for entry in entries {
        let line = entry.to_line();
        let reparsed = parse_fan_config(&line)
            .unwrap_or_else(|e| panic!("canonical line {line:?} of {text:?} refused: {e}"));
        assert_eq!(
            reparsed,
            vec![FanConfigEntry { line: 1, ..entry }],
            "canonical line {line:?} of {text:?} parses differently"
        );
    }
});
