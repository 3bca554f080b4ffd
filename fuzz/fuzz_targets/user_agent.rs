//! Any text as a user agent: the coarsening to a family and major version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::UserAgentFamily;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let family = UserAgentFamily::parse(text);
        // A family is a short token of known names, never the input echoed.
        assert!(family.family().len() <= 32);
    }
    if let Some(headers) = tollgate_fuzz::header("user-agent", data) {
        let _ = UserAgentFamily::from_headers(&headers);
    }
});
