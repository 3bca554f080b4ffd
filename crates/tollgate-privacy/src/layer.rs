//! [`PrivacyTraceLayer`]: the outermost layer, which opens the request span.

use std::sync::Arc;

use tollgate_core::inventory::FieldSpec;
use tollgate_core::{ClientConfig, ConfigError, Pseudonymizer, RouteMap};
use tower::Layer;

use crate::config::{LogProfile, PrivacyConfig, logged_header};
use crate::service::{Config, PrivacyTraceService};

/// Opens one span per request, with every field of [`tollgate_core::fields::ALL`]
/// declared so the layers inside can record into it, and emits one completion event
/// per request.
///
/// It logs the route template (never the raw path, never the query string), the
/// pseudonym of the client's coarsened network, a W3C trace id, status and latency;
/// request headers only from an allowlist. It carries [`tollgate_core::ClientContext`],
/// [`TraceId`](crate::TraceId) and the resolved [`tollgate_core::Route`] in the request
/// ([`tollgate_core::CarryExt`]), so the layers inside need not resolve them again.
///
/// Serve the router with `into_make_service_with_connect_info::<SocketAddr>()` so the
/// layer can see the peer address.
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret, RouteMap};
/// use tollgate_privacy::{LogProfile, PrivacyConfig, PrivacyTraceLayer};
///
/// let secret = PseudonymSecret::from_bytes(&[42; 32]).unwrap();
/// let pseudonymizer = Pseudonymizer::new(secret, std::time::Duration::from_secs(86_400));
/// let routes = RouteMap::new([("/health", LogProfile::Minimal)], LogProfile::Full).unwrap();
/// let layer = PrivacyTraceLayer::builder(PrivacyConfig::default(), pseudonymizer)
///     .routes(routes)
///     .build()
///     .unwrap();
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .route("/v1/items/{id}", get(|| async { "item" }))
///     .layer(layer);
/// ```
#[derive(Clone, Debug)]
pub struct PrivacyTraceLayer {
    config: Arc<Config>,
}

impl PrivacyTraceLayer {
    /// A layer with the default configuration: no trusted proxies, IPv4 /24 and IPv6
    /// /48 coarsening, no headers logged, every route on [`LogProfile::Full`].
    pub fn new(pseudonymizer: Pseudonymizer) -> Self {
        Self::builder(PrivacyConfig::default(), pseudonymizer)
            .build()
            .expect("the default configuration is valid")
    }

    /// A builder over `config`.
    pub fn builder(config: PrivacyConfig, pseudonymizer: Pseudonymizer) -> PrivacyTraceBuilder {
        PrivacyTraceBuilder {
            config,
            pseudonymizer,
            client: ClientConfig::default(),
            routes: RouteMap::default(),
        }
    }

    /// The layer for `config`, with the default client resolution and every route on
    /// [`LogProfile::Full`].
    pub fn from_config(config: &PrivacyConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build()
    }

    /// The fields this layer writes, for the data inventory.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        crate::inventory::fields(!self.config.log_headers.is_empty())
    }
}

impl<S> Layer<S> for PrivacyTraceLayer {
    type Service = PrivacyTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PrivacyTraceService::new(inner, self.config.clone())
    }
}

/// Builds a [`PrivacyTraceLayer`]: its configuration section plus the client
/// resolution and the per-route log profiles the whole stack shares.
#[derive(Debug)]
pub struct PrivacyTraceBuilder {
    config: PrivacyConfig,
    pseudonymizer: Pseudonymizer,
    client: ClientConfig,
    routes: RouteMap<LogProfile>,
}

impl PrivacyTraceBuilder {
    /// Resolves and coarsens client addresses this way.
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// The log profile of each route (default: [`LogProfile::Full`] everywhere).
    pub fn routes(mut self, routes: RouteMap<LogProfile>) -> Self {
        self.routes = routes;
        self
    }

    /// The layer. Refuses a `log_headers` entry that is not a header name, that
    /// carries identifiers, or that has no vocabulary, and a vocabulary for a header
    /// not logged.
    pub fn build(self) -> Result<PrivacyTraceLayer, ConfigError> {
        let log_headers = self
            .config
            .log_headers
            .iter()
            .map(|name| logged_header(name, &self.config))
            .collect::<Result<Vec<_>, _>>()?;
        // A vocabulary for a header that is not logged is a typo, not a setting.
        if let Some(name) = self.config.header_values.keys().find(|name| {
            !log_headers
                .iter()
                .any(|h| h.name.as_str().eq_ignore_ascii_case(name))
        }) {
            return Err(ConfigError::new(
                "privacy.header_values",
                format!("`{name}` is not in privacy.log_headers"),
            ));
        }
        Ok(PrivacyTraceLayer {
            config: Arc::new(Config {
                pseudonymizer: self.pseudonymizer,
                client: self.client,
                log_headers,
                routes: self.routes,
            }),
        })
    }
}
