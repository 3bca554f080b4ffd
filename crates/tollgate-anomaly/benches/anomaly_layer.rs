//! Per-request cost of the anomaly layer: the same trivial router with and without
//! it, driven in process with `oneshot`.
//!
//! ```text
//! cargo bench -p tollgate-anomaly --bench anomaly_layer -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_anomaly::{AnomalyConfig, AnomalyLayer};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    ClientConfig, ClientContext, CredentialKind, FakeClock, Principal, PseudonymSecret, Pseudonymizer,
    SessionHealth, SessionInfo, SessionReasons, Tier, Timestamp,
};
use tower::ServiceExt;

struct Caller {
    principal: Principal,
    session: SessionInfo,
    client: ClientContext,
}

fn callers(p: &Pseudonymizer, n: usize) -> Vec<Caller> {
    let client = ClientConfig::default();
    (0..n)
        .map(|i| {
            let id = (i as u64).to_be_bytes();
            let peer = std::net::Ipv4Addr::from(((i as u32) << 8) | 7);
            Caller {
                principal: Principal::new(p, CredentialKind::ApiKey, &format!("user-{i}"), &id)
                    .with_tier(Tier::new("free")),
                session: SessionInfo {
                    session: p.pseudonym(Domain::SESSION, &id),
                    fingerprint: p.pseudonym(Domain::FINGERPRINT, &id),
                    health: SessionHealth::Healthy,
                    reasons: SessionReasons::default(),
                },
                client: client.context(peer.into(), &http::HeaderMap::new(), p),
            }
        })
        .collect()
}

fn request(c: &Caller, id: u64) -> http::Request<Body> {
    let mut req = http::Request::builder()
        .uri(format!("/v1/items/{}", id % 50))
        .body(Body::empty())
        .unwrap();
    let ext = req.extensions_mut();
    ext.insert(c.principal.clone());
    ext.insert(c.session);
    ext.insert(c.client);
    ext.insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let clock = FakeClock::new(Timestamp::from_secs(1_700_000_000));
    let p = Pseudonymizer::with_clock(
        PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
        Duration::from_secs(86_400),
        Arc::new(clock.clone()),
    );
    let mut config = AnomalyConfig::default();
    // Keep a hot caller under every threshold during the whole measurement.
    config.volume.default_norm = u32::MAX;
    config.enumeration.max_distinct_ids = 1_000;
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let handler = || async { "item" };
    let bare = Router::new().route("/v1/items/{id}", get(handler));
    let layered = Router::new().route("/v1/items/{id}", get(handler)).layer(anomaly);
    let one = callers(&p, 1);
    let many = callers(&p, 100_000);

    let mut g = c.benchmark_group("anomaly_layer");
    let mut i = 0u64;
    g.bench_function("bare_router", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let r = bare.clone().oneshot(request(&one[0], i));
            async move { black_box(r.await.unwrap()) }
        })
    });
    g.bench_function("with_layer/one_caller", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            clock.advance(Duration::from_millis(1));
            let r = layered.clone().oneshot(request(&one[0], i));
            async move { black_box(r.await.unwrap()) }
        })
    });
    g.bench_function("with_layer/100k_callers", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            clock.advance(Duration::from_millis(1));
            let r = layered.clone().oneshot(request(&many[(i % 100_000) as usize], i));
            async move { black_box(r.await.unwrap()) }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
