//! What an API consumer can see: their own data, and the data inventory.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tollgate_core::problem::{Problem, method_not_allowed, types};
use tollgate_core::{Principal, SessionInfo};
use tollgate_ratelimit::RateLimitStatus;

use super::Operator;

pub(super) fn router(operator: Operator) -> Router {
    Router::new()
        .route("/.well-known/tollgate/my-data", get(my_data))
        .route("/.well-known/tollgate/inventory", get(inventory))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(operator)
}

/// The purpose and retention of the inventory field `name`.
fn purpose(fields: &[Value], name: &str) -> Value {
    fields
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| json!({ "purpose": f["purpose"], "retention": f["retention"] }))
        .unwrap_or(Value::Null)
}

/// What the stack holds about the caller, and only the caller: their pseudonyms,
/// tier and usage, session verdict and fingerprint count, anomaly kinds tagged on
/// their session, each with its purpose and retention from the inventory.
async fn my_data(
    State(op): State<Operator>,
    principal: Option<Principal>,
    session: Option<SessionInfo>,
    status: Option<RateLimitStatus>,
) -> Response {
    let Some(principal) = principal else {
        // The route policy should require authentication; refuse anyway.
        return Problem::new(types::MISSING_CREDENTIALS)
            .with_header(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            )
            .into_response();
    };
    let tollgate = op.tollgate();
    let fields: Vec<Value> = tollgate
        .inventory()
        .fields()
        .iter()
        .chain(op.inventory().iter())
        .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
        .collect();
    let record = match tollgate.fingerprint() {
        Some(f) => f.session_record(principal.credential_key()).await.ok().flatten(),
        None => None,
    };
    let session_pseudonym = session.map(|s| s.session.to_string());
    let flagged = session_pseudonym
        .as_deref()
        .and_then(|s| op.activity().flagged_session(s));
    let usage = status.map(|s| {
        json!({
            "policy": s.policy(),
            "limit": s.limit_name(),
            "remaining": s.remaining(),
            "reset_s": s.reset().as_secs(),
        })
    });
    Json(json!({
        "principal": {
            "pseudonym": principal.subject().to_string(),
            "credential": principal.credential().as_str(),
            "about": purpose(&fields, tollgate_core::fields::PRINCIPAL),
        },
        "tier": {
            "name": principal.tier().as_str(),
            "usage": usage,
            "about": purpose(&fields, "tollgate:rl:{digest}"),
        },
        "session": {
            "pseudonym": session_pseudonym,
            "health": session.map(|s| s.health.as_str()),
            "reasons": session.map(|s| s.reasons.to_string()),
            "requests": record.map(|r| r.requests),
            "fingerprints": record.map(|r| r.fingerprints.iter().filter(|f| **f != 0).count()),
            "networks": record.map(|r| r.networks.iter().filter(|n| n.hash != 0).count()),
            "about": purpose(&fields, "tollgate:session"),
        },
        "anomalies": {
            "kinds": flagged.map(|f| f.anomalies).unwrap_or_default(),
            "about": purpose(&fields, "operator.flagged_sessions"),
        },
        "inventory": "/.well-known/tollgate/inventory",
    }))
    .into_response()
}

async fn inventory(State(op): State<Operator>) -> Json<Value> {
    Json(super::admin::inventory_with_sizes(&op).await)
}
