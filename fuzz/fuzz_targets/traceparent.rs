//! Any bytes as a W3C `traceparent`: a trace id is taken over or a new one made.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_privacy::TraceId;

fuzz_target!(|data: &[u8]| {
    if let Some(headers) = tollgate_fuzz::header("traceparent", data) {
        let id = TraceId::from_headers_or_new(&headers);
        let _ = id.to_hex();
    }
});
