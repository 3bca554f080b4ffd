//! The simulated shop API and the composed tollgate stack around it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use tollgate::Tollgate;
use tollgate::TollgateConfig;
use tollgate_anomaly::{AnomalyConfig, AnomalyLayer};
use tollgate_auth::{ApiKeyConfig, ApiKeyRecord};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{FakeClock, KeyedDigest, Principal};

use crate::traffic::{Account, Credential};

/// The simulated API's stack, less the anomaly section and the API keys, which
/// [`stack`] adds: anonymous callers pass (the handlers that need a principal
/// extract one), three tiers of limits.
const STACK_TOML: &str = r#"
[pseudonym]
secret = "2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a"
epoch = "24h"

[routes.default]
auth = "optional"

[auth]
default_tier = "free"
tiers = ["free", "pro"]

[fingerprint]

[ratelimit]
default_tier = "free"
[ratelimit.tiers.free]
limits = [{ name = "burst", quota = 20, window = "1s", burst = 40 }]
[ratelimit.tiers.pro]
limits = [{ name = "burst", quota = 100, window = "1s", burst = 200 }]
[ratelimit.tiers.anonymous]
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

/// Builds the API and the full tollgate stack on a fake clock, through
/// [`Tollgate::builder`] as an application would.
pub async fn stack(
    accounts: &[Account],
    credentials: &[Credential],
    catalogue: u32,
    start_secs: u64,
    anomaly: AnomalyConfig,
) -> Stack {
    let clock = FakeClock::new(tollgate_core::Timestamp::from_secs(start_secs));
    let mut config = TollgateConfig::from_toml(STACK_TOML).expect("valid stack config");
    config.anomaly = Some(anomaly);
    let auth = config.auth.as_mut().expect("the [auth] section");
    auth.api_keys = credentials
        .iter()
        .map(|c| {
            let a = &accounts[c.account as usize];
            ApiKeyConfig {
                id: c.id.to_string(),
                sha256: hex::encode(ApiKeyRecord::digest_of(c.key.as_bytes())),
                tier: Some(a.tier.to_string()),
                scopes: Vec::new(),
                subject: Some(a.name.to_string()),
            }
        })
        .collect();
    let tollgate = Tollgate::builder(config)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("the stack builds");
    let p = tollgate.pseudonymizer();

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
    let api = Router::new()
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
        .with_state(shop);
    Stack {
        router: tollgate.apply(api),
        anomaly: tollgate.anomaly().expect("the [anomaly] section").clone(),
        clock,
    }
}
