//! `SpiffeId::from_str` on arbitrary text: never panics, and whatever
//! parses prints back as the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_core::spiffe::SpiffeId;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<SpiffeId>() {
            assert_eq!(id.to_string(), s);
        }
    }
});
