//! The simulated shop API and the composed tollgate stack around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use tollgate_anomaly::{AnomalyConfig, AnomalyLayer};
use tollgate_auth::{ApiKeyRecord, ApiKeys, AuthConfig, AuthLayer};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    FakeClock, KeyedDigest, MemoryFreezeList, Principal, PseudonymSecret, Pseudonymizer, SharedClock,
};
use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer};
use tollgate_privacy::PrivacyTraceLayer;
use tollgate_ratelimit::{RateLimitConfig, RateLimitLayer};

use crate::traffic::{Account, Credential};

/// The rate-limit tiers of the simulated API.
pub const RATELIMIT_TOML: &str = r#"
default_tier = "free"
[tiers.free]
limits = [{ name = "burst", quota = 20, window = "1s", burst = 40 }]
[tiers.pro]
limits = [{ name = "burst", quota = 100, window = "1s", burst = 200 }]
[tiers.anonymous]
limits = [{ name = "burst", quota = 5, window = "1s", burst = 20 }]
"#;

/// The anomaly configuration the simulator measures: the defaults, with the
/// simulated API's tier norms (requests per minute).
pub fn anomaly_config() -> AnomalyConfig {
    let mut config = AnomalyConfig::default();
    config.volume.tier_norms.insert("free".into(), 120);
    config.volume.tier_norms.insert("pro".into(), 1_200);
    config
}

struct Shop {
    passwords: HashMap<Arc<str>, Arc<str>>,
    owners: HashMap<KeyedDigest, [u32; 3]>,
    catalogue: u32,
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(State(shop): State<Arc<Shop>>, Json(form): Json<Login>) -> StatusCode {
    match shop.passwords.get(form.user.as_str()) {
        Some(pw) if **pw == *form.password => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}

async fn item(State(shop): State<Arc<Shop>>, _: Principal, Path(id): Path<u32>) -> impl IntoResponse {
    if id < shop.catalogue {
        (StatusCode::OK, "item")
    } else {
        (StatusCode::NOT_FOUND, "")
    }
}

async fn order(State(shop): State<Arc<Shop>>, principal: Principal, Path(id): Path<u32>) -> StatusCode {
    match shop.owners.get(&principal.subject_key()) {
        Some(own) if own.contains(&id) => StatusCode::OK,
        // Not yours, or no such order: the same answer, as an API should give.
        _ => StatusCode::NOT_FOUND,
    }
}

async fn ok(_: Principal) -> &'static str {
    "ok"
}

/// The composed stack and what the simulator reads back.
pub struct Stack {
    /// The router with every layer.
    pub router: Router,
    /// The anomaly layer (for state sizes).
    pub anomaly: AnomalyLayer,
    /// The shared fake clock.
    pub clock: FakeClock,
}

/// Builds the API and the full tollgate stack on a fake clock.
///
/// Layers, outermost first: privacy trace, failure watch, auth, fingerprint, rate
/// limit, anomaly. (With axum, the last `.layer()` is the outermost.)
pub async fn stack(
    accounts: &[Account],
    credentials: &[Credential],
    catalogue: u32,
    start_secs: u64,
    anomaly: AnomalyConfig,
) -> Stack {
    let clock = FakeClock::new(tollgate_core::Timestamp::from_secs(start_secs));
    let shared: SharedClock = Arc::new(clock.clone());
    let p = Pseudonymizer::with_clock(
        PseudonymSecret::from_bytes(&[42; 32]).expect("32 bytes"),
        Duration::from_secs(86_400),
        shared.clone(),
    );
    let freeze = MemoryFreezeList::with_clock(100_000, shared.clone());

    let keys = ApiKeys::new();
    for c in credentials {
        let a = &accounts[c.account as usize];
        keys.insert(
            ApiKeyRecord::new(c.id.clone(), ApiKeyRecord::digest_of(c.key.as_bytes()))
                .tier(a.tier)
                .subject(&*a.name),
        );
    }
    let auth_config: AuthConfig =
        toml::from_str("anonymous = \"optional\"\ndefault_tier = \"free\"\ntiers = [\"free\", \"pro\"]")
            .expect("valid auth config");
    let auth = AuthLayer::builder(auth_config, p.clone())
        .api_keys(keys)
        .clock(shared.clone())
        .freeze_list(freeze.clone())
        .build()
        .await
        .expect("auth layer");
    let fingerprint = FingerprintLayer::from_config(&FingerprintConfig::default(), p.clone(), freeze.clone())
        .expect("fingerprint layer")
        .clock(shared.clone());
    let rl_config: RateLimitConfig = toml::from_str(RATELIMIT_TOML).expect("valid rate-limit config");
    let ratelimit = RateLimitLayer::new(&rl_config, p.clone())
        .expect("rate-limit layer")
        .clock(shared.clone());
    let anomaly = AnomalyLayer::builder(anomaly, p.clone())
        .clock(shared.clone())
        .freeze_list(freeze.clone())
        .build()
        .expect("anomaly layer");
    let privacy = PrivacyTraceLayer::new(p.clone());

    let shop = Arc::new(Shop {
        passwords: accounts
            .iter()
            .map(|a| (a.name.clone(), a.password.clone()))
            .collect(),
        owners: accounts
            .iter()
            .map(|a| (p.digest(Domain::SUBJECT, a.name.as_bytes()), a.orders))
            .collect(),
        catalogue,
    });
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/login", post(login))
        .route("/v1/search", get(ok))
        .route("/v1/items/{id}", get(item))
        .route("/v1/items/{id}/reviews", get(item))
        .route("/v1/cart/items", post(ok))
        .route("/v1/checkout", post(ok))
        .route("/v1/account", get(ok))
        .route("/v1/account/export", get(ok))
        .route("/v1/orders", get(ok))
        .route("/v1/orders/{id}", get(order))
        .with_state(shop)
        .layer(anomaly.clone())
        .layer(ratelimit)
        .layer(fingerprint)
        .layer(auth)
        .layer(anomaly.failure_watch())
        .layer(privacy);
    Stack {
        router,
        anomaly,
        clock,
    }
}
