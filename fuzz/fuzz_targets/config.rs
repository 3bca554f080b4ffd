//! Any text as a tollgate configuration file: parsed and validated, or refused with
//! an error naming the setting.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tollgate::TollgateConfig::from_toml(text);
    }
});
