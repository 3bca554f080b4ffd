//! Per-request cost of `PrivacyTraceLayer` against tower-http's `TraceLayer` on the
//! same service, both writing one JSON line per request to a sink.
//!
//! cargo bench --bench privacy_trace -- --warm-up-time 1 --measurement-time 3

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::{Router, routing::get};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tollgate::core::{PseudonymSecret, Pseudonymizer};
use tollgate::privacy::PrivacyTraceLayer;
use tower::ServiceExt;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;
use tracing_subscriber::prelude::*;

fn app() -> Router {
    Router::new().route("/v1/items/{id}", get(|| async { "item" }))
}

fn request() -> Request<Body> {
    let mut req = Request::get("/v1/items/42?q=x")
        .header("user-agent", "bench/1.0")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 40_000))));
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let pseudonymizer = Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
        Duration::from_secs(86_400),
    );

    let bare = app();
    let privacy = app().layer(PrivacyTraceLayer::new(pseudonymizer));
    let tower_http = app().layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
            .on_response(DefaultOnResponse::new().level(Level::INFO)),
    );

    let mut group = c.benchmark_group("trace_layer");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| bare.clone().oneshot(request()))
    });

    // Each traced variant writes JSON lines to a sink through the same formatter
    // settings; the subscriber is scoped to its own benchmark.
    let tollgate_subscriber = tracing_subscriber::registry()
        .with(tollgate::privacy::json_layer(std::io::sink))
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    tracing::subscriber::with_default(tollgate_subscriber, || {
        group.bench_function("privacy_trace_layer", |b| {
            b.to_async(&rt).iter(|| privacy.clone().oneshot(request()))
        });
    });
    let tower_subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::sink),
        )
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    tracing::subscriber::with_default(tower_subscriber, || {
        group.bench_function("tower_http_trace_layer", |b| {
            b.to_async(&rt).iter(|| tower_http.clone().oneshot(request()))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
