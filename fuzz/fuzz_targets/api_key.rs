//! Any bytes as an API key, in `X-Api-Key` and as `Authorization: ApiKey …`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(headers) = tollgate_fuzz::header("x-api-key", data) {
        let _ = tollgate_auth::bench::authenticate(tollgate_fuzz::auth_layer(), &headers);
    }
    let mut value = b"ApiKey ".to_vec();
    value.extend_from_slice(data);
    if let Some(headers) = tollgate_fuzz::header("authorization", &value) {
        let _ = tollgate_auth::bench::authenticate(tollgate_fuzz::auth_layer(), &headers);
    }
});
