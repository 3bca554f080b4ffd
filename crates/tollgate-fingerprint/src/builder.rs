//! [`FingerprintBuilder`] and the layer's constructors.

use std::fmt;
use std::sync::Arc;

use tollgate_core::sharded::ShardedMap;
use tollgate_core::{
    ClientConfig, ConfigError, MemoryFreezeList, ProblemResponder, Pseudonymizer, RouteMap, SharedClock,
    SharedFreezeList, system_clock,
};

use crate::config::FingerprintConfig;
use crate::dimensions::UserAgentCache;
use crate::layer::FingerprintLayer;
use crate::local_hash::LocalHasher;
use crate::memory::MemorySessionStore;
use crate::service::Shared;
use crate::store::SessionStore;
use crate::verdict::{Judge, MAX_HASHES, thresholds};

/// Freezes the default in-process freeze list holds.
const DEFAULT_FREEZE_LIST_CAPACITY: usize = 10_000;

impl FingerprintLayer {
    /// A builder for a layer with `config`; the other parts have defaults (see
    /// [`FingerprintBuilder`]).
    pub fn builder(config: FingerprintConfig, pseudonymizer: Pseudonymizer) -> FingerprintBuilder {
        FingerprintBuilder {
            config,
            pseudonymizer,
            clock: None,
            client: ClientConfig::default(),
            responder: ProblemResponder::default(),
            freeze_list: None,
            routes: None,
            store: None,
        }
    }

    /// A layer from its configuration, with every other part at its default: see
    /// [`FingerprintLayer::builder`]. Fails on an invalid setting, naming it.
    pub fn from_config(
        config: &FingerprintConfig,
        pseudonymizer: Pseudonymizer,
    ) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build()
    }

    /// A layer with the default configuration: tag only, every route, in-process store.
    pub fn new(pseudonymizer: Pseudonymizer) -> Self {
        Self::from_config(&FingerprintConfig::default(), pseudonymizer)
            .expect("the default configuration is valid")
    }
}

/// Builds a [`FingerprintLayer`]. Every part but the configuration and the
/// pseudonymizer has a default:
///
/// - clock: the system clock;
/// - client: [`ClientConfig::default`] (no trusted proxies), used when no outer
///   layer put a [`ClientContext`](tollgate_core::ClientContext) in the request;
/// - responder: problem+json;
/// - freeze list: an in-process list of its own (give it the authentication layer's
///   before using the `freeze` policy);
/// - routes: every route fingerprinted;
/// - store: a [`MemorySessionStore`] of `max_sessions` sessions, expiring after
///   `session_ttl` on the layer's clock.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_core::{MemoryFreezeList, MemoryStore, Pseudonymizer, PseudonymSecret, RouteMap, SharedFreezeList};
/// use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer, SessionPolicy, SessionRecord};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let freeze_list: SharedFreezeList = Arc::new(MemoryFreezeList::new(10_000)); // the AuthLayer's too
/// // Any `StateStore<SessionRecord>` is a session store (on Redis: `RedisStore::<SessionRecord>::new(&backend)`).
/// let records: MemoryStore<SessionRecord> = MemoryStore::new(100_000);
/// let config = FingerprintConfig { policy: SessionPolicy::Freeze, ..FingerprintConfig::default() };
/// let layer = FingerprintLayer::builder(config, p)
///     .freeze_list(freeze_list)
///     .store(Arc::new(records))
///     .routes(RouteMap::new([("/health", false)], true).unwrap())
///     .build()
///     .unwrap();
/// ```
#[must_use]
pub struct FingerprintBuilder {
    config: FingerprintConfig,
    pseudonymizer: Pseudonymizer,
    clock: Option<SharedClock>,
    client: ClientConfig,
    responder: ProblemResponder,
    freeze_list: Option<SharedFreezeList>,
    routes: Option<RouteMap<bool>>,
    store: Option<Arc<dyn SessionStore>>,
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintBuilder")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .field("store", &self.store.is_some())
            .field("freeze_list", &self.freeze_list.is_some())
            .finish_non_exhaustive()
    }
}

impl FingerprintBuilder {
    /// Writes early answers (401, 503) with `responder` instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Reads time from `clock` (tests use a [`FakeClock`](tollgate_core::FakeClock)).
    /// Tokens issued before the layer is built are never judged stale.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How to find the client's network when no outer layer put a
    /// [`ClientContext`](tollgate_core::ClientContext) in the request (see
    /// [`ClientConfig::resolve`]).
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// Freezes through `freeze_list`: give it the authentication layer's, so that a
    /// frozen credential is refused from the next request on.
    pub fn freeze_list(mut self, freeze_list: SharedFreezeList) -> Self {
        self.freeze_list = Some(freeze_list);
        self
    }

    /// Which routes are fingerprinted: `false` leaves a route's requests alone (no
    /// record, no verdict).
    pub fn routes(mut self, routes: RouteMap<bool>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Keeps session records in `store` (a shared store for several replicas, or a
    /// [`MemorySessionStore`] the caller keeps a handle on).
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The layer. Fails on an invalid setting, naming it (`fingerprint.session_ttl`).
    pub fn build(self) -> Result<FingerprintLayer, ConfigError> {
        self.config.validate()?;
        let clock = self.clock.unwrap_or_else(system_clock);
        let config = self.config;
        let store = self.store.unwrap_or_else(|| {
            Arc::new(MemorySessionStore::with_clock(
                config.max_sessions,
                config.session_ttl,
                clock.clone(),
            ))
        });
        let freeze_list = self.freeze_list.unwrap_or_else(|| {
            Arc::new(MemoryFreezeList::with_clock(
                DEFAULT_FREEZE_LIST_CAPACITY,
                clock.clone(),
            ))
        });
        let routes = match self.routes {
            Some(routes) => routes,
            None => RouteMap::new(std::iter::empty::<(&str, bool)>(), true)?,
        };
        let judge = Judge {
            thresholds: thresholds(&config, clock.now()),
            user_agents: UserAgentCache::new(config.user_agent_cache),
            config,
            pseudonymizer: self.pseudonymizer,
            clock,
            client: self.client,
            responder: self.responder,
            local: LocalHasher::default(),
            hashes: ShardedMap::new(MAX_HASHES),
        };
        Ok(FingerprintLayer::from_shared(Shared {
            judge,
            routes,
            store,
            freeze_list,
        }))
    }
}
