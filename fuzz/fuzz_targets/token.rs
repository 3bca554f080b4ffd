//! Any bytes as a bearer token: header parsing, JWT header and claims handling,
//! signature checks for each key kind, the verified-token cache.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(data);
    if let Some(headers) = tollgate_fuzz::header("authorization", &value) {
        let _ = tollgate_auth::bench::authenticate(tollgate_fuzz::auth_layer(), &headers);
    }
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = tollgate_auth::bench::verify_jwt(tollgate_fuzz::auth_layer(), token);
    }
});
