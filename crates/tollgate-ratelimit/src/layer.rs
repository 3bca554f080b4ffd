//! [`RateLimitLayer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::inventory::{FieldSpec, StateSize};
use tower::Layer;

use crate::gcra::Limit;
use crate::service::{RateLimitService, Shared};

/// Tiered GCRA rate limiting.
///
/// Each request is counted under a key: the principal's stable subject digest when
/// authenticated, the digest of the client's coarsened network (`/24`, `/48`,
/// resolved through trusted proxies by the builder's
/// [`ClientConfig`](tollgate_core::ClientConfig), as every layer resolves it) when
/// anonymous, or a custom key. The key's tier (the principal's, or the anonymous
/// tier) gives one to four stacked limits, all checked before any is spent. Per route
/// ([`RateLimitRoute`](crate::RateLimitRoute) in a
/// [`RouteMap`](tollgate_core::RouteMap)), a request can be exempt, cost more, use
/// another tier, or count against limits of the route's own.
///
/// On a refusal the answer is 429 problem+json with `Retry-After`; every response
/// carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11)
/// unless headers are switched off. A [`RateLimitStatus`](crate::RateLimitStatus)
/// goes into the request and response extensions, and `ratelimit.policy`,
/// `ratelimit.outcome` and `ratelimit.remaining` into the current span.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use axum::{Router, routing::get, body::Body};
/// use http::Request;
/// use tower::ServiceExt;
/// use tollgate_core::{CredentialKind, Principal, Pseudonymizer, PseudonymSecret, RouteMap, Tier};
/// use tollgate_ratelimit::{LimitConfig, RateLimitConfig, RateLimitLayer, RateLimitRoute};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let config = RateLimitConfig::default()
///     .tier("free", [LimitConfig::new("burst", 2, Duration::from_secs(60))]);
/// let routes = RouteMap::new([("/health", RateLimitRoute::exempt())], RateLimitRoute::default()).unwrap();
/// let layer = RateLimitLayer::builder(config, p.clone()).routes(routes).build().unwrap();
/// let app = Router::new()
///     .route("/", get(|| async { "ok" }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(layer);
///
/// let principal = Principal::new(&p, CredentialKind::ApiKey, "alice", b"k1").with_tier(Tier::new("free"));
/// let call = |path: &'static str| {
///     let mut req = Request::get(path).body(Body::empty()).unwrap();
///     req.extensions_mut().insert(principal.clone());
///     app.clone().oneshot(req)
/// };
/// assert_eq!(call("/").await.unwrap().headers()["ratelimit"], "\"burst\";r=1;t=30");
/// assert_eq!(call("/").await.unwrap().status(), 200);
/// let refused = call("/").await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "30");
/// assert_eq!(refused.headers()["ratelimit"], "\"burst\";r=0;t=30");
/// assert_eq!(refused.headers()["ratelimit-policy"], "\"burst\";q=2;w=60");
/// // The exempt route is not counted.
/// assert_eq!(call("/health").await.unwrap().status(), 200);
/// # });
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    /// Everything behind one `Arc`: axum may clone the layer and make its service for
    /// every request, and each `Arc` is an atomic increment and decrement.
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    pub(crate) fn from_shared(shared: Shared) -> Self {
        RateLimitLayer {
            shared: Arc::new(shared),
        }
    }

    /// The rate-limit cells held now, when the store is in process (see the
    /// inventory's `tollgate:rl:{digest}`).
    pub fn state_sizes(&self) -> Vec<StateSize> {
        self.shared
            .store
            .size()
            .map(|(len, capacity)| StateSize {
                name: "tollgate:rl:{digest}",
                len,
                capacity,
            })
            .into_iter()
            .collect()
    }

    /// Every field this layer logs, stores, or sends.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        let shared = &*self.shared;
        let routes = shared.routes.iter().filter_map(|(_, r)| r.policy.as_ref());
        let longest = shared
            .tiers
            .policies()
            .chain(routes)
            .flat_map(|p| p.limits.iter().map(Limit::capacity))
            .max()
            .unwrap_or(0);
        crate::inventory::fields(Duration::from_nanos(longest))
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &*self.shared;
        let tiers: Vec<&str> = shared.tiers.by_name.iter().map(|(k, _)| &**k).collect();
        f.debug_struct("RateLimitLayer")
            .field("tiers", &tiers)
            .field("routes", &shared.routes.table())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.shared.clone())
    }
}
