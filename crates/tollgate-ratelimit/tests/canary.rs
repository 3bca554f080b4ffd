//! Privacy canary: known identifiers go through the layer; none may come out in any
//! log byte, span field, store key, header or body. Also checks the span fields.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request};
use tollgate_core::{ClientConfig, Clock, CredentialKind, Principal, Tier};
use tollgate_ratelimit::{LimitConfig, MemoryRateLimitStore, RateLimitConfig, RateLimitLayer};
use tollgate_test_support::canary::{self, IP, SUBJECT, USER_AGENT};
use tollgate_test_support::{LogCapture, clock, pseudonymizer};
use tower::ServiceExt;
use tracing::Instrument;
use tracing::field::Empty;

const CREDENTIAL: &str = "sk_live_canary_7f3a9";

#[tokio::test]
async fn no_identifier_leaves_the_layer() {
    let capture = LogCapture::new();
    let subscriber = capture
        .json_subscriber()
        .with_current_span(true)
        .with_span_list(true)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let p = pseudonymizer();
    let config = RateLimitConfig::default()
        .tier("free", [LimitConfig::new("burst", 2, Duration::from_secs(10))])
        .tier(
            "anonymous",
            [LimitConfig::new("burst", 1, Duration::from_secs(10))],
        );
    let store = MemoryRateLimitStore::new(1_000);
    let layer = RateLimitLayer::builder(config, p.clone())
        .clock(Arc::new(clock()))
        .store(Arc::new(store.clone()))
        .build()
        .unwrap();
    let inventory = layer.inventory();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "ok" }))
        .layer(layer);

    let principal = Principal::new(&p, CredentialKind::ApiKey, SUBJECT, CREDENTIAL.as_bytes())
        .with_tier(Tier::new("free"));
    let client = ClientConfig::default().context(IP.parse::<IpAddr>().unwrap(), &HeaderMap::new(), &p);
    let mut seen = Vec::new();
    for i in 0..6 {
        let mut req = Request::get(format!("/items/{SUBJECT}"))
            .header("user-agent", USER_AGENT)
            .header("authorization", format!("Bearer {CREDENTIAL}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(client);
        // Half the requests authenticated, half anonymous (keyed by network).
        if i % 2 == 0 {
            req.extensions_mut().insert(principal.clone());
        }
        let span = tracing::info_span!(
            "request",
            ratelimit.policy = Empty,
            ratelimit.outcome = Empty,
            ratelimit.remaining = Empty,
        );
        let response = async {
            let r = app.clone().oneshot(req).await.unwrap();
            tracing::info!("request completed");
            r
        }
        .instrument(span)
        .await;
        for (name, value) in response.headers() {
            seen.push(format!("{name}: {}", value.to_str().unwrap()));
        }
        let body = axum::body::to_bytes(response.into_body(), 10_000).await.unwrap();
        seen.push(String::from_utf8(body.to_vec()).unwrap());
    }
    for key in store.keys(clock().now()) {
        seen.push(key.store_key());
    }
    let logs = capture.text();

    // The span fields were recorded.
    assert!(logs.contains(r#""ratelimit.policy":"free/burst""#), "{logs}");
    assert!(logs.contains(r#""ratelimit.policy":"anonymous/burst""#), "{logs}");
    assert!(logs.contains(r#""ratelimit.outcome":"allowed""#), "{logs}");
    assert!(logs.contains(r#""ratelimit.outcome":"denied""#), "{logs}");
    assert!(logs.contains(r#""ratelimit.remaining":0"#), "{logs}");
    assert_eq!(
        store.keys(clock().now()).len(),
        2,
        "one subject key, one network key"
    );

    // Every field the layer put into a span is declared in its inventory.
    let mut emitted = std::collections::BTreeSet::new();
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(span) = v["span"].as_object() {
            emitted.extend(span.keys().filter(|k| k.starts_with("ratelimit.")).cloned());
        }
    }
    assert_eq!(emitted.len(), 3, "{emitted:?}");
    for field in &emitted {
        assert!(
            inventory.iter().any(|f| f.name == field),
            "{field} is not in the inventory"
        );
    }
    assert!(inventory.iter().any(|f| f.name.starts_with("tollgate:rl:")));

    let everything = format!("{logs}\n{}", seen.join("\n"));
    let subject_key = principal.subject_key().to_hex();
    canary::assert_absent("the layer's output", &everything, canary::FRAGMENTS);
    canary::assert_absent("the layer's output", &everything, [CREDENTIAL, "203.0.113.0"]);
    // The stable subject digest is a store key, and nothing else: it is not logged.
    assert!(
        !logs.contains(subject_key.as_str()),
        "the subject digest was logged"
    );
}
