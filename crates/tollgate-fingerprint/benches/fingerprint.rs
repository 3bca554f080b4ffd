//! Per-request cost of the fingerprinting layer, and of its parts.
//!
//! `cargo bench -p tollgate-fingerprint --bench fingerprint -- --warm-up-time 1 --measurement-time 3`
use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tollgate_core::{
    ClientConfig, ClientContext, CredentialKind, Domain, Principal, PseudonymSecret, Pseudonymizer,
    UserAgentFamily,
};
use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer};
use tower::{Layer, Service, ServiceExt};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36";

fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[7; 32]).unwrap(),
        Duration::from_secs(86_400),
    )
}

fn request(principal: &Principal, ctx: ClientContext) -> Request<Body> {
    let mut req = Request::builder()
        .uri("/v1/items")
        .header("user-agent", UA)
        .header("accept-language", "en-GB,en;q=0.8")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(principal.clone());
    req.extensions_mut().insert(ctx);
    req
}

fn handler() -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) })
}

fn parts(c: &mut Criterion) {
    let p = pseudonymizer();
    c.bench_function("parts/ua_parse_woothee", |b| {
        b.iter(|| UserAgentFamily::parse(black_box(UA)))
    });
    c.bench_function("parts/hmac_digest", |b| {
        b.iter(|| p.digest(Domain::FINGERPRINT, black_box(b"0123456789abcdef0123")))
    });
    c.bench_function("parts/hmac_pseudonym", |b| {
        b.iter(|| p.pseudonym(Domain::FINGERPRINT, black_box(b"0123456789abcdef0123")))
    });
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let p = pseudonymizer();
    let ctx = ClientConfig::default().context("198.51.100.7".parse().unwrap(), &Default::default(), &p);
    let principal = Principal::new(&p, CredentialKind::Jwt, "subject", b"jti-bench");
    let many: Vec<Principal> = (0..10_000)
        .map(|i| Principal::new(&p, CredentialKind::Jwt, "subject", format!("jti-{i}").as_bytes()))
        .collect();

    let mut group = c.benchmark_group("layer");
    let bare = handler();
    group.bench_function("baseline_no_layer", |b| {
        b.to_async(&rt)
            .iter(|| bare.clone().oneshot(request(&principal, ctx)))
    });

    let both = FingerprintConfig {
        dimensions: tollgate_fingerprint::Dimensions {
            accept_language: true,
            ..Default::default()
        },
        ..FingerprintConfig::default()
    };
    let svc = FingerprintLayer::from_config(&both, p.clone())
        .unwrap()
        .layer(handler());
    group.bench_function("steady_session", |b| {
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(request(&principal, ctx)))
    });
    let mut i = 0usize;
    group.bench_function("10k_sessions_round_robin", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % many.len();
            svc.clone().oneshot(request(&many[i], ctx))
        })
    });

    let uncached = FingerprintConfig {
        user_agent_cache: 0,
        ..both
    };
    let svc_uncached = FingerprintLayer::from_config(&uncached, p.clone())
        .unwrap()
        .layer(handler());
    group.bench_function("steady_session_no_ua_cache", |b| {
        b.to_async(&rt)
            .iter(|| svc_uncached.clone().oneshot(request(&principal, ctx)))
    });
    group.finish();
}

criterion_group!(benches, parts, layer);
criterion_main!(benches);
