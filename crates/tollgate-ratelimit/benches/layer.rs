//! The layer's cost per request through an axum router: bare router, a no-op layer
//! (what `Router::layer` itself costs), the layer on an authenticated request, on an
//! anonymous one (keyed by network digest), and with a table of route rules (the
//! route resolved from `MatchedPath`).
//!
//! Run: `cargo bench -p tollgate-ratelimit --bench layer -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request};
use tollgate_core::{
    ClientConfig, CredentialKind, Principal, PseudonymSecret, Pseudonymizer, RouteMap, Tier,
};
use tollgate_ratelimit::{LimitConfig, RateLimitConfig, RateLimitLayer, RateLimitRoute};
use tower::ServiceExt;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let p = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[2; 32]).unwrap(),
        Duration::from_secs(86_400),
    );
    let config = RateLimitConfig::default()
        .tier(
            "free",
            [LimitConfig::new("burst", 1_000_000_000, Duration::from_secs(1))],
        )
        .tier(
            "anonymous",
            [LimitConfig::new("burst", 1_000_000_000, Duration::from_secs(1))],
        );
    let bare = Router::new().route("/items", get(|| async { "ok" }));
    let noop = bare.clone().layer(tower::layer::util::Identity::new());
    let limited = bare
        .clone()
        .layer(RateLimitLayer::from_config(&config, p.clone()).unwrap());
    let routes = RouteMap::new(
        [
            ("/health", RateLimitRoute::exempt()),
            (
                "/login",
                RateLimitRoute::limits([LimitConfig::new("login", 1_000_000_000, Duration::from_secs(1))]),
            ),
            ("/admin/*", RateLimitRoute::default().cost(2)),
            ("/export", RateLimitRoute::default().cost(5)),
        ],
        RateLimitRoute::default(),
    )
    .unwrap();
    let routed = bare.clone().layer(
        RateLimitLayer::builder(config.clone(), p.clone())
            .routes(routes)
            .build()
            .unwrap(),
    );
    let principal = Principal::new(&p, CredentialKind::ApiKey, "bench", b"k").with_tier(Tier::new("free"));
    let client =
        ClientConfig::default().context("198.51.100.7".parse::<IpAddr>().unwrap(), &HeaderMap::new(), &p);
    let request = |authenticated: bool| {
        let mut req = Request::get("/items").body(Body::empty()).unwrap();
        req.extensions_mut().insert(client);
        if authenticated {
            req.extensions_mut().insert(principal.clone());
        }
        req
    };

    let mut g = c.benchmark_group("layer");
    g.bench_function("bare_router", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(bare.clone().oneshot(request(true)).await.unwrap().status()) })
    });
    g.bench_function("noop_layer", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(noop.clone().oneshot(request(true)).await.unwrap().status()) })
    });
    g.bench_function("ratelimit_authenticated", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(limited.clone().oneshot(request(true)).await.unwrap().status()) })
    });
    g.bench_function("ratelimit_anonymous", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(limited.clone().oneshot(request(false)).await.unwrap().status()) })
    });
    g.bench_function("ratelimit_route_table", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(routed.clone().oneshot(request(true)).await.unwrap().status()) })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
