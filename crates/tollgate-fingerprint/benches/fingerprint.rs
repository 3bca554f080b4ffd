//! Per-request cost of the fingerprinting layer.
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_core::{Domain, PseudonymSecret, Pseudonymizer, UserAgentFamily};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";

fn parts(c: &mut Criterion) {
    let p = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[7; 32]).unwrap(),
        Duration::from_secs(86_400),
    );
    c.bench_function("ua_parse_woothee", |b| {
        b.iter(|| UserAgentFamily::parse(black_box(UA)))
    });
    c.bench_function("hmac_digest", |b| {
        b.iter(|| p.digest(Domain::FINGERPRINT, black_box(b"0123456789abcdef0123")))
    });
    c.bench_function("hmac_pseudonym", |b| {
        b.iter(|| p.pseudonym(Domain::FINGERPRINT, black_box(b"0123456789abcdef0123")))
    });
}

criterion_group!(benches, parts);
criterion_main!(benches);
