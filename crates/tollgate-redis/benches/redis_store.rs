//! Decisions per second and added latency through Redis on loopback.
//!
//! `REDIS_URL=redis://127.0.0.1:6379 cargo bench -p tollgate-redis --bench redis_store -- --warm-up-time 1 --measurement-time 3`

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use tollgate_core::{
    CredentialKind, Domain, FreezeList, Principal, StateStore, StoreKey, SystemClock, clock::Clock,
};
use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey, RateLimitStore};
use tollgate_redis::{RedisBackend, RedisFreezeList, RedisRateLimitStore, RedisStore, StoreConfig};
use tollgate_test_support::pseudonymizer;
use tollgate_test_support::redis::RedisNamespace;

fn bench(c: &mut Criterion) {
    // This run's keys, deleted at the end (and on drop if the bench panics).
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = StoreConfig::redis(redis.url.clone()).with_namespace(redis.namespace.clone());
    let backend = RedisBackend::new(&config).unwrap();
    let p = pseudonymizer();
    let rl = RedisRateLimitStore::new(&backend);
    // A large budget, stacked per second and per day: every decision runs the full script.
    let limits = [
        Limit::new(1_000_000, Duration::from_secs(1), 1_000_000).unwrap(),
        Limit::new(1_000_000_000, Duration::from_secs(86_400), 1_000_000_000).unwrap(),
    ];
    let keys: Vec<RateLimitKey> = (0u32..1_024)
        .map(|i| RateLimitKey::new(p.digest(Domain::SUBJECT, &i.to_be_bytes())))
        .collect();
    rt.block_on(backend.ping()).unwrap();

    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(1));
    let memory = MemoryRateLimitStore::new(100_000);
    let rkey = RateLimitKey::new(p.digest(Domain::SUBJECT, b"k"));
    g.bench_function("rate_limit/in_process_baseline", |b| {
        b.iter(|| memory.decide(&rkey, &limits, 1, SystemClock.now()))
    });
    let mut i = 0usize;
    g.bench_function("rate_limit/redis_single", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let (rl, key) = (&rl, &keys[i]);
            async move {
                rl.check_and_spend(key, &limits, 1, SystemClock.now())
                    .await
                    .unwrap()
            }
        })
    });
    for n in [16usize, 64, 256] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("rate_limit/redis_concurrent_{n}"), |b| {
            b.to_async(&rt).iter(|| {
                let rl = &rl;
                let keys = &keys;
                let limits = &limits;
                async move {
                    join_all((0..n).map(|j| async move {
                        rl.check_and_spend(&keys[j % keys.len()], limits, 1, SystemClock.now())
                            .await
                            .unwrap()
                    }))
                    .await
                }
            })
        });
    }

    g.throughput(Throughput::Elements(1));
    let sessions: RedisStore<Vec<u64>> = RedisStore::new(&backend);
    let skey = StoreKey::new("session", &p.digest(Domain::SESSION, b"s"));
    rt.block_on(sessions.insert(&skey, vec![1, 2, 3], Duration::from_secs(600)))
        .unwrap();
    g.bench_function("session/get", |b| {
        b.to_async(&rt)
            .iter(|| async { sessions.get(&skey).await.unwrap() })
    });
    g.bench_function("session/insert", |b| {
        b.to_async(&rt).iter_batched(
            || vec![1u64, 2, 3],
            |v| async { sessions.insert(&skey, v, Duration::from_secs(600)).await.unwrap() },
            BatchSize::SmallInput,
        )
    });

    let freeze = rt.block_on(async {
        let f = RedisFreezeList::new(&backend);
        assert!(f.wait_synced(Duration::from_secs(5)).await);
        f
    });
    let principal = Principal::new(&p, CredentialKind::ApiKey, "owner", b"key");
    g.bench_function("freeze/check_local_copy", |b| {
        b.iter(|| {
            freeze
                .check_immediate(&principal)
                .unwrap_or_else(|| panic!("not synced: {:?}", freeze.backend().stats()))
                .unwrap()
        })
    });
    g.finish();
    let stats = backend.stats();
    println!("backend stats after the bench: {stats:?}");

    // Clean up this run's keys (by SCAN, not KEYS: the Redis may be shared).
    redis.clear();
    assert!(redis.keys().is_empty(), "the bench's keys are deleted");
}

criterion_group!(benches, bench);
criterion_main!(benches);
