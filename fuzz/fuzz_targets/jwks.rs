//! Any bytes as a JWKS document: parsed and its keys checked as a refresh would.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(keys) = tollgate_auth::bench::parse_jwks(tollgate_fuzz::auth_layer(), data) {
        assert!(keys > 0, "a document is kept only with a usable key");
    }
});
