//! Privacy canary: known identifiers go through the layer with every detector
//! firing; none of them may appear in any log byte, span field, header or store key.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::routing::get;
use http::StatusCode;
use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind, AnomalyLayer};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    Clock, CredentialKind, FakeClock, FreezeList, MemoryFreezeList, Principal, PseudonymSecret,
    Pseudonymizer, SessionHealth, SessionInfo, SessionReasons, Timestamp,
};
use tollgate_ratelimit::MemoryRateLimitStore;
use tower::ServiceExt;
use tracing::Instrument;

const SUBJECT: &str = "alice.canary@example.com";
const KEY_ID: &str = "key-CANARY-5f3a9";
const IP: &str = "203.0.113.77";
const USER_AGENT: &str = "CanaryAgent/9.9 (X11; Linux)";
const OBJECT_ID: &str = "CANARYID777";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_identifier_reaches_logs_headers_or_store_keys() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = FakeClock::new(Timestamp::from_secs(1_700_000_000));
    let p = Pseudonymizer::with_clock(
        PseudonymSecret::from_bytes(&[77; 32]).unwrap(),
        Duration::from_secs(86_400),
        Arc::new(clock.clone()),
    );
    let freeze = MemoryFreezeList::with_clock(100, Arc::new(clock.clone()));
    let throttle_store = MemoryRateLimitStore::new(1_000);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 5;
    config.enumeration.max_distinct_ids = 3;
    config.stuffing.max_subjects = 1;
    config.sequence.min_observations = 1;
    config.actions = config
        .actions
        .set(AnomalyKind::Volume, Action::Throttle)
        .set(AnomalyKind::TokenSharing, Action::Freeze);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .freeze_list(Arc::new(freeze.clone()))
        .throttle_store(throttle_store.clone())
        .debug_header(true)
        .build()
        .unwrap();

    let auth_p = p.clone();
    let app = Router::new()
        .route("/v1/items/{id}", get(|| async { StatusCode::NOT_FOUND }))
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
    for i in 0..12 {
        let mut req = http::Request::builder()
            .uri(format!("/v1/items/{OBJECT_ID}{i}?q={SUBJECT}"))
            .header("user-agent", USER_AGENT)
            .header(
                "x-subject",
                if i % 2 == 0 {
                    SUBJECT
                } else {
                    "bob.canary@example.com"
                },
            );
        if i == 11 {
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

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
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

    for canary in [
        SUBJECT,
        "bob.canary",
        KEY_ID,
        IP,
        "203.0.113",
        "CanaryAgent",
        OBJECT_ID,
    ] {
        assert!(!logs.contains(canary), "{canary} leaked into logs: {logs}");
        assert!(!headers_seen.contains(canary), "{canary} leaked into responses");
        assert!(!stored.contains(canary), "{canary} leaked into stores");
    }
}
