//! Per-request cost of the composed stack, one layer added at a time, in process
//! (tower `oneshot` on the router, no network), each variant logging one JSON line
//! per request to a sink.
//!
//! cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3
//!
//! `observers/per record` times the operator observers alone on a real request's
//! record (the whole stack's span, closed through the privacy layer's log writer):
//! the difference between two whole-stack variants is below this machine's noise.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::{Router, routing::get};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tollgate::operator::Observers;
use tollgate::privacy::{JsonLogLayer, RequestObserver, RequestRecord};
use tollgate::{Tollgate, TollgateConfig};
use tollgate_test_support::jwt;
use tower::ServiceExt;
use tracing_subscriber::prelude::*;

const SECRET_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn app() -> Router {
    Router::new().route("/v1/items/{id}", get(|| async { "item" }))
}

/// A token for `[auth.jwt]` below, valid for an hour: longer than any bench run.
fn token() -> String {
    let mut claims = jwt::claims("bench", "bench", "bench-user");
    claims["exp"] = (jwt::unix_now() + 3600).into();
    claims["jti"] = "bench-1".into();
    claims["tier"] = "pro".into();
    jwt::hs256(&[7; 32], Some("k"), &claims)
}

fn request(token: &str) -> Request<Body> {
    let mut req = Request::get("/v1/items/42")
        .header("authorization", format!("Bearer {token}"))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 40_000))));
    req
}

/// The config with the sections up to and including `upto` (0 = privacy only).
fn config(upto: usize) -> TollgateConfig {
    let sections = [
        format!(
            r#"
[auth.jwt]
issuer = "bench"
audience = "bench"
algorithms = ["HS256"]
tier_claim = "tier"
[[auth.jwt.keys]]
kid = "k"
alg = "HS256"
secret_hex = "{}"
"#,
            "07".repeat(32)
        ),
        "[fingerprint]\n".to_string(),
        r#"
[ratelimit]
default_tier = "pro"
anonymous_tier = "pro"
[ratelimit.tiers.pro]
limits = [{ name = "burst", quota = 1000000000, window = "1s" }]
"#
        .to_string(),
        "[anomaly]\n".to_string(),
    ];
    let mut text = format!("[pseudonym]\nsecret = \"{SECRET_HEX}\"\n");
    for section in sections.iter().take(upto) {
        text.push_str(section);
    }
    TollgateConfig::from_toml(&text).unwrap()
}

/// Makes `layer` (the privacy layer's log writer) this thread's subscriber, at INFO.
fn log_to_sink<W>(layer: JsonLogLayer<W>) -> tracing::subscriber::DefaultGuard
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    tracing::subscriber::set_default(subscriber)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = token();
    let _guard = log_to_sink(tollgate::privacy::json_layer(std::io::sink));

    let mut group = c.benchmark_group("stack");
    // `with_state(())` turns each route into its final service once; without it axum
    // converts the routes on every call, which is not what a server pays.
    let bare = app().with_state(());
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| bare.clone().oneshot(request(&token)))
    });
    let names = ["privacy", "+auth", "+fingerprint", "+ratelimit", "+anomaly"];
    for (upto, name) in names.iter().enumerate() {
        let tollgate = rt.block_on(Tollgate::from_config(&config(upto))).unwrap();
        let router = tollgate.apply(app()).with_state(());
        // The bench measures the success path: the token is accepted.
        let response = rt.block_on(router.clone().oneshot(request(&token))).unwrap();
        assert_eq!(response.status(), 200, "{name}");
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| router.clone().oneshot(request(&token)))
        });
    }
    drop(_guard);

    // The whole stack again, with the operator observers (metrics and the console's
    // activity) reading every request record.
    let config = config(names.len() - 1);
    let observers = tollgate::operator::Observers::new(&config);
    let _guard = log_to_sink(observers.attach(tollgate::privacy::json_layer(std::io::sink)));
    let tollgate = rt.block_on(Tollgate::from_config(&config)).unwrap();
    let router = tollgate.apply(app()).with_state(());
    group.bench_function("+anomaly +metrics", |b| {
        b.to_async(&rt).iter(|| router.clone().oneshot(request(&token)))
    });
    group.finish();
}

/// Runs the observers `repeat` times on each record it is handed, on `threads`
/// threads at once (as a server's workers do), timing them.
struct Timed {
    observers: Observers,
    threads: usize,
    repeat: Mutex<(u64, Duration)>,
}

impl RequestObserver for Timed {
    fn observe(&self, record: &RequestRecord<'_>) {
        let mut repeat = self.repeat.lock().unwrap();
        let n = repeat.0;
        let run = || {
            for _ in 0..n {
                self.observers.observe(std::hint::black_box(record));
            }
        };
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 1..self.threads {
                s.spawn(run);
            }
            run();
        });
        repeat.1 = start.elapsed();
    }
}

fn bench_observers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = token();
    let config = config(4);
    let mut group = c.benchmark_group("observers");
    for threads in [1, 2] {
        let timed = Arc::new(Timed {
            observers: Observers::new(&config),
            threads,
            repeat: Mutex::new((0, Duration::ZERO)),
        });
        let _guard = log_to_sink(tollgate::privacy::json_layer(std::io::sink).with_observer(timed.clone()));
        let tollgate = rt.block_on(Tollgate::from_config(&config)).unwrap();
        let router = tollgate.apply(app()).with_state(());
        let name = format!("per record, {threads} thread(s)");
        group.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                timed.repeat.lock().unwrap().0 = iters;
                let response = rt.block_on(router.clone().oneshot(request(&token))).unwrap();
                assert_eq!(response.status(), 200);
                timed.repeat.lock().unwrap().1
            })
        });
        let requests = timed.observers.activity.summary().requests;
        assert!(requests > 0, "the observers counted the records");
    }
    group.finish();
}

criterion_group!(benches, bench, bench_observers);
criterion_main!(benches);
