//! A flood of distinct keys through the anomaly layer, to show its memory is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tollgate_anomaly::{AnomalyLayer, StateSize};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    CredentialKind, FakeClock, Principal, PseudonymSecret, Pseudonymizer, SessionHealth, SessionInfo,
    SessionReasons, Tier, Timestamp,
};
use tower::ServiceExt;

/// The result of a flood.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// Distinct principals, sessions, networks and object ids sent.
    pub keys: u64,
    /// The anomaly layer's state sizes at the end.
    pub state: Vec<StateSize>,
    /// Resident memory before and after, in bytes (Linux only).
    pub rss: Option<(u64, u64)>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Sends `keys` requests, each from a distinct principal, session, /24 network and
/// object id, through the anomaly layer (every detector on), 1,000 per simulated second.
pub async fn flood(keys: u64) -> FloodReport {
    let clock = FakeClock::new(Timestamp::from_secs(crate::START_SECS));
    let p = Pseudonymizer::with_clock(
        PseudonymSecret::from_bytes(&[9; 32]).expect("32 bytes"),
        Duration::from_secs(86_400),
        Arc::new(clock.clone()),
    );
    let anomaly = AnomalyLayer::builder(crate::app::anomaly_config(), p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("anomaly layer");
    let router = Router::new()
        .route("/v1/items/{id}", get(|| async { "item" }))
        .layer(anomaly.clone());
    let before = rss();
    let started = Instant::now();
    for i in 0..keys {
        clock.set(Timestamp::from_nanos(
            Timestamp::from_secs(crate::START_SECS).as_nanos() + i * 1_000_000,
        ));
        let name = i.to_be_bytes();
        let mut req = http::Request::builder()
            .uri(format!("/v1/items/{i}"))
            .body(Body::empty())
            .expect("valid request");
        let ext = req.extensions_mut();
        let principal =
            Principal::new(&p, CredentialKind::ApiKey, &format!("s{i}"), &name).with_tier(Tier::new("free"));
        ext.insert(SessionInfo {
            session: p.pseudonym(Domain::SESSION, &name),
            fingerprint: p.pseudonym(Domain::FINGERPRINT, &name),
            health: SessionHealth::Healthy,
            reasons: SessionReasons::default(),
        });
        ext.insert(principal);
        let net = Ipv4Addr::from(((i as u32) << 8) | 1);
        ext.insert(ConnectInfo(SocketAddr::new(net.into(), 1)));
        let response = router.clone().oneshot(req).await.expect("infallible");
        debug_assert!(response.status().is_success());
    }
    FloodReport {
        keys,
        state: anomaly.state_sizes(),
        rss: before.zip(rss()),
        elapsed: started.elapsed(),
    }
}
