//! Anomaly tagging for axum: [`AnomalyLayer`].
//!
//! Five streaming detectors over bounded state (per-key entries with an idle TTL
//! under a fixed entry cap, sketches where the keys are unbounded):
//!
//! | tag | fires when | reads |
//! |---|---|---|
//! | `volume` | a principal's recent pace is many times its own longer pace, or its rate far above its own baseline and its tier's norm | `Principal` |
//! | `credential_stuffing` | failed logins from one network prefix while they are most of what it does, against one account from anywhere, or API-wide above their own baseline or far more accounts failing than logins working | `ClientContext`, status, [`tollgate_core::LoginAttempt`] |
//! | `enumeration` | one session walks new object ids on one route faster than it and the route's sessions usually do, or many ids in all, or draws many 403/404s | `MatchedPath`, path, status |
//! | `token_sharing` | the fingerprinting layer judged the session unhealthy | `SessionInfo` |
//! | `unusual_sequence` | a route sessions hardly call, or a skipped step (learned transition model) | `MatchedPath`, session |
//!
//! The verdict goes into [`AnomalyTags`] (request and response extensions), the
//! request span's `anomaly` field (`kind:score` pairs, then `;action=...`), and
//! optionally an `x-tollgate-anomaly` response header. Per tag, the action is
//! `record` (default), `throttle` (a stricter rate-limit tier), `block` (403
//! `request-blocked`) or `freeze` (the credential goes on the freeze list);
//! `report_only` records what would have been done. Per route, an [`AnomalyRoute`]
//! skips the layer, turns detectors off or overrides actions
//! ([`AnomalyBuilder::routes`]).
//!
//! Throttles and blocks last a while: they are kept on a [`PenaltyBoard`] (in
//! process by default; tollgate-redis's `RedisPenaltyBoard` shares them between
//! replicas, and its rate-limit store makes the throttle tier one budget for all,
//! through [`AnomalyBuilder::throttle_store`]).
//!
//! # Where the layers go
//! ```text
//! PrivacyTraceLayer            (outermost: span, ClientContext, Route)
//!   FailureWatchLayer          (anomaly.failure_watch(): counts auth's 401s per network)
//!     AuthLayer                (Principal; 401/403)
//!       FingerprintLayer       (SessionInfo)
//!         RateLimitLayer       (429)
//!           AnomalyLayer       (innermost: every detector, sees the handler's status)
//! ```
//! With axum, `.layer()` calls wrap outward, so the innermost is added first.
//!
//! No raw identifier is kept: state is keyed by keyed hashes of pseudonyms, digests
//! and coarsened networks; object ids only set bits in fixed-size sketches.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod bounded;
mod builder;
mod config;
mod detectors;
mod engine;
mod future;
mod hash;
mod inventory;
mod layer;
mod params;
mod penalty;
mod record;
mod route;
mod route_index;
mod service;
mod sketch;
mod tags;
mod watch;

pub use builder::AnomalyBuilder;
pub use config::{
    Action, ActionMap, AnomalyConfig, EnumerationConfig, HealthLevel, PenaltyConfig, SequenceConfig,
    StuffingConfig, ThrottleConfig, TokenSharingConfig, VolumeConfig,
};
pub use engine::{DEBUG_HEADER, THROTTLE_SCOPE};
pub use future::ResponseFuture;
pub use layer::AnomalyLayer;
pub use penalty::{
    MemoryPenaltyBoard, Penalty, PenaltyBoard, PenaltyKey, SharedPenaltyBoard, TagsParseError,
};
pub use route::AnomalyRoute;
pub use service::AnomalyService;
pub use tags::{AnomalyKind, AnomalyTags, KIND_COUNT};
pub use tollgate_core::inventory::StateSize;
pub use watch::{FailureWatchLayer, FailureWatchService};
