//! Admin handlers for the freeze list: freeze, unfreeze, list.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::problem::{Problem, ProblemType, types};
use tollgate_core::{Freeze, FreezeList, FreezeTarget, KeyedDigest, Pseudonymizer};

use crate::scope::require_scope;

/// The scope the admin handlers require by default.
pub const DEFAULT_ADMIN_SCOPE: &str = "tollgate:admin";

/// A malformed admin request (400).
pub const INVALID_ADMIN_REQUEST: ProblemType = ProblemType {
    uri: "urn:tollgate:problem:invalid-admin-request",
    title: "Invalid admin request",
    status: StatusCode::BAD_REQUEST,
};

/// Unfreezing something that is not frozen (404).
pub const NOT_FROZEN: ProblemType = ProblemType {
    uri: "urn:tollgate:problem:not-frozen",
    title: "Not frozen",
    status: StatusCode::NOT_FOUND,
};

/// The longest freeze reason accepted, in bytes.
const MAX_REASON: usize = 256;
/// The longest id accepted, in bytes.
const MAX_ID: usize = 1024;

/// What an admin freezes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreezeKind {
    /// An API key, by its id.
    ApiKey,
    /// A token, by its `jti` (or, for a token without one, the hex SHA-256 of the token).
    Token,
    /// A subject (every credential it holds).
    Subject,
}

/// The body of `POST /freezes` and `DELETE /freezes`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeRequest {
    /// What kind of id `id` is.
    pub kind: FreezeKind,
    /// The API key id, token `jti` or subject. Hashed at once; never logged or stored.
    pub id: String,
    /// Why (must not name the person); at most 256 bytes.
    #[serde(default)]
    pub reason: Option<String>,
    /// How long the freeze holds, in seconds; the configured maximum if absent.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

impl std::fmt::Debug for FreezeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreezeRequest")
            .field("kind", &self.kind)
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

/// Builds the freeze admin router.
///
/// Routes (relative to where it is nested):
/// - `GET /freezes`: every active freeze (targets as keyed digests).
/// - `POST /freezes` `{kind: api_key|token|subject, id, reason?, ttl_s?}`: 201 with the freeze.
/// - `DELETE /freezes` `{kind, id}`: 204, or 404 if not frozen.
/// - `DELETE /freezes/{credential|subject}/{digest}`: unfreeze a listed entry.
///
/// Every route requires the admin scope; mount the router behind an
/// [`AuthLayer`](crate::AuthLayer).
#[derive(Clone)]
pub struct FreezeAdmin<F> {
    list: F,
    pseudonymizer: Pseudonymizer,
    admin_scope: String,
    max_ttl: Duration,
    clock: SharedClock,
}

impl<F> std::fmt::Debug for FreezeAdmin<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreezeAdmin")
            .field("admin_scope", &self.admin_scope)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

/// The admin router over `list` with the default scope and a 30-day maximum freeze.
///
/// ```
/// use std::time::Duration;
/// use tollgate_auth::freeze_admin_router;
/// use tollgate_core::{MemoryFreezeList, Pseudonymizer, PseudonymSecret};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let admin: axum::Router = freeze_admin_router(MemoryFreezeList::new(10_000), p);
/// let app: axum::Router = axum::Router::new().nest("/admin", admin);
/// ```
pub fn freeze_admin_router<F: FreezeList>(list: F, pseudonymizer: Pseudonymizer) -> Router {
    FreezeAdmin::new(list, pseudonymizer).router()
}

impl<F: FreezeList> FreezeAdmin<F> {
    /// Admin handlers over `list`, hashing ids with `pseudonymizer`.
    pub fn new(list: F, pseudonymizer: Pseudonymizer) -> Self {
        FreezeAdmin {
            list,
            pseudonymizer,
            admin_scope: DEFAULT_ADMIN_SCOPE.to_string(),
            max_ttl: Duration::from_secs(30 * 86_400),
            clock: system_clock(),
        }
    }

    /// Requires this scope instead of `tollgate:admin`.
    pub fn admin_scope(mut self, scope: impl Into<String>) -> Self {
        self.admin_scope = scope.into();
        self
    }

