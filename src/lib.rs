//! # tollgate
//!
//! Tower layers for axum that secure and manage API sessions without turning the
//! API into a surveillance system. Each layer works alone (depend on its crate);
//! [`Tollgate`] composes them from one configuration, in this order:
//!
//! | layer | adds to the request | can answer early |
//! |---|---|---|
//! | [`privacy::PrivacyTraceLayer`] (outermost) | the request span, `ClientContext` | never |
//! | [`anomaly::FailureWatchLayer`] | counts failed logins per network | never |
//! | [`auth::AuthLayer`] | `Principal` | 400 / 401 / 403 / 431 / 503 |
//! | [`fingerprint::FingerprintLayer`] | `SessionInfo` | 401 by policy |
//! | [`ratelimit::RateLimitLayer`] | `RateLimitStatus`, `RateLimit` headers | 429 |
//! | [`anomaly::AnomalyLayer`] (innermost) | `AnomalyTags` | 403 / 429 / 401 by policy |
//!
//! A layer runs when its configuration section is present. One `[routes]` table
//! says what each layer does per route ([`RoutePolicy`]); the privacy layer resolves
//! a request's route once and the others read that resolution. State lives in
//! process (bounded sharded maps) unless `[store] backend = "redis"` or `"redis-cluster"`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use axum::{Router, routing::get};
//! use tollgate::{Tollgate, TollgateConfig};
//!
//! let config = TollgateConfig::from_toml(r#"
//!     [pseudonym]
//!     secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
//!
//!     [ratelimit]
//!     default_tier = "anonymous"
//!     [ratelimit.tiers.anonymous]
//!     limits = [{ name = "burst", quota = 10, window = "1s" }]
//!
//!     [routes."/health"]
//!     ratelimit = { exempt = true }
//!     log = "minimal"
//! "#).unwrap();
//! let tollgate = Tollgate::from_config(&config).await.unwrap();
//! let app: Router = tollgate.apply(Router::new().route("/health", get(|| async { "ok" })));
//! assert!(tollgate.inventory().get("ratelimit.outcome").is_some());
//! # });
//! ```
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod config;
mod route;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
pub mod operator;
#[cfg(feature = "otel")]
pub mod otel;

pub use config::{PseudonymConfig, TollgateConfig};
pub use route::RoutePolicy;
pub use tollgate_anomaly as anomaly;
pub use tollgate_auth as auth;
pub use tollgate_core as core;
pub use tollgate_fingerprint as fingerprint;
pub use tollgate_privacy as privacy;
pub use tollgate_ratelimit as ratelimit;
#[cfg(feature = "redis")]
pub use tollgate_redis as redis;

use tollgate_anomaly::AnomalyLayer;
use tollgate_auth::AuthLayer;
use tollgate_core::pseudonym::{SECRET_ENV, SecretError};
use tollgate_core::{
    ConfigError, DataInventory, MemoryFreezeList, ProblemResponder, PseudonymSecret, Pseudonymizer, RouteMap,
    SharedClock, SharedFreezeList, system_clock,
};
use tollgate_fingerprint::FingerprintLayer;
use tollgate_privacy::PrivacyTraceLayer;
use tollgate_ratelimit::RateLimitLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Why the stack could not be built. Each message names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// The config file is not valid TOML or does not fit the configuration's shape.
    #[error("invalid config file {path}: {cause}")]
    Parse {
        /// The file.
        path: String,
        /// The parse error, with the offending key.
        cause: String,
    },
    /// The pseudonym secret is unusable.
    #[error("pseudonym.secret / {SECRET_ENV}: {0}")]
    Secret(#[from] SecretError),
    /// A shared store needs a configured secret, so every replica makes the same pseudonyms.
    #[error(
        "store.backend = \"redis\" or \"redis-cluster\" needs a pseudonym secret shared by every replica: set {SECRET_ENV} (or pseudonym.secret)"
    )]
    SecretRequired,
    /// A setting cannot work; the error names it (`auth.jwt.issuer`, `routes."/x".scopes`).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The composed stack. Cheap to clone.
#[derive(Clone)]
pub struct Tollgate {
    pseudonymizer: Pseudonymizer,
    routes: RouteMap<RoutePolicy>,
    freeze_list: SharedFreezeList,
    privacy: PrivacyTraceLayer,
    auth: Option<AuthLayer>,
    fingerprint: Option<FingerprintLayer>,
    ratelimit: Option<RateLimitLayer>,
    anomaly: Option<AnomalyLayer>,
    shared: bool,
    #[cfg(feature = "redis")]
    redis: Option<tollgate_redis::RedisBackend>,
}

