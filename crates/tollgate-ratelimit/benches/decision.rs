//! One rate-limit decision: tollgate's in-process GCRA store against governor's keyed
//! limiter, on the same workloads (single key, many keys, contended across threads),
//! and the same decision through the store trait object the layer holds.
//!
//! Run: `cargo bench -p tollgate-ratelimit --bench decision -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tollgate_core::{Clock, Domain, KeyedDigest, PseudonymSecret, Pseudonymizer, SystemClock};
use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey, SharedRateLimitStore};

const RATE: u32 = 1_000_000;
const BURST: u32 = 1_000_000_000;
const MANY: usize = 10_000;

fn digests(n: usize) -> Vec<KeyedDigest> {
    let p = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[9; 32]).unwrap(),
        Duration::from_secs(86_400),
    );
    (0..n as u64)
        .map(|i| p.digest(Domain::SUBJECT, &i.to_be_bytes()))
        .collect()
}

/// Both limiters: one unit per microsecond, bursts of 10^9, so every decision in the
/// run is admitted and every key keeps live state (no expiry churn in either).
fn limits() -> [Limit; 1] {
    [Limit::new(RATE as u64, Duration::from_secs(1), BURST as u64).unwrap()]
}

fn governor() -> DefaultKeyedRateLimiter<KeyedDigest> {
    RateLimiter::keyed(
        Quota::per_second(NonZeroU32::new(RATE).unwrap()).allow_burst(NonZeroU32::new(BURST).unwrap()),
    )
}

fn bench(c: &mut Criterion) {
    let keys = digests(MANY);
    let store_keys: Vec<RateLimitKey> = keys.iter().map(|d| RateLimitKey::new(*d)).collect();
    let limits = limits();
    let clock = SystemClock;

    let mut g = c.benchmark_group("single_key");
    let store = MemoryRateLimitStore::new(100_000);
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(store.decide(&store_keys[0], &limits, 1, clock.now()).allowed()))
    });
    // What the layer calls: the synchronous path of `Arc<dyn RateLimitStore>`, on a
    // scoped key (a route's own limits).
    let shared: SharedRateLimitStore = Arc::new(MemoryRateLimitStore::new(100_000));
    let scoped = RateLimitKey::scoped("login", keys[0]).unwrap();
    g.bench_function("tollgate_dyn_scoped", |b| {
        b.iter(|| {
            let d = shared.check_and_spend_now(&scoped, &limits, 1, clock.now());
            black_box(d.map(|d| d.map(|d| d.allowed())))
        })
    });
    let gov = governor();
    g.bench_function("governor", |b| {
        b.iter(|| black_box(gov.check_key(&keys[0]).is_ok()))
    });
    g.finish();

    let mut g = c.benchmark_group("many_keys");
    let store = MemoryRateLimitStore::new(100_000);
    let mut i = 0;
    g.bench_function("tollgate", |b| {
        b.iter(|| {
            i = (i + 1) % MANY;
            black_box(store.decide(&store_keys[i], &limits, 1, clock.now()).allowed())
        })
    });
    let gov = governor();
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % MANY;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("contended_2_threads");
    let store = Arc::new(MemoryRateLimitStore::new(100_000));
    let key = store_keys[0];
    g.bench_function("tollgate", |b| {
        b.iter_custom(|iters| {
            threaded(iters, |_| {
                black_box(store.decide(&key, &limits, 1, clock.now()).allowed());
            })
        })
    });
    let gov = Arc::new(governor());
    g.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            threaded(iters, |_| {
                black_box(gov.check_key(&keys[0]).is_ok());
            })
        })
    });
    g.finish();
}

/// Runs `iters` operations split over 2 threads; returns the wall time (so the
/// figure is time per operation of the pair, as throughput would see it).
fn threaded(iters: u64, op: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let op = &op;
            s.spawn(move || {
                for i in 0..iters / 2 {
                    op(i * 2 + t);
                }
            });
        }
    });
    start.elapsed()
}

criterion_group!(benches, bench);
criterion_main!(benches);
