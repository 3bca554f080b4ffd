//! Any bytes as `X-Forwarded-For` and `Forwarded` from a trusted proxy: the client
//! address resolution and its coarsening.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_core::client::ForwardedHeader;
use tollgate_core::{ClientConfig, Pseudonymizer};

fn configs() -> &'static [ClientConfig; 2] {
    static C: OnceLock<[ClientConfig; 2]> = OnceLock::new();
    C.get_or_init(|| {
        let trusted = || ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
        [
            trusted().forwarded_header(ForwardedHeader::XForwardedFor),
            trusted().forwarded_header(ForwardedHeader::Forwarded),
        ]
    })
}

fn p() -> &'static Pseudonymizer {
    static P: OnceLock<Pseudonymizer> = OnceLock::new();
    P.get_or_init(tollgate_fuzz::pseudonymizer)
}

fuzz_target!(|data: &[u8]| {
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    for (name, config) in ["x-forwarded-for", "forwarded"].into_iter().zip(configs()) {
        if let Some(headers) = tollgate_fuzz::header(name, data) {
            let _ = config.context(peer, &headers, p());
        }
    }
});