    /// Caps every freeze at `max_ttl` (and uses it when no `ttl_s` is given).
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Uses this clock for `frozen_at` and expiries.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        let scope = require_scope([self.admin_scope.as_str()]);
        Router::new()
            .route("/freezes", get(list::<F>).post(freeze::<F>).delete(unfreeze::<F>))
            .route("/freezes/{kind}/{digest}", delete(unfreeze_digest::<F>))
            .route_layer(scope)
            .with_state(Arc::new(self))
    }

    fn target(&self, kind: FreezeKind, id: &str) -> FreezeTarget {
        match kind {
            FreezeKind::ApiKey | FreezeKind::Token => FreezeTarget::credential(&self.pseudonymizer, id),
            FreezeKind::Subject => FreezeTarget::subject(&self.pseudonymizer, id),
        }
    }
}

fn bad(detail: &'static str) -> Response {
    Problem::new(INVALID_ADMIN_REQUEST)
        .with_detail(detail)
        .into_response()
}

fn unavailable(e: tollgate_core::StoreError) -> Response {
    tracing::warn!(error = %e, "freeze list unavailable");
    Problem::new(types::UNAVAILABLE)
        .with_detail("the freeze list could not be updated")
        .into_response()
}

fn kind_name(kind: FreezeKind) -> &'static str {
    match kind {
        FreezeKind::ApiKey => "api_key",
        FreezeKind::Token => "token",
        FreezeKind::Subject => "subject",
    }
}

/// The request, or the detail of a 400.
fn parse(body: Result<Json<FreezeRequest>, JsonRejection>) -> Result<FreezeRequest, &'static str> {
    let Json(req) = body.map_err(|_| "the body must be JSON: {kind, id, reason?, ttl_s?}")?;
    if req.id.is_empty() || req.id.len() > MAX_ID {
        return Err("id must be 1 to 1024 bytes");
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
        return Err("reason must be at most 256 bytes");
    }
    Ok(req)
}

async fn list<F: FreezeList>(State(admin): State<Arc<FreezeAdmin<F>>>) -> Response {
    match admin.list.list().await {
        Ok(freezes) => Json(freezes).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn freeze<F: FreezeList>(
    State(admin): State<Arc<FreezeAdmin<F>>>,
    body: Result<Json<FreezeRequest>, JsonRejection>,
) -> Response {
    let req = match parse(body) {
        Ok(r) => r,
        Err(detail) => return bad(detail),
    };
    let target = admin.target(req.kind, &req.id);
    let ttl = req
        .ttl_s
        .map_or(admin.max_ttl, Duration::from_secs)
        .min(admin.max_ttl);
    if ttl.is_zero() {
        return bad("ttl_s must be positive");
    }
    let now = admin.clock.now();
    let freeze = Freeze {
        target,
        reason: req.reason.unwrap_or_default(),
        frozen_at: now,
        until: Some(now.saturating_add(ttl)),
    };
    match admin.list.freeze(freeze.clone()).await {
        Ok(()) => {
            tracing::info!(kind = kind_name(req.kind), ttl_s = ttl.as_secs(), "freeze added");
            (StatusCode::CREATED, Json(freeze)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn unfreeze<F: FreezeList>(
    State(admin): State<Arc<FreezeAdmin<F>>>,
    body: Result<Json<FreezeRequest>, JsonRejection>,
) -> Response {
    let req = match parse(body) {
        Ok(r) => r,
        Err(detail) => return bad(detail),
    };
    let target = admin.target(req.kind, &req.id);
    remove(&admin, &target, kind_name(req.kind)).await
}

async fn unfreeze_digest<F: FreezeList>(
    State(admin): State<Arc<FreezeAdmin<F>>>,
    Path((kind, digest)): Path<(String, String)>,
) -> Response {
    let Some(digest) = KeyedDigest::from_hex(&digest) else {
        return bad("digest must be 32 hex digits");
    };
    let (target, name) = match kind.as_str() {
        "credential" => (FreezeTarget::Credential(digest), "credential"),
        "subject" => (FreezeTarget::Subject(digest), "subject"),
        _ => return bad("kind must be credential or subject"),
    };
    remove(&admin, &target, name).await
}

async fn remove<F: FreezeList>(
    admin: &FreezeAdmin<F>,
    target: &FreezeTarget,
    kind: &'static str,
) -> Response {
    match admin.list.unfreeze(target).await {
        Ok(true) => {
            tracing::info!(kind, "freeze lifted");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => Problem::new(NOT_FROZEN).into_response(),
        Err(e) => unavailable(e),
    }
}
