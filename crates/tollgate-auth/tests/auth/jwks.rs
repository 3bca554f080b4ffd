//! Key rotation, refetch storms and an unreachable JWKS endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tollgate_auth::{AuthConfig, AuthLayer};
use tollgate_core::{FakeClock, Timestamp};

use crate::common::*;

fn rsa_doc(kids: &[(&str, &str)]) -> serde_json::Value {
    json!({"keys": kids.iter().map(|(kid, rsa)| public_jwk(Algorithm::RS256, kid, rsa)).collect::<Vec<_>>()})
}

fn jwks_config(url: &str, min_refresh: Duration) -> AuthConfig {
    let mut cfg = config(Some(url));
    let jwt = cfg.jwt.as_mut().unwrap();
    jwt.jwks_min_refresh = min_refresh;
    jwt.jwks_unknown_kid_interval = Duration::from_secs(30);
    cfg
}

async fn wait_for_hits(server: &JwksServer, at_least: usize) {
    for _ in 0..500 {
        if server.hits() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("JWKS hits stayed at {}", server.hits());
}

#[tokio::test]
async fn rotation_is_picked_up_and_forged_kids_cause_one_refetch_per_interval() {
    let server = JwksServer::start(rsa_doc(&[("k1", "rsa1")])).await;
    let clock = FakeClock::new(Timestamp::from_secs(now()));
    let layer = AuthLayer::builder(
        jwks_config(&server.url(), Duration::from_secs(3600)),
        pseudonymizer(),
    )
    .clock(Arc::new(clock.clone()))
    .build()
    .await
    .unwrap();
    let handle = layer.clone();
    let app = run(app(layer)).await;
    assert_eq!(server.hits(), 1);

    let old = sign_with(Algorithm::RS256, Some("k1"), &claims("alice"), "rsa1");
    assert_eq!(app.bearer("/me", &old).await.status(), 200);

    // The issuer rotates: k2 (a new key) is published next to k1.
    server.set_doc(rsa_doc(&[("k1", "rsa1"), ("k2", "rsa2")]));
    let new = sign_with(Algorithm::RS256, Some("k2"), &claims("bob"), "rsa2");
    assert_eq!(
        app.bearer("/me", &new).await.status(),
        200,
        "accepted after refetch, no restart"
    );
    assert_eq!(server.hits(), 2, "one refetch for the new kid");
    assert_eq!(app.bearer("/me", &old).await.status(), 200);

    // A burst of forged kids inside the interval: no fetch at all.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = app.client.clone();
        let url = format!("{}/me", app.base);
        let forged = sign_with(
            Algorithm::RS256,
            Some(&format!("forged-{i}")),
            &claims("eve"),
            "rsa2",
        );
        tasks.push(tokio::spawn(async move {
            client.get(url).bearer_auth(forged).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(
        server.hits(),
        2,
        "forged kids within the interval cause no refetch"
    );

    // After the interval: a second burst causes exactly one refetch.
    clock.advance(Duration::from_secs(31));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = app.client.clone();
        let url = format!("{}/me", app.base);
        let forged = sign_with(
            Algorithm::RS256,
            Some(&format!("forged2-{i}")),
            &claims("eve"),
            "rsa2",
        );
        tasks.push(tokio::spawn(async move {
            client.get(url).bearer_auth(forged).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(server.hits(), 3, "one refetch per interval");
    assert_eq!(handle.jwks_fetch_count(), 3);

    // k1 retired: new k1 tokens fail once the keys are refetched (cached ones
    // still end at their exp, at the latest).
    server.set_doc(rsa_doc(&[("k2", "rsa2")]));
    clock.advance(Duration::from_secs(31));
    let probe = sign_with(Algorithm::RS256, Some("k3"), &claims("eve"), "rsa2");
    assert_eq!(app.bearer("/me", &probe).await.status(), 401);
    assert_eq!(server.hits(), 4);
    let fresh_old = sign_with(Algorithm::RS256, Some("k1"), &claims("carol"), "rsa1");
    assert_eq!(app.bearer("/me", &fresh_old).await.status(), 401);
}

#[tokio::test]
async fn background_refresh_honours_max_age() {
    let server = JwksServer::start(rsa_doc(&[("k1", "rsa1")])).await;
    *server.cache_control.lock().unwrap() = Some("public, max-age=0".into());
    let clock = FakeClock::new(Timestamp::from_secs(now()));
    let layer = AuthLayer::builder(
        jwks_config(&server.url(), Duration::from_millis(100)),
        pseudonymizer(),
    )
    .clock(Arc::new(clock.clone()))
    .build()
    .await
    .unwrap();
    let app = run(app(layer)).await;
    // Use up the unknown-kid refetch (the fake clock never moves), so only the
    // background refresh can bring in new keys.
    let forged = sign_with(Algorithm::RS256, Some("nope"), &claims("eve"), "rsa2");
    assert_eq!(app.bearer("/me", &forged).await.status(), 401);
    let before = server.hits();

    server.set_doc(rsa_doc(&[("k1", "rsa1"), ("k2", "rsa2")]));
    wait_for_hits(&server, before + 1).await;
    let new = sign_with(Algorithm::RS256, Some("k2"), &claims("bob"), "rsa2");
    assert_eq!(app.bearer("/me", &new).await.status(), 200);

    // max-age=3600 is honoured: once a fetch has seen it, no refresh for a while.
    *server.cache_control.lock().unwrap() = Some("max-age=3600".into());
    let seen = server.hits() + 1;
    wait_for_hits(&server, seen).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = server.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.hits(), settled, "max-age=3600 defers the next refresh");
}

#[tokio::test]
async fn endpoint_down_keeps_the_last_good_keys() {
    let server = JwksServer::start(rsa_doc(&[("k1", "rsa1")])).await;
    *server.cache_control.lock().unwrap() = Some("max-age=0".into());
    let layer = AuthLayer::from_config(
        &jwks_config(&server.url(), Duration::from_millis(50)),
        pseudonymizer(),
    )
    .await
    .unwrap();
    let app = run(app(layer)).await;
    assert_eq!(
        app.bearer("/me", &sign(Algorithm::RS256, Some("k1"), &claims("alice")))
            .await
            .status(),
        200
    );

    server.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let hits = server.hits();
    wait_for_hits(&server, hits + 2).await;
    // Uncached tokens (new subjects) under the old key still verify.
    for sub in ["bob", "carol"] {
        let t = sign(Algorithm::RS256, Some("k1"), &claims(sub));
        assert_eq!(app.bearer("/me", &t).await.status(), 200, "{sub}");
    }
    // A document without usable keys is refused too, keeping the old keys.
    server.set_status(StatusCode::OK);
    server.set_doc(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1", "alg": "HS256"}]}));
    let hits = server.hits();
    wait_for_hits(&server, hits + 2).await;
    let t = sign(Algorithm::RS256, Some("k1"), &claims("dave"));
    assert_eq!(app.bearer("/me", &t).await.status(), 200);
}

/// A JWKS endpoint that hangs, or answers garbage, truncated or oversized JSON:
/// tokens under the keys last known keep verifying without waiting on it, unknown
/// kids are refused within the fetch timeout, and refetches stay bounded.
#[tokio::test]
async fn slow_or_garbage_endpoint_keeps_the_last_good_keys_with_bounded_refetch() {
    let server = JwksServer::start(rsa_doc(&[("k1", "rsa1")])).await;
    *server.cache_control.lock().unwrap() = Some("max-age=0".into());
    let mut cfg = jwks_config(&server.url(), Duration::from_millis(50));
    let jwt = cfg.jwt.as_mut().unwrap();
    jwt.jwks_timeout = Duration::from_millis(200);
    jwt.jwks_unknown_kid_interval = Duration::from_secs(1);
    let layer = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap();
    let handle = layer.clone();
    let app = run(app(layer)).await;
    assert_eq!((handle.jwks_fetch_count(), handle.jwks_fetch_failures()), (1, 0));

    let mut bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        br#"{"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB"#.to_vec(),
        br#"{"keys": "none"}"#.to_vec(),
        br#"{"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "n": "", "e": ""}]}"#.to_vec(),
    ];
    // Larger than `jwks_max_bytes`.
    bodies.push(format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(2 << 20)).into_bytes());
    for (i, body) in bodies.into_iter().enumerate() {
        *server.raw_body.lock().unwrap() = Some(body);
        let hits = server.hits();
        wait_for_hits(&server, hits + 2).await;
        let t = sign(Algorithm::RS256, Some("k1"), &claims(&format!("garbage-{i}")));
        assert_eq!(
            app.bearer("/me", &t).await.status(),
            200,
            "body {i}: the last good keys hold"
        );
    }
    *server.raw_body.lock().unwrap() = None;
    let failed = handle.jwks_fetch_failures();
    assert!(
        (6..handle.jwks_fetch_count()).contains(&failed),
        "failures counted: {failed} of {}",
        handle.jwks_fetch_count()
    );

    // Hanging: verified requests do not wait on it; forged kids are refused within
    // the fetch timeout and cause at most one fetch per unknown-kid interval.
    *server.delay.lock().unwrap() = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let hits = server.hits();
    for i in 0..40 {
        let known = sign(Algorithm::RS256, Some("k1"), &claims(&format!("slow-{i}")));
        assert_eq!(app.bearer("/me", &known).await.status(), 200);
        let forged = sign_with(
            Algorithm::RS256,
            Some(&format!("forged-{i}")),
            &claims("mallory"),
            "rsa2",
        );
        assert_eq!(app.bearer("/me", &forged).await.status(), 401);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "80 requests took {took:?} against a hanging endpoint"
    );
    let fetches = server.hits() - hits;
    assert!(fetches <= 12, "{fetches} fetches in {took:?}");
}

#[tokio::test]
async fn start_without_jwks() {
    // Nothing listens on this port.
    let url = format!("http://127.0.0.1:{}/jwks.json", free_port());
    let err = AuthLayer::from_config(&config(Some(&url)), pseudonymizer())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("auth.jwt.jwks_url: first fetch failed"),
        "{err}"
    );

    // When allowed, the layer starts with its static keys and keeps answering.
    let mut cfg = config(Some(&url));
    cfg.jwt.as_mut().unwrap().jwks_required_at_start = false;
    let layer = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap();
    let app = run(app(layer)).await;
    let hs = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));
    assert_eq!(app.bearer("/me", &hs).await.status(), 200);
    let rs = sign(Algorithm::RS256, Some("rs256"), &claims("alice"));
    assert_eq!(outcome(app.bearer("/me", &rs).await).await.0, 401);
}
