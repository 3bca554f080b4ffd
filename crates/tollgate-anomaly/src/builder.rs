//! [`AnomalyBuilder`]: the anomaly layer's configuration plus what the stack shares.

use std::fmt;

use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::{ClientConfig, ConfigError, ProblemResponder, Pseudonymizer, RouteMap, SharedFreezeList};
use tollgate_ratelimit::SharedRateLimitStore;

use crate::config::AnomalyConfig;
use crate::engine::{Engine, Settings};
use crate::layer::AnomalyLayer;
use crate::penalty::SharedPenaltyBoard;
use crate::route::AnomalyRoute;

impl AnomalyLayer {
    /// A builder from the configuration and the stack's pseudonymizer.
    pub fn builder(config: AnomalyConfig, pseudonymizer: Pseudonymizer) -> AnomalyBuilder {
        AnomalyBuilder {
            config,
            pseudonymizer,
            clock: None,
            client: ClientConfig::default(),
            freeze: None,
            throttle_store: None,
            penalties: None,
            responder: ProblemResponder::default(),
            routes: RouteMap::default(),
        }
    }

    /// The layer for `config`, on the system clock, with the same policy on every
    /// route and without a freeze list (so a `freeze` action in `config` is refused:
    /// use [`AnomalyLayer::builder`] and [`AnomalyBuilder::freeze_list`]).
    pub fn from_config(config: &AnomalyConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build()
    }
}

/// Builds an [`AnomalyLayer`]: its configuration section, plus the clock, client
/// resolution, freeze list, responder and per-route policies the stack shares.
pub struct AnomalyBuilder {
    config: AnomalyConfig,
    pseudonymizer: Pseudonymizer,
    clock: Option<SharedClock>,
    client: ClientConfig,
    freeze: Option<SharedFreezeList>,
    throttle_store: Option<SharedRateLimitStore>,
    penalties: Option<SharedPenaltyBoard>,
    responder: ProblemResponder,
    routes: RouteMap<AnomalyRoute>,
}

impl fmt::Debug for AnomalyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnomalyBuilder")
            .field("config", &self.config)
            .field("freeze_list", &self.freeze.is_some())
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl AnomalyBuilder {
    /// Reads time from `clock` (a [`tollgate_core::FakeClock`] in tests and the simulator).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Resolves client networks this way when no [`tollgate_core::ClientContext`] is in
    /// the request (that is, when the privacy layer is not installed).
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// The freeze list the `freeze` action writes to: give the one the auth layer
    /// reads. Without one, a `freeze` action is refused at build time.
    pub fn freeze_list(mut self, list: SharedFreezeList) -> Self {
        self.freeze = Some(list);
        self
    }

    /// The policy of each route: skipped, detectors off, actions overridden (default:
    /// the configuration's actions on every route).
    pub fn routes(mut self, routes: RouteMap<AnomalyRoute>) -> Self {
        self.routes = routes;
        self
    }

    /// The store of the throttle tier's rate-limit cells (default: a private in-process
    /// store). Replicas that share the rate-limit layer's Redis store pass it here
    /// too, so a throttled caller gets the throttle tier once, not once per replica.
    pub fn throttle_store(mut self, store: SharedRateLimitStore) -> Self {
        self.throttle_store = Some(store);
        self
    }

    /// Where penalties (throttles, blocks) are kept (default: in process, bounded by
    /// `[anomaly.penalties] max_entries`). Replicas behind one load balancer share one
    /// board (tollgate-redis's `RedisPenaltyBoard`), so a caller blocked on one is
    /// blocked on all.
    pub fn penalty_board(mut self, board: SharedPenaltyBoard) -> Self {
        self.penalties = Some(board);
        self
    }

    /// Renders early answers (403, 429, 401) this way instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Decides actions without enforcing them.
    pub fn report_only(mut self, on: bool) -> Self {
        self.config.report_only = on;
        self
    }

    /// Sends the tags in an `x-tollgate-anomaly` response header.
    pub fn debug_header(mut self, on: bool) -> Self {
        self.config.debug_header = on;
        self
    }

    /// The layer, or the first setting that cannot work.
    pub fn build(self) -> Result<AnomalyLayer, ConfigError> {
        let engine = Engine::new(Settings {
            config: self.config,
            pseudonymizer: self.pseudonymizer,
            clock: self.clock.unwrap_or_else(system_clock),
            client: self.client,
            freeze: self.freeze,
            throttle_store: self.throttle_store,
            penalties: self.penalties,
            responder: self.responder,
            routes: self.routes,
        })?;
        Ok(AnomalyLayer::from_engine(engine))
    }
}
