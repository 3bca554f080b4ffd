//! [`FingerprintLayer`]: the tower layer.

use std::fmt;
use std::sync::Arc;

use tollgate_core::inventory::FieldSpec;
use tollgate_core::{KeyedDigest, StoreError};
use tower::Layer;

use crate::config::FingerprintConfig;
use crate::inventory::inventory;
use crate::record::SessionRecord;
use crate::service::{FingerprintService, Shared};

/// A tower layer that fingerprints each authenticated request's session and judges
/// its health.
///
/// For each request carrying a [`Principal`](tollgate_core::Principal) (inserted by
/// the authentication layer), it hashes the enabled coarsened traits (network prefix,
/// user-agent family, …) into a fingerprint, updates the session record keyed by the
/// credential, and derives a [`SessionInfo`](tollgate_core::SessionInfo): the session
/// pseudonym, the fingerprint pseudonym, a [`SessionHealth`](tollgate_core::SessionHealth)
/// and its reasons. It records `session`, `session.health` and `session.reasons` in
/// the current span, carries the `SessionInfo` in the request, and applies
/// the [`SessionPolicy`](crate::SessionPolicy). Requests without a `Principal` pass
/// untouched.
///
/// Session records live in a [`SessionStore`](crate::SessionStore): by default an
/// in-process [`MemorySessionStore`](crate::MemorySessionStore), whose update of a
/// record is atomic per session and where a steady session costs no HMAC; or any
/// shared store, such as Redis, set with [`FingerprintBuilder::store`](crate::FingerprintBuilder::store).
///
/// # Per route
///
/// Whether a route is fingerprinted is a [`RouteMap<bool>`](tollgate_core::RouteMap)
/// given to [`FingerprintBuilder::routes`](crate::FingerprintBuilder::routes) (default:
/// every route). A route turned off gets no record and no `SessionInfo`. The map is
/// read per request from axum's `MatchedPath`, so it works with `Router::layer`. A
/// second `FingerprintLayer` on a request (say a stricter one on `/admin`, mounted
/// with `route_layer`) reuses the first one's verdict, without counting the request
/// twice, and applies its own policy.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret, RouteMap};
/// use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer, SessionInfo};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let layer = FingerprintLayer::builder(FingerprintConfig::default(), p)
///     // Not /health, nor anything under /public.
///     .routes(RouteMap::new([("/health", false), ("/public/*", false)], true).unwrap())
///     .build()
///     .unwrap();
/// let app: Router = Router::new()
///     .route("/me", get(|s: Option<SessionInfo>| async move { format!("{:?}", s.map(|s| s.health)) }))
///     .route("/health", get(|| async { "ok" }))
///     .layer(layer); // inside the AuthLayer, outside the rate limiter
/// ```
#[derive(Clone)]
pub struct FingerprintLayer {
    pub(crate) shared: Arc<Shared>,
}

impl FingerprintLayer {
    pub(crate) fn from_shared(shared: Shared) -> Self {
        FingerprintLayer {
            shared: Arc::new(shared),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &FingerprintConfig {
        &self.shared.judge.config
    }

    /// The session record kept for `credential` (a principal's
    /// [`credential_key`](tollgate_core::Principal::credential_key)), if any.
    pub async fn session_record(&self, credential: KeyedDigest) -> Result<Option<SessionRecord>, StoreError> {
        self.shared.store.record(credential).await
    }

    /// The session records held now, when the store is in process (the inventory's
    /// `tollgate:session`).
    pub fn state_sizes(&self) -> Vec<tollgate_core::inventory::StateSize> {
        self.shared
            .store
            .size()
            .map(|(len, capacity)| tollgate_core::inventory::StateSize {
                name: "tollgate:session",
                len,
                capacity,
            })
            .into_iter()
            .collect()
    }

    /// Every field this layer logs or stores, with its retention.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        inventory(&self.shared.judge.config, &*self.shared.store)
    }
}

impl fmt::Debug for FingerprintLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S> Layer<S> for FingerprintLayer {
    type Service = FingerprintService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FingerprintService::new(inner, self.shared.clone())
    }
}