impl std::fmt::Debug for Tollgate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tollgate")
            .field("routes", &self.routes)
            .field("privacy", &self.privacy)
            .field("auth", &self.auth)
            .field("fingerprint", &self.fingerprint)
            .field("ratelimit", &self.ratelimit)
            .field("anomaly", &self.anomaly)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Tollgate`] from a configuration, with what a file cannot hold: route
/// policies in code, a fake clock for tests and simulations, the error shape.
pub struct TollgateBuilder {
    config: TollgateConfig,
    clock: Option<SharedClock>,
    responder: ProblemResponder,
}

impl std::fmt::Debug for TollgateBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TollgateBuilder")
            .field("config", &self.config)
            .field("fake_clock", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

impl TollgateBuilder {
    /// Every layer reads time from `clock` (a [`core::FakeClock`] in simulations).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Every layer renders its early answers this way instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Sets the policy of one route pattern (a template, `"/prefix/*"` or
    /// `"default"`), replacing what the configuration says for it.
    pub fn route(mut self, pattern: impl Into<String>, policy: RoutePolicy) -> Self {
        self.config.routes.insert(pattern.into(), policy);
        self
    }

    /// Builds the stack: fetches JWKS when configured, connects to Redis when configured.
    pub async fn build(self) -> Result<Tollgate, BuildError> {
        let config = &self.config;
        let clock = self.clock.clone().unwrap_or_else(system_clock);
        let stores = Stores::new(config, &clock)?;
        let pseudonymizer = pseudonymizer(&config.pseudonym, clock.clone(), stores.shared)?;
        let p = &pseudonymizer;
        let present = route::Present {
            auth: config.auth.is_some(),
            fingerprint: config.fingerprint.is_some(),
            ratelimit: config.ratelimit.is_some(),
            anomaly: config.anomaly.is_some(),
        };
        let routes = route::resolve(config.routes.iter().map(|(k, v)| (k.as_str(), v)), &present)?;

        let privacy = PrivacyTraceLayer::builder(config.privacy.clone(), p.clone())
            .client(config.client.clone())
            .routes(routes.map(|r| r.log.unwrap_or_default()))
            .build()?;
        let auth = match &config.auth {
            Some(section) => {
                let mut section = section.clone();
                // A token's tier claim is the issuer's text: with tiers configured for
                // rate limiting, only those (and the default) are taken from it, so no
                // other value reaches logs and metric labels.
                if section.tiers.is_empty()
                    && let Some(ratelimit) = &config.ratelimit
                {
                    section.tiers = ratelimit.tiers.keys().cloned().collect();
                    section.tiers.push(section.default_tier.clone());
                }
                let mut builder = AuthLayer::builder(section, p.clone())
                    .freeze_list(stores.freeze_list.clone())
                    .clock(clock.clone())
                    .responder(self.responder.clone())
                    .routes(routes.map(route::auth_route));
                if let Some(replay) = stores.replay.clone() {
                    builder = builder.replay_cache(replay);
                }
                Some(builder.build().await?)
            }
            None => None,
        };
        let fingerprint = match &config.fingerprint {
            Some(section) => {
                let mut builder = FingerprintLayer::builder(section.clone(), p.clone())
                    .freeze_list(stores.freeze_list.clone())
                    .clock(clock.clone())
                    .client(config.client.clone())
                    .responder(self.responder.clone())
                    .routes(routes.map(|r| r.fingerprint.unwrap_or(true)));
                if let Some(store) = stores.sessions.clone() {
                    builder = builder.store(store);
                }
                Some(builder.build()?)
            }
            None => None,
        };
        let ratelimit = match &config.ratelimit {
            Some(section) => {
                let mut builder = RateLimitLayer::builder(section.clone(), p.clone())
                    .clock(clock.clone())
                    .client(config.client.clone())
                    .responder(self.responder.clone())
                    .routes(routes.map(|r| r.ratelimit.clone().unwrap_or_default()));
                if let Some(store) = stores.rate_limits.clone() {
                    builder = builder.store(store);
                }
                Some(builder.build()?)
            }
            None => None,
        };
        let anomaly = match &config.anomaly {
            Some(section) => {
                let mut builder = AnomalyLayer::builder(section.clone(), p.clone())
                    .freeze_list(stores.freeze_list.clone())
                    .clock(clock.clone())
                    .client(config.client.clone())
                    .responder(self.responder.clone())
                    .routes(routes.map(|r| r.anomaly.clone().unwrap_or_default()));
                if let Some(board) = stores.penalty_board(section, &clock) {
                    builder = builder.penalty_board(board);
                }
                if let Some(store) = stores.rate_limits.clone() {
                    builder = builder.throttle_store(store);
                }
                Some(builder.build()?)
            }
            None => None,
        };
        Ok(Tollgate {
            pseudonymizer,
            routes,
            freeze_list: stores.freeze_list,
            privacy,
            auth,
            fingerprint,
            ratelimit,
            anomaly,
            shared: stores.shared,
            #[cfg(feature = "redis")]
            redis: stores.redis,
        })
    }
}

/// Where the layers keep state: in process, or in Redis for every replica.
struct Stores {
    shared: bool,
    #[cfg(feature = "redis")]
    redis: Option<tollgate_redis::RedisBackend>,
    freeze_list: SharedFreezeList,
    sessions: Option<Arc<dyn tollgate_fingerprint::SessionStore>>,
    rate_limits: Option<Arc<dyn tollgate_ratelimit::RateLimitStore>>,
    replay: Option<tollgate_auth::SharedReplayCache>,
}

impl Stores {
    #[cfg(feature = "redis")]
    fn new(config: &TollgateConfig, clock: &SharedClock) -> Result<Self, BuildError> {
        if !config.store.backend.is_redis() {
            return Ok(Self::memory(clock));
        }
        let backend = tollgate_redis::RedisBackend::new(&config.store)?;
        Ok(Stores {
            shared: true,
            redis: Some(backend.clone()),
            freeze_list: Arc::new(tollgate_redis::RedisFreezeList::new(&backend)),
            sessions: Some(Arc::new(tollgate_redis::RedisStore::<
                tollgate_fingerprint::SessionRecord,
            >::new(&backend))),
            rate_limits: Some(Arc::new(tollgate_redis::RedisRateLimitStore::new(&backend))),
            replay: Some(Arc::new(tollgate_redis::RedisReplayCache::new(&backend))),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn new(_: &TollgateConfig, clock: &SharedClock) -> Result<Self, BuildError> {
        Ok(Self::memory(clock))
    }

    /// In-process stores: each layer makes its own bounded store; the freeze list is
    /// one for all.
    fn memory(clock: &SharedClock) -> Self {
        Stores {
            shared: false,
            #[cfg(feature = "redis")]
            redis: None,
            freeze_list: Arc::new(MemoryFreezeList::with_clock(FREEZE_LIST_CAPACITY, clock.clone())),
            sessions: None,
            rate_limits: None,
            replay: None,
        }
    }

    /// The anomaly layer's penalty board shared through Redis, if the state is there.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn penalty_board(
        &self,
        anomaly: &tollgate_anomaly::AnomalyConfig,
        clock: &SharedClock,
    ) -> Option<tollgate_anomaly::SharedPenaltyBoard> {
        #[cfg(feature = "redis")]
        if let Some(backend) = &self.redis {
            let p = &anomaly.penalties;
            return Some(Arc::new(tollgate_redis::RedisPenaltyBoard::with_clock(
                backend,
                p.max_entries,
                p.block.max(p.throttle),
                clock.clone(),
            )));
        }
        None
    }
}

/// Freezes the in-process freeze list holds before it refuses new ones.
const FREEZE_LIST_CAPACITY: usize = 100_000;

impl Tollgate {
    /// A builder for the stack described by `config`.
    pub fn builder(config: TollgateConfig) -> TollgateBuilder {
        TollgateBuilder {
            config,
            clock: None,
            responder: ProblemResponder::default(),
        }
    }

    /// Builds the stack from its configuration.
    pub async fn from_config(config: &TollgateConfig) -> Result<Self, BuildError> {
        Self::builder(config.clone()).build().await
    }

    /// The pseudonymizer every layer shares.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.pseudonymizer
    }

    /// The route policies in force, each merged over `default`.
    pub fn routes(&self) -> &RouteMap<RoutePolicy> {
        &self.routes
    }

    /// The freeze list every layer shares.
    pub fn freeze_list(&self) -> &SharedFreezeList {
        &self.freeze_list
    }

    /// The privacy trace layer (always present).
    pub fn privacy(&self) -> &PrivacyTraceLayer {
        &self.privacy
    }

    /// The authentication layer, when `[auth]` is configured.
    pub fn auth(&self) -> Option<&AuthLayer> {
        self.auth.as_ref()
    }

    /// The fingerprinting layer, when `[fingerprint]` is configured.
    pub fn fingerprint(&self) -> Option<&FingerprintLayer> {
        self.fingerprint.as_ref()
    }

    /// The rate-limiting layer, when `[ratelimit]` is configured.
    pub fn ratelimit(&self) -> Option<&RateLimitLayer> {
        self.ratelimit.as_ref()
    }

    /// The anomaly layer, when `[anomaly]` is configured.
    pub fn anomaly(&self) -> Option<&AnomalyLayer> {
        self.anomaly.as_ref()
    }

    /// Wraps `router` in the stack. Add routes (and [`Tollgate::freeze_admin`]) first:
    /// axum applies a layer to the routes added before it.
    ///
    /// The layers are applied as one tower layer: axum boxes the route once per
    /// `Router::layer` call, and every box is cloned per request.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(
            ServiceBuilder::new()
                .layer(self.privacy.clone())
                .option_layer(self.anomaly.as_ref().map(AnomalyLayer::failure_watch))
                .option_layer(self.auth.clone())
                .option_layer(self.fingerprint.clone())
                .option_layer(self.ratelimit.clone())
                .option_layer(self.anomaly.clone())
                .map_response(IntoResponse::into_response)
                .layer(CatchPanicLayer::custom(handler_panicked)),
        )
    }

    /// The freeze admin API (`GET`/`POST`/`DELETE /freezes`) over the stack's freeze
    /// list. `None` without an `[auth]` section. Nest it (under a route pattern whose
    /// policy requires the admin scope, such as `"/admin/*"`) before
    /// [`Tollgate::apply`] so authentication runs in front of it.
    pub fn freeze_admin(&self) -> Option<Router> {
        self.auth.as_ref().map(|a| a.freeze_admin().router())
    }

    /// The Redis backend's counters, when the state is in Redis.
    #[cfg(feature = "redis")]
    pub fn redis_stats(&self) -> Option<tollgate_redis::RedisStats> {
        self.redis.as_ref().map(tollgate_redis::RedisBackend::stats)
    }

    /// Every field the stack logs or stores: name, source, purpose, retention.
    pub fn inventory(&self) -> DataInventory {
        let mut inventory = DataInventory::default();
        inventory.extend(self.privacy.inventory());
        if let Some(l) = &self.auth {
            inventory.extend(l.inventory());
        }
        if let Some(l) = &self.fingerprint {
            inventory.extend(l.inventory());
        }
        if let Some(l) = &self.ratelimit {
            inventory.extend(l.inventory());
        }
        if let Some(l) = &self.anomaly {
            inventory.extend(l.inventory());
        }
        inventory
    }

    /// True when state is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared
    }
}

/// The pseudonymizer from the environment variable, else the config, else (only
/// without a shared store) a random secret, with a warning.
/// Replaces the process's panic hook with one that logs (through `tracing`, so as one
/// JSON line inside the request's span) where a panic happened, never its message:
/// Rust's default hook prints the message to stderr, and a message may quote
/// anything the code held, such as a token or an address. Call it once at start.
///
/// ```
/// tollgate::redact_panic_messages();
/// ```
pub fn redact_panic_messages() {
    std::panic::set_hook(Box::new(|info| {
        let (file, line) = info.location().map_or(("", 0), |l| (l.file(), l.line()));
        tracing::error!(panic.file = file, panic.line = line, "panic (message withheld)");
    }));
}

/// The answer for a handler that panicked: a 500 problem+json that goes back through
/// every layer, so the request is still counted, judged and logged once. The panic
/// message is not logged: it may quote anything the handler held.
fn handler_panicked(_payload: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("the handler panicked: answered 500");
    tollgate_core::problem::Problem::new(tollgate_core::problem::types::INTERNAL_ERROR).into_response()
}

fn pseudonymizer(
    config: &PseudonymConfig,
    clock: SharedClock,
    shared_store: bool,
) -> Result<Pseudonymizer, BuildError> {
    let configured = match PseudonymSecret::from_env()? {
        Some(secret) => Some(secret),
        None => config
            .secret
            .as_deref()
            .map(PseudonymSecret::from_hex)
            .transpose()?,
    };
    let epoch = config.epoch.max(Duration::from_secs(1));
    match configured {
        Some(secret) => Ok(Pseudonymizer::with_clock(secret, epoch, clock)),
        None if shared_store => Err(BuildError::SecretRequired),
        None => Ok(Pseudonymizer::ephemeral_with_clock(epoch, clock)?),
    }
}
