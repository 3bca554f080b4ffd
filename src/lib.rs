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
//! A layer runs when its configuration section is present. State lives in process
//! (bounded moka caches) unless `[store] backend = "redis"`.
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
//! "#).unwrap();
//! let tollgate = Tollgate::from_config(&config).await.unwrap();
//! let app: Router = tollgate.apply(Router::new().route("/health", get(|| async { "ok" })));
//! assert!(tollgate.inventory().get("ratelimit.outcome").is_some());
//! # });
//! ```
#![warn(missing_docs)]

mod config;

use std::time::Duration;

use axum::Router;
pub use config::{PseudonymConfig, TollgateConfig};
pub use tollgate_anomaly as anomaly;
pub use tollgate_auth as auth;
pub use tollgate_core as core;
pub use tollgate_fingerprint as fingerprint;
pub use tollgate_privacy as privacy;
pub use tollgate_ratelimit as ratelimit;
#[cfg(feature = "redis")]
pub use tollgate_redis as redis;

use axum::response::IntoResponse;
use tollgate_anomaly::AnomalyLayer;
use tollgate_auth::AuthLayer;
use tollgate_core::pseudonym::{SECRET_ENV, SecretError};
use tollgate_core::{
    DataInventory, FreezeList, MemoryFreezeList, ProblemResponder, PseudonymSecret, Pseudonymizer,
    SharedClock, system_clock,
};
use tollgate_fingerprint::{FingerprintLayer, MemorySessionStore};
use tollgate_privacy::PrivacyTraceLayer;
use tollgate_ratelimit::{MemoryRateLimitStore, RateLimitLayer};
use tower::ServiceBuilder;

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
    /// The config file is not valid.
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
        "store.backend = \"redis\" needs a pseudonym secret shared by every replica: set {SECRET_ENV} (or pseudonym.secret)"
    )]
    SecretRequired,
    /// The `[privacy]` section is invalid.
    #[error(transparent)]
    Privacy(#[from] tollgate_privacy::PrivacyConfigError),
    /// The `[auth]` section is invalid.
    #[error("auth: {0}")]
    Auth(#[from] tollgate_auth::ConfigError),
    /// The `[fingerprint]` section is invalid.
    #[error(transparent)]
    Fingerprint(#[from] tollgate_fingerprint::ConfigError),
    /// The `[ratelimit]` section is invalid.
    #[error(transparent)]
    RateLimit(#[from] tollgate_ratelimit::ConfigError),
    /// The `[anomaly]` section is invalid.
    #[error(transparent)]
    Anomaly(#[from] tollgate_anomaly::ConfigError),
    /// The `[store]` section is invalid.
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Store(#[from] tollgate_redis::ConfigError),
}

/// The layers of one backend. Each is present when its section is configured.
#[derive(Clone, Debug)]
struct Layers<F: FreezeList, St, R> {
    auth: Option<AuthLayer<F>>,
    fingerprint: Option<FingerprintLayer<St, F>>,
    ratelimit: Option<RateLimitLayer<R>>,
    anomaly: Option<AnomalyLayer>,
}

#[derive(Clone, Debug)]
enum Backend {
    Memory(Layers<MemoryFreezeList, MemorySessionStore, MemoryRateLimitStore>),
    #[cfg(feature = "redis")]
    Redis(
        Layers<
            tollgate_redis::RedisFreezeList,
            tollgate_redis::RedisStore<tollgate_fingerprint::SessionRecord>,
            tollgate_redis::RedisRateLimitStore,
        >,
    ),
}

/// Wraps a router in the privacy layer and a backend's layers, as one tower layer:
/// axum boxes the route once per `Router::layer` call, and every box is cloned per
/// request, so one composed layer costs one box instead of six.
macro_rules! wrap {
    ($privacy:expr, $layers:expr, $router:expr) => {{
        let layers = $layers;
        $router.layer(
            ServiceBuilder::new()
                .layer($privacy.clone())
                .option_layer(layers.anomaly.as_ref().map(AnomalyLayer::failure_watch))
                .option_layer(layers.auth.clone())
                .option_layer(layers.fingerprint.clone())
                .option_layer(layers.ratelimit.clone())
                .option_layer(layers.anomaly.clone())
                .map_response(IntoResponse::into_response),
        )
    }};
}

/// Runs `$body` with `$layers` bound to the backend's layers, whatever their types.
macro_rules! with_layers {
    ($backend:expr, $layers:ident => $body:expr) => {
        match $backend {
            Backend::Memory($layers) => $body,
            #[cfg(feature = "redis")]
            Backend::Redis($layers) => $body,
        }
    };
}

/// The composed stack. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tollgate {
    pseudonymizer: Pseudonymizer,
    privacy: PrivacyTraceLayer,
    backend: Backend,
}

/// Builds a [`Tollgate`] from a configuration, with optional overrides for tests and
/// simulations (a fake clock) and for the error shape.
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
    pub fn problem_responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Builds the stack: fetches JWKS when configured, connects to Redis when configured.
    pub async fn build(self) -> Result<Tollgate, BuildError> {
        let config = &self.config;
        let clock = self.clock.clone().unwrap_or_else(system_clock);
        let shared_store = shared_store(config);
        let pseudonymizer = pseudonymizer(&config.pseudonym, clock.clone(), shared_store)?;
        let privacy = PrivacyTraceLayer::from_config(&config.privacy, pseudonymizer.clone())?;

        #[cfg(feature = "redis")]
        if shared_store {
            let backend = tollgate_redis::RedisBackend::new(&config.store)?;
            let layers = self
                .layers(
                    &pseudonymizer,
                    &clock,
                    tollgate_redis::RedisFreezeList::new(&backend),
                    |fp| fp.store(tollgate_redis::RedisStore::new(&backend)),
                    |rl| rl.store(tollgate_redis::RedisRateLimitStore::new(&backend)),
                )
                .await?;
            return Ok(Tollgate {
                pseudonymizer,
                privacy,
                backend: Backend::Redis(layers),
            });
        }
        let layers = self
            .layers(
                &pseudonymizer,
                &clock,
                MemoryFreezeList::with_clock(FREEZE_LIST_CAPACITY, clock.clone()),
                |fp| fp,
                |rl| rl,
            )
            .await?;
        Ok(Tollgate {
            pseudonymizer,
            privacy,
            backend: Backend::Memory(layers),
        })
    }

    /// The configured layers over one backend's stores.
    async fn layers<F: FreezeList, St, R>(
        &self,
        p: &Pseudonymizer,
        clock: &SharedClock,
        freeze: F,
        session_store: impl FnOnce(FingerprintLayer<MemorySessionStore, F>) -> FingerprintLayer<St, F>,
        rate_store: impl FnOnce(RateLimitLayer<MemoryRateLimitStore>) -> RateLimitLayer<R>,
    ) -> Result<Layers<F, St, R>, BuildError> {
        let config = &self.config;
        let auth = match &config.auth {
            Some(section) => Some(
                AuthLayer::builder(section.clone(), p.clone())
                    .freeze_list(freeze.clone())
                    .clock(clock.clone())
                    .responder(self.responder.clone())
                    .build()
                    .await?,
            ),
            None => None,
        };
        let fingerprint = match &config.fingerprint {
            Some(section) => Some(session_store(
                FingerprintLayer::from_config(section, p.clone(), freeze.clone())?
                    .clock(clock.clone())
                    .problem_responder(self.responder.clone()),
            )),
            None => None,
        };
        let ratelimit = match &config.ratelimit {
            Some(section) => Some(rate_store(
                RateLimitLayer::new(section, p.clone())?
                    .clock(clock.clone())
                    .responder(self.responder.clone()),
            )),
            None => None,
        };
        let anomaly = match &config.anomaly {
            Some(section) => Some(
                AnomalyLayer::builder(section.clone(), p.clone())
                    .freeze_list(freeze.clone())
                    .clock(clock.clone())
                    .problem_responder(self.responder.clone())
                    .build()?,
            ),
            None => None,
        };
        Ok(Layers {
            auth,
            fingerprint,
            ratelimit,
            anomaly,
        })
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

    /// Wraps `router` in the stack. Add routes (and [`Tollgate::freeze_admin`]) first:
    /// axum applies a layer to the routes added before it.
    pub fn apply<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        with_layers!(&self.backend, layers => wrap!(self.privacy, layers, router))
    }

    /// The freeze admin API (`GET`/`POST`/`DELETE /freezes`), guarded by the admin
    /// scope, over the stack's freeze list. `None` without an `[auth]` section.
    /// Nest it before [`Tollgate::apply`] so authentication runs in front of it.
    pub fn freeze_admin(&self) -> Option<Router> {
        with_layers!(&self.backend, layers => layers.auth.as_ref().map(|a| a.freeze_admin().router()))
    }

    /// Every field the stack logs or stores: name, source, purpose, retention.
    pub fn inventory(&self) -> DataInventory {
        let mut inventory = DataInventory::default();
        inventory.extend(self.privacy.inventory());
        with_layers!(&self.backend, layers => {
            if let Some(l) = &layers.auth {
                inventory.extend(l.inventory());
            }
            if let Some(l) = &layers.fingerprint {
                inventory.extend(l.inventory());
            }
            if let Some(l) = &layers.ratelimit {
                inventory.extend(l.inventory());
            }
            if let Some(l) = &layers.anomaly {
                inventory.extend(l.inventory());
            }
        });
        inventory
    }

    /// True when state is shared through Redis.
    pub fn is_shared(&self) -> bool {
        !matches!(self.backend, Backend::Memory(_))
    }
}

#[cfg(feature = "redis")]
fn shared_store(config: &TollgateConfig) -> bool {
    config.store.backend == tollgate_redis::StoreBackend::Redis
}

#[cfg(not(feature = "redis"))]
fn shared_store(_: &TollgateConfig) -> bool {
    false
}

/// The pseudonymizer from the environment variable, else the config, else (only
/// without a shared store) a random secret, with a warning.
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
    let epoch = config.epoch().max(Duration::from_secs(1));
    match configured {
        Some(secret) => Ok(Pseudonymizer::with_clock(secret, epoch, clock)),
        None if shared_store => Err(BuildError::SecretRequired),
        None => Ok(Pseudonymizer::ephemeral_with_clock(epoch, clock)?),
    }
}
