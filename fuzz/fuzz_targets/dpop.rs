//! Any bytes as a DPoP proof (RFC 9449) for a fixed access token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(headers) = tollgate_fuzz::header("dpop", data) {
        let uri: http::Uri = "https://api.fuzz/v1/items".parse().unwrap();
        let _ = tollgate_auth::bench::verify_dpop(
            tollgate_fuzz::auth_layer(),
            &http::Method::GET,
            &uri,
            &headers,
            b"access-token",
        );
    }
});
