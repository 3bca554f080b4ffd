//! Rate-limit decisions per second and their latency, with many decisions in flight,
//! on one Redis server and on a Redis Cluster (3 primaries, 3 replicas) started on
//! loopback for the run.
//!
//! ```sh
//! cargo run --release -p tollgate-redis --example decisions -- 64 5
//! ```
//!
//! Arguments: decisions in flight (default 64), seconds per store (default 5). The
//! single server is `REDIS_URL` (else redis://127.0.0.1:6379).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::{Domain, SystemClock, clock::Clock};
use tollgate_ratelimit::{Limit, RateLimitKey, RateLimitStore};
use tollgate_redis::{RedisBackend, RedisRateLimitStore, StoreConfig};
use tollgate_test_support::redis_cluster::RedisCluster;
use tollgate_test_support::{pseudonymizer, random_namespace};

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    fallbacks: u64,
}

async fn measure(config: StoreConfig, in_flight: usize, seconds: u64) -> Figures {
    let backend = RedisBackend::new(&config).expect("a valid store config");
    backend.ping().await.expect("the store answers");
    let store = RedisRateLimitStore::new(&backend);
    let p = pseudonymizer();
    // 10,000 callers with a budget never spent: every decision runs the whole script.
    let keys: Arc<Vec<RateLimitKey>> = Arc::new(
        (0u32..10_000)
            .map(|i| RateLimitKey::new(p.digest(Domain::SUBJECT, &i.to_be_bytes())))
            .collect(),
    );
    let limits = Arc::new([
        Limit::new(1_000_000, Duration::from_secs(1), 1_000_000).unwrap(),
        Limit::new(1_000_000_000, Duration::from_secs(86_400), 1_000_000_000).unwrap(),
    ]);
    let warm_up = Duration::from_secs(1);
    let run = Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|w| {
            let (store, keys, limits) = (store.clone(), keys.clone(), limits.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = w;
                loop {
                    let began = Instant::now();
                    if began.duration_since(start) >= warm_up + run {
                        return latencies;
                    }
                    i = (i + 7_919) % keys.len();
                    store
                        .check_and_spend(&keys[i], &limits[..], 1, SystemClock.now())
                        .await
                        .expect("a decision");
                    if began.duration_since(start) >= warm_up {
                        latencies.push(began.elapsed());
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let stats = backend.stats();
    Figures {
        per_second: latencies.len() as f64 / run.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        fallbacks: stats.fail_open + stats.fail_closed + stats.fallback_local,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let in_flight: usize = args
        .next()
        .map_or(64, |a| a.parse().expect("decisions in flight"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("seconds per store"));
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cluster = RedisCluster::start().expect("redis-server and redis-cli to start a cluster");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let namespace = random_namespace();
    let single = rt.block_on(measure(
        StoreConfig::redis(url).with_namespace(namespace.clone()),
        in_flight,
        seconds,
    ));
    let sharded = rt.block_on(measure(
        StoreConfig::redis_cluster(cluster.urls()).with_namespace(namespace),
        in_flight,
        seconds,
    ));
    println!("{in_flight} decisions in flight, {seconds} s per store after 1 s of warm-up\n");
    println!("| store | decisions/s | p50 | p99 | decided by the failure policy |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("one Redis server", single),
        ("Redis Cluster, 3 primaries", sharded),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            f.per_second,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.fallbacks
        );
    }
    // The single server's keys expire by themselves (TTL until the budget is full again).
}
