//! [`AnomalyLayer`]: the innermost tollgate layer.

use std::fmt;
use std::sync::Arc;

use tollgate_core::FieldSpec;
use tower::Layer;

use crate::config::AnomalyConfig;
use crate::engine::Engine;
use crate::service::AnomalyService;
use crate::watch::FailureWatchLayer;
use tollgate_core::inventory::StateSize;

/// Tags anomalous requests and sessions, and acts on them by policy.
///
/// Place it innermost (after auth, fingerprinting and rate limiting), so it reads
/// [`tollgate_core::Principal`], [`tollgate_core::SessionInfo`], the
/// [`tollgate_core::ClientContext`] and `MatchedPath` from request extensions, and the
/// status from the response. For credential stuffing against the auth layer's own
/// 401s, also install [`AnomalyLayer::failure_watch`] outside the auth layer.
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind, AnomalyLayer, AnomalyRoute, AnomalyTags};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret, RouteMap};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[3; 32]).unwrap(), std::time::Duration::from_secs(86_400));
/// // Health checks skip the layer; logins are blocked on credential stuffing.
/// let routes = RouteMap::new(
///     [
///         ("/health", AnomalyRoute::default().skip()),
///         ("/v1/login", AnomalyRoute::default().action(AnomalyKind::CredentialStuffing, Action::Block)),
///     ],
///     AnomalyRoute::default(),
/// )
/// .unwrap();
/// let anomaly = AnomalyLayer::builder(AnomalyConfig::default(), p)
///     .routes(routes)
///     .build()
///     .unwrap();
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .route("/v1/items/{id}", get(|tags: AnomalyTags| async move { tags.to_string() }))
///     .layer(anomaly.clone());
/// assert!(anomaly.inventory().iter().any(|f| f.name == "anomaly"));
/// ```
#[derive(Clone)]
pub struct AnomalyLayer {
    engine: Arc<Engine>,
}

impl fmt::Debug for AnomalyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AnomalyLayer").field(&self.engine).finish()
    }
}

impl AnomalyLayer {
    pub(crate) fn from_engine(engine: Engine) -> Self {
        AnomalyLayer {
            engine: Arc::new(engine),
        }
    }

    /// The companion layer to place outside the auth layer: it sees the auth layer's
    /// 401s (which never reach this layer) and feeds them to the credential-stuffing
    /// detector, and it blocks networks under a penalty before auth runs. It shares
    /// this layer's state and per-route policies.
    pub fn failure_watch(&self) -> FailureWatchLayer {
        FailureWatchLayer::new(Arc::clone(&self.engine))
    }

    /// The configuration in force.
    pub fn config(&self) -> &AnomalyConfig {
        &self.engine.config
    }

    /// Entry counts and caps of every piece of detector state.
    pub fn state_sizes(&self) -> Vec<StateSize> {
        self.engine.sizes()
    }

    /// Drops expired detector state now (the request path also does it as it goes).
    pub fn purge_expired(&self) {
        self.engine.purge_expired();
    }

    /// What the sequence model learned: the share of steps from `from` (a route
    /// template, or `None` for the start of a session) that went to `to`. `None` if the
    /// detector is off or nothing left `from` yet. For admin views and tuning.
    pub fn transition_share(&self, from: Option<&str>, to: &str) -> Option<f64> {
        self.engine.transition_share(from, to)
    }

    /// Every field this layer stores or emits, for the data inventory.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        crate::inventory::inventory(&self.engine)
    }
}

impl<S> Layer<S> for AnomalyLayer {
    type Service = AnomalyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AnomalyService::new(inner, Arc::clone(&self.engine))
    }
}
