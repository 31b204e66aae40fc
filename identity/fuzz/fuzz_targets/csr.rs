//! The CSR check on arbitrary bytes: never panics, and anything accepted
//! yields an uncompressed P-256 point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trellis_core::spiffe::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(id) = SpiffeId::new("cluster.local", "demo", "web") else {
        return;
    };
    if let Ok(key) = trellis_identity::csr::check(data, &id) {
        let point = key.point();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);
    }
});
