//! Admin handlers for the freeze list: freeze, unfreeze, list.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::problem::{Problem, ProblemType, types};
use tollgate_core::span::record_current;
use tollgate_core::{
    CarryExt, Freeze, FreezeTarget, KeyedDigest, Principal, ProblemResponder, Pseudonymizer,
    SharedFreezeList, StoreError, fields,
};

use crate::error::{AuthError, Challenges};
use crate::scope::RequiredScopes;

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
    /// How long the freeze holds, in whole seconds; the configured maximum if
    /// absent. (A JSON API, so a number of seconds as in OAuth2's `expires_in`, not
    /// the duration strings of the configuration file.)
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
/// Every route requires the admin scope, whatever the route policy of the
/// [`AuthLayer`](crate::AuthLayer) it is mounted behind (401 without a
/// [`Principal`], 403 `insufficient_scope` without the scope), so it cannot be
/// mounted open by mistake. Get one from
/// [`AuthLayer::freeze_admin`](crate::AuthLayer::freeze_admin) to share the layer's
/// freeze list, clock, realm and responder.
#[derive(Clone)]
pub struct FreezeAdmin {
    list: SharedFreezeList,
    pseudonymizer: Pseudonymizer,
    admin_scope: String,
    max_ttl: Duration,
    clock: SharedClock,
    responder: ProblemResponder,
    realm: Option<String>,
}

impl std::fmt::Debug for FreezeAdmin {
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
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_auth::freeze_admin_router;
/// use tollgate_core::{MemoryFreezeList, Pseudonymizer, PseudonymSecret};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let admin: axum::Router = freeze_admin_router(Arc::new(MemoryFreezeList::new(10_000)), p);
/// let app: axum::Router = axum::Router::new().nest("/admin", admin);
/// ```
pub fn freeze_admin_router(list: SharedFreezeList, pseudonymizer: Pseudonymizer) -> Router {
    FreezeAdmin::new(list, pseudonymizer).router()
}

impl FreezeAdmin {
    /// Admin handlers over `list`, hashing ids with `pseudonymizer`.
    pub fn new(list: SharedFreezeList, pseudonymizer: Pseudonymizer) -> Self {
        FreezeAdmin {
            list,
            pseudonymizer,
            admin_scope: DEFAULT_ADMIN_SCOPE.to_string(),
            max_ttl: Duration::from_secs(30 * 86_400),
            clock: system_clock(),
            responder: ProblemResponder::default(),
            realm: None,
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

    /// Answers errors with this responder instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Names `realm` in `WWW-Authenticate` challenges.
    pub(crate) fn realm(mut self, realm: Option<&str>) -> Self {
        self.realm = realm.map(str::to_string);
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        let responder = self.responder.clone();
        let guard = Arc::new(Guard {
            scope: RequiredScopes::new(&[self.admin_scope.as_str()], self.realm.as_deref())
                .expect("one scope is listed"),
            unauthenticated: Challenges::new(self.realm.as_deref()),
            responder: self.responder.clone(),
        });
        Router::new()
            .route("/freezes", get(list).post(freeze).delete(unfreeze))
            .route("/freezes/{kind}/{digest}", delete(unfreeze_digest))
            .route_layer(middleware::from_fn_with_state(guard, require_admin))
            .method_not_allowed_fallback(move || {
                let responder = responder.clone();
                async move { responder.respond(Problem::new(types::METHOD_NOT_ALLOWED)) }
            })
            .with_state(Arc::new(self))
    }

    fn target(&self, kind: FreezeKind, id: &str) -> FreezeTarget {
        match kind {
            FreezeKind::ApiKey | FreezeKind::Token => FreezeTarget::credential(&self.pseudonymizer, id),
            FreezeKind::Subject => FreezeTarget::subject(&self.pseudonymizer, id),
        }
    }

    fn bad(&self, detail: &'static str) -> Response {
        self.responder
            .respond(Problem::new(INVALID_ADMIN_REQUEST).with_detail(detail))
    }

    fn unavailable(&self, e: StoreError) -> Response {
        tracing::warn!(error = %e, "freeze list unavailable");
        self.responder
            .respond(Problem::new(types::UNAVAILABLE).with_detail("the freeze list could not be updated"))
    }
}

/// The admin scope check in front of every admin route.
struct Guard {
    scope: RequiredScopes,
    unauthenticated: Challenges,
    responder: ProblemResponder,
}

async fn require_admin(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let problem = match req.extensions().carried::<Principal>() {
        None => {
            let error = AuthError::MissingCredentials;
            record_current([(fields::AUTH_ERROR, &error.slug())]);
            guard.unauthenticated.problem(error)
        }
        Some(p) if !guard.scope.held_by(p) => {
            record_current([(fields::AUTH_ERROR, &AuthError::InsufficientScope.slug())]);
            guard.scope.problem()
        }
        Some(_) => return next.run(req).await,
    };
    guard.responder.respond(problem)
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

async fn list(State(admin): State<Arc<FreezeAdmin>>) -> Response {
    match admin.list.list().await {
        Ok(freezes) => Json(freezes).into_response(),
        Err(e) => admin.unavailable(e),
    }
}

async fn freeze(
    State(admin): State<Arc<FreezeAdmin>>,
    body: Result<Json<FreezeRequest>, JsonRejection>,
) -> Response {
    let req = match parse(body) {
        Ok(r) => r,
        Err(detail) => return admin.bad(detail),
    };
    let target = admin.target(req.kind, &req.id);
    let ttl = req
        .ttl_s
        .map_or(admin.max_ttl, Duration::from_secs)
        .min(admin.max_ttl);
    if ttl.is_zero() {
        return admin.bad("ttl_s must be positive");
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
        Err(e) => admin.unavailable(e),
    }
}

async fn unfreeze(
    State(admin): State<Arc<FreezeAdmin>>,
    body: Result<Json<FreezeRequest>, JsonRejection>,
) -> Response {
    let req = match parse(body) {
        Ok(r) => r,
        Err(detail) => return admin.bad(detail),
    };
    let target = admin.target(req.kind, &req.id);
    remove(&admin, &target, kind_name(req.kind)).await
}

async fn unfreeze_digest(
    State(admin): State<Arc<FreezeAdmin>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let Ok(Path((kind, digest))) = path else {
        return admin.bad("give a freeze target's kind and digest");
    };
    let Some(digest) = KeyedDigest::from_hex(&digest) else {
        return admin.bad("digest must be 32 hex digits");
    };
    let (target, name) = match kind.as_str() {
        "credential" => (FreezeTarget::Credential(digest), "credential"),
        "subject" => (FreezeTarget::Subject(digest), "subject"),
        _ => return admin.bad("kind must be credential or subject"),
    };
    remove(&admin, &target, name).await
}

async fn remove(admin: &FreezeAdmin, target: &FreezeTarget, kind: &'static str) -> Response {
    match admin.list.unfreeze(target).await {
        Ok(true) => {
            tracing::info!(kind, "freeze lifted");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => admin.responder.respond(Problem::new(NOT_FROZEN)),
        Err(e) => admin.unavailable(e),
    }
}
