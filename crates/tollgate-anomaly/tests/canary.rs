//! Privacy canary: known identifiers go through the layer with every detector
//! firing; none of them may appear in any log byte, span field, header or store key.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::routing::get;
use http::StatusCode;
use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind, AnomalyLayer};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    Clock, CredentialKind, FreezeList, LoginAttempt, MemoryFreezeList, Principal, SessionHealth, SessionInfo,
    SessionReasons,
};
use tollgate_ratelimit::MemoryRateLimitStore;
use tollgate_test_support::canary::{self, EMAIL, IP, SUBJECT, USER_AGENT};
use tollgate_test_support::{LogCapture, clock, pseudonymizer_with_clock};
use tower::ServiceExt;
use tracing::Instrument;

/// The second subject, sending from the same network (credential stuffing).
const OTHER_SUBJECT: &str = "bob.canary@example.com";
const KEY_ID: &str = "key-CANARY-5f3a9";
const OBJECT_ID: &str = "CANARYID777";

#[tokio::test]
async fn no_identifier_reaches_logs_headers_or_store_keys() {
    let capture = LogCapture::new();
    let _guard = capture.set_default();

    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::with_clock(100, Arc::new(clock.clone()));
    let throttle_store = MemoryRateLimitStore::new(1_000);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 5;
    config.enumeration.max_distinct_ids = 3;
    config.stuffing.max_subjects = 1;
    config.stuffing.max_account_failures = 2;
    config.sequence.min_observations = 1;
    config.actions = config
        .actions
        .set(AnomalyKind::Volume, Action::Throttle)
        .set(AnomalyKind::TokenSharing, Action::Freeze);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .freeze_list(Arc::new(freeze.clone()))
        .throttle_store(std::sync::Arc::new(throttle_store.clone()))
        .debug_header(true)
        .build()
        .unwrap();

    let auth_p = p.clone();
    let app = Router::new()
        .route("/v1/items/{id}", get(|| async { StatusCode::NOT_FOUND }))
        // A login handler reporting the account tried: the anomaly layer must keep
        // no trace of the name.
        .route(
            "/login",
            axum::routing::post(|| async { (StatusCode::UNAUTHORIZED, LoginAttempt::failed(EMAIL), "no") }),
        )
        .layer(anomaly.clone())
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            let p = auth_p.clone();
            async move {
                let shared = req.headers().contains_key("x-shared");
                let sub = req.headers()["x-subject"].to_str().unwrap().to_string();
                req.extensions_mut().insert(
                    Principal::new(&p, CredentialKind::ApiKey, &sub, KEY_ID.as_bytes())
                        .with_tier(tollgate_core::Tier::new("free")),
                );
                req.extensions_mut().insert(SessionInfo {
                    session: p.pseudonym(Domain::SESSION, KEY_ID.as_bytes()),
                    fingerprint: p.pseudonym(Domain::FINGERPRINT, USER_AGENT.as_bytes()),
                    health: if shared {
                        SessionHealth::Unhealthy
                    } else {
                        SessionHealth::Healthy
                    },
                    reasons: SessionReasons::default(),
                });
                next.run(req).await
            }
        }))
        .layer(middleware::from_fn(|req: Request, next: Next| async move {
            let span = tracing::info_span!("request", anomaly = tracing::field::Empty);
            let response = next.run(req).instrument(span.clone()).await;
            tracing::info!(parent: &span, "request completed");
            response
        }));

    let peer: SocketAddr = format!("{IP}:50000").parse().unwrap();
    let mut headers_seen = String::new();
    for i in 0..24 {
        let mut req = if i % 2 == 0 {
            http::Request::builder().method("POST").uri("/login")
        } else {
            http::Request::builder().uri(format!("/v1/items/{OBJECT_ID}{i}?q={EMAIL}"))
        };
        req = req
            .header("user-agent", USER_AGENT)
            .header("x-subject", if i % 4 < 2 { SUBJECT } else { OTHER_SUBJECT });
        if i == 23 {
            req = req.header("x-shared", "1");
        }
        let mut req = req.body(Body::empty()).unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(req).await.unwrap();
        for (name, value) in response.headers() {
            headers_seen.push_str(name.as_str());
            headers_seen.push_str(value.to_str().unwrap_or(""));
        }
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        headers_seen.push_str(&String::from_utf8_lossy(&body));
    }

    let logs = capture.text();
    assert!(logs.contains("request completed"), "the log output was captured");
    // The test is not vacuous: every detector that can fire here did, and acted.
    for needle in [
        "volume:",
        "credential_stuffing:",
        "enumeration:",
        "token_sharing:",
        "action=throttle",
        "action=freeze",
    ] {
        assert!(
            logs.contains(needle) || headers_seen.contains(needle),
            "{needle} missing from {logs}"
        );
    }
    let freezes = freeze.list().await.unwrap();
    assert_eq!(freezes.len(), 1);
    let store_keys: Vec<String> = throttle_store
        .keys(clock.now())
        .iter()
        .map(|k| k.store_key().to_string())
        .collect();
    assert!(!store_keys.is_empty());
    let stored = format!(
        "{store_keys:?}{:?}{}",
        freezes,
        serde_json::to_string(&freezes).unwrap()
    );

    // Every canary sent, its distinctive pieces, and this test's own identifiers.
    let needles = canary::FRAGMENTS
        .iter()
        .chain(&["bob.canary", KEY_ID, "203.0.113", OBJECT_ID]);
    for (what, haystack) in [
        ("the logs", &logs),
        ("the responses", &headers_seen),
        ("the stores", &stored),
    ] {
        canary::assert_absent(what, haystack, needles.clone());
    }
}
