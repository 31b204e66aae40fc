//! `UnverifiedClaims::peek` on arbitrary text (a caller's token, read
//! before any verification): never panics, and what it returns (`sub`,
//! audiences, namespace, pod) is non-empty and bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_identity::token::UnverifiedClaims;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let claims = UnverifiedClaims::peek(s);
        if let Some(sub) = claims.sub {
            assert!(!sub.is_empty() && sub.len() <= 600);
        }
        assert!(claims.aud.len() <= trellis_identity::token::MAX_AUDIENCES);
        for name in claims.aud.iter().chain(&claims.namespace).chain(&claims.pod) {
            assert!(!name.is_empty() && name.len() <= 253);
        }
    }
});
