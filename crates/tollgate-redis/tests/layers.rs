//! The Redis stores under the real layers: two replicas of an app (two routers with
//! their own backends and connections) share one rate-limit budget and the session
//! records.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::TestRedis;
use http::{Request, StatusCode};
use tollgate_core::{CredentialKind, Principal, SessionInfo, Tier};
use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer, SessionRecord};
use tollgate_ratelimit::{LimitConfig, RateLimitConfig, RateLimitLayer};
use tollgate_redis::{RedisFreezeList, RedisRateLimitStore, RedisStore};
use tollgate_test_support::{free_port, pseudonymizer};
use tower::ServiceExt;

fn replica(t: &TestRedis, config: &RateLimitConfig) -> Router {
    let backend = t.backend();
    let store = RedisRateLimitStore::new(&backend);
    let layer = RateLimitLayer::builder(config.clone(), pseudonymizer())
        .store(Arc::new(store))
        .build()
        .unwrap();
    Router::new().route("/", get(|| async { "ok" })).layer(layer)
}

#[tokio::test]
async fn two_replicas_give_a_client_exactly_its_tier_budget() {
    let Some(t) = TestRedis::new() else { return };
    let config =
        RateLimitConfig::default().tier("free", [LimitConfig::new("minute", 6, Duration::from_secs(60))]);
    let replicas = [replica(&t, &config), replica(&t, &config)];
    let p = pseudonymizer();
    let principal = Principal::new(&p, CredentialKind::ApiKey, "alice", b"k1").with_tier(Tier::new("free"));
    let mut passed = [0; 2];
    for i in 0..20 {
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut().insert(principal.clone());
        let res = replicas[i % 2].clone().oneshot(req).await.unwrap();
        match res.status() {
            StatusCode::OK => passed[i % 2] += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(res.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed[0] + passed[1], 6, "{passed:?}");
    assert!(passed[0] > 0 && passed[1] > 0, "both replicas served: {passed:?}");
}

#[tokio::test]
async fn fingerprint_layer_keeps_session_records_in_redis() {
    let Some(t) = TestRedis::new() else { return };
    let p = pseudonymizer();
    let app = |t: &TestRedis| {
        let backend = t.backend();
        let layer = FingerprintLayer::builder(FingerprintConfig::default(), p.clone())
            .freeze_list(Arc::new(RedisFreezeList::new(&backend)))
            .store(Arc::new(RedisStore::<SessionRecord>::new(&backend)))
            .build()
            .unwrap();
        Router::new()
            .route(
                "/",
                get(|s: Option<SessionInfo>| async move { s.map(|s| s.health.as_str()).unwrap_or("none") }),
            )
            .layer(layer)
    };
    let replicas = [app(&t), app(&t)];
    let principal = Principal::new(&p, CredentialKind::Jwt, "alice@example.com", b"jti-1");
    for i in 0..6 {
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut().insert(principal.clone());
        let res = replicas[i % 2].clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // One record for the session, seen by both replicas, under a digest key with a TTL.
    let keys: Vec<String> = t.keys().into_iter().filter(|k| k.contains(":session:")).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut conn = t.connection();
    let json: String = redis::cmd("GET").arg(&keys[0]).query(&mut conn).unwrap();
    let record: SessionRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(record.requests, 6);
    assert!(!json.contains("alice") && !keys[0].contains("alice") && !keys[0].contains("jti-1"));
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(ttl > 0);
}

/// Redis unreachable: the rate-limit layer keeps answering (fail open by default, or
/// the local fallback's budget), never 500.
#[tokio::test]
async fn rate_limit_layer_without_redis_fails_open_never_500() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let config =
        RateLimitConfig::default().tier("free", [LimitConfig::new("minute", 3, Duration::from_secs(60))]);
    let p = pseudonymizer();
    let principal = Principal::new(&p, CredentialKind::ApiKey, "alice", b"k1").with_tier(Tier::new("free"));
    for (fallback, expect_ok) in [
        (tollgate_redis::RateLimitFallback::Open, 10),
        (tollgate_redis::RateLimitFallback::Local, 3),
    ] {
        let backend = tollgate_redis::RedisBackend::new(&tollgate_redis::StoreConfig {
            timeout: Duration::from_millis(50),
            ..tollgate_redis::StoreConfig::redis(url.clone())
        })
        .unwrap();
        let store = RedisRateLimitStore::new(&backend).with_fallback(fallback);
        let app = Router::new().route("/", get(|| async { "ok" })).layer(
            RateLimitLayer::builder(config.clone(), p.clone())
                .store(Arc::new(store))
                .build()
                .unwrap(),
        );
        let mut ok = 0;
        for _ in 0..10 {
            let mut req = Request::get("/").body(Body::empty()).unwrap();
            req.extensions_mut().insert(principal.clone());
            let status = app.clone().oneshot(req).await.unwrap().status();
            assert!(
                status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
                "{status}"
            );
            ok += usize::from(status == StatusCode::OK);
        }
        assert_eq!(ok, expect_ok, "{fallback:?}");
        assert_eq!(backend.stats().outages, 1);
    }
}
