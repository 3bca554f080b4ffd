//! Tiered rate limiting for axum: GCRA per pseudonymous key, stacked limits per tier,
//! per-route overrides, IETF `RateLimit` headers and a bounded in-process store.
//!
//! - [`gcra`]: the algorithm as pure functions on integer nanoseconds.
//! - [`store`]: the [`RateLimitStore`] trait (also implemented on Redis) and the bounded
//!   in-process [`MemoryRateLimitStore`].
//! - [`RateLimitLayer`]: tiers, keys, routes, headers, report-only mode.
//! - [`config`]: the `[ratelimit]` configuration.
#![warn(missing_docs)]

pub mod config;
pub mod gcra;
mod layer;
mod span;
mod status;
pub mod store;

pub use config::{ConfigError, LimitConfig, Mode, RateLimitConfig, RouteConfig, TierConfig, Window};
pub use gcra::{Decision, Limit, LimitError, MAX_LIMITS};
pub use layer::{KeyFn, RateLimitLayer, RateLimitOverride, RateLimitService, ResponseFuture};
pub use status::{Outcome, RATELIMIT, RATELIMIT_POLICY, RateLimitStatus};
pub use store::{MemoryRateLimitStore, RateLimitKey, RateLimitStore};
