//! [`RateLimitBuilder`]: a [`RateLimitLayer`] from its configuration section plus
//! what the stack shares (client resolution, routes, store, clock, responder).

use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap};
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::problem::ProblemResponder;
use tollgate_core::pseudonym::{KeyedDigest, Pseudonymizer};
use tollgate_core::{ClientConfig, ConfigError, RouteMap};

use crate::config::{RateLimitConfig, RateLimitRoute};
use crate::layer::RateLimitLayer;
use crate::policy;
use crate::service::{KeyFn, Shared, Warned};
use crate::store::{MemoryRateLimitStore, SharedRateLimitStore};

impl RateLimitLayer {
    /// A builder over `config`; `pseudonymizer` keys anonymous traffic by network.
    pub fn builder(config: RateLimitConfig, pseudonymizer: Pseudonymizer) -> RateLimitBuilder {
        RateLimitBuilder {
            config,
            pseudonymizer,
            client: ClientConfig::default(),
            routes: RouteMap::default(),
            store: None,
            clock: system_clock(),
            responder: ProblemResponder::default(),
            key_fn: None,
        }
    }

    /// The layer for `config` with the builder's defaults: every route on the
    /// caller's tier, the in-process store sized by `max_entries`, the system clock,
    /// clients resolved by [`ClientConfig::default`].
    pub fn from_config(config: &RateLimitConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build()
    }
}

/// Builds a [`RateLimitLayer`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_core::{ClientConfig, Pseudonymizer, PseudonymSecret, RouteMap};
/// use tollgate_ratelimit::{LimitConfig, MemoryRateLimitStore, RateLimitConfig, RateLimitLayer, RateLimitRoute};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let routes = RouteMap::new(
///     [
///         ("/health", RateLimitRoute::exempt()),
///         ("/login", RateLimitRoute::limits([LimitConfig::new("login", 5, Duration::from_secs(60))])),
///         ("/v1/export/*", RateLimitRoute::default().cost(5)),
///     ],
///     RateLimitRoute::default(),
/// )
/// .unwrap();
/// let layer = RateLimitLayer::builder(RateLimitConfig::default(), p)
///     .client(ClientConfig::default().trust_proxies(["10.0.0.0/8".parse().unwrap()]))
///     .routes(routes)
///     .store(Arc::new(MemoryRateLimitStore::new(10_000)))
///     .build()
///     .unwrap();
/// ```
pub struct RateLimitBuilder {
    config: RateLimitConfig,
    pseudonymizer: Pseudonymizer,
    client: ClientConfig,
    routes: RouteMap<RateLimitRoute>,
    store: Option<SharedRateLimitStore>,
    clock: SharedClock,
    responder: ProblemResponder,
    key_fn: Option<KeyFn>,
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("config", &self.config)
            .field("client", &self.client)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    /// Resolves and coarsens anonymous clients' addresses this way (trusted proxies,
    /// prefix lengths), as the other layers of the stack do. An outer layer's
    /// [`ClientContext`](tollgate_core::ClientContext) is used as it is.
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// The rate-limit settings of each route (default: the caller's tier everywhere).
    pub fn routes(mut self, routes: RouteMap<RateLimitRoute>) -> Self {
        self.routes = routes;
        self
    }

    /// Keeps state in this store (for example a Redis store shared by replicas)
    /// instead of an in-process store of `max_entries` keys.
    pub fn store(mut self, store: SharedRateLimitStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this clock (a [`tollgate_core::FakeClock`] in tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Answers refusals with this responder instead of problem+json. `Retry-After`,
    /// `Cache-Control` and the rate-limit fields are added to its answer.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Counts requests under a custom key when `f` returns one (else the principal's
    /// or the network's). Build digests with a [`Pseudonymizer`], never from raw
    /// identifiers; read tollgate's values from the extensions with
    /// [`CarryExt::carried`](tollgate_core::CarryExt::carried).
    pub fn key_fn(
        mut self,
        f: impl Fn(&HeaderMap, &Extensions) -> Option<KeyedDigest> + Send + Sync + 'static,
    ) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// The layer. Fails, naming the setting, on an invalid limit, an unknown default,
    /// anonymous or route tier, or a route setting that cannot work.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        let config = &self.config;
        let tiers = policy::tiers(config)?;
        let routes = policy::routes(config, &tiers, &self.routes)?;
        let store = match self.store {
            Some(store) => store,
            None => {
                if config.max_entries == 0 {
                    return Err(ConfigError::new("ratelimit.max_entries", "must be at least 1"));
                }
                Arc::new(MemoryRateLimitStore::new(config.max_entries))
            }
        };
        Ok(RateLimitLayer::from_shared(Shared {
            tiers,
            routes,
            on_store_failure: config.on_store_failure,
            store,
            clock: self.clock,
            pseudonymizer: self.pseudonymizer,
            client: self.client,
            key_fn: self.key_fn,
            responder: self.responder,
            warned: Warned::default(),
        }))
    }
}
