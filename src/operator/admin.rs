//! The admin API: JSON over the freeze list, the last hour's activity, the tiers
//! and the data inventory.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;
use serde_json::{Value, json};
use tollgate_core::inventory::StateSize;
use tollgate_core::problem::method_not_allowed;

use super::{Operator, require_admin};
use crate::TollgateConfig;

/// One tier as configured, for `/tiers` and the console.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TierView {
    pub(crate) name: String,
    pub(crate) limits: Vec<LimitView>,
}

/// One limit of a tier.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LimitView {
    pub(crate) name: String,
    pub(crate) quota: u64,
    pub(crate) window_s: u64,
}

/// The configured tiers.
pub(crate) fn tiers(config: &TollgateConfig) -> Vec<TierView> {
    let Some(rl) = &config.ratelimit else {
        return Vec::new();
    };
    rl.tiers
        .iter()
        .map(|(name, tier)| TierView {
            name: name.clone(),
            limits: tier
                .limits
                .iter()
                .map(|l| LimitView {
                    name: l.name.clone(),
                    quota: l.quota,
                    window_s: l.window.as_secs(),
                })
                .collect(),
        })
        .collect()
}

pub(super) fn router(operator: Operator) -> Router {
    let freezes = operator.tollgate().freeze_admin().unwrap_or_default();
    Router::new()
        .route("/sessions", get(sessions))
        .route("/tiers", get(tiers_usage))
        .route("/anomalies", get(anomalies))
        .route("/inventory", get(inventory))
        .route_layer(middleware::from_fn(require_admin))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(operator)
        .merge(freezes)
}

async fn sessions(State(op): State<Operator>) -> Json<Value> {
    let summary = op.activity().summary();
    Json(json!({
        "window_minutes": summary.window_minutes,
        "verdicts": summary.verdicts,
        "reasons": summary.reasons,
        "flagged": op.activity().flagged(),
    }))
}

pub(crate) fn tier_usage(op: &Operator) -> Value {
    let summary = op.activity().summary();
    let mut out: Vec<Value> = op
        .inner
        .tiers
        .iter()
        .map(|t| {
            let usage = summary.tiers.get(&t.name).copied().unwrap_or_default();
            json!({ "name": t.name, "limits": t.limits, "requests": usage.requests, "limited": usage.limited })
        })
        .collect();
    for extra in ["anonymous", "other"] {
        if op.inner.tiers.iter().any(|t| t.name == extra) {
            continue;
        }
        if let Some(usage) = summary.tiers.get(extra) {
            out.push(
                json!({ "name": extra, "limits": [], "requests": usage.requests, "limited": usage.limited }),
            );
        }
    }
    json!({ "window_minutes": summary.window_minutes, "tiers": out })
}

async fn tiers_usage(State(op): State<Operator>) -> Json<Value> {
    Json(tier_usage(&op))
}

async fn anomalies(State(op): State<Operator>) -> Json<Value> {
    let summary = op.activity().summary();
    let per_minute: Vec<Value> = summary
        .anomalies_per_minute
        .iter()
        .map(|(minute, kinds)| json!({ "minute": minute * 60, "kinds": kinds }))
        .collect();
    Json(json!({
        "window_minutes": summary.window_minutes,
        "by_kind": summary.anomalies,
        "per_minute": per_minute,
    }))
}

/// The data inventory with, for each store the stack can size now, its entries.
pub(crate) async fn inventory_with_sizes(op: &Operator) -> Value {
    let tollgate = op.tollgate();
    let mut inventory: Vec<Value> = tollgate
        .inventory()
        .fields()
        .iter()
        .chain(op.inventory().iter())
        .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
        .collect();
    inventory.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut sizes: Vec<StateSize> = Vec::new();
    if let Some(a) = tollgate.auth() {
        sizes.extend(a.state_sizes());
    }
    if let Some(f) = tollgate.fingerprint() {
        sizes.extend(f.state_sizes());
    }
    if let Some(r) = tollgate.ratelimit() {
        sizes.extend(r.state_sizes());
    }
    if let Some(a) = tollgate.anomaly() {
        sizes.extend(a.state_sizes());
    }
    sizes.push(StateSize {
        name: "operator.flagged_sessions",
        len: op.activity().flagged_len(),
        capacity: super::MAX_FLAGGED,
    });
    let frozen = tollgate.freeze_list().list().await.map(|l| l.len()).ok();
    let stores: Vec<Value> =
        sizes
            .iter()
            .map(|s| {
                let retention = inventory
                    .iter()
                    .find(|f| f["name"] == s.name)
                    .map(|f| f["retention"].clone())
                    .unwrap_or(Value::Null);
                json!({ "name": s.name, "entries": s.len, "capacity": s.capacity, "retention": retention })
            })
            .chain(frozen.map(
                |n| json!({ "name": "freeze list", "entries": n, "retention": "until lifted or expired" }),
            ))
            .collect();
    json!({
        "shared_state": if tollgate.is_shared() { "redis" } else { "in process" },
        "stores": stores,
        "fields": inventory,
    })
}

async fn inventory(State(op): State<Operator>) -> Json<Value> {
    Json(inventory_with_sizes(&op).await)
}
